"""The speed benchmark's --quick mode runs end to end (no timing thresholds: CI is noisy)."""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_speed_quick_mode_reports_every_section(monkeypatch):
  monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
  sys.modules.pop("speed", None)
  import speed

  report = speed.main(["--quick"])
  for section in (
    "(a, b) Step time",
    "(c) Compile time",
    "(d) Optimizer-state bytes",
    "(e) Scaling",
    "(f) Evaluation memory",
  ):
    assert section in report
  peaks = [float(p) for p in re.findall(r"windows.*\| [\d.]+ \| [\d.]+ \| ([\d.]+) \|", report)]
  assert len(peaks) == 2 and peaks[1] < peaks[0] / 5  # 64 windows against 640
  rows = re.findall(
    r"\| (\d+\.\d+) \[[\d.]+ - [\d.]+\] \| ([\d.]+) \| ([\d.]+) \| [\d.]+ \| [\d.]+x \|", report
  )
  assert len(rows) == 1  # quick mode: the MLP
  for ratio, limit, over in ((float(v) for v in row) for row in rows):
    assert ratio > 0 and limit > 1  # the copies add arithmetic
    assert abs(over - ratio / limit) < 2e-3  # rounded to 3 decimals
  extra = re.search(r"extra ([\d,]+) B against the paper's \(N-1\) x K x d = ([\d,]+) B", report)
  measured, paper = (int(g.replace(",", "")) for g in extra.groups())
  assert measured == paper + 9 * 10 * 4  # the paper's count plus the copies' biases


def test_nnx_step_benchmark_quick_mode_reports_three_variants(monkeypatch):
  monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
  sys.modules.pop("nnx_step", None)
  import nnx_step

  report = nnx_step.main(["--quick"])
  rows = re.findall(
    r"^\| (Alrao NNX|Alrao linen|plain NNX \(cached_partial\)) \| ([\d.]+) ", report, re.M
  )
  assert [name for name, _ in rows] == ["Alrao NNX", "Alrao linen", "plain NNX (cached_partial)"]
  assert all(float(ms) > 0 for _, ms in rows)
  model = re.search(r"^\| MLP 40-256-256-10 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \[", report, re.M)
  plain, alrao, ratio = (float(v) for v in model.groups())
  assert plain > 0 and alrao > 0 and ratio > 0

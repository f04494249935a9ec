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
  ):
    assert section in report
  ratios = [float(r) for r in re.findall(r"\| (\d+\.\d+) \| [\d.]+ \| [\d.]+x \|", report)]
  assert len(ratios) == 2 and all(r > 0 for r in ratios)
  extra = re.search(r"extra ([\d,]+) B against the paper's \(N-1\) x K x d = ([\d,]+) B", report)
  measured, paper = (int(g.replace(",", "")) for g in extra.groups())
  assert measured == paper + 9 * 10 * 4  # the paper's count plus the copies' biases

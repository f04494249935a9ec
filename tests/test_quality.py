"""The quality benchmark's --quick mode: every method and figure, and consistent tables.

To keep the suite under 10 minutes the test runs one of the four tasks, the BatchNorm CNN (with
the heatmap and the ablations); the others differ in data and model, which tests/test_data.py,
the model doctests and tests/test_compare.py (bits per character) cover.
"""

import json
import pathlib
import re
import sys

import numpy as np

from alrao_jax.experiments.methods import LR_FREE

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def test_quality_quick_mode_writes_the_tables_and_figures(monkeypatch, tmp_path):
  monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
  sys.modules.pop("quality", None)
  import quality

  tasks = ["digits"]
  assert quality.main(["--quick", "--out", str(tmp_path), "--tasks", ",".join(tasks)]) == 0
  report = (tmp_path / "quality.md").read_text()
  # the command that reproduces the run, with every option given
  command = f"python benchmarks/quality.py --quick --out {tmp_path} --tasks digits"
  assert f"Command: `{command}`" in report
  for task in tasks:
    for figure in (f"curves_{task}.png", f"posterior_{task}.png"):
      assert (tmp_path / figure).read_bytes()[:8] == PNG and f"]({figure})" in report
  assert (tmp_path / f"heatmap_{tasks[0]}.png").read_bytes()[:8] == PNG
  runs = json.loads((tmp_path / "quality.json").read_text())
  # Per task: a grid of 3 rates, Alrao, Adam and the six peers, one seed; plus the heatmap's
  # 3 Alrao cells (not in the json) on the first task.
  assert len(runs) == len(tasks) * (3 + 2 + len(LR_FREE))
  for task in tasks:
    mine = [r for r in runs if r["task"] == task]
    assert {r["method"] for r in mine} == {"sgd", "alrao-sgd", "adam", *LR_FREE}
    assert all(0 <= r["best_epoch"] <= 2 and r["seconds"] > 0 for r in mine)
    # The summary's first ratio is Alrao's test loss over the SGD rate best on validation.
    grid = [r for r in mine if r["method"] == "sgd"]
    best = min(grid, key=lambda r: (not np.isfinite(r["valid_loss"]), r["valid_loss"]))
    alrao = next(r for r in mine if r["method"] == "alrao-sgd")
    row = re.search(rf"^\| {task} \| ([\d.]+) \|", report, re.M)
    assert float(row.group(1)) == round(alrao["test"]["loss"] / best["test"]["loss"], 2)
  assert f"### {tasks[0]}: where the gap comes from" in report
  assert report.count("| Alrao-SGD, head only |") == 1

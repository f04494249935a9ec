"""Alrao-Adam's interval: the default [1e-6, 1] against narrower ones and the range test's.

Usage:
  python benchmarks/adam_interval.py           # writes benchmarks/results/adam_interval.md
  python benchmarks/adam_interval.py --quick   # smoke test: tiny data, 2 epochs, 1 seed, no file

The paper found Alrao-Adam much less reliable than Alrao-SGD (its appendix C, on the interval
[1e-6, 1], the default of ``alrao-jax train --optimizer alrao-adam``). Per bundled small task
and seed: tuned Adam (the grid 1e-5, ..., 1 a decade apart, its rate chosen on the mean
validation loss over seeds), Adam at its usual 1e-3, and one Alrao-Adam run (the task's number
of copies) per interval:

- ``default``: [1e-6, 1];
- ``narrow``: [1e-5, 0.1], the four decades centred on Adam's usual 1e-3;
- ``two decades``: [1e-4, 1e-2];
- ``range test``: ``lr_find`` with ``optax.adam`` on the plain model (100 steps), its
  ``alrao_interval`` (the four decades below the rate of lowest loss).

Every run keeps its best validation epoch (early stopping, patience 20). Test loss over tuned
Adam's with the same seed: mean over seeds and the worst seed.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Any

import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from header import command_line, ran_on, results_name

from alrao_jax import strict_json
from alrao_jax.experiments.compare import run_method, select_lr
from alrao_jax.experiments.methods import make_method
from alrao_jax.experiments.tasks import Task, load_task
from alrao_jax.experiments.tune import task_lr_find

RESULTS = pathlib.Path(__file__).parent / "results"
PATIENCE = 20
GRID = (1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0)
USUAL = 1e-3
FIXED = {"default": (1e-6, 1.0), "narrow": (1e-5, 0.1), "two decades": (1e-4, 1e-2)}
NAMES = (*FIXED, "range test")
SETTINGS = {"digits": 40, "mnist1d": 60, "mnist1d-mlp": 60}
SEEDS = 3


def run_task(task: Task, epochs: int, seeds: int, log) -> dict[str, Any]:
  """Tuned Adam, and one Alrao-Adam run per interval and seed; plain numbers."""
  fit = {"epochs": epochs, "patience": PATIENCE}
  grid = {
    lr: [run_method(task, make_method("adam", lr=lr), seed=s, **fit) for s in range(seeds)]
    for lr in GRID
  }
  best = select_lr(grid)
  log(f"{task.name}: tuned Adam {best:g}")
  rows = []
  for seed in range(seeds):
    found = task_lr_find(task, seed=seed, copies=1, optimizer=optax.adam)
    intervals = {**FIXED, "range test": found.alrao_interval}
    row: dict[str, Any] = {
      "tuned_loss": grid[best][seed].test["loss"],
      "usual_loss": grid[USUAL][seed].test["loss"],
      "notes": list(found.notes),
    }
    for name, (low, high) in intervals.items():
      if not (np.isfinite(low) and np.isfinite(high)):
        row[name] = {"interval": [low, high], "loss": float("nan")}
        continue
      method = make_method("alrao-adam", lr_min=low, lr_max=high, copies=task.copies, seed=seed)
      run = run_method(task, method, seed=seed, **fit)
      row[name] = {"interval": [low, high], "loss": run.test["loss"]}
      log(f"{task.name} seed {seed}: Alrao-Adam {name} [{low:.2g}, {high:.2g}]: {row[name]}")
    rows.append(row)
  return {"epochs": epochs, "tuned_lr": best, "rows": rows}


def ratios(rows: list[dict[str, Any]], name: str) -> np.ndarray:
  """Each seed's Alrao-Adam test loss over tuned Adam's (nan where there was no interval, inf
  where the run diverged)."""
  return np.array([r[name]["loss"] / r["tuned_loss"] for r in rows])


def report(results: dict[str, Any], header: list[str]) -> list[str]:
  lines = [
    *header,
    "| task | tuned Adam's lr | Adam at 1e-3 / tuned | "
    + " | ".join(f"Alrao-Adam, {n} / tuned (mean, worst)" for n in NAMES)
    + " | range test's intervals |",
    "|---|---|---|" + "---|" * (len(NAMES) + 1),
  ]
  means: dict[str, dict[str, float]] = {}
  for task, r in results.items():
    rows = r["rows"]
    usual = np.mean([row["usual_loss"] / row["tuned_loss"] for row in rows])
    cells = []
    for name in NAMES:
      values = ratios(rows, name)
      kept = values[~np.isnan(values)]  # a diverged run (inf) counts; a missing one does not
      if len(kept):
        means.setdefault(task, {})[name] = float(np.mean(kept))
        missing = f", {len(values) - len(kept)} seed(s) without" if len(kept) < len(values) else ""
        cells.append(f"{np.mean(kept):.3f}, {np.max(kept):.3f}{missing}")
      else:
        cells.append("none (the range test said nothing)")
    spans = ", ".join(
      f"[{row['range test']['interval'][0]:.2g}, {row['range test']['interval'][1]:.2g}]"
      for row in rows
    )
    lines.append(
      f"| {task} | {r['tuned_lr']:g} | {usual:.3f} | " + " | ".join(cells) + f" | {spans} |"
    )
  lines += ["", "## What it shows", ""]
  for task, found in means.items():
    best = min(found, key=found.get)
    lines.append(
      f"- {task}: the closest to tuned Adam is the {best} interval ({found[best]:.3f}); the "
      f"default [1e-6, 1] is {found['default']:.3f}."
    )
  for name in NAMES[1:]:
    better = [t for t in means if name in means[t] and means[t][name] < means[t]["default"]]
    lines.append(
      f"- The {name} interval beats the default on {len(better)} of {len(means)} tasks"
      + (f" ({', '.join(better)})" if better else "")
      + "."
    )
  notes = {
    f"{task} seed {i}": " ".join(row["notes"])
    for task, r in results.items()
    for i, row in enumerate(r["rows"])
    if row["notes"]
  }
  if notes:
    lines += ["", "The range test's notes:", ""]
    lines += [f"- {where}: {note}" for where, note in notes.items()]
  return [*lines, ""]


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny data, 2 epochs, 1 seed, no file")
  parser.add_argument(
    "--name",
    type=results_name,
    default="adam_interval",
    help="the results' file name, e.g. adam_interval_avx2 for a second processor's run",
  )
  args = parser.parse_args(argv)
  settings, seeds = ({"digits": 2}, 1) if args.quick else (SETTINGS, SEEDS)
  start = time.perf_counter()

  def log(line: str) -> None:
    print(f"[{time.perf_counter() - start:6.0f} s] {line}", file=sys.stderr, flush=True)

  results = {}
  for name, epochs in settings.items():
    task = load_task(name)
    if args.quick:
      task = task.shrink(64)
    results[name] = run_task(task, epochs, seeds, log)
  command = command_line("adam_interval.py", parser, args)
  header = [
    "# Alrao-Adam's interval: the default against narrower ones and the range test's",
    "",
    f"Command: `{command}` (this file and {args.name}.json). "
    f"{ran_on((time.perf_counter() - start) / 60)}. Epochs per task: "
    + ", ".join(f"{n} {e}" for n, e in settings.items())
    + f"; {seeds} seeds; early stopping with patience {PATIENCE}; tuned Adam: the grid "
    + ", ".join(f"{v:g}" for v in GRID)
    + ", its rate chosen on the mean validation loss. Test loss of each run over tuned Adam's "
    "with the same seed (mean over seeds, worst seed); below 1 is better than tuned Adam.",
    "",
  ]
  text = "\n".join(report(results, header))
  print(text)
  if not args.quick:
    (RESULTS / f"{args.name}.md").write_text(text)
    (RESULTS / f"{args.name}.json").write_text(strict_json.dumps(results, indent=1) + "\n")
  return text


if __name__ == "__main__":
  main()

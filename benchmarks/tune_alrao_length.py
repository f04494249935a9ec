"""How long `tune`'s Alrao run must be: the suggestion after the whole budget, half and a quarter.

Usage:
  python benchmarks/tune_alrao_length.py          # writes results/tune_alrao_length.{md,json}
  python benchmarks/tune_alrao_length.py --quick  # smoke test: tiny data, no file

Per bundled task and seed (``benchmarks/tune.py``'s epochs and seeds, early stopping with its
patience): one Alrao-SGD run of the whole budget, one of half of it and one of a quarter
(rounded up), each read by ``alrao_jax.suggest_lr`` (its suggestion, confidence and the body's
knee, ``alrao_jax.suggest_lr.body_knee``), with its wall time (compilation included). The
shorter runs are scored by how far their suggestion and knee lie from the whole run's, in
decades, and by their wall time over the whole run's.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time
import warnings
from typing import Any

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from header import command_line, ran_on, results_name, write_report_and_json
from tune import FULL, PATIENCE, QUICK, QUICK_ROWS

from alrao_jax.experiments.compare import task_method, timed_fit
from alrao_jax.experiments.tasks import load_task
from alrao_jax.suggest_lr import suggest_lr

RESULTS = pathlib.Path(__file__).parent / "results"
SHARES = (1, 2, 4)  # the whole budget, half, a quarter


def one_run(task: Any, epochs: int, seed: int) -> dict[str, Any]:
  """One Alrao-SGD run of ``epochs`` epochs and what suggest_lr reads off it."""
  with warnings.catch_warnings():  # a low confidence is recorded, not printed
    warnings.simplefilter("ignore", UserWarning)
    run, result = timed_fit(
      task, task_method(task, "alrao-sgd", seed=seed), seed=seed, epochs=epochs, patience=PATIENCE
    )
    found = suggest_lr(result)
  return {
    "epochs": epochs,
    "seed": seed,
    "lr": found.lr,
    "confidence": found.confidence,
    "knee": found.candidates.get("body", math.nan),
    "best_epoch": run.best_epoch,
    "seconds": run.seconds,
  }


def _decades(a: float, b: float) -> float:
  return abs(math.log10(a) - math.log10(b))


def report(results: dict[str, list[dict[str, Any]]], header: list[str]) -> str:
  """Per task and seed, each run's suggestion, knee and wall time; per task and length, the
  largest distance from the whole run's suggestion and knee, and the mean wall time over it."""
  lines = [
    *header,
    "| task | seed | epochs | suggest_lr | confidence | body's knee | best epoch | wall s |",
    "|---|---|---|---|---|---|---|---|",
  ]
  summary = [
    "",
    "Per task and length: the largest distance over the seeds from the whole run's suggestion "
    "and knee (decades), and the mean wall time over the whole run's.",
    "",
    "| task | epochs | suggestion moved | knee moved | wall time / the whole run's |",
    "|---|---|---|---|---|",
  ]
  for task, rows in results.items():
    for row in rows:
      lines.append(
        f"| {task} | {row['seed']} | {row['epochs']} | {row['lr']:.3g} | {row['confidence']} | "
        f"{row['knee']:.3g} | {row['best_epoch']} | {row['seconds']:.1f} |"
      )
    longest, *shorter = sorted({r["epochs"] for r in rows}, reverse=True)
    whole = {r["seed"]: r for r in rows if r["epochs"] == longest}
    for epochs in shorter:
      short = [r for r in rows if r["epochs"] == epochs]
      moved = max(_decades(r["lr"], whole[r["seed"]]["lr"]) for r in short)
      knee = max(_decades(r["knee"], whole[r["seed"]]["knee"]) for r in short)
      wall = np.mean([r["seconds"] / whole[r["seed"]]["seconds"] for r in short])
      summary.append(f"| {task} | {epochs} | {moved:.2f} | {knee:.2f} | {wall:.2f} |")
  return "\n".join([*lines, *summary, ""])


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny data, 1 seed, no file")
  parser.add_argument(
    "--name", type=results_name, default="tune_alrao_length", help="results file name, no suffix"
  )
  args = parser.parse_args(argv)
  started = time.perf_counter()
  results: dict[str, list[dict[str, Any]]] = {}
  for setting in QUICK if args.quick else FULL:
    task = load_task(setting.task)
    if args.quick:
      task = task.shrink(QUICK_ROWS)
    else:  # untimed: the first run of a model in a process pays a one-off set-up
      one_run(task.shrink(QUICK_ROWS), 1, 0)
    results[setting.task] = [
      one_run(task, -(-setting.epochs // share), seed)
      for seed in range(setting.seeds)
      for share in SHARES
    ]
    print(f"[{time.perf_counter() - started:6.0f} s] {setting.task}", file=sys.stderr, flush=True)
  minutes = (time.perf_counter() - started) / 60
  header = [
    "# How long tune's Alrao run must be",
    "",
    f"Command: `{command_line('tune_alrao_length.py', parser, args)}` (this file and its "
    f".json). {ran_on(minutes)}. Early stopping with patience {PATIENCE}; each run read at its "
    "best validation epoch by `suggest_lr(result)`.",
    "",
  ]
  path = RESULTS / args.name
  return write_report_and_json(report(results, header), results, path, minutes, quick=args.quick)


if __name__ == "__main__":
  print(main())

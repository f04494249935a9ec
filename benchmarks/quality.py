"""Quality of one Alrao-SGD run against tuned SGD, Adam and optax's learning-rate-free optimizers.

Usage:
  python benchmarks/quality.py           # full run (about 50 min on 2 cores), writes
                                         # benchmarks/results/quality.md and the PNG figures
  python benchmarks/quality.py --quick   # smoke test: tiny data, 2 epochs, 1 seed, short grid

The protocol is the paper's Table 1 (see alrao_jax.experiments.compare): early stopping on
the validation split, test metrics at the best validation epoch, SGD's rate chosen on validation.
Data paths: ALRAO_PTB_CHAR overrides the Penn Treebank folder (default ../shared/data/ptb-char).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from header import command_line, ran_on

from alrao_jax import strict_json
from alrao_jax.experiments.compare import (
  SGD_GRID,
  Comparison,
  RunResult,
  alrao_ablations,
  compare,
  run_method,
  summarize,
  task_method,
)
from alrao_jax.experiments.methods import LR_FREE, make_method
from alrao_jax.experiments.plots import plot_curves, plot_heatmap, plot_posterior
from alrao_jax.experiments.tasks import Task, load_task

PATIENCE = 20  # the paper's early stopping
GAP = 1.15  # Alrao / best SGD test loss above which the ablations run
METHODS = ("alrao-sgd", "adam", *LR_FREE)


class Setting(NamedTuple):
  task: str
  title: str
  epochs: int
  grid_seeds: int  # seeds on which the whole SGD grid runs


FULL = (
  Setting("digits", "digits (sklearn), BatchNorm CNN", 40, 3),
  Setting("mnist1d", "MNIST-1D, 1D CNN", 60, 3),
  Setting("mnist1d-mlp", "MNIST-1D, tanh MLP (no normalisation)", 60, 3),
  Setting("ptb-char", "Penn Treebank characters, 2-layer LSTM", 5, 1),
)
QUICK_ROWS = 64  # quick mode: the first rows of every split


def _fmt(mean: float, std: float, scale: float = 1.0, digits: int = 3) -> str:
  if not np.isfinite(mean):
    return "diverged"
  return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _ratio(a: float, b: float) -> str:
  return f"{a / b:.2f}" if np.isfinite(a) and np.isfinite(b) and b > 0 else "n/a"


def _label(name: str, lr: float | None) -> str:
  return f"{name} (lr {lr:g})" if lr is not None and name in ("sgd", "adam") else name


def task_section(task: Task, setting: Setting, result: Comparison, figures: dict) -> list[str]:
  """The task's Table 1 with every peer, its SGD grid, and its figures."""
  scale, unit = task.loss_scale, task.loss_unit
  stats = {name: summarize(runs, loss_scale=scale) for name, runs in result.runs.items()}
  lines = [
    f"## {setting.title}",
    "",
    f"Train/valid/test rows: {', '.join(str(len(s.inputs)) for s in task.splits)}; "
    f"batch {task.batch_size}; at most {setting.epochs} epochs, early stopping with patience "
    f"{PATIENCE}; seeds {len(next(iter(result.runs.values())))}; loss in {unit}."
    + (
      " Trained on the first 90% of ptb.char.valid.txt, early stopping on its last 10%, "
      "tested on ptb.char.test.txt (the training file is not available here)."
      if task.name == "ptb-char"
      else ""
    ),
    "",
    f"| method | test loss ({unit}) | test accuracy (%) | best epoch | s per run | "
    "runs for this result | compute (s) |",
    "|---|---|---|---|---|---|---|",
  ]
  for name, s in stats.items():
    runs = len(result.grid) if name == "sgd" else 1
    compute = grid_seconds(result, setting) if name == "sgd" else s["seconds"]
    label = (
      f"SGD, best lr {result.best_lr:g} (chosen on validation)"
      if name == "sgd"
      else _label(name, result.runs[name][0].lr)
    )
    lines.append(
      f"| {label} | {_fmt(s['loss'], s['loss_std'])} | "
      f"{_fmt(s['accuracy'], s['accuracy_std'], 100, 1)} | {s['epochs']:.1f} | "
      f"{s['seconds']:.1f} | {runs} | {compute:.0f} |"
    )
  lines += [
    "",
    "SGD grid (mean over the grid's seeds; the best validation loss picks the rate):",
    "",
    f"| lr | valid loss ({unit}) | test loss ({unit}) | test accuracy (%) | s per run |",
    "|---|---|---|---|---|",
  ]
  for lr, runs in result.grid.items():
    s = summarize(runs, loss_scale=scale)
    valid = np.mean([r.valid_loss for r in runs]) * scale
    mark = " (best)" if lr == result.best_lr else ""
    lines.append(
      f"| {lr:g}{mark} | {valid:.3f} | {_fmt(s['loss'], s['loss_std'])} | "
      f"{_fmt(s['accuracy'], s['accuracy_std'], 100, 1)} | {s['seconds']:.1f} |"
    )
  lines += ["", *(f"![{k}]({v})" for k, v in figures.items()), ""]
  return lines


def summary_row(task: Task, setting: Setting, result: Comparison) -> str:
  """Alrao's test loss divided by each method's, and the compute of each."""
  stats = {n: summarize(r, loss_scale=task.loss_scale) for n, r in result.runs.items()}
  alrao = stats["alrao-sgd"]["loss"]
  cells = [_ratio(alrao, stats[name]["loss"]) for name in ("sgd", "adam", *LR_FREE)]
  grid = grid_seconds(result, setting)
  return (
    f"| {task.name} | {' | '.join(cells)} | {len(result.grid)} x {grid / len(result.grid):.1f} s "
    f"= {grid:.0f} s | 1 x {stats['alrao-sgd']['seconds']:.1f} s |"
  )


def grid_seconds(result: Comparison, setting: Setting) -> float:
  """The compute of one tuned-SGD result: the whole grid, per seed."""
  runs = [r for runs in result.grid.values() for r in runs]
  return sum(r.seconds for r in runs) / setting.grid_seeds


def ablation_lines(
  task: Task, result: Comparison, ablations: list[dict[str, RunResult]]
) -> list[str]:
  """Alrao's parts one at a time (one dict per seed), next to SGD and Alrao on those seeds."""
  scale, unit = task.loss_scale, task.loss_unit
  rows = {
    f"SGD at lr {result.best_lr:g}": result.runs["sgd"],
    "Alrao-SGD": result.runs["alrao-sgd"],
    **{f"Alrao-SGD, {k}": [found[k] for found in ablations] for k in ablations[0]},
  }
  lines = [
    f"### {task.name}: where the gap comes from ({len(ablations)} seeds)",
    "",
    f"| run | test loss ({unit}) | best copy alone ({unit}) | test accuracy (%) |",
    "|---|---|---|---|",
  ]
  for name, runs in rows.items():
    s = summarize(runs, loss_scale=scale)
    best_copy = np.mean([r.test.get("best_copy_loss", np.nan) for r in runs]) * scale
    lines.append(
      f"| {name} | {_fmt(s['loss'], s['loss_std'])} | {best_copy:.3f} | "
      f"{_fmt(s['accuracy'], s['accuracy_std'], 100, 1)} |"
    )
  return [*lines, ""]


def heatmap(task: Task, result: Comparison, lrs: list[float], epochs: int, out: pathlib.Path):
  """Alrao's test loss over an (lr_min, lr_max) grid; the diagonal is SGD at that rate."""
  values = np.full((len(lrs), len(lrs)), np.nan)
  for i, lo in enumerate(lrs):
    for j, hi in enumerate(lrs):
      if lo == hi:
        run = next(r for r in result.grid[lo] if r.seed == 0)
      elif lo < hi:
        method = make_method("alrao-sgd", lr_min=lo, lr_max=hi, copies=task.copies)
        run = run_method(task, method, seed=0, epochs=epochs, patience=PATIENCE)
      else:
        continue
      values[i, j] = run.test["loss"] * task.loss_scale
  values[~np.isfinite(values)] = np.nan
  plot_heatmap(
    values,
    lrs,
    lrs,
    out,
    title=f"{task.name}: Alrao test loss by interval (diagonal: SGD)",
    label=f"test loss ({task.loss_unit})",
    vmax=float(np.nanmax(np.diag(values))),  # above SGD's worst rate: one colour
  )
  return values


def _reporter(task: Task, records: list[dict]) -> Callable[[RunResult], None]:
  """Prints each run as it finishes and keeps it (without its history) for quality.json."""

  def report(run: RunResult) -> None:
    print(
      f"  {_label(run.method, run.lr)} seed {run.seed}: best epoch {run.best_epoch}, "
      f"test loss {run.test['loss'] * task.loss_scale:.4f}, {run.seconds:.1f} s",
      flush=True,
    )
    kept = {k: v for k, v in run._asdict().items() if k != "history"}
    records.append({"task": task.name, **kept})

  return report


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="smoke test in about a minute")
  parser.add_argument("--out", default="benchmarks/results", help="folder for the results")
  parser.add_argument("--tasks", default=",".join(s.task for s in FULL), help="comma-separated")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  wanted = args.tasks.split(",")
  settings = [s for s in FULL if s.task in wanted]
  if len(settings) != len(wanted):
    parser.error(f"--tasks must name tasks among {', '.join(s.task for s in FULL)}")
  seeds, grid = ((0,), (1e-3, 1e-1, 10.0)) if args.quick else ((0, 1, 2), SGD_GRID)
  heat_lrs = [1e-3, 1e-1, 10.0] if args.quick else list(SGD_GRID)
  if args.quick:
    settings = [s._replace(epochs=2, grid_seeds=1) for s in settings]
  start = time.perf_counter()
  sections, summary, ablations, records = [], [], [], []
  for setting in settings:
    task = load_task(setting.task)
    if args.quick:
      task = task.shrink(QUICK_ROWS)
    print(f"== {setting.title}", flush=True)
    if not args.quick:  # untimed: the first run of a model in a process pays a one-off set-up
      run_method(task.shrink(2 * task.batch_size), make_method("sgd"), seed=0, epochs=1)
    result = compare(
      task,
      epochs=setting.epochs,
      seeds=seeds,
      grid=grid,
      grid_seeds=min(setting.grid_seeds, len(seeds)),
      methods=METHODS,
      on_run=_reporter(task, records),
      patience=PATIENCE,
    )
    figures = {
      "learning curves": f"curves_{task.name}.png",
      "switch posterior": f"posterior_{task.name}.png",
    }
    first = {name: runs[0] for name, runs in result.runs.items()}
    plot_curves(
      {_label(n, r.lr): r.history for n, r in first.items()},
      out / figures["learning curves"],
      loss_scale=task.loss_scale,
      unit=task.loss_unit,
      title=f"{setting.title} (seed {first['sgd'].seed})",
    )
    plot_posterior(
      first["alrao-sgd"].history,
      out / figures["switch posterior"],
      task_method(task, "alrao-sgd").copy_lrs,
      title=f"{task.name}, alrao-sgd [{task.lr_min:g}, {task.lr_max:g}]",
    )
    if task.name == settings[0].task:
      figures["interval heatmap"] = f"heatmap_{task.name}.png"
      heatmap(task, result, heat_lrs, setting.epochs, out / figures["interval heatmap"])
    summary.append(summary_row(task, setting, result))
    sections += task_section(task, setting, result, figures)
    gap = summarize(result.runs["alrao-sgd"])["loss"] / summarize(result.runs["sgd"])["loss"]
    if gap > GAP or (args.quick and setting is settings[0]):
      options = {"lr": result.best_lr, "epochs": setting.epochs, "patience": PATIENCE}
      found = [alrao_ablations(task, seed=seed, **options) for seed in seeds]
      ablations += ablation_lines(task, result, found)
  minutes = (time.perf_counter() - start) / 60
  command = command_line("quality.py", parser, args)
  header = [
    "# Quality: one Alrao-SGD run against tuned SGD, Adam and learning-rate-free optimizers",
    "",
    f"Command: `{command}` (this file and the PNGs beside it). {ran_on(minutes)}.",
    "",
    "## Summary: Alrao-SGD's mean test loss divided by each method's (below 1: Alrao better)",
    "",
    "| task | best SGD | Adam | " + " | ".join(LR_FREE) + " | compute of tuned SGD "
    "(grid runs x s) | compute of Alrao |",
    "|---|" + "---|" * (4 + len(LR_FREE)),
    *summary,
    "",
  ]
  if ablations:
    header += [
      f"## Where Alrao is more than {GAP - 1:.0%} worse than tuned SGD",
      "",
      "Runs on the same seeds that isolate Alrao's parts: *body only* keeps the random "
      "per-feature rates and a single output layer at SGD's best rate; *head only* trains "
      "the body at SGD's best rate under Alrao's copies and switch; the narrow interval "
      "keeps everything but centres a 100x interval on the best rate. *best copy alone* is "
      "the test loss of the copy with the largest posterior weight (mean over seeds).",
      "",
      *ablations,
    ]
  (out / "quality.md").write_text("\n".join(header + sections))
  (out / "quality.json").write_text(strict_json.dumps(records, indent=1))
  print(f"wrote {out / 'quality.md'} in {minutes:.1f} min")
  return 0


if __name__ == "__main__":
  sys.exit(main())

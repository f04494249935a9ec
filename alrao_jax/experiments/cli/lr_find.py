"""``alrao-jax lr-find``: the learning-rate range test on the model, and Alrao's interval."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from alrao_jax import strict_json
from alrao_jax.checks import check_bounds
from alrao_jax.experiments.cli.errors import UsageError
from alrao_jax.experiments.cli.options import (
  LR_FIND_OPTIMIZERS,
  check_data_options,
  load,
  refuse_to_overwrite,
  resolve,
  run_folder,
)
from alrao_jax.experiments.plots import plot_lr_find
from alrao_jax.experiments.tune import task_lr_find


def run(args: argparse.Namespace) -> None:
  s = resolve(args, ("task", "data", "model", "width", "depth", "batch_size", "seed", "quick"))
  check_data_options(s)
  steps = 100 if args.steps is None else args.steps
  start_lr = 1e-7 if args.start_lr is None else args.start_lr
  end_lr = 10.0 if args.end_lr is None else args.end_lr
  if steps < 3:
    raise UsageError(f"--steps must be >= 3 (the ramp needs a curve), got {steps}; e.g. 100")
  check_bounds(start_lr, end_lr, names=("--start-lr", "--end-lr"))
  if not end_lr > start_lr:
    raise UsageError(f"--end-lr ({end_lr}) must be > --start-lr ({start_lr})")
  out = run_folder(args)
  refuse_to_overwrite(out, ("lr_find.png",), "a range test")
  optimizer = args.optimizer or "sgd"
  task = load(s)
  copies = task.copies
  result = task_lr_find(
    task,
    seed=s["seed"],
    optimizer=LR_FIND_OPTIMIZERS[optimizer],
    start_lr=start_lr,
    end_lr=end_lr,
    num_steps=steps,
  )
  out.mkdir(parents=True, exist_ok=True)
  plot_lr_find(result, out / "lr_find.png", title=f"{task.name}, {optimizer}, {copies} copies")
  low, high = result.alrao_interval
  usable = np.isfinite(low) and np.isfinite(high)
  print(
    strict_json.dumps(
      {
        "suggestions": result.suggestions,
        f"alrao_{optimizer}_interval": [low, high] if usable else None,
        "steps": len(result.learning_rates),
        "plot": str(out / "lr_find.png"),
        "notes": list(result.notes),
      }
    )
  )
  for note in result.notes:
    print(f"alrao-jax lr-find: no suggestion, the curve is {note}", file=sys.stderr)
  if usable:
    print(
      f"alrao-jax train --optimizer alrao-{optimizer} --lr-min {low:.2g} --lr-max {high:.2g}"
      + ("" if s["data"] is None else f" --data {s['data']}")
      + ("" if s["task"] in (None, "digits") else f" --task {s['task']}"),
      file=sys.stderr,
    )

"""``alrao-jax sweep``: plain SGD or Adam at a grid of rates, trained as one program."""

from __future__ import annotations

import argparse
import sys

from alrao_jax import strict_json
from alrao_jax.epochs import test_metrics_of
from alrao_jax.experiments.cli.errors import UsageError
from alrao_jax.experiments.cli.options import (
  LR_FIND_OPTIMIZERS,
  check_data_options,
  load,
  parse_grid,
  refuse_to_overwrite,
  resolve,
  rounded,
  run_folder,
)
from alrao_jax.experiments.cli.report import RunBars
from alrao_jax.experiments.tasks import MODES
from alrao_jax.sweep import sweep


def run(args: argparse.Namespace) -> None:
  s = resolve(
    args, ("task", "data", "model", "width", "depth", "batch_size", "seed", "epochs", "quick")
  )
  check_data_options(s)
  grid = parse_grid(args.grid)
  if args.patience is not None and args.patience < 1:
    raise UsageError(f"--patience must be >= 1, got {args.patience}")
  out = run_folder(args)
  refuse_to_overwrite(out, ("sweep.json",), "a sweep")
  optimizer = args.optimizer or "sgd"
  task = load(s)
  print(
    f"alrao-jax sweep: {task.name}, {optimizer} at {len(grid)} rates as one program, "
    f"{s['epochs']} epochs; compiling the step",
    file=sys.stderr,
  )
  bars = RunBars(not args.no_progress, s["epochs"], ("sweep",))
  result = sweep(
    task.build(1),  # the model `train --optimizer sgd` trains: a head of one copy
    LR_FIND_OPTIMIZERS[optimizer],
    task.splits,
    values=grid,
    epochs=s["epochs"],
    seed=s["seed"],
    batch_size=task.batch_size,
    patience=args.patience,
    carry=task.carry,
    on_epoch=bars.sweep_epoch,
    **MODES,
  )
  bars.close()
  runs = {}
  for lr, epoch, history, stopped in zip(
    grid, result.best_epochs, result.histories, result.stopped, strict=True
  ):
    best = history[epoch - 1] if epoch else {}
    runs[f"{lr:g}"] = {
      "best_epoch": int(epoch),
      "valid_loss": best.get("valid_loss", float("inf")),
      **{k: v for k, v in test_metrics_of(best).items() if k in ("loss", "accuracy")},
      "stopped": stopped,
    }
    print(
      f"  lr {lr:<8g} best epoch {int(epoch):>3}  valid loss {runs[f'{lr:g}']['valid_loss']:.4f}"
      f"  ({stopped})",
      file=sys.stderr,
    )
  summary = rounded({"optimizer": optimizer, "best_lr": result.best_value, "runs": runs})
  out.mkdir(parents=True, exist_ok=True)
  (out / "sweep.json").write_text(strict_json.dumps(summary, indent=1) + "\n")
  print(strict_json.dumps(summary))

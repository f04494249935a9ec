"""``alrao-jax tune``: one Alrao run, a short race of the rates it points to, then SGD (or Adam)
at the rate picked."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from alrao_jax import strict_json
from alrao_jax.experiments.cli.errors import UsageError
from alrao_jax.experiments.cli.options import (
  check_data_options,
  check_optimizer_options,
  describe_run,
  load,
  parse_grid,
  refuse_to_overwrite,
  resolve,
  rounded,
  run_folder,
  run_method,
)
from alrao_jax.experiments.cli.report import RunBars
from alrao_jax.experiments.compare import RunResult, select_lr, timed_fit
from alrao_jax.experiments.methods import Method
from alrao_jax.experiments.tune import half_of, tune
from alrao_jax.suggest_lr import describe
from alrao_jax.sweep import SweepResult

TUNE_OPTIONS = (
  *("task", "data", "model", "width", "depth", "batch_size", "seed", "lr_min", "lr_max"),
  *("copies", "momentum", "weight_decay", "clip", "schedule", "layer_schedule", "epochs"),
  "quick",
)


def run_summary(run: RunResult) -> dict[str, Any]:
  return {
    "epochs": len(run.history),
    "best_epoch": run.best_epoch,
    **{f"test_{k}": v for k, v in run.test.items()},
    "seconds": round(run.seconds, 2),
  }


def run(args: argparse.Namespace) -> None:
  s = resolve(args, TUNE_OPTIONS)
  plain = args.optimizer or "sgd"
  s.update({"optimizer": f"alrao-{plain}", "lr": None})
  check_data_options(s)
  check_optimizer_options(s)
  grid = parse_grid(args.grid) if args.verify else []
  if args.race_epochs is not None and args.race_epochs < 0:
    raise UsageError(f"--race-epochs must be >= 0 (0: no race), got {args.race_epochs}")
  if args.alrao_epochs is not None and args.alrao_epochs < 1:
    raise UsageError(f"--alrao-epochs must be >= 1, got {args.alrao_epochs}")
  if not 0.0 <= args.tolerance <= 1.0:
    raise UsageError(f"--tolerance must be in [0, 1], got {args.tolerance}")
  out = run_folder(args)
  refuse_to_overwrite(out, ("tune.json", "suggestion.txt"), "a tune run")
  task = load(s)
  alrao = run_method(s, task)  # fills in the task's interval and copies; checked before any run

  def make(name: str, **options: Any) -> Method:  # both runs take the command line's options
    if name == s["optimizer"]:
      return alrao
    alrao_only = {"lr_min": None, "lr_max": None, "copies": None}
    return run_method({**s, **alrao_only, "optimizer": name, "lr": options["lr"]}, task)

  print(f"alrao-jax tune: {describe_run(s, task, alrao)}", file=sys.stderr)
  names = (s["optimizer"], f"{plain} at the rate picked", *(f"{plain} at lr {lr:g}" for lr in grid))
  alrao_epochs = half_of(s["epochs"]) if args.alrao_epochs is None else args.alrao_epochs
  bars = RunBars(not args.no_progress, (alrao_epochs, s["epochs"]), names)
  result = tune(
    task,
    epochs=s["epochs"],
    seed=s["seed"],
    make=make,
    optimizer=plain,
    race_epochs=args.race_epochs,
    tolerance=args.tolerance,
    alrao_epochs=alrao_epochs,
    trust_high=args.trust_high,
    on_epoch=bars.fit_epoch,
  )
  if not args.verify:
    bars.close()
  out.mkdir(parents=True, exist_ok=True)
  text = describe(result.suggestion)
  if result.race is not None:
    text += "\n" + _race_table(result.race, result.race_seconds, result.lr)
  elif args.trust_high and result.suggestion.confidence == "high":
    text += "\nno race: the suggestion's confidence is high (--trust-high)"
  (out / "suggestion.txt").write_text(text + "\n")
  print(text, file=sys.stderr)
  summary: dict[str, Any] = {
    "lr": result.lr,
    "suggested_lr": result.suggestion.lr,
    "leading_copy_lr": result.suggestion.leading_lr,
    "confidence": result.suggestion.confidence,
    "alrao": run_summary(result.alrao),
  }
  if (race := result.race) is not None:
    summary["race"] = {
      "epochs": result.race_epochs,
      "start_valid_loss": race.start_valid_loss,
      "valid_loss": {f"{v:.3g}": loss for v, loss in _pairs(race.values, race.valid_losses)},
      "tolerance": args.tolerance,
      "seconds": round(result.race_seconds, 2),
    }
  summary[plain] = run_summary(result.sgd)
  if args.verify:
    runs = {
      lr: timed_fit(
        task, make(plain, lr=lr), seed=s["seed"], epochs=s["epochs"], on_epoch=bars.fit_epoch
      )[0]
      for lr in grid
    }
    bars.close()
    best = select_lr({lr: [run] for lr, run in runs.items()})
    summary["verify"] = {
      "grid": {f"{lr:g}": run_summary(run) for lr, run in runs.items()},
      "best_lr": best,
      "decades_from_best": float(np.log10(result.lr / best)),
      "suggestion_decades_from_best": float(np.log10(result.suggestion.lr / best)),
      "test_loss_over_best": result.sgd.test["loss"] / runs[best].test["loss"],
      "grid_seconds": round(sum(r.seconds for r in runs.values()), 2),
    }
  summary = rounded(summary)
  (out / "tune.json").write_text(strict_json.dumps(summary, indent=1) + "\n")
  print(strict_json.dumps(summary))


def _pairs(values: np.ndarray, losses: np.ndarray) -> list[tuple[float, float]]:
  return list(zip(values.tolist(), losses.tolist(), strict=True))


def _race_table(race: SweepResult, seconds: float, picked: float) -> str:
  """The race in words: each candidate's best validation loss, the rate picked marked."""
  lines = [
    f"race ({len(race.values)} rates, one program, {seconds:.1f} s): best validation loss "
    f"(from {race.start_valid_loss:.4f} at the start)"
  ]
  for i, (value, loss) in enumerate(_pairs(race.values, race.valid_losses)):
    mark = "  <- picked" if value == picked else ""
    if i == race.best_index and value != picked:
      mark = "  (best, but the suggestion's racer kept within --tolerance of its fall)"
    lines.append(f"  lr {value:<9.3g} {loss:.4f} ({race.stopped[i]}){mark}")
  return "\n".join(lines)

"""``alrao-jax train``: one optimizer on a bundled task or your arrays, with metrics, figures and
a checkpoint that ``--resume`` continues."""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import warnings
from typing import Any

import jax

from alrao_jax import strict_json
from alrao_jax.checkpoint import checkpoint_meta
from alrao_jax.experiments.cli.devices import mesh_of
from alrao_jax.experiments.cli.errors import RunDivergedError, RunInterruptedError, UsageError
from alrao_jax.experiments.cli.interrupt import CtrlC
from alrao_jax.experiments.cli.options import (
  CHANGEABLE_ON_RESUME,
  RUN_DEFAULTS,
  SETTINGS,
  check_data_options,
  check_optimizer_options,
  describe_run,
  flag,
  load,
  resolve,
  run_folder,
  run_method,
)
from alrao_jax.experiments.cli.report import Reporter
from alrao_jax.experiments.methods import Method
from alrao_jax.experiments.tasks import MODES, Task
from alrao_jax.loop import STOP_REASONS, FitResult, fit
from alrao_jax.retire import CopyRetirement, copy_retirement
from alrao_jax.splits import take
from alrao_jax.steps import TrainState, create_train_state, model_args


def _train_settings(args: argparse.Namespace, out: pathlib.Path) -> tuple[dict[str, Any], bool]:
  """The run's settings and whether it continues a saved run."""
  saved_path = out / SETTINGS
  if not args.resume:
    if saved_path.exists() or (out / "metrics.jsonl").exists():
      raise UsageError(f"{out} holds a run already; pass --resume to continue it, or another --out")
    return resolve(args, RUN_DEFAULTS), False
  if not saved_path.is_file():
    raise UsageError(f"no run to resume in {out} (no {SETTINGS}); start it without --resume")
  try:
    saved = json.loads(saved_path.read_text())
  except ValueError as err:
    raise UsageError(f"{saved_path} is corrupt ({err}); start a new run in another --out") from err
  if not isinstance(saved, dict) or not {"task", "optimizer"} <= set(saved) <= set(RUN_DEFAULTS):
    raise UsageError(f"{saved_path} is not a run's settings; start a new run in another --out")
  saved = {**RUN_DEFAULTS, **saved}  # runs saved before an option existed have its default
  for name in RUN_DEFAULTS:
    given = getattr(args, name, None)
    if given is not None and given != saved[name] and name not in CHANGEABLE_ON_RESUME:
      raise UsageError(
        f"{flag(name)} {given} differs from this run's {saved[name]} ({saved_path}); "
        "drop it to continue the run, or start a new one in another --out"
      )
  if args.epochs is not None:
    saved["epochs"] = args.epochs
  return saved, True


def _first_state(model: Any, method: Method, task: Task, seed: int) -> TrainState:
  """The state fit would start from (the same values), built by one jitted program rather than
  by one eager program per initialiser and operation: about a hundred for the digits CNN, each
  lowered even when the compilation cache holds it (a second of a warm run's start)."""
  create = functools.partial(create_train_state, model, method.optimizer, **MODES["eval_kwargs"])
  example = take(task.splits.train.inputs, slice(0, task.batch_size))
  return jax.jit(create)(jax.random.key(seed), *model_args(example))


def _retirement(settings: dict[str, Any]) -> CopyRetirement | None:
  """fit's ``retire`` from --retire-below, --retire-after and --retire-keep."""
  if settings["retire_below"] is None:
    return None
  given = {"epochs": settings["retire_after"], "min_copies": settings["retire_keep"]}
  return copy_retirement(  # its defaults where not given
    threshold=settings["retire_below"], **{k: v for k, v in given.items() if v is not None}
  )


def run(args: argparse.Namespace) -> FitResult:
  out = run_folder(args)
  settings, resuming = _train_settings(args, out)
  check_data_options(settings)
  check_optimizer_options(settings)
  task = load(settings)
  method = run_method(settings, task)
  mesh = mesh_of(args, settings, task)
  if mesh is not None and settings["retire_below"] is not None:
    raise UsageError("--retire-below works on one device; drop --mesh or --retire-below")
  checkpoint = out / "checkpoint"
  if resuming and checkpoint.exists():
    checkpoint_meta(checkpoint)  # a corrupt run is refused before the model is built
  out.mkdir(parents=True, exist_ok=True)
  (out / SETTINGS).write_text(strict_json.dumps(settings, indent=1) + "\n")
  title = describe_run(settings, task, method)
  ctrl_c = CtrlC()
  reporter = Reporter(out, settings["epochs"], not args.no_progress, method, title, ctrl_c)
  result = None
  try:
    with ctrl_c, warnings.catch_warnings():
      # said once the handler is in place: a Ctrl-C from here on ends with the resume hint
      compiling = "compiling the step (the first epoch includes it)"
      print(f"alrao-jax: {title}; {compiling}", file=sys.stderr)
      warnings.filterwarnings("ignore", "alrao_jax.fit: no epoch", RuntimeWarning)  # said below
      model = task.build(len(method.copy_lrs))
      continues = resuming and checkpoint.exists()
      fresh = mesh is None and not continues
      result = fit(
        model,
        method.optimizer,
        task.splits,
        epochs=settings["epochs"],
        seed=settings["seed"],
        batch_size=task.batch_size,
        **MODES,
        checkpoint_dir=checkpoint,
        resume=continues,
        initial_state=_first_state(model, method, task, settings["seed"]) if fresh else None,
        on_epoch=reporter,
        eval_params=method.eval_params,
        mesh=mesh,
        carry=task.carry,
        retire=_retirement(settings),
      )
  except KeyboardInterrupt as err:
    reporter.close()
    done = f"after epoch {reporter.epoch}" if reporter.epoch else "before its first epoch"
    raise RunInterruptedError(
      f"interrupted {done}; `alrao-jax train --resume --out {out}` continues the run"
    ) from err
  finally:
    reporter.close(result)
  summary = {"best_epoch": result.best_epoch, **{f"test_{k}": v for k, v in result.test.items()}}
  print(strict_json.dumps(summary))
  if result.stopped == "diverged":
    kept = f"epoch {result.best_epoch}" if result.best_epoch else "no epoch (none was finite)"
    raise RunDivergedError(
      f"the run diverged in epoch {len(result.history)}: {STOP_REASONS['diverged']}; the "
      f"checkpoint in {out} keeps {kept} as its best state"
    )
  return result

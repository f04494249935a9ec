"""The options that the commands share: a run's settings and their defaults, their checks
(each a one-line :class:`UsageError`), the task and the optimizer they name, the output folder."""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import optax

from alrao_jax.checks import check_bounds
from alrao_jax.experiments.cli.errors import UsageError
from alrao_jax.experiments.cli.parser import DEFAULT_GRID
from alrao_jax.experiments.methods import (
  ALRAO,
  WITH_MOMENTUM,
  Method,
  layer_schedule,
  make_method,
  model_depths,
  schedule_multiplier,
)
from alrao_jax.experiments.names import FOLDER_TASKS
from alrao_jax.experiments.tasks import (
  MODEL_KINDS,
  MODES,
  QUICK_ROWS,
  Task,
  arrays_task,
  load_task,
)

SETTINGS = "settings.json"
# Every option of a run, with its default: what settings.json holds and --resume restores.
# None means "the task's or the optimizer's default", resolved when the run starts.


RUN_DEFAULTS: dict[str, Any] = {
  "task": None,  # digits, unless --data names your arrays
  "data": None,
  "model": None,
  "width": None,
  "depth": None,
  "batch_size": None,
  "seed": 0,
  "optimizer": "alrao-sgd",
  "lr": None,
  "lr_min": None,
  "lr_max": None,
  "copies": None,
  "momentum": None,
  "weight_decay": 0.0,
  "clip": None,
  "schedule": "constant",
  "layer_schedule": "uniform",
  "retire_below": None,
  "retire_after": None,
  "retire_keep": None,
  "epochs": 10,
  "quick": False,
}


CHANGEABLE_ON_RESUME = ("epochs",)  # a resumed run may be given more epochs


def flag(name: str) -> str:
  return "--" + name.replace("_", "-")


def resolve(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
  """The options given on the command line, the defaults for the others."""
  return {n: RUN_DEFAULTS[n] if getattr(args, n, None) is None else getattr(args, n) for n in names}


def check_data_options(s: dict[str, Any]) -> None:
  arrays = s["data"] is not None and str(s["data"]).endswith(".npz")
  if arrays and s["task"] is not None:
    raise UsageError(
      f"--data {s['data']} trains on your arrays; --task {s['task']} names a bundled task. "
      "Pass one of them."
    )
  if not arrays:
    for name in ("model", "width", "depth"):
      if s.get(name) is not None:
        raise UsageError(f"{flag(name)} applies with --data FILE.npz (your arrays), not a task")
  if not arrays and s["task"] is None:
    s["task"] = "digits"
  if s["task"] == "cifar10" and s["data"] is None:
    raise UsageError("--task cifar10 needs --data PATH to the cifar-10-batches-py folder")
  if s["data"] is not None and not arrays and s["task"] not in FOLDER_TASKS:
    raise UsageError(
      f"--data is a folder for {', '.join(FOLDER_TASKS)}, or an .npz file; got {s['data']} "
      f"with --task {s['task']}"
    )
  if s.get("model") is not None and s["model"] not in MODEL_KINDS:
    raise UsageError(f"--model must be one of {', '.join(MODEL_KINDS)}, got {s['model']!r}")
  for name in ("width", "depth", "batch_size", "epochs"):
    if s.get(name) is not None and s[name] < 1:
      raise UsageError(f"{flag(name)} must be >= 1, got {s[name]}")
  if s.get("seed") is not None and not 0 <= s["seed"] < 2**32:
    raise UsageError(f"--seed must be in [0, 2**32), got {s['seed']}; e.g. 0")


def check_given_alrao_options(s: dict[str, Any]) -> None:
  """Each bound given is a positive finite rate; both given are in order (the task's defaults
  fill in a missing one later); copies given are >= 1."""
  if s["copies"] is not None and s["copies"] < 1:
    raise UsageError(f"--copies must be >= 1, got {s['copies']}")
  given = {n: s[n] for n in ("lr_min", "lr_max") if s[n] is not None}
  for name, value in given.items():
    check_bounds(value, value, names=(flag(name), flag(name)))
  if len(given) == 2:
    check_bounds(s["lr_min"], s["lr_max"], names=("--lr-min", "--lr-max"))


def check_retire_options(s: dict[str, Any]) -> None:
  """--retire-below in (0, 1) with an alrao-* optimizer; --retire-after and --retire-keep >= 1,
  with it."""
  below = s.get("retire_below")
  if below is None:
    for name in ("retire_after", "retire_keep"):
      if s.get(name) is not None:
        raise UsageError(f"{flag(name)} applies with --retire-below; pass both, or neither")
    return
  if s["optimizer"] not in ALRAO:
    raise UsageError(f"--retire-below retires Alrao's output copies; {s['optimizer']} has none")
  if not 0 < below < 1:
    raise UsageError(f"--retire-below must be in (0, 1), e.g. 1e-2, got {below}")
  for name in ("retire_after", "retire_keep"):
    if s.get(name) is not None and s[name] < 1:
      raise UsageError(f"{flag(name)} must be >= 1, got {s[name]}")


def check_optimizer_options(s: dict[str, Any]) -> None:
  alrao = s["optimizer"] in ALRAO
  if alrao and s["lr"] is not None:
    raise UsageError(
      f"--lr applies to the other optimizers; {s['optimizer']} takes --lr-min/--lr-max"
    )
  if not alrao and any(s[n] is not None for n in ("lr_min", "lr_max", "copies")):
    raise UsageError(
      f"--lr-min, --lr-max and --copies apply to alrao-* optimizers, not {s['optimizer']}; use --lr"
    )
  if s["lr"] is not None and not s["lr"] > 0:
    raise UsageError(f"--lr must be > 0, got {s['lr']}")
  check_given_alrao_options(s)
  check_retire_options(s)
  if s["momentum"] is not None and s["optimizer"] not in WITH_MOMENTUM:
    raise UsageError(f"--momentum applies to {' and '.join(WITH_MOMENTUM)}, not {s['optimizer']}")
  if s["momentum"] is not None and not 0 <= s["momentum"] < 1:
    raise UsageError(f"--momentum must be in [0, 1), got {s['momentum']}; e.g. 0.9")
  if not s["weight_decay"] >= 0:
    raise UsageError(f"--weight-decay must be >= 0, got {s['weight_decay']}; e.g. 5e-4")
  if s["clip"] is not None and not s["clip"] > 0:
    raise UsageError(f"--clip must be > 0 (the largest gradient norm), got {s['clip']}")


def load(s: dict[str, Any]) -> Task:
  """The task the options name; with ``quick``, its smoke size (see load_task)."""
  if s["data"] is not None and str(s["data"]).endswith(".npz"):
    model = {"model": s["model"] or "mlp"}
    model.update({n: s[n] for n in ("width", "depth") if s[n] is not None})
    task = arrays_task(s["data"], model=model, batch_size=s["batch_size"], seed=s["seed"])
  else:
    task = load_task(s["task"], data=s["data"], batch_size=s["batch_size"])
  return task.shrink(QUICK_ROWS) if s.get("quick") else task


def run_method(s: dict[str, Any], task: Task) -> Method:
  """The optimizer of a run; ``s``'s task-dependent defaults are filled in."""
  if s["optimizer"] in ALRAO:
    default_min, default_max = task.interval(s["optimizer"])
    s["lr_min"] = default_min if s["lr_min"] is None else s["lr_min"]
    s["lr_max"] = default_max if s["lr_max"] is None else s["lr_max"]
    s["copies"] = task.copies if s["copies"] is None else s["copies"]
    check_bounds(s["lr_min"], s["lr_max"], names=("--lr-min", "--lr-max"))
  steps = len(task.splits.train.inputs) // task.batch_size * s["epochs"]
  schedule = None if s["schedule"] == "constant" else schedule_multiplier(s["schedule"], steps)
  layers = None
  if s["layer_schedule"] != "uniform":
    copies = s["copies"] if s["optimizer"] in ALRAO else 1
    inputs = task.splits.train.inputs[: task.batch_size]
    depths = model_depths(task.build(copies), inputs, **MODES["eval_kwargs"])
    layers = layer_schedule(s["layer_schedule"], depths, steps)
  return make_method(
    s["optimizer"],
    lr=s["lr"],
    lr_min=s["lr_min"],
    lr_max=s["lr_max"],
    copies=s["copies"],
    seed=s["seed"],
    momentum=s["momentum"],
    weight_decay=s["weight_decay"],
    clip=s["clip"],
    schedule=schedule,
    layers=layers,
  )


def describe_run(s: dict[str, Any], task: Task, method: Method) -> str:
  if s["optimizer"] in ALRAO:
    what = f"{s['optimizer']}, rates in [{s['lr_min']:g}, {s['lr_max']:g}], {s['copies']} copies"
  else:
    what = f"{s['optimizer']} lr={method.copy_lrs[0]:g}"
  extras = [f"{n.replace('_', ' ')} {s[n]:g}" for n in ("momentum", "weight_decay", "clip") if s[n]]
  if s["schedule"] != "constant":
    extras.append(f"{s['schedule']} schedule")
  if s["layer_schedule"] != "uniform":
    extras.append(f"{s['layer_schedule']} layer schedule")
  return ", ".join([f"{task.name}: {what}", *extras])


def run_folder(args: argparse.Namespace) -> pathlib.Path:
  out = pathlib.Path(args.out)
  if out.exists() and not out.is_dir():
    raise UsageError(f"--out {out} is a file; name a folder for the run")
  return out


def refuse_to_overwrite(out: pathlib.Path, names: Sequence[str], what: str) -> None:
  """As train does: a folder that holds this command's results already is not written over."""
  if any((out / name).exists() for name in names):
    raise UsageError(f"{out} holds {what} already; pass another --out, or remove it first")


def parse_grid(text: str | None) -> list[float]:
  try:
    grid = [float(v) for v in (DEFAULT_GRID if text is None else text).split(",")]
  except ValueError as err:
    raise UsageError(f"--grid must be comma-separated numbers, got {text!r}") from err
  if not all(v > 0 for v in grid):
    raise UsageError(f"--grid rates must be > 0, got {text!r}")
  return grid


def rounded(value: Any) -> Any:
  """``value`` with its floats to 7 significant digits, float32's: no ``0.9700000286102295``."""
  if isinstance(value, float):
    return float(f"{value:.7g}")
  if isinstance(value, dict):
    return {k: rounded(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [rounded(v) for v in value]
  return value


LR_FIND_OPTIMIZERS: dict[str, Callable] = {"sgd": optax.sgd, "adam": optax.adam}

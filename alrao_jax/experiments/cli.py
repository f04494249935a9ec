"""The alrao-jax command: train, tune, lr-find, screen and sweep, on a bundled task or your arrays.

Every input is checked before any model is built; bad input (an unknown task or optimizer,
missing or malformed data, options that do not apply, bounds out of order, a corrupt or
mismatched run) gives one line on stderr and exit code 2. Ctrl-C stops with one line and
exit code 130, leaving a run that ``train --resume`` continues.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax

import alrao_jax
from alrao_jax import sharding, strict_json
from alrao_jax.checkpoint import checkpoint_meta
from alrao_jax.checks import check_bounds
from alrao_jax.experiments.compare import RunResult, select_lr, timed_fit
from alrao_jax.experiments.methods import (
  ALRAO,
  LAYER_SCHEDULES,
  METHODS,
  SCHEDULES,
  WITH_MOMENTUM,
  Method,
  layer_schedule,
  make_method,
  model_depths,
  schedule_multiplier,
)
from alrao_jax.experiments.plots import import_pyplot, plot_history, plot_lr_find
from alrao_jax.experiments.tasks import (
  BUILTIN_CONFIGS,
  MODEL_KINDS,
  MODES,
  TASKS,
  Task,
  arrays_task,
  load_configs,
  load_task,
  model_builder,
)
from alrao_jax.experiments.tune import task_lr_find, tune
from alrao_jax.loop import STOP_REASONS, FitResult, fit, test_metrics_of
from alrao_jax.screen import SGD_GRID, screen
from alrao_jax.suggest_lr import describe
from alrao_jax.sweep import SweepResult, sweep
from alrao_jax.tune import TOLERANCE

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
  "epochs": 10,
}
CHANGEABLE_ON_RESUME = ("epochs",)  # a resumed run may be given more epochs


class UsageError(Exception):
  """Bad input: reported on one line, exit code 2."""


class RunInterruptedError(Exception):
  """Ctrl-C during a run; the message says how to continue it."""


class RunDivergedError(Exception):
  """The training loss went non-finite: reported on one line, exit code 2."""


def _flag(name: str) -> str:
  return "--" + name.replace("_", "-")


def _resolve(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
  """The options given on the command line, the defaults for the others."""
  return {n: RUN_DEFAULTS[n] if getattr(args, n, None) is None else getattr(args, n) for n in names}


def _check_data_options(s: dict[str, Any]) -> None:
  arrays = s["data"] is not None and str(s["data"]).endswith(".npz")
  if arrays and s["task"] is not None:
    raise UsageError(
      f"--data {s['data']} trains on your arrays; --task {s['task']} names a bundled task. "
      "Pass one of them."
    )
  if not arrays:
    for name in ("model", "width", "depth"):
      if s.get(name) is not None:
        raise UsageError(f"{_flag(name)} applies with --data FILE.npz (your arrays), not a task")
  if not arrays and s["task"] is None:
    s["task"] = "digits"
  if s["task"] == "cifar10" and s["data"] is None:
    raise UsageError("--task cifar10 needs --data PATH to the cifar-10-batches-py folder")
  if s["data"] is not None and not arrays and s["task"] not in ("cifar10", "ptb-char"):
    raise UsageError(
      f"--data is a folder for cifar10 or ptb-char, or an .npz file; got {s['data']} "
      f"with --task {s['task']}"
    )
  if s.get("model") is not None and s["model"] not in MODEL_KINDS:
    raise UsageError(f"--model must be one of {', '.join(MODEL_KINDS)}, got {s['model']!r}")
  for name in ("width", "depth", "batch_size", "epochs"):
    if s.get(name) is not None and s[name] < 1:
      raise UsageError(f"{_flag(name)} must be >= 1, got {s[name]}")
  if s.get("seed") is not None and not 0 <= s["seed"] < 2**32:
    raise UsageError(f"--seed must be in [0, 2**32), got {s['seed']}; e.g. 0")


def _check_given_alrao_options(s: dict[str, Any]) -> None:
  """Each bound given is a positive finite rate; both given are in order (the task's defaults
  fill in a missing one later); copies given are >= 1."""
  if s["copies"] is not None and s["copies"] < 1:
    raise UsageError(f"--copies must be >= 1, got {s['copies']}")
  given = {n: s[n] for n in ("lr_min", "lr_max") if s[n] is not None}
  for name, value in given.items():
    check_bounds(value, value, names=(_flag(name), _flag(name)))
  if len(given) == 2:
    check_bounds(s["lr_min"], s["lr_max"], names=("--lr-min", "--lr-max"))


def _check_optimizer_options(s: dict[str, Any]) -> None:
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
  _check_given_alrao_options(s)
  if s["momentum"] is not None and s["optimizer"] not in WITH_MOMENTUM:
    raise UsageError(f"--momentum applies to {' and '.join(WITH_MOMENTUM)}, not {s['optimizer']}")
  if s["momentum"] is not None and not 0 <= s["momentum"] < 1:
    raise UsageError(f"--momentum must be in [0, 1), got {s['momentum']}; e.g. 0.9")
  if not s["weight_decay"] >= 0:
    raise UsageError(f"--weight-decay must be >= 0, got {s['weight_decay']}; e.g. 5e-4")
  if s["clip"] is not None and not s["clip"] > 0:
    raise UsageError(f"--clip must be > 0 (the largest gradient norm), got {s['clip']}")


def _load(s: dict[str, Any]) -> Task:
  if s["data"] is not None and str(s["data"]).endswith(".npz"):
    model = {"model": s["model"] or "mlp"}
    model.update({n: s[n] for n in ("width", "depth") if s[n] is not None})
    return arrays_task(s["data"], model=model, batch_size=s["batch_size"], seed=s["seed"])
  return load_task(s["task"], data=s["data"], batch_size=s["batch_size"])


def _method(s: dict[str, Any], task: Task) -> Method:
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


def _describe(s: dict[str, Any], task: Task, method: Method) -> str:
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


class _CtrlC:
  """SIGINT raises KeyboardInterrupt and is remembered: where Python drops the exception (a
  garbage-collection callback inside JAX), the flag stops the run at the end of the epoch,
  and the dropped exception's report is silenced."""

  def __init__(self) -> None:
    self.pressed = False

  def __enter__(self) -> _CtrlC:
    def handler(signum: int, frame: Any) -> None:
      self.pressed = True
      raise KeyboardInterrupt

    def unraisable(report: Any) -> None:
      if not issubclass(report.exc_type, KeyboardInterrupt):
        self.previous_hook(report)

    self.previous_handler = signal.signal(signal.SIGINT, handler)
    self.previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    return self

  def __exit__(self, *exc: Any) -> None:
    signal.signal(signal.SIGINT, self.previous_handler)
    sys.unraisablehook = self.previous_hook

  def check(self) -> None:
    if self.pressed:
      raise KeyboardInterrupt


class _Reporter:
  """Per epoch: metrics.jsonl (the whole history) and the progress bar; the PNG plots when
  drawing them costs at most a tenth of the time since they were last drawn, and at the end.

  Drawing the two figures takes about half a second: redrawn after every epoch, they were
  most of a short run's wall time (a 5-epoch digits run: 3.2 of 8.7 s).
  """

  PLOT_SHARE = 0.1  # the largest share of the wall time spent redrawing the figures

  def __init__(
    self, out: pathlib.Path, epochs: int, show: bool, method: Method, title: str, ctrl_c: _CtrlC
  ):
    self.out, self.epochs, self.show, self.method, self.title = out, epochs, show, method, title
    self.bar, self.epoch, self.ctrl_c = None, 0, ctrl_c
    self.history: list[dict[str, Any]] = []
    # the first epoch's compilation does not count: timed from the end of the first epoch
    self.plotted_epoch, self.plotted_at, self.plot_seconds = 0, None, 0.5
    from tqdm import tqdm  # both imported before Ctrl-C is handled (see import_pyplot)

    self.tqdm = tqdm
    import_pyplot()

  def __call__(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
    self.epoch, self.history = record["epoch"], list(history)
    (self.out / "metrics.jsonl").write_text("".join(strict_json.dumps(r) + "\n" for r in history))
    self.ctrl_c.check()  # the epoch is checkpointed and recorded: a good place to stop
    if self.bar is None:
      self.bar = self.tqdm(
        total=self.epochs,
        initial=record["epoch"] - 1,
        disable=not self.show,
        unit="epoch",
        file=sys.stderr,
        dynamic_ncols=True,
      )
    self.bar.set_postfix_str(_fields(record, self.method))
    self.bar.update(1)
    if self.plotted_at is None:
      self.plotted_at = time.perf_counter()
    elif time.perf_counter() - self.plotted_at >= self.plot_seconds / self.PLOT_SHARE:
      self.plot()

  def plot(self) -> None:
    """Draws curves.png and posterior.png from the history so far (nothing before epoch 1)."""
    if not self.history or self.plotted_epoch == self.epoch:
      return
    start = time.perf_counter()
    plot_history(self.history, self.out, self.method.copy_lrs, title=self.title)
    self.plotted_at = time.perf_counter()
    self.plotted_epoch, self.plot_seconds = self.epoch, self.plotted_at - start

  def close(self, result: FitResult | None = None) -> None:
    self.plot()
    if self.bar is None:
      return
    if result is not None and result.best_epoch:
      best = result.history[result.best_epoch - 1]
      line = f"best epoch {result.best_epoch}: {_fields(best, self.method)}"
      self.bar.set_postfix_str(line, refresh=False)
    self.bar.close()


def _fields(record: dict[str, Any], method: Method) -> str:
  fields = [f"train loss {record['train_loss']:.3f}", f"valid loss {record['valid_loss']:.3f}"]
  if "valid_accuracy" in record:
    fields.append(f"valid acc {record['valid_accuracy']:.3f}")
  if len(method.copy_lrs) > 1:
    fields.append(f"leading copy lr {method.copy_lrs[int(np.argmax(record['posterior']))]:.2g}")
  return ", ".join(fields)


def _run_folder(args: argparse.Namespace) -> pathlib.Path:
  out = pathlib.Path(args.out)
  if out.exists() and not out.is_dir():
    raise UsageError(f"--out {out} is a file; name a folder for the run")
  return out


def _train_settings(args: argparse.Namespace, out: pathlib.Path) -> tuple[dict[str, Any], bool]:
  """The run's settings and whether it continues a saved run."""
  saved_path = out / SETTINGS
  if not args.resume:
    if saved_path.exists() or (out / "metrics.jsonl").exists():
      raise UsageError(f"{out} holds a run already; pass --resume to continue it, or another --out")
    return _resolve(args, RUN_DEFAULTS), False
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
        f"{_flag(name)} {given} differs from this run's {saved[name]} ({saved_path}); "
        "drop it to continue the run, or start a new one in another --out"
      )
  if args.epochs is not None:
    saved["epochs"] = args.epochs
  return saved, True


def _mesh_axes(text: str) -> dict[str, int]:
  """``data=4,copies=2`` -> ``{"data": 4, "copies": 2}``."""
  axes = {}
  for part in text.split(","):
    name, _, size = part.partition("=")
    if not name.strip() or not size.strip().lstrip("-").isdigit():
      raise UsageError(f"--mesh takes NAME=SIZE,... such as data=4,copies=2; got {text!r}")
    if name.strip() in axes:
      raise UsageError(f"--mesh names the axis {name.strip()!r} twice")
    axes[name.strip()] = int(size)
  if sharding.DATA_AXIS not in axes:
    raise UsageError(f"--mesh needs a data axis for the batch, e.g. data=4,copies=2; got {text!r}")
  return axes


def _use_devices(count: int | None) -> None:
  """Simulates ``count`` CPU devices; JAX must not have started yet."""
  if count is None:
    return
  if count < 1:
    raise UsageError(f"--devices must be >= 1, got {count}")
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as err:  # JAX has started: its device count is fixed
    raise UsageError(
      "--devices must be set before JAX starts; run alrao-jax in a new process"
    ) from err
  jax.config.update("jax_platforms", "cpu")


def _mesh(args: argparse.Namespace, settings: dict[str, Any], task: Task):
  """The mesh of ``--mesh``, checked against the batch and the copies before any model is
  built; None without ``--mesh``."""
  if args.mesh is None:
    if args.devices is not None:
      raise UsageError("--devices simulates devices for --mesh; pass --mesh too, e.g. data=8")
    return None
  axes = _mesh_axes(args.mesh)
  try:
    mesh = sharding.make_mesh(axes)
  except (ValueError, TypeError) as err:
    raise UsageError(f"--mesh {args.mesh}: {err}") from err
  if task.batch_size % mesh.shape[sharding.DATA_AXIS]:
    raise UsageError(
      f"--batch-size {task.batch_size} does not divide over --mesh data="
      f"{mesh.shape[sharding.DATA_AXIS]}; use a multiple of it"
    )
  parts = mesh.shape.get(sharding.COPIES_AXIS, 1)
  copies = settings["copies"] or 1
  if copies % parts:
    raise UsageError(f"--copies {copies} does not divide over --mesh copies={parts}")
  return mesh


def _train(args: argparse.Namespace) -> FitResult:
  out = _run_folder(args)
  settings, resuming = _train_settings(args, out)
  _check_data_options(settings)
  _check_optimizer_options(settings)
  task = _load(settings)
  method = _method(settings, task)
  mesh = _mesh(args, settings, task)
  checkpoint = out / "checkpoint"
  if resuming and checkpoint.exists():
    checkpoint_meta(checkpoint)  # a corrupt run is refused before the model is built
  out.mkdir(parents=True, exist_ok=True)
  (out / SETTINGS).write_text(strict_json.dumps(settings, indent=1) + "\n")
  title = _describe(settings, task, method)
  ctrl_c = _CtrlC()
  reporter = _Reporter(out, settings["epochs"], not args.no_progress, method, title, ctrl_c)
  result = None
  try:
    with ctrl_c, warnings.catch_warnings():
      # said once the handler is in place: a Ctrl-C from here on ends with the resume hint
      compiling = "compiling the step (the first epoch includes it)"
      print(f"alrao-jax: {title}; {compiling}", file=sys.stderr)
      warnings.filterwarnings("ignore", "alrao_jax.fit: no epoch", RuntimeWarning)  # said below
      result = fit(
        task.build(len(method.copy_lrs)),
        method.optimizer,
        task.splits,
        epochs=settings["epochs"],
        seed=settings["seed"],
        batch_size=task.batch_size,
        **MODES,
        checkpoint_dir=checkpoint,
        resume=resuming and checkpoint.exists(),
        on_epoch=reporter,
        eval_params=method.eval_params,
        mesh=mesh,
        carry=task.carry,
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


def _screen(args: argparse.Namespace) -> None:
  s = _resolve(args, ("task", "data", "batch_size", "seed", "lr_min", "lr_max", "copies", "epochs"))
  s.update({"model": None, "width": None, "depth": None})
  _check_data_options(s)
  _check_given_alrao_options(s)
  grid = _grid(args.grid)
  arrays = s["data"] is not None and str(s["data"]).endswith(".npz")
  if args.configs is None and not (arrays or s["task"] == "digits"):
    raise UsageError("built-in configurations suit digits or --data FILE.npz; pass --configs FILE")
  configs = load_configs(args.configs) if args.configs else BUILTIN_CONFIGS
  out = _run_folder(args)
  task = _load(s)
  models = {name: model_builder(c, num_classes=task.num_classes) for name, c in configs.items()}
  _refuse_to_overwrite(out, ("screen.json",), "a screen")
  result = screen(
    models,
    task.splits,
    epochs=s["epochs"],
    lr_min=task.lr_min if s["lr_min"] is None else s["lr_min"],
    lr_max=task.lr_max if s["lr_max"] is None else s["lr_max"],
    num_copies=task.copies if s["copies"] is None else s["copies"],
    seed=s["seed"],
    verify=args.verify,
    sgd_grid=grid,
    fit_kwargs={"batch_size": task.batch_size, **MODES},
  )
  header = "rank | configuration | Alrao valid loss | Alrao test accuracy"
  print(header + (" | tuned SGD valid loss | best lr" if args.verify else ""))
  for rank, row in enumerate(result.rows, 1):
    line = (
      f"{rank} | {row['name']} | {row['alrao_valid_loss']:.4f} | {row['alrao_test_accuracy']:.3f}"
    )
    if args.verify:
      line += f" | {row['sgd_valid_loss']:.4f} | {row['sgd_best_lr']:g}"
    print(line)
  c = result.compute
  print(f"Alrao ranking: {c['alrao_runs']} runs, {c['alrao_seconds']:.1f} s")
  if args.verify:
    print(
      f"tuned SGD ranking: {c['sgd_runs']} runs, {c['sgd_seconds']:.1f} s; "
      f"Kendall tau between the rankings: {result.kendall_tau:.3f}"
    )
  summary = _rounded(
    {
      "rows": [{"rank": rank, **row} for rank, row in enumerate(result.rows, 1)],
      "compute": c,
      "kendall_tau": result.kendall_tau if args.verify else None,
    }
  )
  out.mkdir(parents=True, exist_ok=True)
  (out / "screen.json").write_text(strict_json.dumps(summary, indent=1) + "\n")
  print(strict_json.dumps(summary))


DEFAULT_GRID = ",".join(f"{v:g}" for v in SGD_GRID)  # the paper's seven rates, as --grid


def _grid(text: str | None) -> list[float]:
  try:
    grid = [float(v) for v in (DEFAULT_GRID if text is None else text).split(",")]
  except ValueError as err:
    raise UsageError(f"--grid must be comma-separated numbers, got {text!r}") from err
  if not all(v > 0 for v in grid):
    raise UsageError(f"--grid rates must be > 0, got {text!r}")
  return grid


TUNE_OPTIONS = (
  *("task", "data", "model", "width", "depth", "batch_size", "seed", "lr_min", "lr_max"),
  *("copies", "momentum", "weight_decay", "clip", "schedule", "layer_schedule", "epochs"),
)


def _run_summary(run: RunResult) -> dict[str, Any]:
  return {
    "best_epoch": run.best_epoch,
    **{f"test_{k}": v for k, v in run.test.items()},
    "seconds": round(run.seconds, 2),
  }


def _rounded(value: Any) -> Any:
  """``value`` with its floats to 7 significant digits, float32's: no ``0.9700000286102295``."""
  if isinstance(value, float):
    return float(f"{value:.7g}")
  if isinstance(value, dict):
    return {k: _rounded(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_rounded(v) for v in value]
  return value


def _refuse_to_overwrite(out: pathlib.Path, names: Sequence[str], what: str) -> None:
  """As train does: a folder that holds this command's results already is not written over."""
  if any((out / name).exists() for name in names):
    raise UsageError(f"{out} holds {what} already; pass another --out, or remove it first")


def _tune(args: argparse.Namespace) -> None:
  s = _resolve(args, TUNE_OPTIONS)
  plain = args.optimizer or "sgd"
  s.update({"optimizer": f"alrao-{plain}", "lr": None})
  _check_data_options(s)
  _check_optimizer_options(s)
  grid = _grid(args.grid) if args.verify else []
  if args.race_epochs is not None and args.race_epochs < 0:
    raise UsageError(f"--race-epochs must be >= 0 (0: no race), got {args.race_epochs}")
  if not 0.0 <= args.tolerance <= 1.0:
    raise UsageError(f"--tolerance must be in [0, 1], got {args.tolerance}")
  out = _run_folder(args)
  _refuse_to_overwrite(out, ("tune.json", "suggestion.txt"), "a tune run")
  task = _load(s)
  alrao = _method(s, task)  # fills in the task's interval and copies; checked before any run

  def make(name: str, **options: Any) -> Method:  # both runs take the command line's options
    if name == s["optimizer"]:
      return alrao
    alrao_only = {"lr_min": None, "lr_max": None, "copies": None}
    return _method({**s, **alrao_only, "optimizer": name, "lr": options["lr"]}, task)

  print(f"alrao-jax tune: {_describe(s, task, alrao)}", file=sys.stderr)
  result = tune(
    task,
    epochs=s["epochs"],
    seed=s["seed"],
    make=make,
    optimizer=plain,
    race_epochs=args.race_epochs,
    tolerance=args.tolerance,
  )
  out.mkdir(parents=True, exist_ok=True)
  text = describe(result.suggestion)
  if result.race is not None:
    text += "\n" + _race_table(result.race, result.race_seconds, result.lr)
  (out / "suggestion.txt").write_text(text + "\n")
  print(text, file=sys.stderr)
  summary: dict[str, Any] = {
    "lr": result.lr,
    "suggested_lr": result.suggestion.lr,
    "leading_copy_lr": result.suggestion.leading_lr,
    "confidence": result.suggestion.confidence,
    "alrao": _run_summary(result.alrao),
  }
  if (race := result.race) is not None:
    summary["race"] = {
      "epochs": result.race_epochs,
      "start_valid_loss": race.start_valid_loss,
      "valid_loss": {f"{v:.3g}": loss for v, loss in _pairs(race.values, race.valid_losses)},
      "tolerance": args.tolerance,
      "seconds": round(result.race_seconds, 2),
    }
  summary[plain] = _run_summary(result.sgd)
  if args.verify:
    runs = {
      lr: timed_fit(task, make(plain, lr=lr), seed=s["seed"], epochs=s["epochs"])[0] for lr in grid
    }
    best = select_lr({lr: [run] for lr, run in runs.items()})
    summary["verify"] = {
      "grid": {f"{lr:g}": _run_summary(run) for lr, run in runs.items()},
      "best_lr": best,
      "decades_from_best": float(np.log10(result.lr / best)),
      "suggestion_decades_from_best": float(np.log10(result.suggestion.lr / best)),
      "test_loss_over_best": result.sgd.test["loss"] / runs[best].test["loss"],
      "grid_seconds": round(sum(r.seconds for r in runs.values()), 2),
    }
  summary = _rounded(summary)
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


LR_FIND_OPTIMIZERS: dict[str, Callable] = {"sgd": optax.sgd, "adam": optax.adam}


def _sweep(args: argparse.Namespace) -> None:
  s = _resolve(args, ("task", "data", "model", "width", "depth", "batch_size", "seed", "epochs"))
  _check_data_options(s)
  grid = _grid(args.grid)
  if args.patience is not None and args.patience < 1:
    raise UsageError(f"--patience must be >= 1, got {args.patience}")
  out = _run_folder(args)
  _refuse_to_overwrite(out, ("sweep.json",), "a sweep")
  optimizer = args.optimizer or "sgd"
  task = _load(s)
  print(
    f"alrao-jax sweep: {task.name}, {optimizer} at {len(grid)} rates as one program, "
    f"{s['epochs']} epochs; compiling the step",
    file=sys.stderr,
  )
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
    **MODES,
  )
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
  summary = _rounded({"optimizer": optimizer, "best_lr": result.best_value, "runs": runs})
  out.mkdir(parents=True, exist_ok=True)
  (out / "sweep.json").write_text(strict_json.dumps(summary, indent=1) + "\n")
  print(strict_json.dumps(summary))


def _lr_find(args: argparse.Namespace) -> None:
  s = _resolve(args, ("task", "data", "model", "width", "depth", "batch_size", "seed"))
  _check_data_options(s)
  steps = 100 if args.steps is None else args.steps
  start_lr = 1e-7 if args.start_lr is None else args.start_lr
  end_lr = 10.0 if args.end_lr is None else args.end_lr
  if steps < 3:
    raise UsageError(f"--steps must be >= 3 (the ramp needs a curve), got {steps}; e.g. 100")
  check_bounds(start_lr, end_lr, names=("--start-lr", "--end-lr"))
  if not end_lr > start_lr:
    raise UsageError(f"--end-lr ({end_lr}) must be > --start-lr ({start_lr})")
  out = _run_folder(args)
  _refuse_to_overwrite(out, ("lr_find.png",), "a range test")
  optimizer = args.optimizer or "sgd"
  task = _load(s)
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


class _Parser(argparse.ArgumentParser):
  def error(self, message: str) -> None:  # one line, exit 2
    self.exit(2, f"{self.prog}: error: {message}\n")


def _data_options(sub: argparse.ArgumentParser, *, models: bool) -> None:
  sub.add_argument("--task", choices=TASKS, help="a bundled task (default: digits)")
  sub.add_argument(
    "--data",
    help="an .npz file of your arrays (x, y; optional x_valid, y_valid, x_test, y_test), "
    "or the data folder of cifar10 (required) or ptb-char (default: ../shared/data/ptb-char)",
  )
  if models:
    sub.add_argument(
      "--model", choices=tuple(MODEL_KINDS), help="for --data FILE.npz (default: mlp)"
    )
    sub.add_argument("--width", type=int, help="units (mlp) or channels (cnn) (default: 256 / 16)")
    sub.add_argument("--depth", type=int, help="hidden layers of the mlp (default: 2)")
  sub.add_argument("--batch-size", type=int, help="examples per step (default: 32; ptb-char 20)")
  sub.add_argument("--seed", type=int, help="seed of parameters, rates and shuffles (default: 0)")


def _alrao_options(sub: argparse.ArgumentParser) -> None:
  sub.add_argument(
    "--lr-min",
    type=float,
    help="Alrao's smallest rate (default: the task's, 1e-5 for alrao-sgd, 1e-6 for alrao-adam)",
  )
  sub.add_argument(
    "--lr-max",
    type=float,
    help="Alrao's largest rate (default: 10 for alrao-sgd, 1 for alrao-adam)",
  )
  sub.add_argument("--copies", type=int, help="Alrao's output copies (default: 10; ptb-char 6)")


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="alrao-jax", description=__doc__.split("\n\n")[0])
  parser.add_argument("--version", action="version", version=f"alrao-jax {alrao_jax.__version__}")
  commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  train = commands.add_parser(
    "train",
    help="train with one optimizer; writes metrics, plots and a resumable checkpoint",
    description="Train a bundled task or your arrays with one optimizer.",
  )
  finder = commands.add_parser(
    "lr-find",
    help="learning-rate range test; suggests Alrao's interval",
    description="Run the learning-rate range test on the model (training mode) and suggest "
    "rates and an interval for Alrao.",
  )
  screener = commands.add_parser(
    "screen",
    help="rank model configurations with one Alrao run each",
    description="Train each configuration once with Alrao-SGD and rank them by validation loss. "
    "The last line is JSON.",
  )
  tuner = commands.add_parser(
    "tune",
    help="one Alrao run, a short race of the rates it points to, then SGD (or Adam) at the pick",
    description="Train with Alrao-SGD (Alrao-Adam), read candidate rates for plain SGD (Adam) "
    "off the run (alrao_jax.suggest_lr), race them for --race-epochs epochs in one program "
    "(alrao_jax.sweep), keep the suggestion unless the race clearly beat it, and train SGD "
    "(Adam) at the rate picked. The last line is JSON.",
  )
  _data_options(train, models=True)
  _data_options(tuner, models=True)
  _data_options(finder, models=True)
  _data_options(screener, models=False)
  train.add_argument("--optimizer", choices=METHODS, help="(default: alrao-sgd)")
  train.add_argument(
    "--lr", type=float, help="rate of the other optimizers (default: sgd 0.1, adam 1e-3, others 1)"
  )
  _alrao_options(train)
  train.add_argument("--momentum", type=float, help="momentum of sgd and alrao-sgd (default: none)")
  train.add_argument(
    "--weight-decay", type=float, help="L2 on the kernels, added to the gradient (default: 0)"
  )
  train.add_argument("--clip", type=float, help="clip the gradient's global norm (default: none)")
  train.add_argument(
    "--schedule",
    choices=SCHEDULES,
    help="multiplier of every update over the run (default: constant)",
  )
  train.add_argument(
    "--layer-schedule",
    choices=LAYER_SCHEDULES,
    help="multiplier of each layer's rates from its depth and the step: discriminative "
    "(fastai, /2.6 per layer below the output), smith (early layers fast then slow, late "
    "layers slow then fast) or smith-reverse (default: uniform)",
  )
  train.add_argument("--epochs", type=int, help="(default: 10; with --resume: the new total)")
  train.add_argument("--out", default="runs/alrao", help="folder of the run (default: runs/alrao)")
  train.add_argument(
    "--resume", action="store_true", help="continue the run in --out with its saved settings"
  )
  train.add_argument("--no-progress", action="store_true", help="no progress bar")
  train.add_argument(
    "--mesh",
    help="train on several devices: mesh axes NAME=SIZE, data (the batch) and copies (the "
    "head's copies), e.g. data=4,copies=2 (default: one device)",
  )
  train.add_argument(
    "--devices", type=int, help="simulate this many CPU devices for --mesh (default: the real ones)"
  )
  _alrao_options(tuner)
  tuner.add_argument(
    "--optimizer",
    choices=("sgd", "adam"),
    help="the optimizer whose rate is tuned: Alrao-SGD suggests SGD's, Alrao-Adam Adam's "
    "(default: sgd)",
  )
  tuner.add_argument("--momentum", type=float, help="momentum of both runs (default: none)")
  tuner.add_argument("--weight-decay", type=float, help="L2 on the kernels (default: 0)")
  tuner.add_argument("--clip", type=float, help="clip the gradient's global norm (default: none)")
  tuner.add_argument("--schedule", choices=SCHEDULES, help="of both runs (default: constant)")
  tuner.add_argument(
    "--layer-schedule", choices=LAYER_SCHEDULES, help="of both runs (default: uniform)"
  )
  tuner.add_argument("--epochs", type=int, help="of each run (default: 10)")
  tuner.add_argument(
    "--race-epochs",
    type=int,
    help="epochs of the race of the candidate rates; 0: no race, SGD at the suggestion "
    "(default: --epochs over the number of racers, 1 or 2)",
  )
  tuner.add_argument(
    "--tolerance",
    type=float,
    default=TOLERANCE,
    help="the suggestion's racer is picked when its validation loss fell at least 1 - "
    f"TOLERANCE of the best racer's fall; 0: the race's best (default: {TOLERANCE})",
  )
  tuner.add_argument(
    "--out", default="runs/tune", help="folder of tune.json and suggestion.txt (default: runs/tune)"
  )
  tuner.add_argument(
    "--verify", action="store_true", help="also run the SGD grid and place the tuned rate in it"
  )
  tuner.add_argument("--grid", help=f"SGD rates for --verify (default: {DEFAULT_GRID})")
  finder.add_argument("--optimizer", choices=tuple(LR_FIND_OPTIMIZERS), help="(default: sgd)")
  finder.add_argument("--start-lr", type=float, help="(default: 1e-7)")
  finder.add_argument("--end-lr", type=float, help="(default: 10)")
  finder.add_argument("--steps", type=int, help="steps of the ramp, >= 3 (default: 100)")
  finder.add_argument(
    "--out", default="runs/lr-find", help="folder of lr_find.png (default: runs/lr-find)"
  )
  screener.add_argument("--configs", help="JSON or TOML file: name -> {model, width, depth}")
  _alrao_options(screener)
  screener.add_argument("--epochs", type=int, help="(default: 5)")
  screener.add_argument("--verify", action="store_true", help="also run the SGD grid per model")
  screener.add_argument("--grid", help=f"SGD rates for --verify (default: {DEFAULT_GRID})")
  screener.add_argument(
    "--out", default="runs/screen", help="folder of screen.json (default: runs/screen)"
  )
  sweeper = commands.add_parser(
    "sweep",
    help="plain SGD or Adam at a grid of rates, trained as one program",
    description="Train the model with plain SGD (or Adam) at every rate of a grid, all rates "
    "in one vmapped program (alrao_jax.sweep), each stopped on its own validation loss. The "
    "last line is JSON.",
  )
  _data_options(sweeper, models=True)
  sweeper.add_argument("--optimizer", choices=("sgd", "adam"), help="(default: sgd)")
  sweeper.add_argument("--grid", help=f"comma-separated rates (default: {DEFAULT_GRID})")
  sweeper.add_argument("--epochs", type=int, help="the most epochs of each rate (default: 10)")
  sweeper.add_argument(
    "--patience",
    type=int,
    help="stop a rate after this many epochs without a better validation loss (default: none)",
  )
  sweeper.add_argument(
    "--out", default="runs/sweep", help="folder of sweep.json (default: runs/sweep)"
  )
  return parser


def _use_compilation_cache() -> None:
  """JAX's persistent compilation cache, on by default for the command line: a run starts
  with what the previous runs compiled (a 5-epoch digits run: about half its wall time).
  ``JAX_COMPILATION_CACHE_DIR`` (or a cache set in JAX's config) is used as it is."""
  if not (os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir):
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    jax.config.update("jax_compilation_cache_dir", os.path.join(home, "alrao-jax", "xla"))
  # every program, not only those over JAX's default second of compile time: a run's many
  # small ones (state creation, evaluation) add up to most of its start-up
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the ``alrao-jax`` console script; returns the exit code."""
  args = _parser().parse_args(argv)
  _use_compilation_cache()
  if args.command == "screen" and args.epochs is None:
    args.epochs = 5
  try:
    if args.command == "train":
      _use_devices(args.devices)  # before anything starts JAX
    commands = {
      "train": _train,
      "tune": _tune,
      "lr-find": _lr_find,
      "screen": _screen,
      "sweep": _sweep,
    }
    commands[args.command](args)
  except (UsageError, OSError, ValueError, TypeError) as err:
    print(f"alrao-jax: error: {err}".splitlines()[0], file=sys.stderr)
    return 2
  except RunDivergedError as err:
    print(f"alrao-jax: {err}", file=sys.stderr)
    return 2
  except RunInterruptedError as err:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run is saved: a second Ctrl-C may not
    print(f"alrao-jax: {err}", file=sys.stderr)  # break the clean exit
    return 130
  except KeyboardInterrupt:
    print("alrao-jax: interrupted", file=sys.stderr)
    return 130
  except Exception as err:  # no check foresaw it: still one line, unless asked for the trace
    if os.environ.get("ALRAO_JAX_TRACEBACK"):
      raise
    message = f"alrao-jax: error: {type(err).__name__}: {err}".splitlines()[0]
    print(f"{message} (ALRAO_JAX_TRACEBACK=1 shows where)", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""L. Smith's question: should each layer's learning rate change over training?

Usage:
  python benchmarks/layer_schedules.py           # full run, writes
                                                 # benchmarks/results/layer_schedules.md,
                                                 # layer_schedules.json and two figures
  python benchmarks/layer_schedules.py --quick   # smoke test: tiny data, 2 epochs, 1 seed

On a bundled CNN (digits) and the tanh MLP (MNIST-1D), with plain SGD at lr 0.1 (the SGD
grid's best rate on both, benchmarks/results/quality.md) and with Alrao-SGD on the task's
interval, four layer-wise multipliers (``alrao_jax.scale_by_layer_schedule``): uniform (none),
discriminative (fastai: /2.6 per layer below the output), Smith's (first layer 1.5 and output
0.5 at the start, reversed linearly by the end) and its reverse. Every run trains all its
epochs; the test loss is read at the best validation epoch, and the training speed is the
epochs each run needs to reach the training loss that the uniform runs reach (mean over seeds)
after a quarter of the epochs.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import platform
import sys
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from alrao_jax import strict_json
from alrao_jax.experiments.compare import run_method, task_method
from alrao_jax.experiments.methods import (
  LAYER_SCHEDULES,
  layer_schedule,
  make_method,
  model_depths,
)
from alrao_jax.experiments.plots import plot_panels
from alrao_jax.experiments.tasks import MODES, Task, load_task
from alrao_jax.layer_schedule import discriminative_schedule, smith_schedule

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from header import command_line

SGD_LR = 0.1


class Setting(NamedTuple):
  task: str
  epochs: int
  seeds: int


FULL = (Setting("digits", 40, 3), Setting("mnist1d-mlp", 60, 3))
QUICK = (Setting("digits", 2, 1),)
QUICK_ROWS = 64


def run_task(task: Task, setting: Setting, log) -> dict[str, Any]:
  """Every optimizer x layer schedule x seed of one task."""
  steps = len(task.splits.train.inputs) // task.batch_size * setting.epochs
  results: dict[str, Any] = {}
  for optimizer in ("sgd", "alrao-sgd"):
    copies = task.copies if optimizer == "alrao-sgd" else 1
    x = task.splits.train.inputs[: task.batch_size]
    depths = model_depths(task.build(copies), x, **MODES["eval_kwargs"])
    for name in LAYER_SCHEDULES:
      runs = []
      for seed in range(setting.seeds):
        layers = layer_schedule(name, depths, steps)
        if optimizer == "sgd":
          method = make_method("sgd", lr=SGD_LR, layers=layers)
        else:
          method = task_method(task, "alrao-sgd", seed=seed, layers=layers)
        run = run_method(task, method, seed=seed, epochs=setting.epochs)
        runs.append(
          {
            "test_loss": run.test["loss"],
            "test_accuracy": run.test.get("accuracy", float("nan")),
            "best_epoch": run.best_epoch,
            "train_loss": [r["train_loss"] for r in run.history],
            "seconds": run.seconds,
          }
        )
        log(f"{task.name} {optimizer} {name} seed {seed}: test loss {run.test['loss']:.4f}")
      results[f"{optimizer}/{name}"] = runs
  return {"epochs": setting.epochs, "num_layers": depths.num_layers, "runs": results}


def _epochs_to(curve: list[float], target: float) -> int | None:
  for epoch, loss in enumerate(curve, 1):
    if np.isfinite(loss) and loss <= target:
      return epoch
  return None


def _target(result: dict[str, Any], optimizer: str) -> float:
  uniform = np.array([r["train_loss"] for r in result["runs"][f"{optimizer}/uniform"]])
  return float(np.mean(uniform[:, max(result["epochs"] // 4, 1) - 1]))


def report(results: dict[str, Any], header: list[str]) -> list[str]:
  lines = [
    *header,
    "| task | optimizer | layer schedule | test loss (nats) | test loss / uniform | test "
    "accuracy (%) | epochs to the target training loss | target |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for task, result in results.items():
    for optimizer in ("sgd", "alrao-sgd"):
      target = _target(result, optimizer)
      uniform = np.mean([r["test_loss"] for r in result["runs"][f"{optimizer}/uniform"]])
      for name in LAYER_SCHEDULES:
        runs = result["runs"][f"{optimizer}/{name}"]
        loss = np.array([r["test_loss"] for r in runs])
        accuracy = 100 * np.array([r["test_accuracy"] for r in runs])
        reached = [_epochs_to(r["train_loss"], target) for r in runs]
        speed = (
          f"{np.mean(reached):.1f}"
          if all(e is not None for e in reached)
          else f"{sum(e is not None for e in reached)} of {len(runs)} reach it"
        )
        label = f"SGD lr {SGD_LR:g}" if optimizer == "sgd" else "Alrao-SGD"
        lines.append(
          f"| {task} | {label} | {name} | {loss.mean():.4f} ± {loss.std():.4f} | "
          f"{loss.mean() / uniform:.3f} | {accuracy.mean():.1f} | {speed} | {target:.4f} |"
        )
  lines += ["", *findings(results)]
  lines += [
    "",
    "![multipliers](layer_schedules_multipliers.png)",
    "![training loss](layer_schedules_training.png)",
    "",
  ]
  return lines


def findings(results: dict[str, Any]) -> list[str]:
  """What the table shows, in words computed from the same numbers: a schedule counts as
  better or worse when its mean test loss is more than the uniform runs' standard deviation
  away from theirs, and as faster when it reaches the target in fewer epochs on every seed."""
  lines = ["## What it shows", ""]
  for task, result in results.items():
    for optimizer in ("sgd", "alrao-sgd"):
      uniform = np.array([r["test_loss"] for r in result["runs"][f"{optimizer}/uniform"]])
      target = _target(result, optimizer)
      base = [_epochs_to(r["train_loss"], target) for r in result["runs"][f"{optimizer}/uniform"]]
      better, worse, faster = [], [], []
      for name in LAYER_SCHEDULES[1:]:
        runs = result["runs"][f"{optimizer}/{name}"]
        loss = np.mean([r["test_loss"] for r in runs])
        if loss < uniform.mean() - uniform.std():
          better.append(name)
        elif loss > uniform.mean() + uniform.std():
          worse.append(name)
        reached = [_epochs_to(r["train_loss"], target) for r in runs]
        if all(
          e is not None and b is not None and e < b for e, b in zip(reached, base, strict=True)
        ):
          faster.append(name)
      label = "SGD" if optimizer == "sgd" else "Alrao-SGD"
      lines.append(
        f"- {task}, {label}: better than uniform beyond the seeds' spread: "
        f"{', '.join(better) or 'none'}; worse: {', '.join(worse) or 'none'}; faster to the "
        f"target on every seed: {', '.join(faster) or 'none'}."
      )
  return lines


def plot_multipliers(num_layers: int, out: pathlib.Path) -> None:
  """Each layer's multiplier over training, for a model of ``num_layers`` layers."""
  progress = np.linspace(0.0, 1.0, 101)
  steps = 1000
  panels = {}
  for name in ("discriminative", "smith", "smith-reverse"):
    if name == "discriminative":
      multiplier = discriminative_schedule(num_layers)
    else:
      multiplier = smith_schedule(steps, reverse=name == "smith-reverse")
    panels[f"{name} ({num_layers} layers)"] = {
      f"layer {i + 1}" + (" (output)" if i == num_layers - 1 else ""): (
        progress,
        [float(multiplier(i / max(num_layers - 1, 1), int(p * steps))) for p in progress],
      )
      for i in range(num_layers)
    }
  plot_panels(panels, out, xlabel="fraction of training", ylabel="rate multiplier")


def plot_training(results: dict[str, Any], out: pathlib.Path) -> None:
  panels = {}
  for task, result in results.items():
    for optimizer in ("sgd", "alrao-sgd"):
      epochs = np.arange(1, result["epochs"] + 1)
      panels[f"{task}, {'SGD' if optimizer == 'sgd' else 'Alrao-SGD'}"] = {
        name: (epochs, np.mean([r["train_loss"] for r in result["runs"][f"{optimizer}/{name}"]], 0))
        for name in LAYER_SCHEDULES
      }
  plot_panels(panels, out, xlabel="epoch", ylabel="training loss (mean over seeds)", log_y=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="smoke test: tiny, fast")
  parser.add_argument("--out", default="benchmarks/results", help="folder of the results")
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()

  def log(line: str) -> None:
    print(f"[{time.perf_counter() - start:6.0f} s] {line}", file=sys.stderr, flush=True)

  results = {}
  for setting in QUICK if args.quick else FULL:
    task = load_task(setting.task)
    results[setting.task] = run_task(task.shrink(QUICK_ROWS) if args.quick else task, setting, log)
  (out / "layer_schedules.json").write_text(strict_json.dumps(results) + "\n")
  plot_multipliers(
    next(iter(results.values()))["num_layers"], out / "layer_schedules_multipliers.png"
  )
  plot_training(results, out / "layer_schedules_training.png")
  command = command_line("layer_schedules.py", parser, args)
  header = [
    "# Layer-wise learning-rate schedules (L. Smith's question)",
    "",
    f"Command: `{command}` (this file, layer_schedules.json and the two figures). "
    f"{(time.perf_counter() - start) / 60:.1f} min on {jax.default_backend()}, "
    f"{platform.machine()}, jax {jax.__version__}; {datetime.date.today()}. "
    + ", ".join(
      f"{t}: {r['epochs']} epochs, {len(next(iter(r['runs'].values())))} seeds, "
      f"{r['num_layers']} layers"
      for t, r in results.items()
    )
    + ". The target training loss is the uniform runs' mean at a quarter of the epochs.",
    "",
  ]
  (out / "layer_schedules.md").write_text("\n".join(report(results, header)) + "\n")
  print(f"wrote {out / 'layer_schedules.md'}")


if __name__ == "__main__":
  main()

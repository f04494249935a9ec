"""A grid of learning rates as one vmapped program, against the same grid run after run, and
against one Alrao run: wall time, time to the first epoch (compilation included), the states'
bytes, and the quality each reaches.

Usage:
  python benchmarks/sweep.py            # writes benchmarks/results/sweep.md
  python benchmarks/sweep.py --quick    # one round, 2 epochs, no file

On the bundled task (digits, its BatchNorm CNN), SGD at the paper's grid of 7 rates (1e-5 ...
10): ``sweep`` trains the 7 members in one program (``alrao_jax.sweep``); ``one by one`` runs
``alrao_jax.fit`` 7 times; ``Alrao`` is one Alrao-SGD run over the task's interval. The three
interleave round by round; wall times are medians over rounds. The members of the sweep are
checked against the runs one by one (the largest difference of their validation losses).
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import statistics
import sys
import time
import warnings

import jax
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from header import command_line, machine

import alrao_jax
from alrao_jax.experiments.tasks import MODES, load_task
from alrao_jax.screen import SGD_GRID

RESULTS = pathlib.Path(__file__).parent / "results" / "sweep.md"


def _nbytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree) if hasattr(x, "nbytes"))


class _Clock:
  """Seconds from the start to each epoch's end, by ``on_epoch``."""

  def __init__(self) -> None:
    self.start, self.ends = time.perf_counter(), []

  def __call__(self, *_) -> None:
    self.ends.append(time.perf_counter() - self.start)


def _sweep(task, epochs):
  clock = _Clock()
  result = alrao_jax.sweep(
    task.build(None),
    optax.sgd,
    task.splits,
    values=SGD_GRID,
    epochs=epochs,
    batch_size=task.batch_size,
    on_epoch=clock,
    **MODES,
  )
  best = result.best_index
  return {
    "seconds": time.perf_counter() - clock.start,
    "first_epoch": clock.ends[0],
    "bytes": _nbytes(result.states),
    "valid_loss": float(result.valid_losses[best]),
    "test_accuracy": result.test[best]["accuracy"],
    "lr": result.best_value,
    "valid_losses": result.valid_losses,
  }


def _one_by_one(task, epochs):
  start, firsts, results = time.perf_counter(), [], []
  for lr in SGD_GRID:
    clock = _Clock()
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", "alrao_jax.fit: no epoch", RuntimeWarning)
      results.append(
        alrao_jax.fit(
          task.build(None),
          optax.sgd(lr),
          task.splits,
          epochs=epochs,
          batch_size=task.batch_size,
          on_epoch=clock,
          **MODES,
        )
      )
    firsts.append(clock.ends[0])
  losses = np.array([min((r["valid_loss"] for r in x.history), default=np.inf) for x in results])
  losses = np.where(np.isfinite(losses), losses, np.inf)
  best = int(np.argmin(losses))
  return {
    "seconds": time.perf_counter() - start,
    "first_epoch": firsts[0],
    "bytes": _nbytes(results[0].state),
    "valid_loss": float(losses[best]),
    "test_accuracy": results[best].test["accuracy"],
    "lr": SGD_GRID[best],
    "valid_losses": losses,
  }


def _alrao(task, epochs):
  clock = _Clock()
  tx = alrao_jax.alrao_sgd(task.lr_min, task.lr_max, key=jax.random.key(1))
  result = alrao_jax.fit(
    task.build(task.copies),
    tx,
    task.splits,
    epochs=epochs,
    batch_size=task.batch_size,
    on_epoch=clock,
    **MODES,
  )
  record = result.history[result.best_epoch - 1]
  return {
    "seconds": time.perf_counter() - clock.start,
    "first_epoch": clock.ends[0],
    "bytes": _nbytes(result.state),
    "valid_loss": float(record["valid_loss"]),
    "test_accuracy": result.test["accuracy"],
    "lr": float("nan"),
  }


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="one round, 2 epochs, no file")
  args = parser.parse_args(argv)
  epochs, rounds = (2, 1) if args.quick else (15, 3)
  task = load_task("digits")
  runs = {
    "sweep (one program)": _sweep,
    "one by one (7 fits)": _one_by_one,
    "Alrao (one fit)": _alrao,
  }
  found: dict[str, list[dict]] = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      found[name].append(run(task, epochs))
  sweep, alone = found["sweep (one program)"][0], found["one by one (7 fits)"][0]
  lines = [
    "# A grid of learning rates as one program",
    "",
    f"Command: `{command_line('sweep.py', parser, args)}`  ",
    f"Machine: {machine()}  ",
    f"Date: {datetime.date.today()}",
    "",
    f"digits (BatchNorm CNN), SGD at {len(SGD_GRID)} rates (1e-5 ... 10), {epochs} epochs, "
    f"batch {task.batch_size}; medians over {rounds} interleaved rounds. First epoch: seconds "
    "from the start to the end of the first epoch (compilation included; one by one: the "
    "first of the 7 fits). State bytes: parameters, optimizer and model state kept at the "
    "best epoch (the sweep's: all 7 members).",
    "",
    "| run | wall seconds (median) | per round | first epoch (s) | state bytes | best lr | "
    "best valid loss | its test accuracy |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for name, values in found.items():
    seconds = [v["seconds"] for v in values]
    first = values[0]
    lines.append(
      f"| {name} | {statistics.median(seconds):.1f} | {', '.join(f'{s:.1f}' for s in seconds)}"
      f" | {statistics.median(v['first_epoch'] for v in values):.1f} | {first['bytes']:,} | "
      f"{first['lr']:.2g} | {first['valid_loss']:.4f} | {first['test_accuracy']:.3f} |"
    )
  medians = {
    name: statistics.median(v["seconds"] for v in values) for name, values in found.items()
  }
  to_alrao = medians["sweep (one program)"] / medians["Alrao (one fit)"]
  to_alone = medians["sweep (one program)"] / medians["one by one (7 fits)"]
  lines += [
    "",
    f"The sweep takes {to_alrao:.2f}x one Alrao run's wall time and {to_alone:.2f}x the 7 runs "
    "one by one.",
    "",
    "Each member against its run one by one (best validation loss, first round; a member is "
    "the fit at its rate up to float rounding, which a rate at the edge of divergence "
    "amplifies):",
    "",
    "| lr | sweep member | fit one by one |",
    "|---|---|---|",
    *(
      f"| {lr:.0e} | {a:.4f} | {b:.4f} |"
      for lr, a, b in zip(SGD_GRID, sweep["valid_losses"], alone["valid_losses"], strict=True)
    ),
  ]
  report = "\n".join(lines) + "\n"
  print(report)
  if not args.quick:
    RESULTS.write_text(report)
  return report


if __name__ == "__main__":
  main()

"""One Alrao run without an interval either: the default interval against intervals read off a
range test, on a recurrent network (the recurrent gap of issue 25).

Usage:
  python benchmarks/one_run.py           # full run, writes benchmarks/results/one_run.md
  python benchmarks/one_run.py --quick   # smoke test: tiny data, 2 epochs, 1 seed

Network: a GRU (64 units) reading MNIST-1D as a 40-step sequence, its last state classified
(10 classes). Per seed: tuned SGD (a grid of rates a decade apart, trained as one program by
``alrao_jax.sweep``, the rate of best validation loss kept), and one Alrao-SGD run (10 copies)
per interval:

- ``default``: [1e-5, 10], the interval the bundled tasks use;
- ``range test``: ``lr_find``'s ``alrao_interval``, ``(lr_top / 1e4, lr_top)`` with ``lr_top``
  the rate of the lowest smoothed loss (100 steps of SGD on the plain network, the noisy start
  skipped);
- ``centred``: four decades centred on the range test's ``valley``, ``(valley / 100,
  valley * 100)``;
- ``below the top``: the four decades below the largest rate the range test reached, where its
  loss blew up or, if it never did, ``end_lr`` (10): defined even when the curve is flat.

Every run keeps its best validation epoch (early stopping, patience 10). Test loss / tuned
SGD's with the same seed; the interval's choice costs one range test (seconds in the table).
Data: MNIST-1D is generated locally by the ``mnist1d`` package.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from header import command_line, ran_on

import alrao_jax
from alrao_jax.experiments.data import load_mnist1d
from alrao_jax.lr_find import range_test_batches

PATIENCE = 10
COPIES = 10
DEFAULT = (1e-5, 10.0)
GRID = (1e-3, 1e-2, 0.1, 1.0, 10.0)
RANGE_STEPS = 100


class GRUClassifier(nn.Module):
  """A GRU over the sequence, its last state into the output layer (Alrao's copies or one)."""

  num_copies: int | None = COPIES
  width: int = 64

  @nn.compact
  def __call__(self, x):
    h = nn.RNN(nn.GRUCell(self.width))(x)[:, -1]
    if self.num_copies is None:
      return nn.Dense(10)(h)
    return alrao_jax.AlraoHead(10, num_copies=self.num_copies)(h)


def intervals(splits: alrao_jax.Splits, seed: int) -> tuple[dict[str, Any], float, tuple[str, ...]]:
  """The candidate intervals, the range test's seconds, and its notes."""
  model = GRUClassifier(num_copies=None)
  params = model.init(jax.random.key(seed), splits.train.inputs[:32])
  batches = range_test_batches(splits.train, batch_size=32, num_steps=RANGE_STEPS, seed=seed)
  start = time.perf_counter()
  found = alrao_jax.lr_find(model, params, batches, num_steps=RANGE_STEPS)
  seconds = time.perf_counter() - start
  valley = found.suggestions["valley"]
  top = float(found.learning_rates[-1])  # where the loss blew up, or the last rate tested
  chosen = {
    "default": DEFAULT,
    "range test": found.alrao_interval,
    "centred": (valley / 100, valley * 100),
    "below the top": (top / 1e4, top),
  }
  return chosen, seconds, found.notes


def run_seed(splits: alrao_jax.Splits, seed: int, epochs: int, log) -> dict[str, Any]:
  """Tuned SGD and one Alrao run per interval, for one seed."""
  fit = {"epochs": epochs, "seed": seed, "batch_size": 32, "patience": PATIENCE}
  grid = alrao_jax.sweep(GRUClassifier(num_copies=None), optax.sgd, splits, values=GRID, **fit)
  row: dict[str, Any] = {
    "tuned_lr": grid.best_value,
    "tuned_loss": grid.test[grid.best_index]["loss"],
  }
  log(f"seed {seed}: tuned SGD {row['tuned_lr']:g}: {row['tuned_loss']:.4f}")
  chosen, row["range_test_seconds"], notes = intervals(splits, seed)
  row["notes"] = list(notes)
  for name, (low, high) in chosen.items():
    if not (np.isfinite(low) and np.isfinite(high)):
      row[name] = {"interval": [low, high], "loss": float("nan"), "seconds": 0.0}
      log(f"seed {seed}: no {name} interval: {' '.join(notes)}")
      continue
    tx = alrao_jax.alrao_sgd(low, high, key=jax.random.key(seed + 1))
    start = time.perf_counter()
    result = alrao_jax.fit(GRUClassifier(), tx, splits, **fit)
    row[name] = {
      "interval": [low, high],
      "loss": result.test["loss"],
      "accuracy": result.test["accuracy"],
      "seconds": time.perf_counter() - start,
    }
    log(f"seed {seed}: Alrao {name} [{low:.2g}, {high:.2g}]: {result.test['loss']:.4f}")
  return row


def report(rows: list[dict[str, Any]], header: list[str]) -> list[str]:
  names = ("default", "range test", "centred", "below the top")
  lines = [
    *header,
    "| seed | tuned SGD (lr) | "
    + " | ".join(f"Alrao, {n} interval | / tuned SGD" for n in names)
    + " | range test (s) |",
    "|---|---|" + "---|---|" * len(names) + "---|",
  ]
  for seed, row in enumerate(rows):
    cells = []
    for name in names:
      low, high = row[name]["interval"]
      cells.append(
        f"[{low:.2g}, {high:.2g}]: {row[name]['loss']:.4f} | "
        f"{row[name]['loss'] / row['tuned_loss']:.3f}"
      )
    lines.append(
      f"| {seed} | {row['tuned_loss']:.4f} ({row['tuned_lr']:g}) | "
      + " | ".join(cells)
      + f" | {row['range_test_seconds']:.1f} |"
    )
  means = {n: float(np.mean([r[n]["loss"] / r["tuned_loss"] for r in rows])) for n in names}
  found = {n: v for n, v in means.items() if not np.isnan(v)}  # a diverged run (inf) counts
  best = min(found, key=found.get)
  lines += [
    "",
    "Mean over seeds of Alrao / tuned SGD: "
    + ", ".join(f"{n} interval {v:.3f}" for n, v in found.items())
    + f". Closest to tuned SGD: the {best} interval."
    + "".join(
      f" No {n} interval (nan): on every seed the range test said nothing."
      for n in names
      if n not in found
    ),
    "",
    "The range test's notes, per seed:",
    "",
    *(f"- seed {i}: {' '.join(r['notes']) or 'none'}" for i, r in enumerate(rows)),
    "",
  ]
  return lines


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="smoke test: tiny, fast")
  parser.add_argument("--out", default="benchmarks/results", help="folder of the results")
  args = parser.parse_args(argv)
  epochs, seeds = (2, 1) if args.quick else (30, 2)
  splits = load_mnist1d()
  if args.quick:
    splits = alrao_jax.Splits(*(alrao_jax.Split(s.inputs[:256], s.targets[:256]) for s in splits))
  start = time.perf_counter()

  def log(line: str) -> None:
    print(f"[{time.perf_counter() - start:6.0f} s] {line}", file=sys.stderr, flush=True)

  rows = [run_seed(splits, seed, epochs, log) for seed in range(seeds)]
  command = command_line("one_run.py", parser, args)
  header = [
    "# One Alrao run on a GRU: the default interval against intervals from a range test",
    "",
    f"Command: `{command}`. {ran_on((time.perf_counter() - start) / 60)}. GRU (64 units) on "
    "MNIST-1D as a 40-step "
    f"sequence, {epochs} epochs, early stopping with patience {PATIENCE}, {COPIES} copies; "
    "tuned SGD: the grid " + ", ".join(f"{v:g}" for v in GRID) + " (one sweep). Test loss "
    "(nats); each Alrao run over tuned SGD with the same seed.",
    "",
  ]
  text = "\n".join(report(rows, header))
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "one_run.md").write_text(text)
  print(text)
  return text


if __name__ == "__main__":
  main()

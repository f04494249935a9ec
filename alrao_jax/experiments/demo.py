"""The main demo: Alrao-SGD on scikit-learn's digits, next to tuned SGD and default Adam.

Run ``python -m alrao_jax.experiments.demo`` (or ``make demo``); ``--quick`` is the reduced
mode CI runs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import jax
import optax

from alrao_jax.experiments.data import load_digits
from alrao_jax.experiments.models import DigitsCNN
from alrao_jax.loop import fit
from alrao_jax.transform import alrao_sgd

LR_MIN, LR_MAX, NUM_COPIES = 1e-5, 10.0, 10


def run(*, epochs: int, seed: int = 0) -> list[dict]:
  """Trains the three methods and returns one row of results each.

  Args:
    epochs: training epochs per method (early stopping keeps the best validation epoch).
    seed: seed of the data split, the parameters, the shuffles and the rates.

  Returns:
    Rows with ``method``, ``test_loss``, ``test_accuracy``, ``best_epoch``, ``seconds``
    and, for Alrao, ``posterior`` (at the best epoch, the one kept and tested).
  """
  splits = load_digits(seed=seed)
  methods = [
    (
      f"Alrao-SGD [{LR_MIN:g}, {LR_MAX:g}], {NUM_COPIES} copies",
      NUM_COPIES,
      alrao_sgd(LR_MIN, LR_MAX, key=jax.random.key(seed + 1)),
    ),
    ("SGD lr=0.1", 1, optax.sgd(0.1)),
    ("Adam lr=1e-3", 1, optax.adam(1e-3)),
  ]
  rows = []
  for name, copies, optimizer in methods:
    start = time.perf_counter()
    result = fit(
      DigitsCNN(num_copies=copies),
      optimizer,
      splits,
      epochs=epochs,
      seed=seed,
      train_kwargs={"train": True},
      eval_kwargs={"train": False},
    )
    row = {
      "method": name,
      "test_loss": result.test["loss"],
      "test_accuracy": result.test["accuracy"],
      "best_epoch": result.best_epoch,
      "seconds": time.perf_counter() - start,
    }
    if copies > 1:
      row["posterior"] = result.history[result.best_epoch - 1]["posterior"]
    rows.append(row)
  return rows


def format_table(rows: list[dict]) -> str:
  """A Markdown table of :func:`run`'s rows."""
  lines = ["| method | test loss | test accuracy | best epoch | seconds |", "|---|---|---|---|---|"]
  lines += [
    f"| {r['method']} | {r['test_loss']:.3f} | {100 * r['test_accuracy']:.1f}% | "
    f"{r['best_epoch']} | {r['seconds']:.1f} |"
    for r in rows
  ]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  """Command-line entry point of the demo."""
  parser = argparse.ArgumentParser(prog="python -m alrao_jax.experiments.demo", description=__doc__)
  parser.add_argument("--epochs", type=int, default=30, help="epochs per method (default 30)")
  parser.add_argument("--quick", action="store_true", help="3 epochs: the CI smoke test")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  epochs = 3 if args.quick else args.epochs
  if epochs < 1:
    parser.error("--epochs must be >= 1")
  print(
    f"digits (scikit-learn), small BatchNorm CNN, batch 32, {epochs} epochs, "
    "early stopping on a 300-image validation split, 300 test images"
  )
  rows = run(epochs=epochs, seed=args.seed)
  print(format_table(rows))
  for row in rows:
    if "posterior" in row:
      print(
        "Alrao switch posterior over the copies at the kept epoch (lr from 1e-5 to 10):",
        " ".join(f"{p:.2f}" for p in row["posterior"]),
      )
  return rows


if __name__ == "__main__":
  main()

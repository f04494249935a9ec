"""The main demo: Alrao-SGD on scikit-learn's digits, next to tuned SGD and default Adam.

Run ``python -m alrao_jax.experiments.demo`` (or ``make demo``): three seeds of each method,
reported as mean ± standard deviation, so that the comparison does not hang on one run's
float rounding (which differs between processors); ``--quick`` is a 3-epoch, 1-seed smoke
test.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import jax
import numpy as np
import optax

from alrao_jax.experiments.data import load_digits
from alrao_jax.experiments.models import DigitsCNN
from alrao_jax.loop import fit
from alrao_jax.rates import copy_rates
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


def summarise(runs: list[list[dict]]) -> list[dict]:
  """One row per method over seeds: means and sample standard deviations.

  Args:
    runs: :func:`run`'s rows, one list per seed.

  Returns:
    Rows with ``method``, ``test_loss`` and ``test_accuracy`` (lists over seeds),
    ``loss_mean``, ``loss_sd``, ``accuracy_mean``, ``accuracy_sd``, ``best_epochs`` and
    ``seconds`` (the mean per run), and for Alrao ``leading_lrs`` (the rate of the copy with
    the largest posterior at the kept epoch, per seed).
  """
  rows = []
  for i, first in enumerate(runs[0]):
    per_seed = [seed_rows[i] for seed_rows in runs]
    loss = np.array([r["test_loss"] for r in per_seed])
    accuracy = np.array([r["test_accuracy"] for r in per_seed])
    row = {
      "method": first["method"],
      "test_loss": loss.tolist(),
      "test_accuracy": accuracy.tolist(),
      "loss_mean": float(loss.mean()),
      "loss_sd": float(loss.std(ddof=1)) if len(loss) > 1 else 0.0,
      "accuracy_mean": float(accuracy.mean()),
      "accuracy_sd": float(accuracy.std(ddof=1)) if len(accuracy) > 1 else 0.0,
      "best_epochs": [r["best_epoch"] for r in per_seed],
      "seconds": float(np.mean([r["seconds"] for r in per_seed])),
    }
    if "posterior" in first:
      lrs = np.asarray(copy_rates(NUM_COPIES, LR_MIN, LR_MAX))
      row["leading_lrs"] = [float(lrs[int(np.argmax(r["posterior"]))]) for r in per_seed]
    rows.append(row)
  return rows


def format_table(rows: list[dict]) -> str:
  """A Markdown table of :func:`summarise`'s rows: mean ± standard deviation over seeds."""
  lines = [
    "| method | test loss | test accuracy | best epochs | seconds per run |",
    "|---|---|---|---|---|",
  ]
  lines += [
    f"| {r['method']} | {r['loss_mean']:.3f} ± {r['loss_sd']:.3f} | "
    f"{100 * r['accuracy_mean']:.1f}% ± {100 * r['accuracy_sd']:.1f} | "
    f"{', '.join(map(str, r['best_epochs']))} | {r['seconds']:.1f} |"
    for r in rows
  ]
  return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
  """The comparison the README draws from the table, computed from it.

  Alrao (the first row) against each peer: the difference of mean test accuracy, in
  points, and the ratio of mean test losses, with the ratio seed by seed.
  """
  alrao, *peers = rows
  parts = []
  for peer in peers:
    ratios = [a / b for a, b in zip(alrao["test_loss"], peer["test_loss"], strict=True)]
    gap = 100 * (alrao["accuracy_mean"] - peer["accuracy_mean"])
    parts.append(
      f"against {peer['method']}: accuracy {gap:+.1f} points, test loss "
      f"x{alrao['loss_mean'] / peer['loss_mean']:.2f} (per seed "
      f"{', '.join(f'{r:.2f}' for r in ratios)})"
    )
  return "Alrao " + "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  """Command-line entry point of the demo; returns :func:`summarise`'s rows."""
  parser = argparse.ArgumentParser(prog="python -m alrao_jax.experiments.demo", description=__doc__)
  parser.add_argument("--epochs", type=int, default=30, help="epochs per method (default 30)")
  parser.add_argument("--seeds", type=int, default=3, help="seeds 0..S-1 (default 3)")
  parser.add_argument("--quick", action="store_true", help="3 epochs, 1 seed: a smoke test")
  args = parser.parse_args(argv)
  epochs, seeds = (3, 1) if args.quick else (args.epochs, args.seeds)
  if epochs < 1:
    parser.error("--epochs must be >= 1")
  if seeds < 1:
    parser.error("--seeds must be >= 1")
  print(
    f"digits (scikit-learn), small BatchNorm CNN, batch 32, {epochs} epochs, early stopping "
    f"on a 300-image validation split, 300 test images; {seeds} seed(s), mean ± sd"
  )
  rows = summarise([run(epochs=epochs, seed=seed) for seed in range(seeds)])
  print(format_table(rows))
  print(verdict(rows))
  for row in rows:
    if "leading_lrs" in row:
      print(
        "Alrao's leading copy at the kept epoch, per seed (lr from 1e-5 to 10):",
        ", ".join(f"{lr:.2g}" for lr in row["leading_lrs"]),
      )
  return rows


if __name__ == "__main__":
  main()

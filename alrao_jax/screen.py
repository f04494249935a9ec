"""Screening architectures with one Alrao run each, optionally checked against tuned SGD.

The models are the user's: each is given as a builder ``num_copies -> linen module``
ending with an :class:`alrao_jax.AlraoHead` of that many copies."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import optax

from alrao_jax.checks import check_bounds, check_num_copies
from alrao_jax.defaults import SGD_GRID
from alrao_jax.loop import fit
from alrao_jax.splits import Splits
from alrao_jax.transform import alrao_sgd


class ScreenResult(NamedTuple):
  """What :func:`screen` returns."""

  rows: list[dict[str, Any]]  # per model, best first by Alrao's validation loss
  kendall_tau: float | None  # Alrao's ranking against tuned SGD's (with verify)
  compute: dict[str, float]  # runs and seconds each ranking cost


def kendall_tau(first: Sequence[float], second: Sequence[float]) -> float:
  """Kendall's tau-a between two score lists of equal length (1: same order, -1: reversed).

  Example:
    >>> from alrao_jax.screen import kendall_tau
    >>> kendall_tau([1, 2, 3], [10, 20, 30]), kendall_tau([1, 2, 3], [3, 2, 1])
    (1.0, -1.0)
  """
  if len(first) != len(second) or len(first) < 2:
    raise ValueError("kendall_tau needs two lists of the same length, at least 2.")
  pairs = list(itertools.combinations(range(len(first)), 2))
  total = sum(_sign(first[i] - first[j]) * _sign(second[i] - second[j]) for i, j in pairs)
  return total / len(pairs)


def _sign(value: float) -> int:
  return (value > 0) - (value < 0)


def _run(
  model: Any,
  tx: optax.GradientTransformation,
  splits: Any,
  epochs: int,
  seed: int,
  kwargs: Mapping[str, Any],
) -> tuple[float, dict, float]:
  start = time.perf_counter()
  result = fit(model, tx, splits, epochs=epochs, seed=seed, **kwargs)
  valid = result.history[result.best_epoch - 1]["valid_loss"] if result.best_epoch else float("inf")
  return valid, result.test, time.perf_counter() - start


def screen(
  models: Mapping[str, Callable[[int], nn.Module]],
  splits: Splits,
  *,
  epochs: int,
  lr_min: float = 1e-5,
  lr_max: float = 10.0,
  num_copies: int = 10,
  seed: int = 0,
  verify: bool = False,
  sgd_grid: Sequence[float] = SGD_GRID,
  fit_kwargs: Mapping[str, Any] | None = None,
) -> ScreenResult:
  """Trains each model once with Alrao-SGD and ranks them by validation loss.

  Args:
    models: name -> builder; ``builder(num_copies)`` returns a linen module ending with
      ``alrao_jax.AlraoHead(K, num_copies=num_copies)`` (``builder(1)`` is the plain model
      that ``verify`` trains with SGD).
    splits: an :class:`alrao_jax.Splits`.
    epochs: epochs of every run (early stopping keeps the best validation epoch).
    lr_min: Alrao's smallest rate.
    lr_max: Alrao's largest rate.
    num_copies: Alrao's output copies.
    seed: seed of every run.
    verify: also train each model with SGD at every rate of ``sgd_grid``, keep the
      best on validation, and compare the rankings.
    sgd_grid: the learning rates of the verification.
    fit_kwargs: extra keyword arguments of :func:`alrao_jax.fit`.

  Returns:
    A :class:`ScreenResult`.
  """
  check_bounds(lr_min, lr_max)
  check_num_copies(num_copies)
  if len(models) < 2:
    raise ValueError(f"screen needs at least two models to rank, got {len(models)}.")
  for name, build in models.items():
    if not callable(build):
      raise TypeError(
        f"models[{name!r}] must be a builder num_copies -> linen module, got "
        f"{type(build).__name__}; e.g. lambda n: MyNet(num_copies=n)."
      )
  if verify and not sgd_grid:
    raise ValueError("verify=True needs a non-empty sgd_grid.")
  kwargs = dict(fit_kwargs or {})
  rows, compute = [], {"alrao_runs": 0, "alrao_seconds": 0.0, "sgd_runs": 0, "sgd_seconds": 0.0}
  for name, build in models.items():
    tx = alrao_sgd(lr_min, lr_max, key=jax.random.key(seed + 1))
    valid, test, seconds = _run(build(num_copies), tx, splits, epochs, seed, kwargs)
    row = {
      "name": name,
      "alrao_valid_loss": valid,
      "alrao_test_loss": test["loss"],
      "alrao_test_accuracy": test.get("accuracy"),
      "alrao_seconds": seconds,
    }
    compute["alrao_runs"] += 1
    compute["alrao_seconds"] += seconds
    if verify:
      best = (float("inf"), None, None)
      for lr in sgd_grid:
        valid_sgd, test_sgd, seconds = _run(build(1), optax.sgd(lr), splits, epochs, seed, kwargs)
        compute["sgd_runs"] += 1
        compute["sgd_seconds"] += seconds
        if valid_sgd < best[0]:
          best = (valid_sgd, lr, test_sgd)
      row.update(
        {
          "sgd_valid_loss": best[0],
          "sgd_best_lr": best[1],
          "sgd_test_loss": best[2]["loss"] if best[2] else float("inf"),
        }
      )
    rows.append(row)
  rows.sort(key=lambda r: r["alrao_valid_loss"])
  tau = (
    kendall_tau([r["alrao_valid_loss"] for r in rows], [r["sgd_valid_loss"] for r in rows])
    if verify
    else None
  )
  return ScreenResult(rows, tau, compute)

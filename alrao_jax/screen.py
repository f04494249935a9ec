"""Screening architectures with one Alrao run each, optionally checked against tuned SGD."""

from __future__ import annotations

import itertools
import json
import pathlib
import time
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import optax

from alrao_jax.compare import SGD_GRID
from alrao_jax.models import MLP, DigitsCNN
from alrao_jax.rates import check_bounds
from alrao_jax.train import fit
from alrao_jax.transform import alrao_sgd

MODELS = {"mlp": MLP, "cnn": DigitsCNN}
BUILTIN_DIGITS = {  # three widths of clearly different capacity, one hidden layer each
  "mlp-width-2": {"model": "mlp", "width": 2, "depth": 1},
  "mlp-width-8": {"model": "mlp", "width": 8, "depth": 1},
  "mlp-width-128": {"model": "mlp", "width": 128, "depth": 1},
}


class ScreenResult(NamedTuple):
  """What :func:`screen` returns."""

  rows: list[dict[str, Any]]  # per configuration, best first by Alrao's validation loss
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


def build_model(config: Mapping[str, Any], num_copies: int) -> Any:
  """A model from a configuration such as ``{"model": "mlp", "width": 16, "depth": 1}``."""
  options = dict(config)
  kind = options.pop("model", None)
  if kind not in MODELS:
    raise ValueError(f"configuration {config!r}: 'model' must be one of {sorted(MODELS)}.")
  try:
    return MODELS[kind](num_copies=num_copies, **options)
  except TypeError as err:
    raise ValueError(f"configuration {config!r}: {err}") from err


def load_configs(path: str | pathlib.Path) -> dict[str, dict[str, Any]]:
  """Reads configurations from a JSON or TOML file: a table of name -> configuration."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"configuration file {path} not found.")
  try:
    data = (
      tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    )
  except (ValueError, tomllib.TOMLDecodeError) as err:
    raise ValueError(f"{path} is not valid {path.suffix[1:] or 'JSON'}: {err}") from err
  if (
    not isinstance(data, dict)
    or len(data) < 2
    or not all(isinstance(v, dict) for v in data.values())
  ):
    raise ValueError(f"{path} must map at least two names to configurations.")
  return data


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
  configs: Mapping[str, Mapping[str, Any]],
  splits: Any,
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
  """Trains each configuration once with Alrao-SGD and ranks them by validation loss.

  Args:
    configs: name -> configuration (see :func:`build_model`).
    splits: an :class:`alrao_jax.data.Splits`.
    epochs: epochs of every run (early stopping keeps the best validation epoch).
    lr_min: Alrao's smallest rate.
    lr_max: Alrao's largest rate.
    num_copies: Alrao's output copies.
    seed: seed of every run.
    verify: also train each configuration with SGD at every rate of ``sgd_grid``, keep the
      best on validation, and compare the rankings.
    sgd_grid: the learning rates of the verification.
    fit_kwargs: extra keyword arguments of :func:`alrao_jax.train.fit`.

  Returns:
    A :class:`ScreenResult`.
  """
  check_bounds(lr_min, lr_max)
  if len(configs) < 2:
    raise ValueError("screen needs at least two configurations.")
  if verify and not sgd_grid:
    raise ValueError("verify=True needs a non-empty sgd_grid.")
  kwargs = dict(fit_kwargs or {})
  rows, compute = [], {"alrao_runs": 0, "alrao_seconds": 0.0, "sgd_runs": 0, "sgd_seconds": 0.0}
  for config in configs.values():
    build_model(config, 1)  # bad configurations fail before any training

  for name, config in configs.items():
    tx = alrao_sgd(lr_min, lr_max, key=jax.random.key(seed + 1))
    valid, test, seconds = _run(build_model(config, num_copies), tx, splits, epochs, seed, kwargs)
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
        valid_sgd, test_sgd, seconds = _run(
          build_model(config, 1), optax.sgd(lr), splits, epochs, seed, kwargs
        )
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

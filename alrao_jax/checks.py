"""Argument checks shared by the whole package: each raises a clear `ValueError` or
`TypeError` that names the argument and the fix, outside ``jit``."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np


def check_bounds(
  lr_min: float, lr_max: float, *, names: tuple[str, str] = ("lr_min", "lr_max")
) -> None:
  """Raises a `ValueError` unless ``0 < lr_min <= lr_max < inf``, both in float32's range.

  The rates are float32: a bound below the smallest normal float32 (1.2e-38) would sample
  rates of 0 (frozen parameters) and one above its largest (3.4e38) rates of inf.

  Args:
    lr_min: smallest learning rate of the interval.
    lr_max: largest learning rate of the interval.
    names: the caller's names of the two arguments, for the messages.
  """
  low, high = names
  for name, value in ((low, lr_min), (high, lr_max)):
    if isinstance(value, jax.core.Tracer):
      raise TypeError(
        f"{name} is traced ({value!r}): the bounds set the rates sampled once at init, so "
        "they cannot be injected hyper-parameters. Use optax.inject_hyperparams(alrao_sgd, "
        "static_args=('lr_min', 'lr_max', 'key')) (momentum, b1, b2, eps stay injectable), "
        "and scale every rate over time with optax.inject_hyperparams(optax.scale) in a chain."
      )
    if isinstance(value, jax.Array | np.ndarray) and np.ndim(value) == 0:
      value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    if not math.isfinite(value):
      raise ValueError(f"{name} must be finite, got {value}; pass a finite positive rate.")
  if lr_min <= 0:
    raise ValueError(f"{low} must be > 0 (rates are log-uniform), got {lr_min}; use e.g. 1e-5.")
  if lr_min > lr_max:
    raise ValueError(f"{low} ({lr_min}) must be <= {high} ({lr_max}); swap the two bounds.")
  smallest, largest = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
  for name, value in ((low, lr_min), (high, lr_max)):
    if not smallest <= value <= largest:
      raise ValueError(
        f"{name} = {value} is outside float32's normal range [{smallest:.3g}, {largest:.3g}] "
        "in which the rates are stored (it would sample rates of 0 or inf); pass a rate in it."
      )


def check_int(value: Any, name: str, *, minimum: int) -> int:
  """``value`` as an int, or a `TypeError`/`ValueError` naming ``name`` unless it is an integer
  (not a bool, float or string) ``>= minimum``."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__}).")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}.")
  return int(value)


def check_bool(value: Any, name: str) -> bool:
  """``value``, or a `TypeError` naming ``name`` unless it is ``True`` or ``False`` (a 0 or a
  1, or a string such as ``"false"``, is not taken for one)."""
  if not isinstance(value, bool):
    raise TypeError(f"{name} must be True or False, got {value!r}.")
  return value


def check_num_copies(num_copies: int) -> None:
  """Raises unless ``num_copies`` is an integer >= 1."""
  if isinstance(num_copies, bool) or not isinstance(num_copies, numbers.Integral):
    raise TypeError(f"num_copies must be an int, got {num_copies!r}.")
  if num_copies < 1:
    raise ValueError(f"num_copies must be >= 1, got {num_copies}; Alrao uses e.g. 10 copies.")


def check_copies_at_once(copies_at_once: int | None) -> None:
  """Raises unless ``copies_at_once`` is None or an integer >= 1."""
  if copies_at_once is None:
    return
  if isinstance(copies_at_once, bool) or not isinstance(copies_at_once, numbers.Integral):
    raise TypeError(
      f"copies_at_once must be None (all copies' outputs at once) or an int, got "
      f"{copies_at_once!r}."
    )
  if copies_at_once < 1:
    raise ValueError(
      f"copies_at_once must be >= 1, got {copies_at_once}; e.g. 1 holds one copy's logits at a "
      "time, None all of them."
    )


def check_labels(labels: Any, num_classes: int, *, name: str = "labels") -> None:
  """Raises a `ValueError` or `TypeError` unless ``labels`` are class indices in ``[0, K)``.

  Label values cannot be checked inside ``jit``: :func:`alrao_jax.fit` calls this
  once per split, on the host, before training.

  Args:
    labels: an array of labels.
    num_classes: ``K``, the head's number of outputs.
    name: what the labels are called in the message (e.g. ``"splits.train.targets"``).
  """
  values = np.asarray(labels)
  if not np.issubdtype(values.dtype, np.integer):
    raise TypeError(f"{name} must be integer class indices, got dtype {values.dtype}.")
  if values.size and (values.min() < 0 or values.max() >= num_classes):
    raise ValueError(
      f"{name} must lie in [0, {num_classes}) (the head has {num_classes} outputs), but range "
      f"from {values.min()} to {values.max()}; relabel them, or give the head more outputs."
    )


def check_rng_streams(rng_streams: Sequence[str]) -> tuple[str, ...]:
  """The RNG stream names a linen model draws from in a step, as a tuple.

  Raises:
    TypeError: not a sequence of names. ValueError: it names ``'params'`` (init only).
  """
  if isinstance(rng_streams, str) or not all(isinstance(n, str) for n in rng_streams):
    raise TypeError(f"rng_streams must be a sequence of stream names, got {rng_streams!r}.")
  if "params" in rng_streams:
    raise ValueError("rng_streams names the streams used in a step; 'params' is only for init.")
  return tuple(rng_streams)


def check_carry(carry: Sequence[str]) -> tuple[str, ...]:
  """The variable collections a linen model carries from batch to batch, as a tuple.

  Raises:
    TypeError: not a sequence of collection names.
  """
  if isinstance(carry, str) or not all(isinstance(name, str) for name in carry):
    raise TypeError(
      f"carry must be a sequence of collection names, e.g. ('carry',), got {carry!r}."
    )
  return tuple(carry)

"""Train, validation and test splits of in-memory arrays, as :func:`alrao_jax.fit` takes them."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from alrao_jax.checks import check_int


class Split(NamedTuple):
  """Inputs and targets of one split."""

  inputs: np.ndarray
  targets: np.ndarray


class Splits(NamedTuple):
  """Train, validation (for early stopping) and test splits."""

  train: Split
  valid: Split
  test: Split


def split_arrays(
  inputs: np.ndarray, targets: np.ndarray, *, valid: int, test: int, seed: int = 0
) -> Splits:
  """Shuffles once with ``seed`` and cuts ``test`` and ``valid`` examples off the end.

  Args:
    inputs: all inputs, examples on axis 0.
    targets: all targets.
    valid: number of validation examples, >= 1.
    test: number of test examples, >= 1.
    seed: seed of the shuffle.

  Returns:
    The three :class:`Split` s, disjoint.
  """
  valid = check_int(valid, "valid", minimum=1)
  test = check_int(test, "test", minimum=1)
  if len(inputs) != len(targets):
    raise ValueError(
      f"inputs ({len(inputs)} rows) and targets ({len(targets)} rows) must have equal lengths."
    )
  if valid + test >= len(inputs):
    raise ValueError(
      f"valid ({valid}) + test ({test}) must leave training examples out of {len(inputs)}."
    )
  order = np.random.default_rng(seed).permutation(len(inputs))
  inputs, targets = inputs[order], targets[order]
  n_train = len(inputs) - valid - test
  cut = (slice(0, n_train), slice(n_train, n_train + valid), slice(n_train + valid, None))
  return Splits(*(Split(inputs[c], targets[c]) for c in cut))


def as_splits(splits: Any) -> Splits:
  """Checks the splits :func:`alrao_jax.fit` is given and returns them as :class:`Splits`.

  Args:
    splits: :class:`Splits`, or any ``(train, valid, test)`` of ``(inputs, targets)`` pairs.

  Returns:
    :class:`Splits` of :class:`Split`.

  Raises:
    TypeError: not three pairs. ValueError: a split whose inputs and targets differ in
      length, an empty split, or non-finite floating inputs or targets (named with their
      first rows: one NaN example would make every validation loss inf).
  """
  if not isinstance(splits, tuple | list) or len(splits) != 3:
    raise TypeError(
      f"splits must be alrao_jax.Splits or (train, valid, test), got {type(splits).__name__}; "
      "build them with alrao_jax.split_arrays(inputs, targets, valid=..., test=...)."
    )
  checked = []
  for name, split in zip(Splits._fields, splits, strict=True):
    if not isinstance(split, tuple | list) or len(split) != 2:
      raise TypeError(f"splits.{name} must be an (inputs, targets) pair, got {type(split)}.")
    inputs, targets = split
    rows = len(inputs)
    if rows != len(targets):
      raise ValueError(
        f"splits.{name} has {rows} inputs but {len(targets)} targets; they must pair up."
      )
    if rows == 0:
      raise ValueError(
        f"splits.{name} is empty; fit needs examples in every split (validation for early "
        "stopping, test for the result), e.g. split_arrays(inputs, targets, valid=200, test=200)."
      )
    for part, values in (("inputs", inputs), ("targets", targets)):
      values = np.asarray(values)
      if np.issubdtype(values.dtype, np.inexact):
        bad = ~np.isfinite(values.reshape(rows, -1)).all(axis=1)
        if bad.any():
          raise ValueError(
            f"splits.{name}.{part} has non-finite values (NaN or inf) in {int(bad.sum())} "
            f"row(s), e.g. rows {np.flatnonzero(bad)[:5].tolist()}; drop or impute them."
          )
    checked.append(Split(inputs, targets))
  return Splits(*checked)

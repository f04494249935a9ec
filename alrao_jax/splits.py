"""Train, validation and test splits of in-memory arrays, as :func:`alrao_jax.fit` takes them."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from alrao_jax.checks import check_int


class Split(NamedTuple):
  """Inputs and targets of one split; the inputs are an array or a tuple or dict of arrays
  (a tuple is passed to the model as positional arguments), examples on their axis 0."""

  inputs: Any
  targets: np.ndarray


def rows_of(inputs: Any) -> int:
  """The number of examples in ``inputs`` (an array or a pytree of arrays): their axis 0.

  Raises:
    ValueError: no array, or arrays with different numbers of rows.
  """
  sizes = {len(leaf) for leaf in jax.tree.leaves(inputs)}
  if len(sizes) != 1:
    raise ValueError(
      f"inputs must be arrays with one row per example, got leaves of {sorted(sizes)} rows."
    )
  return sizes.pop()


def take(inputs: Any, index: Any) -> Any:
  """Rows ``index`` of every array in ``inputs``."""
  return jax.tree.map(lambda leaf: leaf[index], inputs)


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
    inputs: all inputs, examples on axis 0: an array, or a tuple or dict of arrays.
    targets: all targets.
    valid: number of validation examples, >= 1.
    test: number of test examples, >= 1.
    seed: seed of the shuffle.

  Returns:
    The three :class:`Split` s, disjoint.
  """
  valid = check_int(valid, "valid", minimum=1)
  test = check_int(test, "test", minimum=1)
  rows = rows_of(inputs)
  if rows != len(targets):
    raise ValueError(
      f"inputs ({rows} rows) and targets ({len(targets)} rows) must have equal lengths."
    )
  if valid + test >= rows:
    raise ValueError(f"valid ({valid}) + test ({test}) must leave training examples out of {rows}.")
  order = np.random.default_rng(seed).permutation(rows)
  inputs, targets = take(inputs, order), targets[order]
  n_train = rows - valid - test
  cut = (slice(0, n_train), slice(n_train, n_train + valid), slice(n_train + valid, None))
  return Splits(*(Split(take(inputs, c), targets[c]) for c in cut))


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
    rows = rows_of(inputs)
    if rows != len(targets):
      raise ValueError(
        f"splits.{name} has {rows} inputs but {len(targets)} targets; they must pair up."
      )
    if rows == 0:
      raise ValueError(
        f"splits.{name} is empty; fit needs examples in every split (validation for early "
        "stopping, test for the result), e.g. split_arrays(inputs, targets, valid=200, test=200)."
      )
    leaves = jax.tree_util.tree_flatten_with_path(inputs)[0]
    parts = [(f"inputs{jax.tree_util.keystr(path)}", leaf) for path, leaf in leaves]
    for part, values in (*parts, ("targets", targets)):
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

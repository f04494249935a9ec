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

  @property
  def weights(self) -> None:
    """None: every example weighs 1 (see :class:`WeightedSplit`)."""
    return None


class WeightedSplit(NamedTuple):
  """A :class:`Split` whose targets are weighed in every loss and metric.

  ``weights`` are one per example, or one per token for sequence targets (laid out as the
  targets' batch axes, e.g. ``(rows, length)``), or a boolean mask such as ``targets !=
  pad_id``; an example of weight 0 is left out of the loss, the gradient, the model
  averaging's evidence and every metric (see :func:`alrao_jax.alrao_loss`). Give
  :func:`alrao_jax.fit` an ``(inputs, targets, weights)`` triple, where ``weights`` may also
  be a function of the targets (``lambda y: y != pad_id``), or use
  :func:`split_arrays` ``(weights=...)``.
  """

  inputs: Any
  targets: np.ndarray
  weights: np.ndarray


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
  inputs: np.ndarray,
  targets: np.ndarray,
  *,
  valid: int,
  test: int,
  seed: int = 0,
  weights: Any = None,
) -> Splits:
  """Shuffles once with ``seed`` and cuts ``test`` and ``valid`` examples off the end.

  Args:
    inputs: all inputs, examples on axis 0: an array, or a tuple or dict of arrays.
    targets: all targets.
    valid: number of validation examples, >= 1.
    test: number of test examples, >= 1.
    seed: seed of the shuffle.
    weights: per-example (or per-token) weights or a mask, rows as ``targets``', or a
      function of the targets that returns them (see :class:`WeightedSplit`), or None.

  Returns:
    The three :class:`Split` s, disjoint (:class:`WeightedSplit` s with ``weights``).
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
  if callable(weights):
    weights = weights(targets)
  kind = Split if weights is None else WeightedSplit
  parts = take((inputs, targets) if weights is None else (inputs, targets, weights), order)
  n_train = rows - valid - test
  cut = (slice(0, n_train), slice(n_train, n_train + valid), slice(n_train + valid, None))
  return Splits(*(kind(*take(parts, c)) for c in cut))


def as_splits(splits: Any) -> Splits:
  """Checks the splits :func:`alrao_jax.fit` is given and returns them as :class:`Splits`.

  Args:
    splits: :class:`Splits`, or any ``(train, valid, test)`` of ``(inputs, targets)`` pairs
      or ``(inputs, targets, weights)`` triples.

  Returns:
    :class:`Splits` of :class:`Split` (of :class:`WeightedSplit` where weights were given,
    as float arrays, a function of the targets evaluated).

  Raises:
    TypeError: not three pairs or triples. ValueError: a split whose inputs and targets differ
      in length, an empty split, non-finite floating inputs or targets (named with their
      first rows: one NaN example would make every validation loss inf), or weights that are
      not one finite, non-negative value per target row (per token), or all 0.
  """
  if not isinstance(splits, tuple | list) or len(splits) != 3:
    raise TypeError(
      f"splits must be alrao_jax.Splits or (train, valid, test), got {type(splits).__name__}; "
      "build them with alrao_jax.split_arrays(inputs, targets, valid=..., test=...)."
    )
  checked = []
  for name, split in zip(Splits._fields, splits, strict=True):
    if not isinstance(split, tuple | list) or len(split) not in (2, 3):
      raise TypeError(
        f"splits.{name} must be an (inputs, targets) pair or an (inputs, targets, weights) "
        f"triple, got {type(split)}."
      )
    inputs, targets, weights = (*split, None) if len(split) == 2 else split
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
    if weights is None:
      checked.append(Split(inputs, targets))
    else:
      weights = _checked_weights(weights, targets, f"splits.{name}")
      checked.append(WeightedSplit(inputs, targets, weights))
  return Splits(*checked)


def _checked_weights(weights: Any, targets: Any, name: str) -> np.ndarray:
  """A split's weights as a float array, checked against its targets (see
  :class:`WeightedSplit`)."""
  if callable(weights):
    weights = weights(targets)
  values = np.asarray(weights)
  if not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
    raise TypeError(f"{name}.weights must be numbers or booleans, got dtype {values.dtype}.")
  shape, want = values.shape, np.shape(targets)
  if not shape or shape != want[: len(shape)]:
    raise ValueError(
      f"{name}.weights have shape {shape}; they must follow the targets' shape {want}: one "
      "weight per row, or per token of sequence targets (e.g. targets != pad_id)."
    )
  values = values.astype(np.float32)
  if not np.isfinite(values).all() or (values < 0).any():
    raise ValueError(f"{name}.weights must be finite and >= 0.")
  if not values.any():
    raise ValueError(
      f"{name}.weights are all 0: no example counts, so no loss is defined; weigh at least "
      "one example."
    )
  return values

"""Train, validation and test splits of in-memory arrays, as :func:`alrao_jax.fit` takes them."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


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
    valid: number of validation examples.
    test: number of test examples.
    seed: seed of the shuffle.

  Returns:
    The three :class:`Split` s, disjoint.
  """
  if valid + test >= len(inputs):
    raise ValueError(
      f"valid ({valid}) + test ({test}) must leave training examples out of {len(inputs)}."
    )
  order = np.random.default_rng(seed).permutation(len(inputs))
  inputs, targets = inputs[order], targets[order]
  n_train = len(inputs) - valid - test
  cut = (slice(0, n_train), slice(n_train, n_train + valid), slice(n_train + valid, None))
  return Splits(*(Split(inputs[c], targets[c]) for c in cut))

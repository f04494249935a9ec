"""Small offline data sets for the demo, tests and benchmarks."""

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


def load_digits(*, seed: int = 0) -> Splits:
  """scikit-learn's 8x8 digits (1,797 images, 10 classes), scaled to [0, 1].

  Args:
    seed: seed of the shuffle before splitting 1,197 / 300 / 300.

  Returns:
    :class:`Splits` with inputs of shape ``(n, 8, 8, 1)`` float32 and int32 labels.

  Example:
    >>> from alrao_jax.data import load_digits
    >>> splits = load_digits()
    >>> splits.train.inputs.shape, splits.test.inputs.shape
    ((1197, 8, 8, 1), (300, 8, 8, 1))
  """
  from sklearn.datasets import load_digits as sklearn_digits

  images, labels = sklearn_digits(return_X_y=True)
  images = (images / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
  return split_arrays(images, labels.astype(np.int32), valid=300, test=300, seed=seed)

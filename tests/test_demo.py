"""The demo's data, and fit's argument checks (the README test runs the demo itself)."""

import optax
import pytest

from alrao_jax.experiments.data import load_digits
from alrao_jax.experiments.models import DigitsCNN
from alrao_jax.loop import fit
from alrao_jax.splits import split_arrays


def test_digits_splits_are_disjoint_and_complete():
  splits = load_digits()
  sizes = [len(s.inputs) for s in splits]
  assert sizes == [1197, 300, 300]
  assert splits.train.inputs.max() <= 1.0


def test_bad_fit_arguments():
  splits = load_digits()
  with pytest.raises(ValueError, match="epochs must be >= 1"):
    fit(DigitsCNN(num_copies=2), optax.sgd(0.1), splits, epochs=0)
  with pytest.raises(ValueError, match="batch_size must be in"):
    fit(DigitsCNN(num_copies=2), optax.sgd(0.1), splits, epochs=1, batch_size=5000)
  with pytest.raises(ValueError, match="must leave training examples"):
    split_arrays(splits.test.inputs, splits.test.targets, valid=200, test=100)

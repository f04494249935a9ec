"""The main demo in its reduced mode, and fit's argument checks."""

import optax
import pytest

from alrao_jax.experiments import demo
from alrao_jax.experiments.data import load_digits
from alrao_jax.experiments.models import DigitsCNN
from alrao_jax.loop import fit
from alrao_jax.splits import split_arrays


def test_demo_quick_mode_learns_far_above_chance(capsys):
  rows = demo.main(["--quick"])
  out = capsys.readouterr().out
  alrao = rows[0]
  assert alrao["method"].startswith("Alrao-SGD")
  assert alrao["test_accuracy"] > 0.6  # chance is 0.1
  assert abs(sum(alrao["posterior"]) - 1) < 1e-4
  assert "| Alrao-SGD [1e-05, 10], 10 copies |" in out and "| SGD lr=0.1 |" in out


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

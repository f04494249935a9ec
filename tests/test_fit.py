"""fit: why it stopped, resuming a finished run, a diverged first epoch, checked inputs."""

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

import alrao_jax
from alrao_jax.experiments.models import MLP

RNG = np.random.default_rng(0)
X = RNG.normal(size=(240, 6)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int32) + (X[:, 1] > 0.5)
SPLITS = alrao_jax.split_arrays(X, Y, valid=40, test=40)
MODEL = MLP(num_classes=3, num_copies=2, width=8, depth=1)


class ReLUNet(nn.Module):  # unbounded activations: rates of 1e30 overflow within a step
  @nn.compact
  def __call__(self, x):
    return alrao_jax.AlraoHead(3, num_copies=2)(nn.relu(nn.Dense(8)(x)))


def _alrao(lo=1e-3, hi=1.0):
  return alrao_jax.alrao_sgd(lo, hi, key=jax.random.key(0))


def test_an_early_stopped_run_stays_stopped_when_resumed(tmp_path):
  frozen = optax.sgd(0.0)  # validation never improves after epoch 1
  pairs = tuple((s.inputs, s.targets) for s in SPLITS)  # plain (inputs, targets) pairs work
  first = alrao_jax.fit(MODEL, frozen, pairs, epochs=10, patience=2, checkpoint_dir=tmp_path)
  assert (first.best_epoch, len(first.history), first.stopped) == (1, 3, "patience")
  assert first.history[-1]["stopped"] == "patience"
  for _ in range(2):  # a script re-run with resume=True: the same answer every time
    again = alrao_jax.fit(
      MODEL, frozen, pairs, epochs=10, patience=2, checkpoint_dir=tmp_path, resume=True
    )
    assert again.history == first.history and again.stopped == "patience"
    assert again.test == first.test
  done = alrao_jax.fit(MODEL, _alrao(), SPLITS, epochs=2)
  assert done.stopped == "epochs" and "stopped" not in done.history[-1]


def test_a_run_that_diverges_at_once_says_why_and_returns_a_usable_state(tmp_path):
  with pytest.warns(RuntimeWarning, match=r"no epoch had a finite validation loss.*diverged"):
    result = alrao_jax.fit(
      ReLUNet(), _alrao(1e30, 1e31), SPLITS, epochs=5, checkpoint_dir=tmp_path / "run"
    )
  assert (result.best_epoch, result.stopped, len(result.history)) == (0, "diverged", 1)
  assert result.history[-1]["stopped"] == "diverged"
  assert np.isinf(result.test["loss"])
  # The initial state (a copy: the step donated the original) can be used and saved.
  probs = alrao_jax.predict(ReLUNet(), result.state, X[:4])
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)
  alrao_jax.save_checkpoint(tmp_path / "kept", result.state)


def test_fit_checks_its_inputs_by_name():
  train, valid, test = SPLITS
  bad = valid.inputs.copy()
  bad[7, 3] = np.nan
  bad_splits = alrao_jax.Splits(train, alrao_jax.Split(bad, valid.targets), test)
  with pytest.raises(ValueError, match=r"splits\.valid\.inputs has non-finite .* rows \[7\]"):
    alrao_jax.fit(MODEL, _alrao(), bad_splits, epochs=1)
  empty = alrao_jax.Splits(train, alrao_jax.Split(valid.inputs[:0], valid.targets[:0]), test)
  with pytest.raises(ValueError, match=r"splits\.valid is empty"):
    alrao_jax.fit(MODEL, _alrao(), empty, epochs=1)
  uneven = alrao_jax.Splits(train, alrao_jax.Split(valid.inputs, valid.targets[:-1]), test)
  with pytest.raises(ValueError, match=r"splits\.valid has 40 inputs but 39 targets"):
    alrao_jax.fit(MODEL, _alrao(), uneven, epochs=1)
  for kwargs, error in (
    ({"epochs": 2.5}, TypeError),
    ({"epochs": True}, TypeError),
    ({"epochs": "2"}, TypeError),
    ({"epochs": 1, "batch_size": 16.0}, TypeError),
    ({"epochs": 1, "seed": -1}, ValueError),
    ({"epochs": 1, "patience": 1.5}, TypeError),
  ):
    name = next(k for k in kwargs if k != "epochs" or len(kwargs) == 1)
    with pytest.raises(error, match=f"{name} must be an int|{name} must be >="):
      alrao_jax.fit(MODEL, _alrao(), SPLITS, **kwargs)
  with pytest.raises(ValueError, match="valid must be >= 1"):
    alrao_jax.split_arrays(X, Y, valid=-2, test=40)
  with pytest.raises(ValueError, match="equal lengths"):
    alrao_jax.split_arrays(X, Y[:-1], valid=40, test=40)


def test_a_warm_start_from_another_head_width_is_refused():
  wide = alrao_jax.create_train_state(
    MLP(num_classes=3, num_copies=3, width=8, depth=1), _alrao(), jax.random.key(0), X[:32]
  )
  with pytest.raises(ValueError, match=r"initial_state does not fit.*shapes"):
    alrao_jax.fit(MODEL, _alrao(), SPLITS, epochs=1, initial_state=wide)


def test_under_x64_fit_resumes_its_own_checkpoint_and_the_step_compiles_once(tmp_path):
  with jax.enable_x64(True):
    assert {str(x.dtype) for x in jax.tree.leaves(alrao_jax.switch_init(3))} <= {
      "float32",
      "int32",
    }
    alrao_jax.fit(MODEL, _alrao(), SPLITS, epochs=1, checkpoint_dir=tmp_path)
    resumed = alrao_jax.fit(MODEL, _alrao(), SPLITS, epochs=2, checkpoint_dir=tmp_path, resume=True)
    assert len(resumed.history) == 2 and resumed.stopped == "epochs"
    tx = _alrao()
    state = alrao_jax.create_train_state(MODEL, tx, jax.random.key(0), X[:32])
    step = alrao_jax.make_train_step(MODEL, tx)
    for _ in range(3):
      state, _ = step(state, X[:32], Y[:32])
    assert step._cache_size() == 1

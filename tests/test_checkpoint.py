"""Orbax checkpoints: resuming gives exactly the uninterrupted run; bad checkpoints are errors."""

import chex
import jax
import numpy as np
import pytest

import alrao_jax
from alrao_jax.checkpoint import restore_checkpoint
from alrao_jax.experiments.data import load_digits
from alrao_jax.experiments.models import DigitsCNN
from alrao_jax.loop import fit
from alrao_jax.splits import Split, Splits
from conftest import SmallNNXNet

FULL = load_digits()
SPLITS = Splits(Split(*(a[:256] for a in FULL.train)), FULL.valid, FULL.test)  # small and quick
KW = {"seed": 3, "batch_size": 32, "train_kwargs": {"train": True}, "eval_kwargs": {"train": False}}


def _tx():
  return alrao_jax.alrao_sgd(1e-4, 1.0, key=jax.random.key(5), momentum=0.9)


def test_resume_from_a_mid_run_checkpoint_equals_an_uninterrupted_run(tmp_path):
  model = DigitsCNN(num_copies=3, width=4)
  whole = fit(model, _tx(), SPLITS, epochs=3, **KW)
  fit(model, _tx(), SPLITS, epochs=1, checkpoint_dir=tmp_path / "run", **KW)
  resumed = fit(model, _tx(), SPLITS, epochs=3, checkpoint_dir=tmp_path / "run", resume=True, **KW)
  chex.assert_trees_all_equal(
    jax.random.key_data(resumed.last_state.rng), jax.random.key_data(whole.last_state.rng)
  )
  chex.assert_trees_all_equal(
    resumed.last_state.replace(rng=None), whole.last_state.replace(rng=None)
  )
  chex.assert_trees_all_equal(resumed.state.params, whole.state.params)
  assert resumed.history == whole.history and resumed.best_epoch == whole.best_epoch
  saved = restore_checkpoint(tmp_path / "run", whole.last_state)
  assert saved.epoch == 3 and len(saved.meta["history"]) == 3
  # The rates travel in the optimizer state: the restored ones are the sampled ones.
  chex.assert_trees_all_equal(saved.state.opt_state, whole.last_state.opt_state)


def test_missing_corrupt_and_mismatched_checkpoints(tmp_path):
  model = DigitsCNN(num_copies=3, width=4)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    fit(model, _tx(), SPLITS, epochs=1, checkpoint_dir=tmp_path / "none", resume=True, **KW)
  with pytest.raises(ValueError, match="needs the checkpoint_dir"):
    fit(model, _tx(), SPLITS, epochs=1, resume=True, **KW)
  fit(model, _tx(), SPLITS, epochs=1, checkpoint_dir=tmp_path / "run", **KW)
  other = DigitsCNN(num_copies=5, width=4)  # another head: shapes differ
  with pytest.raises(ValueError, match="does not fit this model"):
    fit(other, _tx(), SPLITS, epochs=2, checkpoint_dir=tmp_path / "run", resume=True, **KW)
  (tmp_path / "run" / "meta.json").write_text("{not json")
  with pytest.raises(ValueError, match="corrupt checkpoint"):
    fit(model, _tx(), SPLITS, epochs=2, checkpoint_dir=tmp_path / "run", resume=True, **KW)
  assert np.isfinite(fit(model, _tx(), SPLITS, epochs=1, **KW).test["loss"])


def test_nnx_checkpoint_restores_a_run_that_continues_identically(tmp_path):
  from flax import nnx

  def build(seed):
    model = SmallNNXNet(4, 8, 3, 3, dropout=0.3, rngs=nnx.Rngs(seed))
    tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(seed), momentum=0.9)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    return model, optimizer, alrao_jax.make_train_step(model, optimizer)

  x = jax.random.normal(jax.random.key(1), (16, 4))
  y = jax.numpy.arange(16) % 3
  model, optimizer, step = build(0)
  averaging = alrao_jax.switch_init(3)
  for _ in range(3):
    averaging, _ = step(averaging, x, y)
  alrao_jax.save_nnx_checkpoint(tmp_path / "nnx", model, optimizer, averaging, meta={"step": 3})
  for _ in range(2):
    averaging, metrics = step(averaging, x, y)

  other, other_optimizer, _ = build(7)  # other weights, other rates, other RNG state
  restored, meta = alrao_jax.restore_nnx_checkpoint(
    tmp_path / "nnx", other, other_optimizer, alrao_jax.switch_init(3)
  )
  assert meta == {"step": 3}
  other_step = alrao_jax.make_train_step(other, other_optimizer)
  for _ in range(2):
    restored, other_metrics = other_step(restored, x, y)
  chex.assert_trees_all_equal(
    nnx.to_pure_dict(nnx.state(other)), nnx.to_pure_dict(nnx.state(model))
  )
  chex.assert_trees_all_equal(restored, averaging)
  chex.assert_trees_all_equal(other_metrics, metrics)
  with pytest.raises(ValueError, match="does not fit this model"):
    alrao_jax.restore_nnx_checkpoint(
      tmp_path / "nnx", other, other_optimizer, alrao_jax.switch_init(4)
    )

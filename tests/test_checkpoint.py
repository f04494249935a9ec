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


def _small_state(seed=0):
  import flax.linen as nn

  model = nn.Sequential([nn.Dense(4), alrao_jax.AlraoHead(3, num_copies=2)])
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(seed))
  return alrao_jax.create_train_state(model, tx, jax.random.key(seed), jax.numpy.ones((1, 2)))


def _versions(folder):
  return sorted(p.name for p in folder.iterdir() if p.name.startswith("alrao_checkpoint_"))


def test_saving_never_touches_the_users_files(tmp_path):
  folder = tmp_path / "my_project"
  (folder / "results").mkdir(parents=True)
  (folder / "train.py").write_text("print('mine')")
  (folder / "data.csv").write_text("a,b\n1,2\n")
  (folder / "results" / "table.md").write_text("| a |")
  (tmp_path / "my_project.tmp").mkdir()
  (tmp_path / "my_project.tmp" / "notes.txt").write_text("mine too")
  first, second = _small_state(0), _small_state(1)
  alrao_jax.save_checkpoint(folder, first, epoch=1)
  alrao_jax.save_checkpoint(folder, second, epoch=2)
  assert (folder / "train.py").read_text() == "print('mine')"
  assert (folder / "data.csv").read_text() == "a,b\n1,2\n"
  assert (folder / "results" / "table.md").read_text() == "| a |"
  assert (tmp_path / "my_project.tmp" / "notes.txt").read_text() == "mine too"
  assert _versions(folder) == ["alrao_checkpoint_2"]  # the first version, removed after
  restored = restore_checkpoint(folder, first)
  assert restored.epoch == 2 and restored.meta == {}
  chex.assert_trees_all_equal(restored.state.params, second.params)


def test_a_failed_save_leaves_the_previous_checkpoint_readable(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp

  from alrao_jax import checkpoint

  folder = tmp_path / "run"
  first, second = _small_state(0), _small_state(1)
  alrao_jax.save_checkpoint(folder, first, epoch=1)
  real_save = ocp.StandardCheckpointer.save

  def fail_on_best_state(self, path, *args, **kwargs):
    if path.name == "best_state":
      raise OSError(28, "No space left on device")
    return real_save(self, path, *args, **kwargs)

  monkeypatch.setattr(ocp.StandardCheckpointer, "save", fail_on_best_state)
  with pytest.raises(OSError, match="No space left"):
    alrao_jax.save_checkpoint(folder, second, epoch=2)
  monkeypatch.setattr(ocp.StandardCheckpointer, "save", real_save)

  def read_only(path, text):
    raise PermissionError(13, "Permission denied", str(path))

  monkeypatch.setattr(checkpoint, "_replace_file", read_only)  # meta.json cannot be replaced
  with pytest.raises(PermissionError):
    alrao_jax.save_checkpoint(folder, second, epoch=2)
  restored = restore_checkpoint(folder, second)
  assert restored.epoch == 1
  chex.assert_trees_all_equal(restored.state.params, first.params)
  monkeypatch.undo()
  alrao_jax.save_checkpoint(folder, second, epoch=2)  # the next save clears what failed
  assert _versions(folder) == ["alrao_checkpoint_4"]
  chex.assert_trees_all_equal(restore_checkpoint(folder, first).state.params, second.params)


def test_a_save_killed_half_way_leaves_the_previous_checkpoint(tmp_path):
  import subprocess
  import sys
  import textwrap

  folder = tmp_path / "run"
  alrao_jax.save_checkpoint(folder, _small_state(0), epoch=1)
  script = textwrap.dedent(
    f"""
    import time, jax, orbax.checkpoint as ocp, flax.linen as nn, alrao_jax
    model = nn.Sequential([nn.Dense(4), alrao_jax.AlraoHead(3, num_copies=2)])
    tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(1))
    state = alrao_jax.create_train_state(model, tx, jax.random.key(1), jax.numpy.ones((1, 2)))
    real_save = ocp.StandardCheckpointer.save
    def slow(self, path, *args, **kwargs):
      real_save(self, path, *args, **kwargs)
      print("saved", path.name, flush=True)
      time.sleep(600)
    ocp.StandardCheckpointer.save = slow
    alrao_jax.save_checkpoint({str(folder)!r}, state, epoch=2)
    """
  )
  process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
  try:
    assert process.stdout.readline().strip() == "saved state"
  finally:
    process.kill()  # SIGKILL: no handler, no cleanup
    process.wait(timeout=60)
  restored = restore_checkpoint(folder, _small_state(0))
  assert restored.epoch == 1
  chex.assert_trees_all_equal(restored.state.params, _small_state(0).params)


def test_saving_a_donated_state_is_a_clear_error_with_no_hang(tmp_path):
  state = _small_state(0)
  state.step.delete()  # what a donating step does to the state it was given
  with pytest.raises(ValueError, match=r"arrays were deleted.*Save the state the step returned"):
    alrao_jax.save_checkpoint(tmp_path / "run", state)
  assert not (tmp_path / "run").exists()

"""Orbax checkpoints: resuming gives exactly the uninterrupted run; bad checkpoints are errors."""

import functools

import chex
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import alrao_jax
from alrao_jax.checkpoint import restore_checkpoint
from alrao_jax.experiments.data import load_digits
from alrao_jax.experiments.models import DigitsCNN
from alrao_jax.loop import fit
from alrao_jax.splits import Split, Splits
from conftest import SmallNNXNet, strict_json

FULL = load_digits()
SPLITS = Splits(Split(*(a[:256] for a in FULL.train)), FULL.valid, FULL.test)  # small and quick
KW = {"seed": 3, "batch_size": 32, "train_kwargs": {"train": True}, "eval_kwargs": {"train": False}}


def _tx():
  return alrao_jax.alrao_sgd(1e-4, 1.0, key=jax.random.key(5), momentum=0.9)


def test_resume_from_a_mid_run_checkpoint_equals_an_uninterrupted_run(tmp_path):
  model = DigitsCNN(num_copies=3, width=4)
  whole = fit(model, _tx(), SPLITS, epochs=3, **KW)
  (tmp_path / "run").mkdir()
  users = b'{"dataset": "v3", "_alrao_checkpoint": "mine", "epoch": 7}'
  (tmp_path / "run" / "meta.json").write_bytes(users)  # the user's own: never read or written
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
  assert (tmp_path / "run" / "meta.json").read_bytes() == users


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
  other_rates = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(5), momentum=0.9)
  with pytest.raises(ValueError, match="holds other learning rates than this optimizer"):
    fit(model, other_rates, SPLITS, epochs=2, checkpoint_dir=tmp_path / "run", resume=True, **KW)

  class OtherCNN(DigitsCNN):  # the same parameters, another model
    pass

  with pytest.raises(ValueError, match=r"written by a run of .*DigitsCNN, not of .*OtherCNN"):
    fit(
      OtherCNN(num_copies=3, width=4),
      _tx(),
      SPLITS,
      epochs=2,
      checkpoint_dir=tmp_path / "run",
      resume=True,
      **KW,
    )
  (tmp_path / "run" / "alrao_checkpoint.json").write_text("{not json")
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


@functools.cache
def _small_state(seed=0):
  import flax.linen as nn

  model = nn.Sequential([nn.Dense(4), alrao_jax.AlraoHead(3, num_copies=2)])
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(seed))
  return alrao_jax.create_train_state(model, tx, jax.random.key(seed), jax.numpy.ones((1, 2)))


def _versions(folder):
  return sorted(p.name for p in folder.iterdir() if p.name.startswith("alrao_checkpoint_"))


def _tree(folder):
  """Every file under ``folder`` (relative path -> bytes) and every folder (-> None)."""
  return {
    str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")
  }


def test_a_users_entries_named_like_versions_are_stepped_over_never_touched(tmp_path):
  folder = tmp_path / "run"
  alrao_jax.save_checkpoint(folder, _small_state(0), epoch=1)
  (folder / "alrao_checkpoint_2").mkdir()  # a save killed after its mkdir, or the user's own
  (folder / "alrao_checkpoint_3").mkdir()
  (folder / "alrao_checkpoint_3" / "notes.txt").write_text("mine")
  (folder / "alrao_checkpoint_4").write_text("a file of mine")
  (folder / "meta.json").write_text('{"notes": "my own metadata"}')
  users = {k: v for k, v in _tree(folder).items() if not k.startswith("alrao_checkpoint_1")}
  users.pop("alrao_checkpoint.json")
  alrao_jax.save_checkpoint(folder, _small_state(1), epoch=2)
  alrao_jax.save_checkpoint(folder, _small_state(2), epoch=3)
  after = _tree(folder)
  assert {k: after.get(k, "gone") for k in users} == users
  assert _versions(folder) == [f"alrao_checkpoint_{n}" for n in (2, 3, 4, 6)]
  restored = restore_checkpoint(folder, _small_state(0))
  assert restored.epoch == 3
  chex.assert_trees_all_equal(restored.state.params, _small_state(2).params)


def test_what_a_killed_save_or_removal_left_is_reclaimed_by_the_next_save(tmp_path):
  from alrao_jax import checkpoint

  folder = tmp_path / "run"
  alrao_jax.save_checkpoint(folder, _small_state(0), epoch=1)
  stage = checkpoint.STAGING_PREFIX
  (folder / f"{stage}a1b2").mkdir()  # killed between mkdtemp and the marker
  (folder / f"{stage}c3d4").mkdir()  # killed between the marker and the rename
  (folder / f"{stage}c3d4" / checkpoint.MARKER).write_text(checkpoint.MARKER_TEXT)
  (folder / f"{stage}alrao_checkpoint_1.99.removing").mkdir()  # a removal killed half-way
  (folder / f"{stage}alrao_checkpoint_1.99.removing" / checkpoint.MARKER).write_text(
    checkpoint.MARKER_TEXT
  )
  (folder / f"{stage}alrao_checkpoint_1.99.removing" / "state").mkdir()
  (folder / f"{stage}alrao_checkpoint_0.98.removing").mkdir()  # killed after the marker went
  (folder / f"{stage}alrao_checkpoint.json.97.tmp").write_text("{")  # a pointer never renamed
  (folder / "alrao_checkpoint_0").mkdir()  # an old version killed in the middle of its removal
  (folder / "alrao_checkpoint_0" / checkpoint.MARKER).write_text(checkpoint.MARKER_TEXT)
  (folder / "mine.txt").write_text("kept")
  alrao_jax.save_checkpoint(folder, _small_state(1), epoch=2)
  assert sorted(p.name for p in folder.iterdir()) == [
    "alrao_checkpoint.json",
    "alrao_checkpoint_2",
    "mine.txt",
  ]
  assert restore_checkpoint(folder, _small_state(0)).epoch == 2


def test_a_pointer_file_it_did_not_write_is_refused_by_name(tmp_path):
  folder = tmp_path / "run"
  folder.mkdir()
  (folder / "alrao_checkpoint.json").write_text('{"my": "file"}')
  with pytest.raises(ValueError, match=r"alrao_checkpoint.json was not written by alrao_jax"):
    alrao_jax.save_checkpoint(folder, _small_state(0), epoch=1)
  with pytest.raises(ValueError, match=r"alrao_checkpoint.json was not written by alrao_jax"):
    restore_checkpoint(folder, _small_state(0))
  assert sorted(p.name for p in folder.iterdir()) == ["alrao_checkpoint.json"]
  assert (folder / "alrao_checkpoint.json").read_text() == '{"my": "file"}'


def test_a_checkpoint_of_the_earlier_layout_is_read_and_its_meta_json_left(tmp_path):
  import json

  folder = tmp_path / "run"
  alrao_jax.save_checkpoint(folder, _small_state(1), epoch=4, meta={"best": float("inf")})
  pointer = json.loads((folder / "alrao_checkpoint.json").read_text())
  legacy = {"epoch": 4, "best": float("inf"), "_alrao_checkpoint": pointer["version"]}
  (folder / "meta.json").write_text(json.dumps(legacy))  # what earlier versions wrote
  (folder / "alrao_checkpoint.json").unlink()
  restored = restore_checkpoint(folder, _small_state(0))
  assert restored.epoch == 4 and restored.meta == {"best": float("inf")}
  chex.assert_trees_all_equal(restored.state.params, _small_state(1).params)
  alrao_jax.save_checkpoint(folder, _small_state(2), epoch=5)
  assert json.loads((folder / "meta.json").read_text())["epoch"] == 4
  assert _versions(folder) == ["alrao_checkpoint_2"]
  assert restore_checkpoint(folder, _small_state(0)).epoch == 5


def test_the_pointer_is_strict_json_and_gives_back_non_finite_floats(tmp_path):

  meta = {"best": float("inf"), "history": [{"loss": float("nan"), "x": [1.0, float("-inf")]}]}
  alrao_jax.save_checkpoint(tmp_path / "run", _small_state(0), epoch=1, meta=meta)

  strict_json((tmp_path / "run" / "alrao_checkpoint.json").read_text())
  restored = restore_checkpoint(tmp_path / "run", _small_state(0)).meta
  assert restored["best"] == float("inf") and restored["history"][0]["x"] == [1.0, float("-inf")]
  assert np.isnan(restored["history"][0]["loss"])
  with pytest.raises(ValueError, match="not JSON-serialisable"):
    alrao_jax.save_checkpoint(tmp_path / "other", _small_state(0), meta={"a": object()})
  assert not (tmp_path / "other").exists()


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
  state = _small_state.__wrapped__(0)  # not the cached one: it is deleted below
  state.step.delete()  # what a donating step does to the state it was given
  with pytest.raises(ValueError, match=r"arrays were deleted.*Save the state the step returned"):
    alrao_jax.save_checkpoint(tmp_path / "run", state)
  assert not (tmp_path / "run").exists()


_NAMES = st.one_of(
  st.sampled_from(["meta.json", "alrao_checkpoint_1", "alrao_checkpoint_2", "alrao_checkpoint_9"]),
  st.sampled_from(["ALRAO_CHECKPOINT", "state", "best_state", ".hidden", "a b.txt", "é.npz"]),
  st.text(st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=12).filter(
    lambda n: n not in (".", "..") and not n.startswith(".alrao_checkpoint_staging_")
  ),
)
_CONTENT = st.one_of(st.binary(max_size=64), st.dictionaries(_NAMES, st.binary(max_size=16)))
_USER_FILES = st.dictionaries(_NAMES, _CONTENT, max_size=6)


@settings(
  deadline=None, max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(user_files=_USER_FILES, saves=st.integers(1, 3))
def test_saving_n_times_leaves_any_user_files_byte_identical(tmp_path_factory, user_files, saves):
  """Any names (a meta.json, an entry named like a version included), files and folders:
  after N saves each is byte-identical and the last save is what is restored."""
  folder = tmp_path_factory.mktemp("run")
  for name, content in user_files.items():
    if isinstance(content, bytes):
      (folder / name).write_bytes(content)
    else:
      (folder / name).mkdir()
      for inner, data in content.items():
        (folder / name / inner).write_bytes(data)
  before = _tree(folder)
  for epoch in range(1, saves + 1):
    alrao_jax.save_checkpoint(folder, _small_state(0), epoch=epoch, meta={"epoch_seen": epoch})
  after = _tree(folder)
  assert {k: after.get(k, "gone") for k in before} == before
  restored = restore_checkpoint(folder, _small_state(0))
  assert restored.epoch == saves and restored.meta == {"epoch_seen": saves}

"""Data loaders: Penn Treebank characters (SPEC split) and CIFAR-10 python batches."""

import pickle

import numpy as np
import pytest

from alrao_jax.experiments.data import END_OF_LINE, load_cifar10, load_ptb_char, ptb_char_dir


def test_ptb_char_split_and_windows():
  splits, vocab = load_ptb_char(batch_size=4, bptt=20)
  assert END_OF_LINE in vocab and "_" in vocab and 40 <= len(vocab) <= 60
  valid_file = (ptb_char_dir() / "ptb.char.valid.txt").read_text()
  n_valid_tokens = len(valid_file.split()) + len(valid_file.splitlines())
  train, held_out, test = splits
  # 90% / 10% of the valid file (up to the windows' remainders), test from the test file.
  assert abs(train.inputs.size - 0.9 * n_valid_tokens) < 4 * 20 + 5
  assert abs(held_out.inputs.size - 0.1 * n_valid_tokens) < 4 * 20 + 5
  assert test.inputs.size > held_out.inputs.size
  # Targets are the next character; consecutive groups of 4 rows continue each other.
  np.testing.assert_array_equal(train.inputs[:, 1:], train.targets[:, :-1])
  np.testing.assert_array_equal(train.targets[:4, -1], train.inputs[4:8, 0])
  decoded = "".join(vocab[i] if vocab[i] != END_OF_LINE else "\n" for i in train.inputs[0])
  assert decoded.replace("\n", "").replace("_", " ") in valid_file.replace(" ", "").replace(
    "_", " "
  ).replace("\n", "")


def test_ptb_char_missing_folder_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setenv("ALRAO_PTB_CHAR", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="set ALRAO_PTB_CHAR"):
    load_ptb_char()


def _write_batch(path, n, label_offset):
  data = (np.arange(n * 3072) % 251).astype(np.uint8).reshape(n, 3072)
  with open(path, "wb") as f:
    pickle.dump({b"data": data, b"labels": [(i + label_offset) % 10 for i in range(n)]}, f)


def test_cifar10_reads_the_python_pickle_format(tmp_path):
  for i in range(1, 6):
    _write_batch(tmp_path / f"data_batch_{i}", 6, i)
  _write_batch(tmp_path / "test_batch", 4, 0)
  splits = load_cifar10(tmp_path, valid=5)
  assert splits.train.inputs.shape == (25, 32, 32, 3) and splits.valid.inputs.shape[0] == 5
  assert splits.test.inputs.shape == (4, 32, 32, 3) and splits.test.targets.tolist() == [0, 1, 2, 3]
  assert splits.train.inputs.dtype == np.float32 and splits.train.inputs.max() <= 1.0
  # Channels last: pixel (0, 0) holds bytes 0, 1024 and 2048 of the row.
  np.testing.assert_allclose(
    splits.test.inputs[0, 0, 0] * 255, [0, 1024 % 251, 2048 % 251], atol=1e-3
  )


def test_cifar10_bad_folder_and_bad_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="data_batch_1"):
    load_cifar10(tmp_path)
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    (tmp_path / name).write_bytes(b"not a pickle")
  with pytest.raises(ValueError, match="is not a CIFAR-10 python batch"):
    load_cifar10(tmp_path)


def test_digits_are_read_as_scikit_learn_loads_them():
  from sklearn.datasets import load_digits as sklearn_digits

  from alrao_jax.experiments.data import _digits_arrays

  images, labels = _digits_arrays()
  want_images, want_labels = sklearn_digits(return_X_y=True)
  np.testing.assert_array_equal(images, want_images)
  np.testing.assert_array_equal(labels, want_labels)


def test_an_npz_files_weights_become_weighted_splits_and_follow_their_examples(tmp_path):
  import alrao_jax
  from alrao_jax.experiments.data import load_npz
  from alrao_jax.experiments.tasks import arrays_task

  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 3)).astype(np.float32)
  y = np.arange(60) % 3
  w = np.arange(60, dtype=np.float64)  # weight i on example i: its row can be traced
  x[:, 0] = np.arange(60)  # so can its inputs
  path = tmp_path / "weighted.npz"
  np.savez(path, x=x, y=y, w=w, x_test=x[:9], y_test=y[:9])
  splits = load_npz(path)
  assert isinstance(splits.train, alrao_jax.WeightedSplit)
  assert isinstance(splits.valid, alrao_jax.WeightedSplit)  # held out of x, with its weights
  assert type(splits.test) is alrao_jax.Split  # no w_test: the plain mean
  for split in (splits.train, splits.valid):
    np.testing.assert_array_equal(split.weights, split.inputs[:, 0])
    np.testing.assert_array_equal(split.targets, split.inputs[:, 0].astype(int) % 3)
  assert len(splits.train.inputs) + len(splits.valid.inputs) == 60
  shrunk = arrays_task(path).shrink(10).splits.train  # --quick keeps the weights
  np.testing.assert_array_equal(shrunk.weights, shrunk.inputs[:, 0])

  for arrays, message in (
    ({"w_test": w}, "w_test weighs x_test"),
    ({"w": w[:5]}, r"one weight per example \(60,\)"),
    ({"w": -w}, "finite, >= 0 and not all 0"),
    ({"w": np.zeros(60)}, "finite, >= 0 and not all 0"),
    ({"weights": w}, "optional weights w, w_valid, w_test"),
  ):
    np.savez(path, x=x, y=y, **arrays)
    with pytest.raises(ValueError, match=message):
      load_npz(path)

"""The real data sets' loaders (Fashion-MNIST, word-level PTB): where they look, in which order,
what they check, the offline error, the publisher's download (from a local archive), and each
bundled task on them at its smoke size."""

import gzip
import hashlib
import io
import pathlib
import tarfile
import urllib.error

import jax
import numpy as np
import pytest

import alrao_jax
from alrao_jax.experiments import data_files
from alrao_jax.experiments.data_files import DataSource, file_md5, locate
from alrao_jax.experiments.fashion_mnist import FASHION_MNIST, load_fashion_mnist, read_idx
from alrao_jax.experiments.ptb_word import PTB_WORD, load_ptb_word
from alrao_jax.experiments.tasks import MODES, load_task


def _idx(values: np.ndarray) -> bytes:
  header = b"\x00\x00\x08" + bytes([values.ndim])
  header += b"".join(int(n).to_bytes(4, "big") for n in values.shape)
  return gzip.compress(header + values.astype(np.uint8).tobytes())


def _source(tmp_path, **changes):
  fields = {
    "name": "toy",
    "files": ("a.txt", "b.txt"),
    "env": "ALRAO_TOY_DATA",
    "debian": str(tmp_path / "debian"),
    "md5": {},
    "urls": {},
    "how": "get them from the toy shop.",
  }
  return DataSource(**{**fields, **changes})


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
  """No shared data and an empty download cache: only what a test puts somewhere is found."""
  monkeypatch.setattr(data_files, "DATA_ROOT", tmp_path / "shared")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.delenv("ALRAO_TOY_DATA", raising=False)
  return tmp_path


def _put(folder: pathlib.Path, files=("a.txt", "b.txt")) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  for name in files:
    (folder / name).write_text(name)
  return folder


def test_the_places_are_looked_in_order_and_offline_one_error_names_them(nowhere, monkeypatch):
  source = _source(nowhere)
  offline = urllib.error.URLError("no network")

  def refuse(source, target):
    raise offline

  with pytest.raises(FileNotFoundError) as raised:
    locate(source, download=refuse)
  message = str(raised.value)
  for place in ("shared data", str(nowhere / "shared" / "toy"), "Debian", "download cache"):
    assert place in message
  assert "no network" in message and "toy shop" in message and "a.txt, b.txt" in message
  debian = _put(nowhere / "debian")
  assert locate(source, download=refuse) == debian
  shared = _put(nowhere / "shared" / "toy")
  assert locate(source, download=refuse) == shared  # the shared data before Debian's
  env = _put(nowhere / "env")
  monkeypatch.setenv("ALRAO_TOY_DATA", str(env))
  assert locate(source, download=refuse) == env  # the environment before both
  given = _put(nowhere / "given")
  assert locate(source, given, download=refuse) == given
  _put(nowhere / "half", files=("a.txt",))
  with pytest.raises(FileNotFoundError, match=r"lacks the toy files \['b.txt'\]"):
    locate(source, nowhere / "half", download=refuse)  # a folder given is not passed over


def test_the_publishers_archive_is_fetched_checked_and_cached(nowhere):
  archive = nowhere / "simple-examples.tgz"
  with tarfile.open(archive, "w:gz") as tar:
    for name, text in (("a.txt", b"alpha\n"), ("b.txt", b"beta\n")):
      info = tarfile.TarInfo(f"simple-examples/data/{name}")
      info.size = len(text)
      tar.addfile(info, io.BytesIO(text))
  url = archive.as_uri()
  good = {n: hashlib.md5(t).hexdigest() for n, t in (("a.txt", b"alpha\n"), ("b.txt", b"beta\n"))}
  source = _source(nowhere, urls={"a.txt": url, "b.txt": url}, md5=good)
  folder = locate(source)
  assert folder == nowhere / "cache" / "alrao-jax" / "data" / "toy"
  assert (folder / "b.txt").read_bytes() == b"beta\n"
  assert locate(source, download=lambda *_: pytest.fail("downloaded twice")) == folder
  tampered = _source(
    nowhere, name="toy2", urls={"a.txt": url, "b.txt": url}, md5={**good, "b.txt": "0" * 32}
  )
  with pytest.raises(FileNotFoundError, match="not the publisher's file"):
    locate(tampered)
  assert not (nowhere / "cache" / "alrao-jax" / "data" / "toy2" / "a.txt").exists()  # nothing half


def test_idx_files_are_read_and_checked(tmp_path):
  images = np.arange(2 * 3 * 4).reshape(2, 3, 4)
  (tmp_path / "x.gz").write_bytes(_idx(images))
  np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), images)
  with pytest.raises(ValueError, match="not the publisher's file"):
    read_idx(tmp_path / "x.gz", "0" * 32)
  (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab"))
  with pytest.raises(ValueError, match="not an idx file of unsigned bytes"):
    read_idx(tmp_path / "bad.gz")
  (tmp_path / "short.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05ab"))
  with pytest.raises(ValueError, match="holds 2 values"):
    read_idx(tmp_path / "short.gz")


def test_the_shared_files_are_the_publishers():
  for source in (FASHION_MNIST, PTB_WORD):
    folder = locate(source)
    for name in source.files:
      assert file_md5(folder / name) == source.md5[name], name
  labels = read_idx(locate(FASHION_MNIST) / "train-labels-idx1-ubyte.gz")
  assert labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the data README's


def test_fashion_mnist_holds_out_validation_from_training_and_keeps_the_test_split():
  splits = load_fashion_mnist(valid=10_000, seed=0)
  assert [len(s.targets) for s in splits] == [50_000, 10_000, 10_000]
  assert splits.train.inputs.shape[1:] == (28, 28, 1) and splits.train.inputs.dtype == np.float32
  assert splits.test.inputs.min() >= 0.0 and splits.test.inputs.max() <= 1.0
  assert np.bincount(splits.test.targets).tolist() == [1000] * 10  # the publisher's test split
  train_and_valid = np.concatenate([splits.train.targets, splits.valid.targets])
  assert np.bincount(train_and_valid).tolist() == [6000] * 10  # all of the training split
  with pytest.raises(ValueError, match="valid must be in"):
    load_fashion_mnist(valid=60_000)


def test_word_level_ptb_streams_and_vocabulary():
  splits, vocabulary = load_ptb_word(batch_size=4, bptt=5, tokens=4 * 5 * 3 + 1)
  assert len(vocabulary) == 10_000 and "<unk>" in vocabulary and "<eos>" in vocabulary
  assert all(s.inputs.shape == (12, 5) for s in splits)  # 3 windows of 4 streams
  words = [vocabulary[i] for i in splits.train.inputs[0]]
  assert words == ["aer", "banknote", "berlitz", "calloway", "centrust"]  # the file's first
  # targets are the next words; window 1 of stream 0 continues window 0
  assert splits.train.targets[0, :4].tolist() == splits.train.inputs[0, 1:].tolist()
  assert splits.train.inputs[4, 0] == splits.train.targets[0, -1]


@pytest.mark.parametrize("name", ["fashion-mlp", "fashion-cnn", "ptb-word"])
def test_each_task_trains_an_epoch_at_its_smoke_size(name):
  task = load_task(name, quick=True)
  if task.carry:  # two windows of the streams: a 10,000-word head's epoch is the test's cost
    task = task.shrink(2 * task.batch_size)
  result = alrao_jax.fit(
    task.build(2),
    alrao_jax.alrao_sgd(task.lr_min, task.lr_max, key=jax.random.key(0)),
    task.splits,
    epochs=1,
    batch_size=task.batch_size,
    carry=task.carry,
    **MODES,
  )
  record = result.history[0]
  assert np.isfinite(record["train_loss"]) and np.isfinite(record["valid_loss"])
  assert len(record["posterior"]) == 2 and np.isclose(sum(record["posterior"]), 1.0)
  assert 0.0 <= record["test_accuracy"] <= 1.0 and result.best_epoch == 1

"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): 60,000 training and 10,000 test 28x28 grey
images of clothes, 10 classes, as the publisher ships them (gzipped idx files)."""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

from alrao_jax.experiments.data import _hold_out, _unit
from alrao_jax.experiments.data_files import DataSource, check_md5, locate
from alrao_jax.splits import Split, Splits

_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
FASHION_MNIST = DataSource(
  name="fashion-mnist",
  files=FILES,
  env="ALRAO_FASHION_MNIST",
  debian="/usr/share/datasets/fashion-mnist",
  md5={  # of the unzipped files, as the publisher lists them
    TRAIN_IMAGES: "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    TRAIN_LABELS: "9018921c3c673c538a1fc5bad174d6f9",
    TEST_IMAGES: "8181f5470baa50b63fa0f6fddb340f0a",
    TEST_LABELS: "15d484375f8d13e6eb1aabb0c3f46965",
  },
  urls={name: _URL + name for name in FILES},
  how="Debian: apt install dataset-fashion-mnist; elsewhere download the four files of "
  "https://github.com/zalandoresearch/fashion-mnist#get-the-data into a folder and pass it "
  "(--data, or ALRAO_FASHION_MNIST).",
)
CLASSES = (
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
)


def read_idx(path: pathlib.Path, expected_md5: str | None = None) -> np.ndarray:
  """The array of a gzipped idx file (big-endian header: two zero bytes, the type code 0x08
  for uint8, the number of dimensions, one 4-byte size each; then the values).

  Raises:
    ValueError: a file that is not an idx file of bytes, or whose MD5 (of the unzipped
      bytes) is not ``expected_md5``.
  """
  data = gzip.decompress(path.read_bytes())
  if expected_md5 is not None:
    check_md5(path, expected_md5, data)
  if len(data) < 4 or data[:3] != b"\x00\x00\x08":
    raise ValueError(f"{path} is not an idx file of unsigned bytes (its header: {data[:4]!r}).")
  dims = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
  values = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
  if values.size != int(np.prod(shape)):
    raise ValueError(f"{path}: its header says {shape}, but it holds {values.size} values.")
  return values.reshape(shape)


def load_fashion_mnist(
  *,
  directory: str | os.PathLike | None = None,
  valid: int = 10_000,
  seed: int = 0,
) -> Splits:
  """Fashion-MNIST, checked against the publisher's MD5s: ``valid`` training images held out
  for validation (shuffled once with ``seed``), the publisher's test split as the test split.

  The files are looked for in ``directory``, ``$ALRAO_FASHION_MNIST``, ``../shared/data``,
  Debian's ``/usr/share/datasets/fashion-mnist`` and the download cache, then downloaded
  from the publisher where the machine is online (see
  :func:`alrao_jax.experiments.data_files.locate`).

  Args:
    directory: a folder holding the four ``*-ubyte.gz`` files.
    valid: training images held out for validation.
    seed: seed of the hold-out.

  Returns:
    :class:`alrao_jax.Splits` with float32 images ``(n, 28, 28, 1)`` in [0, 1] and int32 labels.

  Raises:
    FileNotFoundError: the files are nowhere (the message lists the places looked).
    ValueError: a file that is not the publisher's.

  Example:
    >>> from alrao_jax.experiments.fashion_mnist import load_fashion_mnist
    >>> splits = load_fashion_mnist()  # doctest: +SKIP
    >>> [len(s.targets) for s in splits]  # doctest: +SKIP
    [50000, 10000, 10000]
  """
  folder = locate(FASHION_MNIST, directory)
  images, labels, test_images, test_labels = (
    read_idx(folder / name, FASHION_MNIST.md5[name]) for name in FILES
  )
  if not 0 < valid < len(images):
    raise ValueError(f"valid must be in (0, {len(images)}), got {valid}.")
  train, held_out = _hold_out(Split(_unit(images[..., None]), labels.astype(np.int32)), valid, seed)
  return Splits(train, held_out, Split(_unit(test_images[..., None]), test_labels.astype(np.int32)))

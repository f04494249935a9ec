"""The bundled data sets of the demo, tests and benchmarks, all offline."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import pickle
import zipfile
import zlib

import numpy as np

from alrao_jax.splits import Split, Splits, WeightedSplit, split_arrays


def _hold_out(split: Split | WeightedSplit, count: int, seed: int) -> tuple:
  """Shuffles once with ``seed``; returns (the rest, the first ``count``), each of the
  split's kind (its weights, if any, follow their examples)."""
  order = np.random.default_rng(seed).permutation(len(split.inputs))
  kept, held = order[count:], order[:count]
  return type(split)(*(a[kept] for a in split)), type(split)(*(a[held] for a in split))


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits as ``load_digits(return_X_y=True)`` gives them, read from the file
  scikit-learn ships without importing scikit-learn (a second of a short command's start-up);
  through scikit-learn where that file is not found."""
  spec = importlib.util.find_spec("sklearn")
  if spec is not None and spec.submodule_search_locations:
    path = pathlib.Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if path.is_file():
      table = np.loadtxt(path, delimiter=",")
      return table[:, :-1], table[:, -1].astype(int)
  from sklearn.datasets import load_digits as sklearn_digits

  return sklearn_digits(return_X_y=True)


def load_digits(*, seed: int = 0) -> Splits:
  """scikit-learn's 8x8 digits (1,797 images, 10 classes), scaled to [0, 1].

  Args:
    seed: seed of the shuffle before splitting 1,197 / 300 / 300.

  Returns:
    :class:`Splits` with inputs of shape ``(n, 8, 8, 1)`` float32 and int32 labels.

  Example:
    >>> from alrao_jax.experiments.data import load_digits
    >>> splits = load_digits()
    >>> splits.train.inputs.shape, splits.test.inputs.shape
    ((1197, 8, 8, 1), (300, 8, 8, 1))
  """
  images, labels = _digits_arrays()
  images = (images / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
  return split_arrays(images, labels.astype(np.int32), valid=300, test=300, seed=seed)


def load_mnist1d(*, seed: int = 0) -> Splits:
  """MNIST-1D (``pip install mnist1d``), generated locally: 4,000 train / 1,000 test signals
  of length 40, 10 classes; the last 500 training signals are held out for validation.

  Args:
    seed: seed of the shuffle that picks the validation signals.

  Returns:
    :class:`Splits` with float32 inputs ``(n, 40, 1)`` and int32 labels.

  Raises:
    FileNotFoundError: the ``mnist1d`` package is not installed.
  """
  try:
    from mnist1d.data import get_dataset_args, make_dataset
  except ImportError as err:
    raise FileNotFoundError(
      "the mnist1d task needs the mnist1d package: pip install mnist1d"
    ) from err
  data = make_dataset(get_dataset_args())
  train, valid = _hold_out(
    Split(data["x"].astype(np.float32)[..., None], data["y"].astype(np.int32)), 500, seed
  )
  test = Split(data["x_test"].astype(np.float32)[..., None], data["y_test"].astype(np.int32))
  return Splits(train, valid, test)


DATA_ROOT = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
END_OF_LINE = "<eol>"


def ptb_char_dir() -> pathlib.Path:
  """Folder of the Penn Treebank character files: ``$ALRAO_PTB_CHAR``, else
  ``../shared/data/ptb-char`` beside the repository."""
  return pathlib.Path(os.environ.get("ALRAO_PTB_CHAR", DATA_ROOT / "ptb-char"))


def _read_chars(path: pathlib.Path) -> list[str]:
  if not path.is_file():
    raise FileNotFoundError(
      f"{path} not found; set ALRAO_PTB_CHAR to the folder holding ptb.char.valid.txt and "
      "ptb.char.test.txt."
    )
  tokens = []
  for line in path.read_text().splitlines():
    tokens.extend(line.split())
    tokens.append(END_OF_LINE)
  return tokens


def _sequences(ids: np.ndarray, batch_size: int, bptt: int) -> Split:
  """Cuts a token stream into ``batch_size`` parallel streams and windows of ``bptt``."""
  per_stream = (len(ids) - 1) // batch_size
  windows = per_stream // bptt
  if windows < 1:
    raise ValueError(f"{len(ids)} tokens are too few for batch_size={batch_size}, bptt={bptt}.")
  length = windows * bptt
  inputs = ids[: batch_size * per_stream].reshape(batch_size, per_stream)[:, :length]
  targets = ids[1 : batch_size * per_stream + 1].reshape(batch_size, per_stream)[:, :length]
  return Split(_windows(inputs, bptt), _windows(targets, bptt))


def _windows(streams: np.ndarray, bptt: int) -> np.ndarray:
  """(streams, windows * bptt) -> (windows * streams, bptt), window-major."""
  count, length = streams.shape
  rows = streams.reshape(count, length // bptt, bptt).transpose(1, 0, 2)
  return rows.reshape(-1, bptt).astype(np.int32)


def load_ptb_char(
  *, batch_size: int = 32, bptt: int = 70, directory: str | os.PathLike | None = None
) -> tuple[Splits, list[str]]:
  """Penn Treebank characters, split as the SPEC says (the training file is not shipped).

  Training is the first 90% of ``ptb.char.valid.txt``, validation (early stopping) its last
  10%, and test ``ptb.char.test.txt``. Lines end with an ``<eol>`` token. Each split is cut
  into ``batch_size`` contiguous streams and windows of ``bptt`` characters; consecutive
  groups of ``batch_size`` rows continue each other, so truncated BPTT can carry state.

  Args:
    batch_size: number of parallel streams.
    bptt: characters per window.
    directory: folder of the two files; default :func:`ptb_char_dir`.

  Returns:
    ``(splits, vocabulary)``: inputs and next-character targets of shape ``(rows, bptt)``.
  """
  folder = pathlib.Path(directory) if directory is not None else ptb_char_dir()
  train_valid = _read_chars(folder / "ptb.char.valid.txt")
  test = _read_chars(folder / "ptb.char.test.txt")
  vocabulary = sorted(set(train_valid) | set(test))
  index = {token: i for i, token in enumerate(vocabulary)}
  cut = int(0.9 * len(train_valid))
  splits = Splits(
    *(
      _sequences(np.array([index[t] for t in tokens], np.int32), batch_size, bptt)
      for tokens in (train_valid[:cut], train_valid[cut:], test)
    )
  )
  return splits, vocabulary


CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"


def _cifar_batch(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  try:
    with path.open("rb") as f:
      batch = pickle.load(f, encoding="bytes")
    data = np.asarray(batch[b"data"], np.uint8)
    labels = np.asarray(batch[b"labels"], np.int32)
  except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
    raise ValueError(f"{path} is not a CIFAR-10 python batch ({err}).") from err
  if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
    raise ValueError(f"{path}: expected data (n, 3072) and n labels, got {data.shape}.")
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(directory: str | os.PathLike, *, valid: int = 10_000, seed: int = 0) -> Splits:
  """CIFAR-10 from the standard python-pickle batches (``cifar-10-batches-py``).

  Args:
    directory: folder holding ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``.
    valid: training images held out for early stopping (the paper trains on 40,000).
    seed: seed of the shuffle that picks them.

  Returns:
    :class:`Splits` with float32 images ``(n, 32, 32, 3)`` in [0, 1] and int32 labels.

  Raises:
    FileNotFoundError: a batch file is missing. ValueError: a file is not such a batch.
  """
  folder = pathlib.Path(directory)
  missing = [n for n in (*CIFAR10_TRAIN, CIFAR10_TEST) if not (folder / n).is_file()]
  if missing:
    raise FileNotFoundError(
      f"{folder} lacks CIFAR-10 batches {missing}; point to the "
      "extracted cifar-10-batches-py folder."
    )
  parts = [_cifar_batch(folder / n) for n in CIFAR10_TRAIN]
  images = np.concatenate([p[0] for p in parts])
  labels = np.concatenate([p[1] for p in parts])
  test_images, test_labels = _cifar_batch(folder / CIFAR10_TEST)
  if not 0 < valid < len(images):
    raise ValueError(f"valid must be in (0, {len(images)}), got {valid}.")
  train, held_out = _hold_out(Split(_unit(images), labels), valid, seed)
  return Splits(train, held_out, Split(_unit(test_images), test_labels))


def _unit(images: np.ndarray) -> np.ndarray:
  return (images / 255.0).astype(np.float32)


NPZ_SPLITS = (("x", "y"), ("x_valid", "y_valid"), ("x_test", "y_test"))
NPZ_WEIGHTS = ("w", "w_valid", "w_test")  # optional per-example weights of each split


def _check_dense_labels(path: pathlib.Path, labels: list[np.ndarray]) -> None:
  """Raises a `ValueError` when most classes ``0..K-1`` of a ``K``-way head never occur:
  labels such as 0, 1000 and 2000 would build a 2001-way output for 3 classes."""
  present = np.unique(np.concatenate(labels))
  classes = int(present.max()) + 1
  if classes > 2 and len(present) < classes / 2:
    raise ValueError(
      f"{path}: the labels run to {classes - 1}, a {classes}-way output, but only "
      f"{len(present)} of those classes occur ({present[:5].tolist()}...); classes are "
      "0, 1, ..., K-1: relabel them (numpy.unique(y, return_inverse=True))."
    )


def _npz_weights(path: pathlib.Path, name: str, weights: np.ndarray, count: int) -> np.ndarray:
  """An ``.npz`` file's per-example weights, checked: ``(count,)``, finite, >= 0, not all 0."""
  if weights.shape != (count,):
    raise ValueError(
      f"{path}: {name} must hold one weight per example ({count},), got {weights.shape}."
    )
  if not np.issubdtype(weights.dtype, np.number) and weights.dtype != bool:
    raise ValueError(f"{path}: {name} must hold numbers, got dtype {weights.dtype}.")
  weights = weights.astype(np.float32)
  if not np.isfinite(weights).all() or (weights < 0).any() or not weights.any():
    raise ValueError(
      f"{path}: {name} must be finite, >= 0 and not all 0 (a weight of 0 leaves its example "
      "out of every loss and metric)."
    )
  return weights


def load_npz(path: str | os.PathLike, *, seed: int = 0, held_out: float = 0.1) -> Splits:
  """Splits of a classification data set saved with ``numpy.savez``.

  The file holds ``x`` (inputs, examples on axis 0) and ``y`` (integer class labels), and
  optionally ``x_valid``/``y_valid`` and ``x_test``/``y_test``, and per-example weights
  ``w``, ``w_valid``, ``w_test`` (non-negative; a split with weights is an
  :class:`alrao_jax.WeightedSplit`, weighed in every loss and metric). A missing split is cut
  off the training arrays (``held_out`` of them each, shuffled once with ``seed``; their
  weights follow them). Inputs are cast to float32, labels to int32 and weights to float32.

  Args:
    path: the ``.npz`` file.
    seed: seed of the hold-out shuffle.
    held_out: fraction of ``x`` taken for each missing split.

  Returns:
    The three splits.

  Raises:
    FileNotFoundError: no such file.
    ValueError: a file that is no readable ``.npz`` archive, missing, unpaired or empty
      arrays, lengths that differ, non-integer or negative labels, labels beyond int32 or
      of which most classes below the largest never occur, fewer than two classes, too
      few examples, or weights without their split, negative, not finite or all 0.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found; --data takes an .npz file with arrays x and y.")
  try:
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # an .npy file under another name
      raise ValueError(f"it holds one array of shape {np.shape(loaded)}, not named arrays")
    with loaded as archive:
      arrays = {name: archive[name] for name in archive.files}
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
    raise ValueError(
      f"{path} is not a readable .npz archive (numpy.savez): {err}; save x and y with "
      "numpy.savez(path, x=..., y=...)"
    ) from err
  if "x" not in arrays or "y" not in arrays:
    raise ValueError(f"{path} must hold arrays 'x' and 'y'; it holds {sorted(arrays)}.")
  known = {name for pair in NPZ_SPLITS for name in pair} | set(NPZ_WEIGHTS)
  unknown = sorted(set(arrays) - known)
  if unknown:
    raise ValueError(
      f"{path}: unknown arrays {unknown}; expected x, y, x_valid, y_valid, x_test, y_test "
      "and optional weights w, w_valid, w_test."
    )
  found = []
  for (x_name, y_name), w_name in zip(NPZ_SPLITS, NPZ_WEIGHTS, strict=True):
    if w_name in arrays and x_name not in arrays:
      raise ValueError(f"{path}: {w_name} weighs {x_name}, which the file does not hold.")
    if (x_name in arrays) != (y_name in arrays):
      raise ValueError(f"{path}: {x_name} and {y_name} come in pairs; one is missing.")
    if x_name not in arrays:
      found.append(None)
      continue
    x, y = arrays[x_name], arrays[y_name]
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
      raise ValueError(
        f"{path}: {x_name} must be (N, features...) and {y_name} (N,), got {x.shape} and {y.shape}."
      )
    if not len(y):
      raise ValueError(
        f"{path}: {x_name} and {y_name} are empty; leave them out to hold out a split."
      )
    if not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f"{path}: {y_name} must hold integer class labels, got dtype {y.dtype}.")
    if y.min() < 0:
      raise ValueError(f"{path}: {y_name} holds negative labels; classes are 0, 1, ..., K-1.")
    if y.max() > np.iinfo(np.int32).max:
      raise ValueError(
        f"{path}: {y_name} holds the label {y.max()}, beyond int32; classes are 0, 1, ..., K-1 "
        "(relabel them: numpy.unique(y, return_inverse=True))."
      )
    split = Split(x.astype(np.float32), y.astype(np.int32))
    if w_name in arrays:
      split = WeightedSplit(*split, _npz_weights(path, w_name, arrays[w_name], len(y)))
    found.append(split)
  _check_dense_labels(path, [s.targets for s in found if s is not None])
  train, valid, test = found
  if len(np.unique(train.targets)) < 2:
    raise ValueError(f"{path}: y must hold at least two classes.")
  shapes = {s.inputs.shape[1:] for s in found if s is not None}
  if len(shapes) > 1:
    raise ValueError(f"{path}: the splits' inputs differ in shape: {sorted(shapes)}.")
  count = round(held_out * len(train.inputs))
  held = []
  for name, split in (("valid", valid), ("test", test)):
    if split is None:
      if count < 1 or len(train.inputs) - count < 2:
        raise ValueError(f"{path}: too few examples in x ({len(train.inputs)}) to hold out {name}.")
      train, split = _hold_out(train, count, seed)
    held.append(split)
  return Splits(train, *held)

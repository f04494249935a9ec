"""The bundled tasks: data, a model builder, Alrao's interval and the batch size, by name.

Every task's model takes ``train`` as a keyword (:data:`MODES` holds the keyword arguments
of training and evaluation), and reports its loss in nats; ``loss_scale`` converts it into
the task's unit (bits per character for ``ptb-char``).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn

from alrao_jax.experiments.data import (
  load_cifar10,
  load_digits,
  load_mnist1d,
  load_npz,
  load_ptb_char,
)
from alrao_jax.experiments.fashion_mnist import load_fashion_mnist
from alrao_jax.experiments.models import MLP, CharLSTM, Conv1DNet, DigitsCNN
from alrao_jax.experiments.names import TASKS
from alrao_jax.experiments.ptb_word import load_ptb_word
from alrao_jax.splits import Splits

MODES = {"train_kwargs": {"train": True}, "eval_kwargs": {"train": False}}
MODEL_KINDS = {"mlp": MLP, "cnn": DigitsCNN}  # the built-in models for the user's arrays
BUILTIN_CONFIGS = {  # digits: three widths of clearly different capacity, one hidden layer each
  "mlp-width-2": {"model": "mlp", "width": 2, "depth": 1},
  "mlp-width-8": {"model": "mlp", "width": 8, "depth": 1},
  "mlp-width-128": {"model": "mlp", "width": 128, "depth": 1},
}
# Alrao-Adam's interval: Adam's good rates lie about 100x below SGD's; the paper (appendix C)
# ran Alrao-Adam on [1e-6, 1].
ADAM_INTERVAL = (1e-6, 1.0)


class Task(NamedTuple):
  """A bundled task (see :func:`load_task`)."""

  name: str
  splits: Splits
  build: Callable[[int], Any]  # num_copies -> linen module
  lr_min: float  # Alrao-SGD's interval for this kind of model, from the paper
  lr_max: float
  copies: int
  batch_size: int
  loss_unit: str = "nats"
  loss_scale: float = 1.0  # reported loss = loss in nats * loss_scale
  num_classes: int = 10  # outputs of the model's head
  carry: tuple[str, ...] = ()  # collections carried across batches (fit's carry)

  def shrink(self, rows: int) -> Task:
    """The same task on the first ``rows`` rows of every split (for smoke tests); a task
    with carried streams keeps whole windows (``rows`` rounded down to a multiple of the
    batch size, at least one window)."""
    if self.carry:
      rows = max(self.batch_size, rows // self.batch_size * self.batch_size)
    return self._replace(
      splits=Splits(*(type(s)(*(a[:rows] for a in s)) for s in self.splits))  # weights too
    )

  def interval(self, optimizer: str) -> tuple[float, float]:
    """Alrao's default interval for ``optimizer`` (``alrao-sgd`` or ``alrao-adam``)."""
    return ADAM_INTERVAL if optimizer == "alrao-adam" else (self.lr_min, self.lr_max)


QUICK_ROWS = 256  # load_task(quick=True): the rows of each split kept, a smoke size for tests


def load_task(
  name: str,
  *,
  data: str | os.PathLike | None = None,
  batch_size: int | None = None,
  quick: bool = False,
) -> Task:
  """Loads a bundled task.

  ``digits``: scikit-learn digits, a BatchNorm CNN. ``mnist1d``: MNIST-1D, a 1D CNN.
  ``mnist1d-mlp``: MNIST-1D, a tanh MLP without normalisation. ``ptb-char``: Penn Treebank
  characters (trained on the first 90% of the valid file, see :func:`load_ptb_char`), a
  2-layer LSTM, BPTT 70, 20 streams, the LSTM state carried from window to window in
  training and evaluation (the paper's setup; ``Task.carry``), loss in bits per character.
  ``cifar10``: the python pickle batches in ``data``, the digits CNN at width 32.
  ``fashion-mlp``: Fashion-MNIST (50,000 / 10,000 held out / the 10,000 test images, see
  :func:`alrao_jax.experiments.fashion_mnist.load_fashion_mnist`), a ReLU MLP of 2 x 1024
  units. ``fashion-cnn``: the same images, the BatchNorm CNN at width 32 (32 then 64
  channels, 128 units). ``ptb-word``: word-level Penn Treebank (the publisher's three splits,
  see :func:`alrao_jax.experiments.ptb_word.load_ptb_word`), the LSTM at 200 units and
  embedding, 2 layers, dropout 0.2, BPTT 35, 20 streams, the state carried, a 10,000-way
  head applied one copy at a time in the loss (``copies_at_once=1``); loss in nats per word
  (its perplexity is ``exp`` of it). Alrao's interval is [1e-5,
  10] with 10 copies for the feed-forward models and [1e-3, 100] with 6 for the LSTMs (the
  paper's).

  Args:
    name: one of :data:`TASKS`.
    data: data folder (``cifar10``: required; ``ptb-char``: default ``../shared``; the
      Fashion-MNIST and word-level PTB tasks: where to look first, see
      :func:`alrao_jax.experiments.data_files.locate`).
    batch_size: examples (streams for the LSTMs) per step; default 32, 20 for the LSTMs.
    quick: a smoke size for tests: the first 256 rows of each split (whole windows for the
      LSTMs: 12 windows of 20 streams), the models and their heads unchanged.

  Returns:
    A :class:`Task`.

  Example:
    >>> from alrao_jax.experiments.tasks import load_task
    >>> task = load_task('digits')
    >>> task.lr_min, task.lr_max, task.copies, len(task.splits.train.inputs)
    (1e-05, 10.0, 10, 1197)
  """
  if name not in TASKS:
    raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}.")
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  task = _load(name, data, batch_size)
  return task.shrink(QUICK_ROWS) if quick else task


def _load(name: str, data: str | os.PathLike | None, batch_size: int | None) -> Task:
  if name == "ptb-char":
    batch = batch_size or 20
    splits, vocab = load_ptb_char(batch_size=batch, bptt=70, directory=data)
    return Task(
      name,
      splits,
      lambda n: CharLSTM(vocab_size=len(vocab), num_copies=n, carry=True),
      1e-3,
      100.0,
      6,
      batch,
      "bits/char",
      1 / math.log(2),
      len(vocab),
      ("carry",),
    )
  if name == "ptb-word":
    batch = batch_size or 20
    splits, vocab = load_ptb_word(batch_size=batch, bptt=35, directory=data)
    return Task(
      name,
      splits,
      lambda n: CharLSTM(
        vocab_size=len(vocab),
        num_copies=n,
        embed=200,
        hidden=200,
        dropout=0.2,
        carry=True,
        copies_at_once=1,
      ),
      1e-3,
      100.0,
      6,
      batch,
      num_classes=len(vocab),
      carry=("carry",),
    )
  batch = batch_size or 32
  if name in ("fashion-mlp", "fashion-cnn"):
    splits = load_fashion_mnist(directory=data)
    if name == "fashion-mlp":
      return Task(
        name,
        splits,
        lambda n: MLP(num_copies=n, width=1024, depth=2, activation="relu"),
        1e-5,
        10.0,
        10,
        batch,
      )
    return Task(name, splits, lambda n: DigitsCNN(num_copies=n, width=32), 1e-5, 10.0, 10, batch)
  if name == "digits":
    return Task(name, load_digits(), lambda n: DigitsCNN(num_copies=n), 1e-5, 10.0, 10, batch)
  if name in ("mnist1d", "mnist1d-mlp"):
    model = Conv1DNet if name == "mnist1d" else MLP
    return Task(name, load_mnist1d(), lambda n: model(num_copies=n), 1e-5, 10.0, 10, batch)
  if data is None:
    raise ValueError("task cifar10 needs data: the path of its cifar-10-batches-py folder.")
  splits = load_cifar10(data)
  return Task(name, splits, lambda n: DigitsCNN(num_copies=n, width=32), 1e-5, 10.0, 10, batch)


def model_builder(
  config: Mapping[str, Any], *, num_classes: int = 10
) -> Callable[[int], nn.Module]:
  """A builder ``num_copies -> module`` of a built-in model, from a configuration.

  Args:
    config: e.g. ``{"model": "mlp", "width": 16, "depth": 1}`` or ``{"model": "cnn",
      "width": 8}``; ``model`` is one of :data:`MODEL_KINDS`, the rest are its attributes.
    num_classes: the number of classes of the output.

  Returns:
    The builder, checked once by building it.

  Example:
    >>> from alrao_jax.experiments.tasks import model_builder
    >>> model_builder({"model": "mlp", "width": 16})(4).num_copies
    4
  """
  options = dict(config)
  kind = options.pop("model", None)
  if kind not in MODEL_KINDS:
    raise ValueError(
      f"configuration {dict(config)!r}: 'model' must be one of {sorted(MODEL_KINDS)}."
    )
  if "num_copies" in options or "num_classes" in options:
    raise ValueError(f"configuration {dict(config)!r}: num_copies and num_classes are set for you.")
  try:
    MODEL_KINDS[kind](num_classes=num_classes, num_copies=1, **options)
  except TypeError as err:
    raise ValueError(f"configuration {dict(config)!r}: {err}") from err

  def build(num_copies: int) -> nn.Module:
    return MODEL_KINDS[kind](num_classes=num_classes, num_copies=num_copies, **options)

  return build


def load_configs(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
  """Reads model configurations from a JSON or TOML file: a table of name -> configuration."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"configuration file {path} not found.")
  try:
    data = (
      tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    )
  except (ValueError, tomllib.TOMLDecodeError) as err:
    raise ValueError(f"{path} is not valid {path.suffix[1:] or 'JSON'}: {err}") from err
  if (
    not isinstance(data, dict)
    or len(data) < 2
    or not all(isinstance(v, dict) for v in data.values())
  ):
    raise ValueError(f"{path} must map at least two names to configurations.")
  return data


def arrays_task(
  path: str | os.PathLike,
  *,
  model: Mapping[str, Any] | None = None,
  batch_size: int | None = None,
  seed: int = 0,
) -> Task:
  """A task on the user's arrays (see :func:`alrao_jax.experiments.data.load_npz`).

  Args:
    path: an ``.npz`` file.
    model: a built-in model configuration (see :func:`model_builder`); default an MLP.
    batch_size: examples per step (default 32).
    seed: seed of the validation and test hold-out when the file has none.

  Returns:
    A :class:`Task` named after the file, with Alrao-SGD's interval [1e-5, 10] and 10 copies.
  """
  splits = load_npz(path, seed=seed)
  num_classes = int(max(int(s.targets.max()) for s in splits)) + 1
  config = dict(model or {"model": "mlp"})
  if config.get("model") == "cnn" and splits.train.inputs.ndim != 4:
    raise ValueError(
      f"the cnn model needs images (N, H, W, C); x in {path} has shape "
      f"{splits.train.inputs.shape}; use the mlp or reshape x."
    )
  build = model_builder(config, num_classes=num_classes)
  batch = batch_size or 32
  if batch > len(splits.train.inputs):
    raise ValueError(
      f"--batch-size {batch} exceeds the {len(splits.train.inputs)} training examples."
    )
  name = pathlib.Path(path).stem
  return Task(name, splits, build, 1e-5, 10.0, 10, batch, num_classes=num_classes)

"""The bundled tasks: data, a model builder, Alrao's interval and the batch size, by name.

Every task's model takes ``train`` as a keyword (:data:`MODES` holds the keyword arguments
of training and evaluation), and reports its loss in nats; ``loss_scale`` converts it into
the task's unit (bits per character for ``ptb-char``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from alrao_jax.data import Splits, load_cifar10, load_digits, load_mnist1d, load_ptb_char
from alrao_jax.models import MLP, CharLSTM, Conv1DNet, DigitsCNN

MODES = {"train_kwargs": {"train": True}, "eval_kwargs": {"train": False}}
TASKS = ("digits", "mnist1d", "mnist1d-mlp", "ptb-char", "cifar10")


class Task(NamedTuple):
  """A bundled task (see :func:`load_task`)."""

  name: str
  splits: Splits
  build: Callable[[int], Any]  # num_copies -> linen module
  lr_min: float  # Alrao's interval for this kind of model, from the paper
  lr_max: float
  copies: int
  batch_size: int
  loss_unit: str = "nats"
  loss_scale: float = 1.0  # reported loss = loss in nats * loss_scale


def load_task(
  name: str, *, data: str | os.PathLike | None = None, batch_size: int | None = None
) -> Task:
  """Loads a bundled task.

  ``digits``: scikit-learn digits, a BatchNorm CNN. ``mnist1d``: MNIST-1D, a 1D CNN.
  ``mnist1d-mlp``: MNIST-1D, a tanh MLP without normalisation. ``ptb-char``: Penn Treebank
  characters (trained on the first 90% of the valid file, see :func:`load_ptb_char`), a
  2-layer LSTM, BPTT 70, 20 streams, loss in bits per character. ``cifar10``: the python
  pickle batches in ``data``, the digits CNN at width 32. Alrao's interval is [1e-5, 10]
  with 10 copies for the feed-forward models and [1e-3, 100] with 6 for the LSTM (the
  paper's).

  Args:
    name: one of :data:`TASKS`.
    data: data folder (``cifar10``: required; ``ptb-char``: default ``../shared``).
    batch_size: examples (streams for ``ptb-char``) per step; default 32, 20 for ``ptb-char``.

  Returns:
    A :class:`Task`.

  Example:
    >>> from alrao_jax.tasks import load_task
    >>> task = load_task('digits')
    >>> task.lr_min, task.lr_max, task.copies, len(task.splits.train.inputs)
    (1e-05, 10.0, 10, 1197)
  """
  if name not in TASKS:
    raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}.")
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  if name == "ptb-char":
    batch = batch_size or 20
    splits, vocab = load_ptb_char(batch_size=batch, bptt=70, directory=data)
    return Task(
      name,
      splits,
      lambda n: CharLSTM(vocab_size=len(vocab), num_copies=n),
      1e-3,
      100.0,
      6,
      batch,
      "bits/char",
      1 / math.log(2),
    )
  batch = batch_size or 32
  if name == "digits":
    return Task(name, load_digits(), lambda n: DigitsCNN(num_copies=n), 1e-5, 10.0, 10, batch)
  if name in ("mnist1d", "mnist1d-mlp"):
    model = Conv1DNet if name == "mnist1d" else MLP
    return Task(name, load_mnist1d(), lambda n: model(num_copies=n), 1e-5, 10.0, 10, batch)
  if data is None:
    raise ValueError("task cifar10 needs data: the path of its cifar-10-batches-py folder.")
  splits = load_cifar10(data)
  return Task(name, splits, lambda n: DigitsCNN(num_copies=n, width=32), 1e-5, 10.0, 10, batch)

"""Alrao and the optimizers it is compared with, by name.

The peers are plain SGD and Adam (which need a learning rate) and optax's learning-rate-free
optimizers (``optax.contrib``), used at their defaults: learning rate 1.0 for ``prodigy``,
``dadapt_adamw``, ``dog``, ``cocob`` and ``schedule_free_sgd``, and ``mechanize`` wrapping
``optax.sgd(1.0)``. Schedule-free SGD is evaluated at its averaged parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from alrao_jax.rates import check_bounds, check_num_copies, copy_rates
from alrao_jax.transform import alrao_adam, alrao_sgd

PEERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
  "sgd": lambda lr: optax.sgd(lr),
  "adam": lambda lr: optax.adam(lr),
  "prodigy": lambda lr: optax.contrib.prodigy(lr),
  "dadapt-adamw": lambda lr: optax.contrib.dadapt_adamw(lr),
  "dog": lambda lr: optax.contrib.dog(lr),
  "cocob": lambda lr: optax.contrib.cocob(lr),
  "mechanize-sgd": lambda lr: optax.contrib.mechanize(optax.sgd(lr)),
  "schedule-free-sgd": lambda lr: optax.contrib.schedule_free_sgd(lr),
}
LR_FREE = ("prodigy", "dadapt-adamw", "dog", "cocob", "mechanize-sgd", "schedule-free-sgd")
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}  # the learning-rate-free ones default to 1.0
EVAL_PARAMS = {  # optimizers whose model is evaluated at other parameters than it trains
  "schedule-free-sgd": lambda s: optax.contrib.schedule_free_eval_params(s.opt_state, s.params),
}
ALRAO = {"alrao-sgd": alrao_sgd, "alrao-adam": alrao_adam}
METHODS = (*ALRAO, *PEERS)


class Method(NamedTuple):
  """An optimizer ready for :func:`alrao_jax.train.fit` (see :func:`make_method`)."""

  name: str
  optimizer: optax.GradientTransformation
  copy_lrs: tuple[float, ...]  # rates of the output copies; one entry for a peer: its lr
  eval_params: Callable[[Any], Any] | None


def make_method(
  name: str,
  *,
  lr: float | None = None,
  lr_min: float | None = None,
  lr_max: float | None = None,
  copies: int | None = None,
  seed: int = 0,
) -> Method:
  """Builds a named method: Alrao (``alrao-sgd``, ``alrao-adam``) or a peer (:data:`PEERS`).

  Args:
    name: one of :data:`METHODS`.
    lr: a peer's learning rate; default :data:`DEFAULT_LR`, or 1.0 for the
      learning-rate-free optimizers. Not for Alrao.
    lr_min: Alrao's smallest rate (Alrao only, required).
    lr_max: Alrao's largest rate (Alrao only, required).
    copies: Alrao's output copies (Alrao only, required).
    seed: Alrao's rates are sampled with ``jax.random.key(seed + 1)`` (the model's
      parameters use ``seed`` itself in :func:`alrao_jax.train.fit`).

  Returns:
    A :class:`Method`; train the model built with ``len(method.copy_lrs)`` copies.

  Example:
    >>> from alrao_jax.methods import make_method
    >>> make_method('alrao-sgd', lr_min=1e-3, lr_max=10.0, copies=3).copy_lrs
    (0.001, 0.1, 10.0)
    >>> make_method('dog').copy_lrs
    (1.0,)
  """
  if name not in METHODS:
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {name!r}.")
  if name in ALRAO:
    if lr is not None:
      raise ValueError(f"{name} samples its rates in [lr_min, lr_max]; lr applies to peers.")
    if lr_min is None or lr_max is None or copies is None:
      raise ValueError(f"{name} needs lr_min, lr_max and copies.")
    check_bounds(lr_min, lr_max, names=("lr_min", "lr_max"))
    check_num_copies(copies)
    tx = ALRAO[name](lr_min, lr_max, key=jax.random.key(seed + 1))
    lrs = tuple(float(str(v)) for v in np.asarray(copy_rates(copies, lr_min, lr_max)))
    return Method(name, tx, lrs, None)  # each rate as its shortest float32 decimal
  if lr_min is not None or lr_max is not None or copies is not None:
    raise ValueError(f"lr_min, lr_max and copies apply to alrao-* methods, not {name}; use lr.")
  lr = DEFAULT_LR.get(name, 1.0) if lr is None else lr
  if not lr > 0:
    raise ValueError(f"lr must be > 0, got {lr}.")
  return Method(name, PEERS[name](lr), (float(lr),), EVAL_PARAMS.get(name))

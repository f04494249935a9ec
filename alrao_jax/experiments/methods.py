"""Alrao and the optimizers it is compared with, by name.

The peers are plain SGD and Adam (which need a learning rate) and optax's learning-rate-free
optimizers (``optax.contrib``), used at their defaults: learning rate 1.0 for ``prodigy``,
``dadapt_adamw``, ``dog``, ``cocob`` and ``schedule_free_sgd``, and ``mechanize`` wrapping
``optax.sgd(1.0)``. Schedule-free SGD is evaluated at its averaged parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from alrao_jax.checks import check_bounds, check_num_copies
from alrao_jax.experiments.names import LAYER_SCHEDULES, METHODS, SCHEDULES, WITH_MOMENTUM
from alrao_jax.layer_schedule import (
  LayerDepths,
  discriminative_schedule,
  layer_depths,
  scale_by_layer_schedule,
  smith_schedule,
)
from alrao_jax.rates import copy_rates
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
WARMUP_FRACTION = 0.05  # of the steps, for the warmup-* schedules


class Method(NamedTuple):
  """An optimizer ready for :func:`alrao_jax.fit` (see :func:`make_method`)."""

  name: str
  optimizer: optax.GradientTransformation
  copy_lrs: tuple[float, ...]  # rates of the output copies; one entry for a peer: its lr
  eval_params: Callable[[Any], Any] | None


def schedule_multiplier(name: str, total_steps: int) -> optax.Schedule:
  """A multiplier of every update over ``total_steps`` steps, from 1 (see :data:`SCHEDULES`).

  ``constant`` (1), ``cosine`` (1 to 0), ``warmup-cosine`` (0 to 1 over the first 5% of the
  steps, then cosine to 0), ``onecycle`` (L. Smith's 1cycle, ``optax.cosine_onecycle_schedule``:
  from 1/25 up to 1 over the first 30% of the steps, then down to 1/25e4), ``linear`` (1 to 0)
  and ``warmup-linear`` (0 to 1 over the first 5%, then linearly to 0). On Alrao every rate,
  the copies' included, is multiplied by it.

  Example:
    >>> from alrao_jax.experiments.methods import schedule_multiplier
    >>> float(schedule_multiplier('linear', 100)(50))
    0.5
    >>> round(float(schedule_multiplier('onecycle', 100)(30)), 3)
    1.0

  References:
    Smith, `Super-convergence: very fast training of neural networks using large learning
    rates <https://arxiv.org/abs/1708.07120>`_, 2018 (1cycle).
  """
  if name not in SCHEDULES:
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {name!r}.")
  if not isinstance(total_steps, int) or total_steps < 1:
    raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}.")
  if name == "cosine":
    return optax.cosine_decay_schedule(1.0, total_steps)
  warmup = max(1, int(total_steps * WARMUP_FRACTION))
  if name == "warmup-cosine":
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(total_steps, warmup + 1))
  if name == "onecycle":
    return optax.cosine_onecycle_schedule(max(total_steps, 2), 1.0)
  if name == "linear":
    return optax.linear_schedule(1.0, 0.0, total_steps)
  if name == "warmup-linear":
    return optax.join_schedules(
      [
        optax.linear_schedule(0.0, 1.0, warmup),
        optax.linear_schedule(1.0, 0.0, max(total_steps - warmup, 1)),
      ],
      [warmup],
    )
  return optax.constant_schedule(1.0)


def model_depths(model: nn.Module, inputs: Any, **kwargs: Any) -> LayerDepths:
  """:func:`alrao_jax.layer_depths` of a linen model (traced on ``inputs``, nothing computed).

  Example:
    >>> import jax.numpy as jnp
    >>> from alrao_jax.experiments.methods import model_depths
    >>> from alrao_jax.experiments.models import DigitsCNN
    >>> model_depths(DigitsCNN(num_copies=2), jnp.zeros((1, 8, 8, 1)), train=False).num_layers
    4
  """
  shapes = jax.eval_shape(lambda key: model.init(key, inputs, **kwargs), jax.random.key(0))
  rest = {k: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), v) for k, v in shapes.items()}
  params = rest.pop("params")
  return layer_depths(lambda p: model.apply({"params": p, **rest}, inputs, **kwargs), params)


def layer_schedule(
  name: str, depths: LayerDepths, total_steps: int
) -> optax.GradientTransformation | None:
  """The layer-wise multiplier named ``name`` (see :data:`LAYER_SCHEDULES`); None for uniform.

  ``discriminative``: fastai's, each layer's rate divided by 2.6 per layer below the output.
  ``smith``: L. Smith's, first layer 1.5 and output layer 0.5 at the start, linearly
  reversed over the run; ``smith-reverse``: the mirror (early layers slow, then fast).

  Example:
    >>> import jax.numpy as jnp
    >>> from alrao_jax.experiments.methods import layer_schedule, model_depths
    >>> from alrao_jax.experiments.models import MLP
    >>> depths = model_depths(MLP(num_copies=1), jnp.zeros((1, 4)), train=False)
    >>> depths.num_layers, layer_schedule('uniform', depths, 100) is None
    (3, True)
  """
  if name not in LAYER_SCHEDULES:
    raise ValueError(f"layer schedule must be one of {', '.join(LAYER_SCHEDULES)}, got {name!r}.")
  if name == "uniform":
    return None
  if name == "discriminative":
    multiplier = discriminative_schedule(depths.num_layers)
  else:
    multiplier = smith_schedule(total_steps, reverse=name == "smith-reverse")
  return scale_by_layer_schedule(multiplier, depths)


def _kernels(params: Any) -> Any:
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_method(
  name: str,
  *,
  lr: float | None = None,
  lr_min: float | None = None,
  lr_max: float | None = None,
  copies: int | None = None,
  seed: int = 0,
  momentum: float | None = None,
  weight_decay: float = 0.0,
  clip: float | None = None,
  schedule: optax.Schedule | None = None,
  layers: optax.GradientTransformation | None = None,
) -> Method:
  """Builds a named method: Alrao (``alrao-sgd``, ``alrao-adam``) or a peer (:data:`PEERS`).

  With the extras, the optimizer is ``optax.chain(clip_by_global_norm(clip),
  add_decayed_weights(weight_decay, mask=kernels), <the method>, layers,
  scale_by_schedule(schedule))``
  (each link only when asked for): the gradient is clipped, then L2 weight decay on the
  kernels (not biases or norm scales) is added to it, as PyTorch's ``weight_decay`` does, and
  every update (each feature's rate included) is scaled by the schedule.

  Args:
    name: one of :data:`METHODS`.
    lr: a peer's learning rate; default :data:`DEFAULT_LR`, or 1.0 for the
      learning-rate-free optimizers. Not for Alrao.
    lr_min: Alrao's smallest rate (Alrao only, required).
    lr_max: Alrao's largest rate (Alrao only, required).
    copies: Alrao's output copies (Alrao only, required).
    seed: Alrao's rates are sampled with ``jax.random.key(seed + 1)`` (the model's
      parameters use ``seed`` itself in :func:`alrao_jax.fit`).
    momentum: heavy-ball momentum in ``[0, 1)`` of ``sgd`` and ``alrao-sgd``.
    weight_decay: L2 coefficient on the kernels, >= 0.
    clip: the largest global gradient norm, > 0.
    schedule: a multiplier of the updates per step, e.g. :func:`schedule_multiplier`.
    layers: a layer-wise multiplier, e.g. :func:`layer_schedule`, applied after the method.

  Returns:
    A :class:`Method`; train the model built with ``len(method.copy_lrs)`` copies.

  Example:
    >>> from alrao_jax.experiments.methods import make_method
    >>> make_method('alrao-sgd', lr_min=1e-3, lr_max=10.0, copies=3).copy_lrs
    (0.001, 0.1, 10.0)
    >>> make_method('dog').copy_lrs
    (1.0,)
  """
  if name not in METHODS:
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {name!r}.")
  _check_extras(name, momentum, weight_decay, clip, schedule, layers)
  if name in ALRAO:
    if lr is not None:
      raise ValueError(f"{name} samples its rates in [lr_min, lr_max]; lr applies to peers.")
    if lr_min is None or lr_max is None or copies is None:
      raise ValueError(f"{name} needs lr_min, lr_max and copies.")
    check_bounds(lr_min, lr_max, names=("lr_min", "lr_max"))
    check_num_copies(copies)
    options = {"momentum": momentum} if momentum else {}
    tx = ALRAO[name](lr_min, lr_max, key=jax.random.key(seed + 1), **options)
    lrs = tuple(float(str(v)) for v in np.asarray(copy_rates(copies, lr_min, lr_max)))
    # each rate as its shortest float32 decimal
    return Method(name, _with_extras(tx, weight_decay, clip, schedule, layers), lrs, None)
  if lr_min is not None or lr_max is not None or copies is not None:
    raise ValueError(f"lr_min, lr_max and copies apply to alrao-* methods, not {name}; use lr.")
  lr = DEFAULT_LR.get(name, 1.0) if lr is None else lr
  if not lr > 0:
    raise ValueError(f"lr must be > 0, got {lr}.")
  tx = optax.sgd(lr, momentum=momentum or None) if name == "sgd" else PEERS[name](lr)
  tx = _with_extras(tx, weight_decay, clip, schedule, layers)
  return Method(name, tx, (float(lr),), EVAL_PARAMS.get(name))


def _check_extras(name, momentum, weight_decay, clip, schedule, layers) -> None:
  if momentum is not None:
    if name not in WITH_MOMENTUM:
      raise ValueError(f"momentum applies to {' and '.join(WITH_MOMENTUM)}, not {name}.")
    if not 0.0 <= momentum < 1.0:
      raise ValueError(f"momentum must be in [0, 1), got {momentum}; e.g. 0.9.")
  if not weight_decay >= 0.0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}; e.g. 5e-4.")
  if clip is not None and not clip > 0.0:
    raise ValueError(f"clip must be > 0 (the largest gradient norm), got {clip}; e.g. 1.0.")
  extras = weight_decay or clip is not None or schedule is not None or layers is not None
  if name in EVAL_PARAMS and extras:
    raise ValueError(
      f"{name} is evaluated at the averaged parameters kept in its own state: use it without "
      "weight decay, clipping, a schedule or a layer schedule."
    )


def _with_extras(
  tx: optax.GradientTransformation,
  weight_decay: float,
  clip: float | None,
  schedule: optax.Schedule | None,
  layers: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
  links = []
  if clip is not None:
    links.append(optax.clip_by_global_norm(clip))
  if weight_decay:
    links.append(optax.add_decayed_weights(weight_decay, mask=_kernels))
  links.append(tx)
  if layers is not None:
    links.append(layers)
  if schedule is not None:
    links.append(optax.scale_by_schedule(schedule))
  return tx if len(links) == 1 else optax.chain(*links)

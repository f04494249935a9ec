"""Layer-wise learning-rate schedules: a multiplier per layer, from its depth and the step.

:func:`layer_depths` orders a model's layers by where the forward pass first uses their
parameters, grouping parameters as the rate tree does (a Dense kernel with its bias, every
gate of an LSTM cell, each layer of a scanned stack on its own); a norm or a lone bias joins
the layer before it. :func:`scale_by_layer_schedule` multiplies each update by
``multiplier(depth_fraction, step)``, 0 for the first layer and 1 for the output layer, on plain
SGD or on top of Alrao. :func:`discriminative_schedule` is fastai's discriminative rates (each
layer's rate divided by 2.6 per layer below the last) and :func:`smith_schedule` is L. Smith's
proposal (early layers fast then slow, late layers slow then fast).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alrao_jax.rates import check_same_paths, leaf_paths, path_string, rate_plans

Multiplier = Callable[[jax.Array, jax.Array], jax.Array]  # (depth_fraction, step) -> multiplier

# Straight-line calls whose inner equations are followed; loops (scan, while) count as one use.
_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint"})
_CALLS_CUSTOM = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})
# Equations that only reshape or cast one parameter: its use is where the result is used.
_PASS_THROUGH = frozenset(
  {"convert_element_type", "reshape", "transpose", "broadcast_in_dim", "squeeze", "copy", "copy_p"}
)


class LayerDepths(NamedTuple):
  """Where each parameter sits in the model (see :func:`layer_depths`)."""

  fractions: Any  # tree like the params: float32 leaves in [0, 1] that broadcast against them
  num_layers: int
  layers: tuple[tuple[str, ...], ...]  # per layer, from the input: the paths it holds


class ScaleByLayerScheduleState(NamedTuple):
  """State of :func:`scale_by_layer_schedule`."""

  count: jax.Array  # shape=(), int32: the steps taken
  fractions: Any  # the depth fractions, a tree like the params


def _inner_jaxpr(eqn: Any) -> Any:
  """The jaxpr of a straight-line call, or None (loops, conditionals, plain primitives)."""
  name = eqn.primitive.name
  if name not in _CALLS and name not in _CALLS_CUSTOM:
    return None
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    inner = eqn.params.get(key)
    inner = getattr(inner, "jaxpr", inner)
    if inner is not None and len(inner.invars) == len(eqn.invars):
      return inner
  return None


def _first_uses(jaxpr: Any, owner: dict, where: tuple, first: dict[int, tuple]) -> None:
  """Records, for each parameter (by leaf index), the position of the first equation that
  uses it; ``owner`` maps variables to the parameter they hold."""
  for index, eqn in enumerate(jaxpr.eqns):
    held = {owner[v] for v in eqn.invars if not hasattr(v, "val") and v in owner}
    if not held:
      continue
    inner = _inner_jaxpr(eqn)
    if inner is not None:
      inner_owner = {
        iv: owner[ov]
        for ov, iv in zip(eqn.invars, inner.invars, strict=True)
        if not hasattr(ov, "val") and ov in owner
      }
      _first_uses(inner, inner_owner, (*where, index), first)
      continue
    if eqn.primitive.name in _PASS_THROUGH and len(held) == len(eqn.outvars) == 1:
      owner[eqn.outvars[0]] = next(iter(held))
      continue
    for leaf in held:
      first.setdefault(leaf, (*where, index))


def _group_of(plan: Any, path: tuple[str, ...]) -> Hashable:
  return ("leaf", path) if plan.kind == "constant" else plan.group


def layer_depths(forward: Callable[[Any], Any], params: Any, *, stacked: Any = None) -> LayerDepths:
  """Orders a model's layers from the input to the output, and gives each parameter its depth.

  The forward pass is traced once (no computation). A layer is a group of parameters that
  share rates in :func:`alrao_jax.sample_rates` and hold a weight of rank >= 2 (a Dense or
  Conv kernel with its bias, an LSTM cell with all its gates, the Alrao head's copies); layers
  are ordered by the first equation that uses them; each layer of a stack (``nn.scan``,
  ``nnx.vmap``; see ``stacked``) is a layer of its own, and groups first used by the same
  equation (a scanned block's attention and MLP) share their depth. A group without such a
  weight (a norm, a lone bias) joins the layer used before it. Parameters the forward pass
  never uses get the last layer's depth.

  Args:
    forward: ``params -> outputs``, e.g. ``lambda p: model.apply({'params': p}, x)`` (linen) or
      ``lambda s: nnx.merge(graphdef, s, rest)(x)`` (NNX).
    params: the parameter tree ``forward`` takes (arrays or ``jax.ShapeDtypeStruct``).
    stacked: as in :func:`alrao_jax.sample_rates`: names stacks that shapes cannot tell.

  Returns:
    A :class:`LayerDepths`: ``fractions`` (a tree like ``params``; leaf ``d`` is 0 for the first
    layer and 1 for the last, ``index / (num_layers - 1)``, with one value per layer on a
    stack's leading axes), ``num_layers`` and the paths of each layer.

  Raises:
    TypeError: ``forward`` is not callable.
    ValueError: ``params`` holds no parameter.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, alrao_jax
    >>> model = nn.Sequential([nn.Dense(8), nn.LayerNorm(), nn.relu, nn.Dense(2)])
    >>> x = jnp.ones((1, 3))
    >>> params = model.init(jax.random.key(0), x)['params']
    >>> depths = alrao_jax.layer_depths(lambda p: model.apply({'params': p}, x), params)
    >>> depths.num_layers, depths.layers[0]
    (2, ('layers_0/bias', 'layers_0/kernel', 'layers_1/bias', 'layers_1/scale'))
    >>> fractions = depths.fractions
    >>> float(fractions['layers_1']['scale'][0]), float(fractions['layers_3']['bias'][0])
    (0.0, 1.0)
  """
  if not callable(forward):
    raise TypeError(f"forward must be a function params -> outputs, got {forward!r}.")
  paths, leaves, treedef = leaf_paths(params)
  if not paths:
    raise ValueError("params holds no parameter; pass the model's parameter tree.")
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
  closed = jax.make_jaxpr(forward)(abstract)
  owner = {v: i for i, v in enumerate(closed.jaxpr.invars[: len(paths)])}
  first: dict[int, tuple] = {}
  _first_uses(closed.jaxpr, owner, (), first)
  never = (float("inf"),)
  with warnings.catch_warnings():  # sample_rates reports unknown and ambiguous modules
    warnings.simplefilter("ignore")
    _, _, _, plans, leads = rate_plans(params, stacked=stacked)
  groups: dict[Hashable, list[int]] = {}
  for i, (path, plan) in enumerate(zip(paths, plans, strict=True)):
    groups.setdefault(_group_of(plan, path), []).append(i)

  def stack(i: int) -> tuple[int, ...]:
    return tuple(np.shape(leaves[i])[: leads[paths[i]]])

  def position(members: list[int]) -> tuple:
    return min(first.get(i, never) for i in members)

  def is_layer(members: list[int]) -> bool:
    return any(np.ndim(leaves[i]) - len(stack(i)) >= 2 for i in members)

  used = [m for m in groups.values() if position(m) != never]  # unused: not a layer of its own
  layer_groups = [m for m in used if is_layer(m)] or used or list(groups.values())
  slots: dict[tuple, int] = {}  # first use -> layers in that slot
  for members in layer_groups:
    count = max(int(np.prod(stack(i))) for i in members)
    slots[position(members)] = max(slots.get(position(members), 1), count)
  order = sorted(slots)
  starts = dict(zip(order, np.cumsum([0] + [slots[p] for p in order[:-1]]).tolist(), strict=True))
  num_layers = sum(slots.values())
  span = max(num_layers - 1, 1)
  fractions: list[Any] = [None] * len(paths)
  members_of: list[list[str]] = [[] for _ in range(num_layers)]
  for members in groups.values():
    where = position(members)
    before = [p for p in order if p <= where]
    slot = before[-1] if before else order[0]
    for i in members:
      lead = stack(i)
      count = int(np.prod(lead))
      # a stack's own norms go per layer; anything else joins the slot's last layer
      within = np.arange(count) if count == slots[slot] else np.full(count, slots[slot] - 1)
      index = starts[slot] + within
      shape = (*lead, *(1,) * (np.ndim(leaves[i]) - len(lead)))
      fractions[i] = jnp.asarray(np.reshape(index / span, shape), jnp.float32)
      for layer in sorted(set(index.tolist())):
        members_of[layer].append(path_string(paths[i]))
  layers = tuple(tuple(sorted(m)) for m in members_of)
  return LayerDepths(jax.tree_util.tree_unflatten(treedef, fractions), num_layers, layers)


def scale_by_layer_schedule(
  multiplier: Multiplier,
  depths: LayerDepths | Callable[[Any], LayerDepths],
) -> optax.GradientTransformation:
  """Multiplies each layer's updates by ``multiplier(depth_fraction, step)``.

  Put it after the optimizer that sets the rates (``optax.sgd``, :func:`alrao_jax.alrao_sgd`):
  on Alrao it multiplies each feature's rate and the output copies' rates. The depths live in
  the state, so a checkpoint of the state is self-contained.

  Args:
    multiplier: ``(depth_fraction, step) -> multiplier``, traceable (jnp): the fraction is an
      array (0 for the first layer, 1 for the last), the step an int32 scalar, counted from 0.
      E.g. :func:`discriminative_schedule`, :func:`smith_schedule` or your own function.
    depths: a :class:`LayerDepths` from :func:`layer_depths`, or a function ``params ->
      LayerDepths`` called by ``init``.

  Returns:
    An :class:`optax.GradientTransformation`. ``init`` raises a `ValueError` if the depths do
    not fit the parameters and a `TypeError` if ``multiplier`` does not return an array that
    broadcasts against the fractions.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, optax, alrao_jax
    >>> model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(4), nn.relu, nn.Dense(2)])
    >>> x = jnp.ones((1, 3))
    >>> params = model.init(jax.random.key(0), x)['params']
    >>> depths = alrao_jax.layer_depths(lambda p: model.apply({'params': p}, x), params)
    >>> tx = optax.chain(
    ...   optax.sgd(0.1),
    ...   alrao_jax.scale_by_layer_schedule(alrao_jax.discriminative_schedule(3), depths),
    ... )
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> [round(float(updates[n]['bias'][0]), 4) for n in ('layers_0', 'layers_2', 'layers_4')]
    [-0.0148, -0.0385, -0.1]

  References:
    Howard & Ruder, `Universal Language Model Fine-tuning for Text Classification
    <https://arxiv.org/abs/1801.06146>`_, 2018 (discriminative fine-tuning).
  """
  if not callable(multiplier):
    raise TypeError(
      f"multiplier must be a function (depth_fraction, step) -> multiplier, got {multiplier!r}."
    )
  if not (isinstance(depths, LayerDepths) or callable(depths)):
    raise TypeError(
      f"depths must be alrao_jax.layer_depths(forward, params) or a function params -> "
      f"LayerDepths, got {type(depths).__name__}."
    )

  def init_fn(params: optax.Params) -> ScaleByLayerScheduleState:
    found = depths(params) if callable(depths) and not isinstance(depths, LayerDepths) else depths
    if not isinstance(found, LayerDepths):
      raise TypeError(f"depths(params) must return a LayerDepths, got {type(found).__name__}.")
    check_same_paths(
      found.fractions,
      params,
      what="the layer depths do not fit the parameters",
      fix="Compute them with alrao_jax.layer_depths(forward, params) on the parameters this "
      "optimizer updates.",
    )
    for fraction in jax.tree.leaves(found.fractions):
      out = jax.eval_shape(multiplier, fraction, jnp.zeros((), jnp.int32))
      if not hasattr(out, "shape") or jnp.broadcast_shapes(out.shape, fraction.shape) != tuple(
        fraction.shape
      ):
        raise TypeError(
          f"multiplier(depth_fraction, step) must return a number or an array shaped like "
          f"the fraction {tuple(fraction.shape)}; got {out!r}."
        )
    return ScaleByLayerScheduleState(jnp.zeros((), jnp.int32), found.fractions)

  def update_fn(
    updates: optax.Updates, state: ScaleByLayerScheduleState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, ScaleByLayerScheduleState]:
    del params
    scaled = jax.tree.map(
      lambda u, d: (u * multiplier(d, state.count)).astype(u.dtype), updates, state.fractions
    )
    return scaled, ScaleByLayerScheduleState(optax.safe_increment(state.count), state.fractions)

  return optax.GradientTransformation(init_fn, update_fn)


def discriminative_schedule(num_layers: int, *, ratio: float = 2.6) -> Multiplier:
  """fastai's discriminative rates: the last layer at 1, each layer below it divided by ``ratio``.

  ``multiplier(d, step) = ratio ** (-(num_layers - 1) * (1 - d))``, the same at every step.

  Args:
    num_layers: the model's layers, ``layer_depths(...).num_layers``.
    ratio: the division per layer, > 0 (fastai's 2.6).

  Returns:
    A multiplier for :func:`scale_by_layer_schedule`.

  Example:
    >>> import alrao_jax
    >>> m = alrao_jax.discriminative_schedule(3)
    >>> [round(float(m(d, 0)), 4) for d in (0.0, 0.5, 1.0)]
    [0.1479, 0.3846, 1.0]

  References:
    Howard & Ruder, `Universal Language Model Fine-tuning for Text Classification
    <https://arxiv.org/abs/1801.06146>`_, 2018 (section 3.2, ``eta / 2.6``).
  """
  if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
    raise ValueError(
      f"num_layers must be an int >= 1 (LayerDepths.num_layers), got {num_layers!r}."
    )
  if not ratio > 0:
    raise ValueError(f"ratio must be > 0, got {ratio}; fastai uses 2.6.")
  steps_below = num_layers - 1

  def multiplier(depth_fraction: jax.Array, step: jax.Array) -> jax.Array:
    del step
    return jnp.power(jnp.float32(ratio), -steps_below * (1.0 - depth_fraction))

  return multiplier


def smith_schedule(
  total_steps: int, *, first: float = 1.5, last: float = 0.5, reverse: bool = False
) -> Multiplier:
  """L. Smith's layer learning rates: the first layers fast and the last slow, reversed by the end.

  At step 0 the multiplier goes linearly with depth from ``first`` (the first layer) to ``last``
  (the output layer); each layer's multiplier then moves linearly over ``total_steps`` to the
  mirrored value (the first layer ends at ``last``, the output layer at ``first``), and stays
  there. Halfway every layer is at ``(first + last) / 2``. ``reverse=True`` swaps the two ends
  (early layers slow then fast), the control of Smith's question.

  Args:
    total_steps: steps of the run, >= 1.
    first: the first layer's multiplier at step 0, > 0 (Smith's guess: 1.5).
    last: the output layer's multiplier at step 0, > 0 (Smith's guess: 0.5).
    reverse: start from the mirrored profile instead.

  Returns:
    A multiplier for :func:`scale_by_layer_schedule`.

  Example:
    >>> import alrao_jax
    >>> m = alrao_jax.smith_schedule(100)
    >>> [float(m(0.0, s)) for s in (0, 50, 100)], [float(m(1.0, s)) for s in (0, 100)]
    ([1.5, 1.0, 0.5], [0.5, 1.5])

  References:
    L. Smith, "Cyclical layer learning rates (a research question)", fast.ai forums, 2018.
  """
  if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
    raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}.")
  if not (first > 0 and last > 0):
    raise ValueError(f"first and last must be > 0, got {first} and {last}; e.g. 1.5 and 0.5.")
  if reverse:
    first, last = last, first

  def multiplier(depth_fraction: jax.Array, step: jax.Array) -> jax.Array:
    start = first + (last - first) * depth_fraction
    end = last + (first - last) * depth_fraction
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
    return start + (end - start) * progress

  return multiplier

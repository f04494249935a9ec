"""Per-feature learning-rate trees for Flax parameter trees.

A *rate tree* has the structure of a parameter tree; each leaf broadcasts against
its parameter (size 1 on every axis but the feature axes), so that all incoming
weights of one feature, and its bias, move with the same learning rate.
"""

from __future__ import annotations

import math
import numbers
import re
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alrao_jax.checks import check_bounds, check_num_copies
from alrao_jax.nnx_types import is_nnx

Label = str | float | tuple[int, ...] | None
Rules = Callable[[str, jax.Array], Label] | Any

GRANULARITIES = ("feature", "weight", "layer")
COPIES_MODULE = "alrao_copies"

_KNOWN_LEAVES = frozenset({"kernel", "bias", "scale", "embedding"})
_LSTM_GATES = frozenset({"ii", "if", "if_", "ig", "io", "hi", "hf", "hg", "ho"})
_GRU_GATES = frozenset({"ir", "iz", "in", "hr", "hz", "hn"})
_FUSED_CELL = frozenset({"dense_i", "dense_h"})
_ATTENTION_INPUTS = frozenset({"query", "key", "value"})
_VARIABLE_ATTRS = frozenset({"value", "raw_value"})


def copy_rates(num_copies: int, lr_min: float, lr_max: float) -> jax.Array:
  """The learning rates of the output-layer copies: a log-uniform grid.

  ``lr_j = exp(log lr_min + j / (N - 1) * log(lr_max / lr_min))`` for ``j = 0..N-1``,
  both ends included; ``[lr_min]`` when ``N = 1``.

  Args:
    num_copies: number of copies ``N`` of the output layer, at least 1.
    lr_min: smallest learning rate, > 0.
    lr_max: largest learning rate, >= ``lr_min``.

  Returns:
    A float32 array of shape ``(num_copies,)``, increasing.

  Example:
    >>> import alrao_jax
    >>> alrao_jax.copy_rates(3, 1e-2, 1.0).tolist()
    [0.009999999776482582, 0.10000000149011612, 1.0]

  References:
    Blier, Wolinski & Ollivier, `Learning with Random Learning Rates
    <https://arxiv.org/abs/1810.01322>`_, 2018 (Algorithm 1, line 6).
  """
  check_num_copies(num_copies)
  check_bounds(lr_min, lr_max)
  if num_copies == 1:
    return jnp.asarray([lr_min], jnp.float32)
  return jnp.asarray(np.geomspace(lr_min, lr_max, num_copies), jnp.float32)


_EXP_LIMIT = math.log(float(np.finfo(np.float32).max))  # exp overflows float32 above this


def _log_uniform(u: jax.Array, lr_min: float, log_ratio: float) -> jax.Array:
  """``lr_min * (lr_max / lr_min) ** u`` in float32, for ``u`` in [0, 1). Two bounds inside
  float32's range may have a ratio outside it (``[1e-20, 1e20]``): the power is then taken in
  log space, where it cannot overflow to inf."""
  if log_ratio < _EXP_LIMIT:
    return lr_min * jnp.exp(u * log_ratio)
  return jnp.exp(math.log(lr_min) + u * log_ratio)


class _Plan(NamedTuple):
  """How one parameter leaf gets its rates from the rates of its group."""

  group: Hashable  # leaves with equal groups share one draw
  shape: tuple[int, ...]  # shape of the group's rate array
  to_leaf: Callable[[jax.Array], jax.Array]  # group rates -> broadcast-shaped leaf rates
  kind: str = "sampled"  # "sampled", "copies" or "constant"
  value: float = 0.0  # the rate, for kind == "constant"


def _key_name(entry: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def leaf_paths(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> tuple:
  """Flattens a parameter tree into module-style paths, leaves and a treedef.

  Flax NNX wraps arrays in variables (``.value``); those accessor entries are dropped
  so that linen dicts and ``nnx.State`` give the same paths. A tree that is one array (a
  valid optax parameter tree) has the single path ``("",)``.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  paths = []
  for path, _ in flat:
    names = [_key_name(entry) for entry in path]
    while (
      len(names) > 1
      and isinstance(path[len(names) - 1], jax.tree_util.GetAttrKey)
      and (names[-1] in _VARIABLE_ATTRS)
    ):
      names.pop()
    paths.append(tuple(names) or ("",))  # a bare array: one leaf named ""
  return paths, [leaf for _, leaf in flat], treedef


def path_string(path: Sequence[str]) -> str:
  """The ``/``-joined form of a path, as given to ``rules`` callables."""
  return "/".join(path)


def _broadcast_shape(ndim: int, axes: Sequence[int], sizes: Sequence[int]) -> tuple[int, ...]:
  shape = [1] * ndim
  for axis, size in zip(axes, sizes, strict=True):
    shape[axis] = size
  return tuple(shape)


def _reshape_to(shape: tuple[int, ...]) -> Callable[[jax.Array], jax.Array]:
  return lambda rates: jnp.reshape(rates, shape)


def _tile_to(shape: tuple[int, ...], gates: int) -> Callable[[jax.Array], jax.Array]:
  return lambda rates: jnp.reshape(jnp.tile(rates, gates), shape)


def _trailing_plan(group: Hashable, leaf: Any, feature_shape: tuple[int, ...]) -> _Plan:
  """Rates over the trailing axes of ``leaf`` that make up ``feature_shape``."""
  ndim = np.ndim(leaf)
  shape = (1,) * (ndim - len(feature_shape)) + tuple(feature_shape)
  return _Plan(group, tuple(feature_shape), _reshape_to(shape))


def _cell_plans(cell: tuple[str, ...], members: dict[tuple[str, ...], Any]) -> dict | None:
  """Plans for a recurrent cell: every gate and matrix of hidden unit k shares rate k."""
  gates = {path[len(cell)] for path in members}
  names = {path[-1] for path in members}
  if not names <= {"kernel", "bias"}:
    return None
  fused = gates == _FUSED_CELL
  if not (
    fused
    or (gates <= _LSTM_GATES and {"hi", "hf", "hg", "ho"} <= gates)
    or (gates <= _GRU_GATES and {"hr", "hz", "hn"} <= gates)
  ):
    return None
  recurrent = "dense_h" if fused else "hi" if "hi" in gates else "hr"
  kernel = members.get((*cell, recurrent, "kernel"))
  if kernel is None or np.ndim(kernel) != 2:
    return None
  hidden = np.shape(kernel)[0]
  plans = {}
  for path, leaf in members.items():
    width = np.shape(leaf)[-1]
    if width % hidden:
      return None
    shape = (1,) * (np.ndim(leaf) - 1) + (width,)
    plans[path] = _Plan(("cell", cell), (hidden,), _tile_to(shape, width // hidden))
  return plans


def _module_plans(module: tuple[str, ...], members: dict[tuple[str, ...], Any]) -> tuple:
  """Feature plans for the leaves of one module; returns (plans, unknown paths)."""
  by_name = {path[-1]: (path, leaf) for path, leaf in members.items()}
  plans, unknown = {}, []
  group = ("module", module)
  kernel = by_name.get("kernel")
  if kernel is not None and np.ndim(kernel[1]) >= 1:
    kshape = np.shape(kernel[1])
    bias = by_name.get("bias")
    bshape = np.shape(bias[1]) if bias is not None else None
    local = any(name.startswith("ConvLocal") for name in module)
    if (
      bshape
      and len(bshape) >= 2
      and len(kshape) == len(bshape) + 1
      and (kshape[-1] == bshape[-1] and kshape[:-2] == bshape[:-1])
      and (local or kshape[-len(bshape) :] != bshape)
    ):
      feature = (kshape[-1],)  # ConvLocal: one rate per filter, shared by all positions
    elif bshape and kshape[-len(bshape) :] == bshape:
      feature = bshape  # Dense, Conv, DenseGeneral, Einsum, attention q/k/v
    elif bshape is None and module and module[-1] in _ATTENTION_INPUTS and len(kshape) == 3:
      feature = kshape[-2:]  # (in, heads, head_dim) without bias
    elif bshape is None or (len(bshape) == 1 and kshape[-1] == bshape[0]):
      feature = (kshape[-1],)
    else:
      feature = None
    if feature is not None:
      plans[kernel[0]] = _trailing_plan(group, kernel[1], feature)
      for name, (path, leaf) in by_name.items():
        if name == "kernel":
          continue
        if name in _KNOWN_LEAVES and np.shape(leaf)[-len(feature) :] == feature:
          plans[path] = _trailing_plan(group, leaf, feature)
        elif name in _KNOWN_LEAVES and np.ndim(leaf) >= 1 and np.shape(leaf)[-1] == feature[-1]:
          plans[path] = _trailing_plan(group, leaf, feature[-1:])
  else:
    channels = {
      np.shape(leaf)[-1]
      for name, (_, leaf) in by_name.items()
      if name in _KNOWN_LEAVES and np.ndim(leaf) >= 1
    }
    if len(channels) == 1:
      (size,) = channels
      for name, (path, leaf) in by_name.items():
        if name in _KNOWN_LEAVES and np.ndim(leaf) >= 1:
          plans[path] = _trailing_plan(group, leaf, (size,))
  for path, leaf in members.items():
    if path not in plans:
      unknown.append(path)
      plans[path] = _fallback_plan(path, leaf)
  return plans, unknown


def _fallback_plan(path: tuple[str, ...], leaf: Any) -> _Plan:
  shape = np.shape(leaf)
  feature = shape[-1:] if shape else ()
  return _trailing_plan(("leaf", path), leaf, feature)


def _copies_plan(path: tuple[str, ...], leaf: Any) -> _Plan:
  shape = np.shape(leaf)
  if not shape:
    raise ValueError(f"copies need a leading copy axis, but {path_string(path)} is a scalar.")
  target = (shape[0],) + (1,) * (len(shape) - 1)
  return _Plan(("copies", shape[0]), (shape[0],), _reshape_to(target), kind="copies")


def _shape_only(shape: Sequence[int]) -> np.ndarray:
  """A zero-cost array of ``shape`` (a broadcast view), for planning on shapes alone."""
  return np.broadcast_to(np.zeros((), np.int8), tuple(shape))


def _module_fits(module: tuple[str, ...], shapes: dict[tuple[str, ...], tuple]) -> bool:
  """Whether a module with these leaf shapes matches a row of the SPEC table."""
  if any(len(s) == 0 for s in shapes.values()):
    return False
  members = {path: _shape_only(s) for path, s in shapes.items()}
  return not _module_plans(module, members)[1]


def _stack_evidence(module: tuple[str, ...], shapes: dict[tuple[str, ...], tuple]) -> str:
  """``"stacked"``, ``"ambiguous"`` or ``"no"``: does a leading layer axis explain the shapes?

  ``"stacked"`` when the module fits the SPEC table once its common leading axis is removed
  and only that axis explains its shapes (a norm of rank 2, a kernel and bias whose leading
  axes agree but which are no ``DenseGeneral``); ``"ambiguous"`` when both readings fit.
  """
  if not shapes or any(len(s) == 0 for s in shapes.values()):
    return "no"
  if len({s[0] for s in shapes.values()}) != 1:
    return "no"
  if not _module_fits(module, {p: s[1:] for p, s in shapes.items()}):
    return "no"
  by_name = {path[-1]: s for path, s in shapes.items()}
  kernel, bias = by_name.get("kernel"), by_name.get("bias")
  if kernel is None:
    known = [(n, s) for n, s in by_name.items() if n in _KNOWN_LEAVES]
    return "stacked" if known and all(len(s) >= 2 + (n == "embedding") for n, s in known) else "no"
  if bias is None and len(kernel) == 3 and module and not _one_layer_kernel(module[-1]):
    return "ambiguous"  # a bias-free (L, in, out): a scanned Dense, or a Conv1D or DenseGeneral
  if bias is None or any(name.startswith("ConvLocal") for name in module):
    return "no"  # a kernel alone, or ConvLocal's per-position axes: the shapes cannot tell
  if len(bias) >= 2 and kernel[-len(bias) :] == bias:
    return "ambiguous"  # fits a DenseGeneral / Einsum with several output axes as well
  return "stacked"


STACK_AXIS_NAMES = ("layers",)  # the partition name Flax's examples give to scanned stacks


def declared_stack_axes(params: Any) -> dict[tuple[str, ...], int]:
  """The layer axes the parameters' Flax metadata declares: leading axes whose sharding name
  is in :data:`STACK_AXIS_NAMES`, as linen's ``nn.scan(..., metadata_params={nn.PARTITION_NAME:
  'layers'})`` names them on ``nn.Partitioned`` parameters and NNX's ``nnx.vmap(...,
  transform_metadata={nnx.PARTITION_NAME: 'layers'})`` on a variable's ``out_sharding``.

  Returns:
    ``{path: number of leading layer axes}`` for the parameters that declare some.
  """
  import flax.linen as nn  # only Flax trees hold such metadata

  def is_box(x: Any) -> bool:
    return isinstance(x, nn.Partitioned) or is_nnx(x, "Variable")

  declared = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_box)[0]:
    if isinstance(leaf, nn.Partitioned):
      names = leaf.names
    elif is_nnx(leaf, "Variable"):
      meta = leaf.get_metadata()
      names = meta.get("out_sharding") or meta.get("sharding_names")
    else:
      continue
    count = 0
    for name in tuple(names or ()):
      if name not in STACK_AXIS_NAMES:
        break
      count += 1
    if count:
      declared[tuple(_key_name(entry) for entry in path) or ("",)] = count
  return declared


def _one_layer_kernel(name: str) -> bool:
  """Whether a module of this name holds one layer's rank-3 kernel (a 1-D convolution, a
  ``DenseGeneral`` or ``Einsum``, an attention projection), not a stack of Dense kernels."""
  prefixes = ("Conv", "conv", "DenseGeneral", "Einsum", "einsum")
  return name.startswith(prefixes) or name in _ATTENTION_INPUTS | {"out", "attention"}


def _modules_of(paths: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], list]:
  modules: dict[tuple[str, ...], list] = {}
  for path in paths:
    modules.setdefault(path[:-1], []).append(path)
  return modules


def _under(path: tuple[str, ...], prefix: tuple[str, ...]) -> bool:
  return path[: len(prefix)] == prefix


def _explicit_leads(
  paths: list[tuple[str, ...]], shapes: dict[tuple[str, ...], tuple], stacked: Any
) -> dict[tuple[str, ...], int]:
  """Leading layer axes named by the user: ``{path prefix: number of axes}``."""
  if stacked is None:
    return {}
  if not isinstance(stacked, Mapping):
    raise TypeError(
      f"stacked must be a mapping {{path prefix: number of layer axes}}, got {stacked!r}; "
      "e.g. stacked={'ScanBlock_0': 1}."
    )
  leads = {}
  for prefix, count in sorted(stacked.items(), key=lambda item: len(str(item[0]))):
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
      raise ValueError(f"stacked[{prefix!r}] must be an int >= 0 (layer axes), got {count!r}.")
    parts = tuple(p for p in str(prefix).split("/") if p)
    below = [p for p in paths if _under(p, parts)]
    if not below:
      modules = sorted({path_string(p[:-1]) for p in paths})
      raise ValueError(
        f"stacked names {prefix!r}, which matches no parameter path; module paths are "
        f"e.g. {modules[:6]}."
      )
    copies = [p for p in below if COPIES_MODULE in p[:-1]]
    if copies and count:
      raise ValueError(
        f"stacked[{prefix!r}] covers the Alrao head's copies ({path_string(copies[0])}), whose "
        "leading axis is the copy axis, not a layer axis; name the stacked blocks only."
      )
    leading = {shapes[p][:count] for p in below}
    if any(len(shapes[p]) < count for p in below) or len(leading) != 1:
      raise ValueError(
        f"stacked[{prefix!r}] = {count}, but the parameters below it do not share {count} "
        f"leading axes: {sorted({path_string(p): shapes[p] for p in below}.items())[:4]}."
      )
    thin = [p for p in below if p[-1] == "kernel" and len(shapes[p]) - count < 2]
    if thin:
      raise ValueError(
        f"stacked[{prefix!r}] = {count} leaves {path_string(thin[0])} of shape "
        f"{shapes[thin[0]]} less than a (in, out) kernel; a scanned block has 1 layer axis."
      )
    leads.update(dict.fromkeys(below, int(count)))
  return leads


def stack_axes(
  paths: list[tuple[str, ...]],
  leaves: list[Any],
  *,
  stacked: Any = None,
  declared: Mapping[tuple[str, ...], int] | None = None,
) -> tuple:
  """How many leading layer axes each leaf has (``nn.scan`` / ``nnx.vmap`` stacks).

  A module whose shapes only a leading layer axis explains (see :func:`_stack_evidence`)
  makes its enclosing scope stacked: the largest enclosing module whose parameters all
  share that leading axis and still fit the SPEC table without it (a scanned block). This
  repeats for stacks of stacks. ``declared`` gives the layer axes the parameters' Flax
  metadata declares (see :func:`declared_stack_axes`); ``stacked`` names prefixes explicitly
  (it wins below them).

  Returns:
    ``(leads, ambiguous)``: ``{path: number of leading layer axes}`` and the module paths
    whose shapes fit both readings and were left unstacked.
  """
  shapes = {p: tuple(np.shape(leaf)) for p, leaf in zip(paths, leaves, strict=True)}
  explicit = {
    p: n for p, n in (declared or {}).items() if COPIES_MODULE not in p[:-1]
  } | _explicit_leads(paths, shapes, stacked)
  free = [p for p in paths if p not in explicit and COPIES_MODULE not in p[:-1]]
  leads = dict.fromkeys(paths, 0) | explicit

  def inner(p):
    return shapes[p][leads[p] :]

  def accepts(scope, size):
    below = [p for p in paths if _under(p, scope)]
    if any(p not in free or len(inner(p)) == 0 or inner(p)[0] != size for p in below):
      return False
    for module, members in _modules_of(below).items():
      now = {p: inner(p) for p in members}
      if _module_fits(module, now) and not _module_fits(module, {p: s[1:] for p, s in now.items()}):
        return False
    return True

  while True:
    modules = _modules_of(free)
    found = {}
    for module, members in sorted(modules.items()):
      if any(_under(module, scope) for scope in found):
        continue
      now = {p: inner(p) for p in members}
      if _stack_evidence(module, now) != "stacked":
        continue
      size = next(iter(now.values()))[0]
      scope = module
      while scope and accepts(scope[:-1], size):
        scope = scope[:-1]
      found = {s: n for s, n in found.items() if not _under(s, scope)} | {scope: size}
    if not found:
      break
    for scope in found:
      for p in free:
        if _under(p, scope):
          leads[p] += 1
  ambiguous = [
    module
    for module, members in _modules_of(free).items()
    if _stack_evidence(module, {p: inner(p) for p in members}) == "ambiguous"
  ]
  return leads, ambiguous


def _feature_plans(paths: list[tuple[str, ...]], leaves: list[Any]) -> tuple[dict, list]:
  """The default rule of the SPEC table, for every leaf."""
  plans, unknown = {}, []
  pending = {}
  for path, leaf in zip(paths, leaves, strict=True):
    if COPIES_MODULE in path[:-1]:
      plans[path] = _copies_plan(path, leaf)
    else:
      pending[path] = leaf
  cells: dict[tuple[str, ...], dict] = {}
  for path, leaf in pending.items():
    if len(path) >= 2:
      cells.setdefault(path[:-2], {})[path] = leaf
  for cell, members in cells.items():
    inside = {p: leaf for p, leaf in pending.items() if p[: len(cell)] == cell}
    if len(inside) != len(members):
      continue
    cell_plans = _cell_plans(cell, members)
    if cell_plans:
      plans.update(cell_plans)
  modules: dict[tuple[str, ...], dict] = {}
  for path, leaf in pending.items():
    if path not in plans:
      modules.setdefault(path[:-1], {})[path] = leaf
  for module, members in modules.items():
    module_plans, module_unknown = _module_plans(module, members)
    plans.update(module_plans)
    unknown.extend(module_unknown)
  return plans, unknown


def _stacked_plan(plan: _Plan, lead: tuple[int, ...]) -> _Plan:
  """A plan made for one layer, repeated with independent draws over the layer axes."""
  if not lead or plan.kind != "sampled":
    return plan
  to_leaf = plan.to_leaf
  for _ in lead:
    to_leaf = jax.vmap(to_leaf)
  return plan._replace(shape=(*lead, *plan.shape), to_leaf=to_leaf)


def _label_plan(label: Label, path: tuple[str, ...], leaf: Any, lead: int, default: _Plan) -> _Plan:
  """The plan for ``label``; ``default`` is the feature rule, already per layer."""
  shape = np.shape(leaf)
  where = path_string(path)
  layers, inner = shape[:lead], shape[lead:]
  if label is None or label == "feature":
    return default
  if isinstance(label, str):
    if label == "weight":
      return _Plan(("weight", path), shape, _reshape_to(shape))
    if label == "layer":
      plan = _Plan(("layer", path[:-1]), (), _reshape_to((1,) * len(inner)))
      return _stacked_plan(plan, layers)
    if label == "copies":
      return _copies_plan(path, leaf)
    raise ValueError(
      f"rules gave unknown label {label!r} for {where}; use None, 'feature', 'weight', "
      "'layer', 'copies', a float rate or a tuple of feature axes."
    )
  if isinstance(label, numbers.Real) and not isinstance(label, bool):
    if not (math.isfinite(label) and label >= 0):
      raise ValueError(f"rules gave rate {label} for {where}; a fixed rate must be finite, >= 0.")
    return _Plan(("constant", path), (), _reshape_to((1,) * len(shape)), "constant", float(label))
  if isinstance(label, tuple) and all(isinstance(a, int) for a in label):
    if any(not -len(shape) <= a < len(shape) for a in label) or len(set(label)) != len(label):
      raise ValueError(f"rules gave feature axes {label} for {where} of shape {shape}.")
    axes = tuple(sorted(a % len(shape) for a in label))
    if lead and not set(range(lead)) <= set(axes):
      warnings.warn(
        f"alrao_jax.sample_rates: rules gave feature axes {label} for {where}, whose leading "
        f"{lead} axis(es) of size {layers} stack layers: those layers share rates. Include "
        f"axes {tuple(range(lead))} to give each layer its own.",
        stacklevel=4,
      )
    sizes = tuple(shape[a] for a in axes)
    shape_to = _broadcast_shape(len(shape), axes, sizes)
    return _Plan(("axes", path[:-1], sizes), sizes, _reshape_to(shape_to))
  raise TypeError(f"rules gave {label!r} for {where}; labels are str, float, tuple or None.")


def _labels(rules: Rules, paths: list, leaves: list, params: Any) -> list[Label]:
  if rules is None:
    return [None] * len(paths)
  if callable(rules):
    return [rules(path_string(p), leaf) for p, leaf in zip(paths, leaves, strict=True)]
  label_paths, labels, _ = leaf_paths(rules, is_leaf=_is_label)
  if label_paths != paths:
    missing = sorted(set(map(path_string, paths)) ^ set(map(path_string, label_paths)))
    raise ValueError(
      "rules must be a callable (path, leaf) -> label or a label tree with the structure of "
      f"params; these paths do not match: {missing[:5]}."
    )
  return labels


def _is_label(x: Any) -> bool:
  return x is None or isinstance(x, str | float | int | tuple)


def rate_plans(
  params: Any, *, granularity: str = "feature", rules: Rules = None, stacked: Any = None
) -> tuple:
  """Plans every leaf's rates; returns (paths, leaves, treedef, plans, leads), ``leads`` the
  leading layer axes of each path (:func:`stack_axes`).

  Raises:
    ValueError: an unknown ``granularity``, a bad ``rules`` label or ``stacked`` entry.
  """
  if granularity not in GRANULARITIES:
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}.")
  paths, leaves, treedef = leaf_paths(params)
  check_parameter_leaves(params, paths, leaves)
  declared = declared_stack_axes(params)
  leads, ambiguous = stack_axes(paths, leaves, stacked=stacked, declared=declared)
  inner = [_shape_only(np.shape(leaf)[leads[p] :]) for p, leaf in zip(paths, leaves, strict=True)]
  feature, unknown = _feature_plans(paths, inner)
  labels = _labels(rules, paths, leaves, params)
  plans = []
  for label, path, leaf, one_layer in zip(labels, paths, leaves, inner, strict=True):
    lead = np.shape(leaf)[: leads[path]]
    default = feature[path]
    if default.kind == "sampled":
      if granularity != "feature":
        default = _label_plan(granularity, path, one_layer, 0, default)
      default = _stacked_plan(default, lead)
    plans.append(_label_plan(label, path, leaf, len(lead), default))
  unlabelled = {p for p, label in zip(paths, labels, strict=True) if label is None}
  unknown = [p for p in unknown if p in unlabelled]
  if unknown and granularity == "feature":
    warnings.warn(
      "alrao_jax.sample_rates: no rule for these parameters, one rate per index of their "
      f"last axis is used (pass `rules` to choose): {[path_string(p) for p in unknown]}",
      stacklevel=3,
    )
  ambiguous = [m for m in ambiguous if any(p in unlabelled for p in paths if p[:-1] == m)]
  if ambiguous:
    warnings.warn(
      "alrao_jax.sample_rates: the shapes of these modules fit both one layer with several "
      "output axes (DenseGeneral) and a stack of layers on a leading axis; they are read as "
      "one layer, so a stack would share rates across its layers. Name it to choose, e.g. "
      f"stacked={{'{path_string(ambiguous[0])}': 1}} (or 0): {list(map(path_string, ambiguous))}",
      stacklevel=3,
    )
  return paths, leaves, treedef, plans, leads


def _non_parameters(params: Any) -> list[str]:
  """The paths of Flax NNX variables in ``params`` that are not ``nnx.Param`` (BatchStat,
  RngCount, RngKey...): an ``nnx.state(model)`` given where the parameters were meant."""
  found = []
  flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: is_nnx(x, "Variable"))
  for path, leaf in flat[0]:
    if is_nnx(leaf, "Variable") and not is_nnx(leaf, "Param"):
      found.append(f"{path_string([_key_name(e) for e in path])} ({type(leaf).__name__})")
  return found


def check_parameter_leaves(params: Any, paths: Sequence[tuple], leaves: Sequence[Any]) -> None:
  """Raises unless every leaf is a floating or complex parameter: integer, bool and PRNG-key
  leaves (a step counter, an RNG state) and NNX variables other than ``nnx.Param`` have no
  learning rate.

  Raises:
    TypeError: such leaves, named with the fix.
  """
  others = _non_parameters(params)
  if others:
    raise TypeError(
      f"params holds Flax NNX variables that are not parameters: {others[:5]}; pass "
      "nnx.state(model, nnx.Param) (nnx.Optimizer(model, tx, wrt=nnx.Param) does)."
    )
  bad = [
    f"{path_string(path)} ({jnp.result_type(leaf)})"
    for path, leaf in zip(paths, leaves, strict=True)
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
  ]
  if bad:
    raise TypeError(
      f"parameters must be floating or complex arrays to have learning rates; these are not: "
      f"{bad[:5]}. Leave them out of the optimizer, e.g. optax.masked or optax.partition "
      "with optax.set_to_zero()."
    )


def _group_order(group: Hashable) -> str:
  return re.sub(r"\s+", "", repr(group))


def sample_rates(
  key: jax.Array,
  params: Any,
  lr_min: float,
  lr_max: float,
  *,
  granularity: str = "feature",
  rules: Rules = None,
  stacked: Mapping[str, int] | None = None,
) -> Any:
  """Samples one learning rate per feature, log-uniformly in ``[lr_min, lr_max]``.

  Features follow Flax's layouts: a Dense unit (kernel column and bias entry), a Conv
  filter, a norm channel (scale and bias), an embedding column, a recurrent unit (every
  gate, both matrices and the biases of an LSTM or GRU unit, separate or fused kernels),
  the ``(heads, head_dim)`` outputs of attention projections, and the output axes of
  DenseGeneral and Einsum. Parameters under an ``alrao_copies`` module (the copies of
  :class:`alrao_jax.AlraoHead`) get :func:`copy_rates` along their leading axis.
  Unknown parameters get one rate per index of their last axis, with a warning.

  Stacked layers (``nn.scan``/``nn.vmap`` over blocks in linen, ``nnx.vmap``/``nnx.scan``
  stacks in NNX) have leading layer axes: a stacked Dense kernel is ``(L, in, out)`` with
  bias ``(L, out)``. Every rule above then holds per layer: kernel column ``[l, :, j]`` and
  bias ``[l, j]`` share one rate, and layers never share rates (rate leaves ``(L, 1, out)``
  and ``(L, out)``). A stack declared in the parameters' Flax metadata is read: leading axes
  named ``'layers'`` (linen ``nn.scan(..., metadata_params={nn.PARTITION_NAME: 'layers'})``
  on ``nn.Partitioned`` parameters, NNX ``nnx.vmap(..., transform_metadata=
  {nnx.PARTITION_NAME: 'layers'})``). Otherwise the layer axes are detected from the shapes: a
  module that only a leading layer axis explains (a norm of rank 2; a kernel and bias whose
  leading axes agree) marks the largest enclosing module whose parameters all share that axis.
  Where the shapes cannot tell (a scanned stack of bias-free Dense layers without a norm, or
  shapes that fit a ``DenseGeneral`` or a 1-D convolution too), a warning names the module and
  the ``stacked`` that settles it. A
  ``ConvLocal`` is known by its module name (``ConvLocal_0``): its per-position axes have
  a stack's shapes, and it keeps one rate per filter.

  Args:
    key: a PRNG key.
    params: a Flax parameter tree (linen dict, ``nnx.State`` or any pytree of arrays).
    lr_min: smallest learning rate, > 0.
    lr_max: largest learning rate, >= ``lr_min``.
    granularity: ``"feature"`` (one rate per feature, the default), ``"weight"`` (one rate
      per scalar) or ``"layer"`` (one rate per module).
    rules: overrides per parameter: a callable ``(path, leaf) -> label`` with paths such as
      ``"Dense_0/kernel"`` (the keys of ``params``, joined by ``/``; the optimizer sees
      ``state.params``, so its paths have no ``"params/"`` prefix), or a tree of labels with
      the structure of ``params``. A label is ``None`` (the default rule), ``"feature"``,
      ``"weight"``, ``"layer"`` (one rate per module, per layer of a stack), ``"copies"``, a
      float (a fixed rate, e.g. ``0.0`` to freeze) or a tuple of feature axes of the whole
      leaf (leaves of one module given axes of equal sizes share their draw, so ``(0, -1)``
      on a stacked kernel and its bias gives one rate per layer and unit).
    stacked: leading layer axes named explicitly, ``{path prefix: number of axes}``, e.g.
      ``{'ScanBlock_0': 1}`` or ``{'decoder/layers': 1}``; every parameter below the prefix
      has that many layer axes (``0``: none). Other parameters are detected from shapes.

  Returns:
    A rate tree with the structure of ``params``: float32 leaves that broadcast against
    their parameters.

  Example:
    >>> import jax, flax.linen as nn, alrao_jax
    >>> params = nn.Dense(3).init(jax.random.key(0), jax.numpy.ones((1, 2)))
    >>> rates = alrao_jax.sample_rates(jax.random.key(1), params, 1e-3, 1.0)
    >>> jax.tree.map(lambda r: r.shape, rates)
    {'params': {'bias': (3,), 'kernel': (1, 3)}}

  References:
    Blier, Wolinski & Ollivier, `Learning with Random Learning Rates
    <https://arxiv.org/abs/1810.01322>`_, 2018 (section 2).
  """
  check_bounds(lr_min, lr_max)
  _, leaves, treedef, plans, _ = rate_plans(
    params, granularity=granularity, rules=rules, stacked=stacked
  )
  groups = {}
  for plan in plans:
    groups.setdefault(plan.group, plan)
  order = sorted(groups, key=_group_order)
  keys = jax.random.split(key, max(len(order), 1))
  log_ratio = math.log(lr_max / lr_min)
  drawn = {}
  for group_key, group in zip(keys, order, strict=False):
    plan = groups[group]
    if plan.kind == "copies":
      drawn[group] = copy_rates(plan.shape[0], lr_min, lr_max)
    elif plan.kind == "constant":
      drawn[group] = jnp.full((), plan.value, jnp.float32)
    else:
      u = jax.random.uniform(group_key, plan.shape, jnp.float32)
      drawn[group] = _log_uniform(u, lr_min, log_ratio)
  # Each leaf owns its buffer, so that a state holding the rates can be donated to jit.
  rate_leaves = [
    _sharded_like(jnp.copy(plan.to_leaf(drawn[plan.group])), leaf)
    for plan, leaf in zip(plans, leaves, strict=True)
  ]
  return _sharding_metadata_for_rates(jax.tree_util.tree_unflatten(treedef, rate_leaves))


_SHARDING_KEYS = ("out_sharding", "optimizer_sharding", "sharding_names")


def _names_for(names: Any, shape: tuple[int, ...]) -> Any:
  """A parameter's sharding names, kept on the axes where the rate leaf has the parameter's
  size and dropped (None) on its size-1 axes; None when none is left."""
  if names is None:
    return None
  padded = (*tuple(names), *(None,) * (len(shape) - len(tuple(names))))
  kept = tuple(None if size == 1 else name for size, name in zip(shape, padded, strict=False))
  if all(name is None for name in kept):
    return None
  spec = isinstance(names, jax.sharding.PartitionSpec)
  return jax.sharding.PartitionSpec(*kept) if spec else kept


def _sharding_metadata_for_rates(tree: Any) -> Any:
  """The rate tree with Flax's sharding metadata (NNX ``out_sharding``, linen
  ``nn.Partitioned`` names) fitted to the rate leaves' shapes: a rate leaf ``(1, out)`` of a
  row-sharded kernel is replicated, not split along its size-1 axis, on Flax's own routes
  (NNX eager sharding, ``nn.get_sharding``)."""
  import flax.linen as nn  # only Flax trees hold such boxes

  def fit(box: Any) -> Any:
    if is_nnx(box, "Variable"):
      shape = np.shape(box.get_raw_value())
      meta = box.get_metadata()
      updates = {k: _names_for(meta[k], shape) for k in _SHARDING_KEYS if meta.get(k) is not None}
      return box.copy(**updates) if updates else box
    if isinstance(box, nn.Partitioned):
      names = _names_for(box.names, np.shape(box.value))
      return box.replace(names=names or (None,) * np.ndim(box.value))
    return box

  def is_box(x: Any) -> bool:
    return is_nnx(x, "Variable") or isinstance(x, nn.Partitioned)

  return jax.tree.map(fit, tree, is_leaf=is_box)


def _sharded_like(rate: jax.Array, param: Any) -> jax.Array:
  """Under explicit sharding (sharding in types), the rates take their parameter's sharding
  on the axes they have (replicated on their size-1 axes), so that no update gathers."""
  if not isinstance(param, jax.Array):
    return rate
  sharding = getattr(jax.typeof(param), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or not any(sharding.spec) or not mesh.are_all_axes_explicit:
    return rate  # not sharded in its type: placed by jit (see alrao_jax.sharding)
  names = (*sharding.spec, *(None,) * (rate.ndim - len(sharding.spec)))
  spec = jax.sharding.PartitionSpec(
    *(None if size == 1 else name for size, name in zip(rate.shape, names, strict=False))
  )
  return jax.sharding.reshard(rate, jax.sharding.NamedSharding(mesh, spec))


def check_same_paths(tree: Any, params: Any, *, what: str, fix: str) -> None:
  """Raises a `ValueError` (``what``, the differing paths, then ``fix``) unless ``tree`` has
  the paths of ``params`` (Flax NNX variable wrappers aside)."""
  paths, _, _ = leaf_paths(tree)
  param_paths, _, _ = leaf_paths(params)
  if paths != param_paths:
    diff = sorted(set(map(path_string, paths)) ^ set(map(path_string, param_paths)))
    raise ValueError(f"{what}; paths in one but not the other: {diff[:6]}. {fix}")


def check_rates_fit(rates: Any, params: Any) -> None:
  """Raises a `ValueError` unless ``rates`` is a rate tree for ``params``.

  The two trees must have the same paths (Flax NNX variable wrappers aside) and every rate
  leaf must be a floating array that broadcasts to its parameter's shape.
  """
  check_same_paths(
    rates,
    params,
    what="rates do not have the structure of params",
    fix="Build them with alrao_jax.sample_rates(key, params, ...).",
  )
  _, rate_leaves, _ = leaf_paths(rates)
  param_paths, param_leaves, _ = leaf_paths(params)
  for path, rate, param in zip(param_paths, rate_leaves, param_leaves, strict=True):
    rshape, pshape = np.shape(rate), np.shape(param)
    ok = len(rshape) <= len(pshape) and all(
      r in (1, p) for r, p in zip(rshape[::-1], pshape[::-1], strict=False)
    )
    if not ok:
      raise ValueError(
        f"rate leaf {path_string(path)} has shape {rshape}, which does not broadcast to the "
        f"parameter's shape {pshape}."
      )
    if not jnp.issubdtype(jnp.result_type(rate), jnp.floating):
      raise TypeError(
        f"rate leaf {path_string(path)} must be floating, got {jnp.result_type(rate)}."
      )

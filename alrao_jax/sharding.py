"""Alrao on several devices and hosts, on JAX's own engine: a mesh, ``NamedSharding``
placements and ``jax.jit`` sharding propagation (GSPMD); ``jax.distributed`` for several
processes.

Mesh axes: ``data`` shards the batch; ``copies`` shards the head's copy axis (copies work in
parallel given the pre-classifier output, so an output-heavy head spreads over devices);
any other axis is the user's, named by their model's partitioning metadata (linen
``nn.with_partitioning`` / logical axis rules, NNX ``out_sharding`` metadata). A parameter
without metadata is replicated. Every array of the optimizer state that mirrors a parameter
(the per-feature rates, momentum, Adam's moments) takes its parameter's sharding on the axes
it has and is replicated on its size-1 axes, so that no update gathers; the switch state,
step and key are replicated.

A linen run::

  mesh = make_mesh({"data": 4, "copies": 2})
  state = create_sharded_train_state(model, tx, key, x, mesh=mesh)
  step = shard_train_step(make_train_step(model, tx), state, mesh)
  state, metrics = step(state, *shard_batch((x, y), mesh))

An NNX run: ``shard_nnx(model, optimizer, mesh)`` before ``make_train_step``, and the
batches through :func:`shard_batch`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
from flax.core import meta
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from alrao_jax.nnx_types import is_nnx, nnx
from alrao_jax.rates import COPIES_MODULE, leaf_paths
from alrao_jax.steps import TrainState, create_train_state, with_optional_weights

DATA_AXIS = "data"
COPIES_AXIS = "copies"


def make_mesh(
  axes: Mapping[str, int] | None = None, *, devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """A device mesh for an Alrao run, with ``Auto`` axes (``jax.jit`` propagates shardings).

  Args:
    axes: axis name -> size, in mesh order, e.g. ``{"data": 4, "copies": 2}``; one size may be
      ``-1`` for the devices left. Default: ``{"data": -1}`` (data parallel on every device).
    devices: the devices (default ``jax.devices()``: every process's, for a multi-process run).

  Returns:
    A :class:`jax.sharding.Mesh`.

  Raises:
    ValueError: the sizes do not multiply to the number of devices, or a name or size is bad.

  Example:
    >>> import alrao_jax.sharding as alrao_sharding
    >>> mesh = alrao_sharding.make_mesh({"data": -1, "copies": 1})
    >>> mesh.axis_names
    ('data', 'copies')
  """
  devices = list(jax.devices() if devices is None else devices)
  axes = dict({DATA_AXIS: -1} if axes is None else axes)
  if not axes:
    raise ValueError("axes must name at least one mesh axis, e.g. {'data': -1}.")
  for name, size in axes.items():
    if not isinstance(name, str) or not name:
      raise TypeError(f"mesh axis names must be non-empty strings, got {name!r}.")
    if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
      raise ValueError(f"mesh axis {name!r} needs a size >= 1 (or -1 for the rest), got {size!r}.")
  known = math.prod(size for size in axes.values() if size != -1)
  free = [name for name, size in axes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f"only one mesh axis may have size -1, got {free}.")
  if free:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into the mesh axes {axes}.")
    axes[free[0]] = len(devices) // known
  if math.prod(axes.values()) != len(devices):
    raise ValueError(
      f"the mesh {axes} has {math.prod(axes.values())} devices but {len(devices)} are given; "
      "make the sizes multiply to the device count (on CPU, simulate more devices with "
      "jax.config.update('jax_num_cpu_devices', N) before using JAX)."
    )
  return jax.make_mesh(
    tuple(axes.values()),
    tuple(axes),
    axis_types=(AxisType.Auto,) * len(axes),
    devices=devices,
  )


def _is_boxed(x: Any) -> bool:
  return isinstance(x, meta.AxisMetadata) or is_nnx(x, "Variable")


def _declared_names(x: Any, rules: Any) -> tuple:
  """The mesh axis names a leaf's metadata declares (empty for a bare array)."""
  if is_nnx(x, "Variable"):
    if rules is not None:
      with nnx.logical_axis_rules(rules):
        spec = nnx.spmd.get_var_pspec(x)
    else:
      spec = nnx.spmd.get_var_pspec(x)
    return tuple(spec or ())
  if isinstance(x, nn.LogicallyPartitioned):
    return tuple(nn.logical_to_mesh_axes(x.names, rules))
  if isinstance(x, meta.AxisMetadata):
    return tuple(x.get_partition_spec())
  return ()


def _unboxed(x: Any) -> Any:
  if is_nnx(x, "Variable"):
    return x.get_raw_value()
  if isinstance(x, meta.AxisMetadata):
    return x.unbox(apply_constraint=False)
  return x


def _axis_size(mesh: Mesh, names: Any) -> int:
  names = names if isinstance(names, tuple) else (names,)
  return math.prod(mesh.shape[name] for name in names)


def _leaf_spec(
  path: tuple[str, ...],
  shape: tuple[int, ...],
  declared: tuple,
  mesh: Mesh,
  copies_axis: str,
  outputs_axis: str | None,
) -> PartitionSpec:
  names = list(declared[: len(shape)]) + [None] * (len(shape) - len(declared))
  if COPIES_MODULE in path and shape:
    if copies_axis in mesh.axis_names:
      names[0] = copies_axis
    if outputs_axis is not None and len(shape) >= 2:
      names[-1] = outputs_axis
  # A rate leaf (size 1 where its parameter is sharded) is replicated on that axis.
  names = [None if size == 1 else name for size, name in zip(shape, names, strict=True)]
  where = "/".join(path)
  for size, name in zip(shape, names, strict=True):
    if name is None:
      continue
    for axis in name if isinstance(name, tuple) else (name,):
      if axis not in mesh.axis_names:
        raise ValueError(
          f"{where} is partitioned over the mesh axis {axis!r}, which the mesh "
          f"{dict(mesh.shape)} lacks; add the axis to make_mesh, or map the model's axis "
          "names with rules=."
        )
    if size % _axis_size(mesh, name):
      hint = (
        f"choose num_copies a multiple of the '{copies_axis}' axis size"
        if name == copies_axis
        else "choose a size divisible by that axis, or a smaller mesh axis"
      )
      raise ValueError(
        f"{where} has shape {shape}: its size {size} does not divide over the mesh axis "
        f"{name!r} of size {_axis_size(mesh, name)}; {hint}."
      )
  return PartitionSpec(*names)


def state_shardings(
  state: Any,
  mesh: Mesh,
  *,
  copies_axis: str = COPIES_AXIS,
  outputs_axis: str | None = None,
  rules: Any = None,
) -> Any:
  """The ``NamedSharding`` of every array of an Alrao run's state.

  Each leaf keeps the mesh axes its metadata declares (linen boxes, NNX variables; logical
  names mapped with ``rules``); leaves under the head's ``alrao_copies`` are sharded over
  ``copies_axis`` on their copy axis (when the mesh has it) and over ``outputs_axis`` on
  their last axis (when given); a size-1 axis is never sharded, which is how a rate leaf
  follows its parameter. Everything else is replicated.

  Args:
    state: a linen :class:`alrao_jax.TrainState` (boxed or not; arrays or
      ``jax.ShapeDtypeStruct``), an ``nnx.State``, or any pytree of them.
    mesh: see :func:`make_mesh`.
    copies_axis: the mesh axis of the head's copies.
    outputs_axis: a mesh axis for the head's outputs (classes), or ``None``.
    rules: logical axis rules, e.g. ``(("embed", None), ("mlp", "model"))``.

  Returns:
    A pytree of the structure of ``state`` (boxes and variables kept) holding
    ``NamedSharding`` leaves.

  Raises:
    ValueError: an axis does not divide over its mesh axis, or names an axis the mesh lacks.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, alrao_jax
    >>> import alrao_jax.sharding as alrao_sharding
    >>> model = nn.Sequential([nn.Dense(8), alrao_jax.AlraoHead(3, num_copies=2)])
    >>> tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0))
    >>> state = alrao_jax.create_train_state(model, tx, jax.random.key(1), jnp.ones((4, 5)))
    >>> mesh = alrao_sharding.make_mesh({"data": -1, "copies": 1})
    >>> shardings = alrao_sharding.state_shardings(state, mesh)
    >>> shardings.params['layers_1']['alrao_copies']['kernel'].spec
    P('copies', None, None)
    >>> shardings.opt_state[1].rates['layers_1']['alrao_copies']['kernel'].spec
    P('copies', None, None)
  """

  def sharding(path, x):
    value = _unboxed(x)
    if not hasattr(value, "shape"):
      return x
    spec = _leaf_spec(
      path, tuple(value.shape), _declared_names(x, rules), mesh, copies_axis, outputs_axis
    )
    named = NamedSharding(mesh, spec)
    if is_nnx(x, "Variable"):
      return x.replace(named)
    if isinstance(x, meta.AxisMetadata):
      return x.replace_boxed(named)
    return named

  paths, leaves, treedef = leaf_paths(state, is_leaf=_is_boxed)
  return jax.tree_util.tree_unflatten(treedef, map(sharding, paths, leaves))


def _put(value: Any, sharding: NamedSharding) -> jax.Array:
  if jax.process_count() == 1:
    return jax.device_put(value, sharding)
  if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
    impl = jax.random.key_impl(value)
    return jax.random.wrap_key_data(_put(jax.random.key_data(value), sharding), impl=impl)
  host = np.asarray(value)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place(tree: Any, shardings: Any) -> Any:
  """Puts every array of ``tree`` on its sharding.

  Args:
    tree: a pytree of arrays (host or device), the same on every process of a multi-process
      run; each process places the shards its devices own.
    shardings: a pytree of the same structure holding ``NamedSharding`` leaves (e.g. from
      :func:`state_shardings`).

  Returns:
    ``tree`` with every array placed.
  """
  return jax.tree.map(_put, tree, shardings)


def shard_train_state(
  state: TrainState,
  mesh: Mesh,
  *,
  copies_axis: str = COPIES_AXIS,
  outputs_axis: str | None = None,
  rules: Any = None,
) -> TrainState:
  """Places an existing linen :class:`alrao_jax.TrainState` on a mesh (e.g. one restored
  on one device). For a large model, prefer :func:`create_sharded_train_state`, which never
  builds the state on one device.

  Args:
    state: the state.
    mesh: see :func:`make_mesh`.
    copies_axis: the mesh axis of the head's copies.
    outputs_axis: a mesh axis for the head's outputs, or ``None``.
    rules: logical axis rules.

  Returns:
    The state, placed as :func:`state_shardings` says.
  """
  shardings = state_shardings(
    state, mesh, copies_axis=copies_axis, outputs_axis=outputs_axis, rules=rules
  )
  return place(state, shardings)


def create_sharded_train_state(
  model: nn.Module,
  optimizer: Any,
  key: jax.Array,
  *example_inputs: Any,
  mesh: Mesh,
  copies_axis: str = COPIES_AXIS,
  outputs_axis: str | None = None,
  rules: Any = None,
  **create_kwargs: Any,
) -> TrainState:
  """:func:`alrao_jax.create_train_state`, built directly in its shards on ``mesh``.

  The state's shapes and metadata are traced first (``jax.eval_shape``), their shardings
  derived (:func:`state_shardings`), and the state created by one ``jax.jit`` whose outputs
  have those shardings: no device ever holds a whole parameter that is sharded. Every
  process of a multi-process run calls it with the same arguments.

  Args:
    model: a linen module ending with an :class:`alrao_jax.AlraoHead`.
    optimizer: e.g. :func:`alrao_jax.alrao_sgd`.
    key: PRNG key of the parameters and dropout.
    *example_inputs: inputs for ``model.init``.
    mesh: see :func:`make_mesh`.
    copies_axis: the mesh axis of the head's copies.
    outputs_axis: a mesh axis for the head's outputs, or ``None``.
    rules: logical axis rules for models annotated with ``nn.with_logical_partitioning``.
    **create_kwargs: the other arguments of :func:`alrao_jax.create_train_state`.

  Returns:
    The sharded :class:`alrao_jax.TrainState`.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, alrao_jax
    >>> import alrao_jax.sharding as alrao_sharding
    >>> model = nn.Sequential([nn.Dense(8), alrao_jax.AlraoHead(3, num_copies=2)])
    >>> tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0))
    >>> mesh = alrao_sharding.make_mesh()
    >>> state = alrao_sharding.create_sharded_train_state(
    ...     model, tx, jax.random.key(1), jnp.ones((4, 5)), mesh=mesh)
    >>> state.params['layers_1']['alrao_copies']['kernel'].shape
    (2, 8, 3)
  """

  def create(key):
    return create_train_state(model, optimizer, key, *example_inputs, **create_kwargs)

  abstract = jax.eval_shape(create, key)
  shardings = state_shardings(
    abstract, mesh, copies_axis=copies_axis, outputs_axis=outputs_axis, rules=rules
  )
  return jax.jit(create, out_shardings=shardings)(key)


def _shardings_of(tree: Any) -> Any:
  return jax.tree.map(lambda x: x.sharding, tree)


def batch_sharding(mesh: Mesh, *, data_axis: str = DATA_AXIS) -> NamedSharding:
  """The sharding of a batch: its leading axis split over ``data_axis``.

  Raises:
    ValueError: the mesh has no such axis.
  """
  if data_axis not in mesh.axis_names:
    raise ValueError(f"the mesh {dict(mesh.shape)} has no data axis {data_axis!r}.")
  return NamedSharding(mesh, PartitionSpec(data_axis))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of an array every device holds whole."""
  return NamedSharding(mesh, PartitionSpec())


def _check_rows(batch: Any, parts: int, what: str) -> None:
  for leaf in jax.tree.leaves(batch):
    rows = np.shape(leaf)[0] if np.ndim(leaf) else None
    if rows is None or rows % parts:
      raise ValueError(
        f"{what} has {rows} rows, which do not divide over the data axis of size {parts}; "
        f"use a batch size that is a multiple of {parts}."
      )


def shard_batch(batch: Any, mesh: Mesh, *, data_axis: str = DATA_AXIS) -> Any:
  """Places a global batch, every leaf's leading axis sharded over ``data_axis``.

  Every process passes the same whole batch and places the rows its devices own; to feed
  each process its own rows instead, use :func:`shard_process_batch`.

  Args:
    batch: a pytree of arrays with a leading batch axis, e.g. ``(inputs, targets)``.
    mesh: see :func:`make_mesh`.
    data_axis: the mesh axis of the batch.

  Returns:
    The batch as global ``jax.Array`` leaves.

  Raises:
    ValueError: a leaf's rows do not divide over the data axis.

  Example:
    >>> import numpy as np, alrao_jax.sharding as alrao_sharding
    >>> mesh = alrao_sharding.make_mesh()
    >>> x, y = alrao_sharding.shard_batch((np.ones((4, 3)), np.zeros(4)), mesh)
    >>> x.sharding.spec
    P('data',)
  """
  sharding = batch_sharding(mesh, data_axis=data_axis)
  _check_rows(batch, mesh.shape[data_axis], "the batch")
  return jax.tree.map(lambda x: _put(np.asarray(x), sharding), batch)


def shard_process_batch(local_batch: Any, mesh: Mesh, *, data_axis: str = DATA_AXIS) -> Any:
  """Builds a global batch from each process's own rows, in process order
  (``jax.make_array_from_process_local_data``).

  Args:
    local_batch: this process's rows, a pytree of arrays with a leading batch axis.
    mesh: a mesh over every process's devices.
    data_axis: the mesh axis of the batch.

  Returns:
    The global batch (``jax.Array`` leaves).

  Raises:
    ValueError: a leaf's rows do not divide over this process's devices on the data axis.
  """
  sharding = batch_sharding(mesh, data_axis=data_axis)
  local_parts = mesh.shape[data_axis] // jax.process_count()
  _check_rows(local_batch, max(local_parts, 1), "this process's batch")
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
  )


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every array of ``tree`` whole on every device of ``mesh``.

  Args:
    tree: a pytree of arrays, the same on every process, e.g. an NNX run's averaging state
      (which a multi-process run must place before its first step).
    mesh: see :func:`make_mesh`.

  Returns:
    ``tree`` with every array replicated.
  """
  return jax.tree.map(lambda x: _put(x, replicated(mesh)), tree)


def shard_train_step(
  step: Callable, state: TrainState, mesh: Mesh, *, data_axis: str = DATA_AXIS
) -> Callable:
  """A linen train step (from :func:`alrao_jax.make_train_step`) pinned to ``state``'s
  shardings: the batch sharded over ``data_axis``, the new state in the shards of the old
  (its buffers donated), the metrics replicated.

  Args:
    step: ``step(state, inputs, targets, weights=None) -> (state, metrics)``.
    state: a state placed on ``mesh`` (e.g. by :func:`create_sharded_train_state`).
    mesh: the mesh.
    data_axis: the mesh axis of the batch (the weights' too).

  Returns:
    The jitted step, same signature.
  """
  shardings = _shardings_of(state)
  batch = batch_sharding(mesh, data_axis=data_axis)
  jitted = jax.jit(
    step,
    in_shardings=(shardings, batch, batch, batch),
    out_shardings=(shardings, replicated(mesh)),
    donate_argnums=(0,),
  )

  return with_optional_weights(jitted)


def shard_eval_step(
  evaluate: Callable,
  state: TrainState,
  mesh: Mesh,
  *,
  data_axis: str | None = DATA_AXIS,
  windows: bool = False,
) -> Callable:
  """A linen evaluation step (:func:`alrao_jax.make_eval_step`) on ``state``'s shardings.

  Args:
    evaluate: ``evaluate(state, inputs, targets, weights=None) -> metrics``, or with
      ``windows``, a carried evaluation ``evaluate(state, windows_in, windows_out,
      weights=None) -> (state, metrics)``.
    state: a state placed on ``mesh``.
    mesh: the mesh.
    data_axis: the mesh axis of the inputs, or ``None`` to replicate them (a split whose
      size does not divide over the data axis).
    windows: the inputs are ``(windows, batch, ...)`` (carried streams): their batch axis,
      the second, is sharded, and the returned state keeps ``state``'s shardings.

  Returns:
    The jitted evaluation, same signature; the metrics replicated.
  """
  inputs = replicated(mesh) if data_axis is None else batch_sharding(mesh, data_axis=data_axis)
  if windows and data_axis is not None:
    inputs = NamedSharding(mesh, PartitionSpec(None, data_axis))
  metrics = replicated(mesh)
  jitted = jax.jit(
    evaluate,
    in_shardings=(_shardings_of(state), inputs, inputs, inputs),
    out_shardings=(_shardings_of(state), metrics) if windows else metrics,
  )

  return with_optional_weights(jitted)


def shard_nnx(
  model: nnx.Module,
  optimizer: nnx.Optimizer | None,
  mesh: Mesh,
  *,
  copies_axis: str = COPIES_AXIS,
  outputs_axis: str | None = None,
  rules: Any = None,
) -> None:
  """Places an NNX model (and its optimizer) on ``mesh``, in place.

  Shardings as :func:`state_shardings` gives them, from the variables' ``out_sharding``
  metadata. Build the steps (:func:`alrao_jax.make_train_step`) afterwards: they keep the
  placement the variables have when they are built.

  Args:
    model: an NNX module ending with an :class:`alrao_jax.nnx.AlraoHead`.
    optimizer: its ``nnx.Optimizer``, or ``None``.
    mesh: see :func:`make_mesh`.
    copies_axis: the mesh axis of the head's copies.
    outputs_axis: a mesh axis for the head's outputs, or ``None``.
    rules: logical axis rules.
  """
  nodes = (model,) if optimizer is None else (model, optimizer)
  state = nnx.state(nodes)
  shardings = state_shardings(
    state, mesh, copies_axis=copies_axis, outputs_axis=outputs_axis, rules=rules
  )
  nnx.update(nodes, place(state, shardings))


class Collective(NamedTuple):
  """One collective operation of a compiled program."""

  op: str  # all-gather, all-reduce, reduce-scatter, all-to-all, collective-permute
  shapes: tuple[tuple[int, ...], ...]  # the shapes it produces
  bytes: int  # the bytes it produces (per device)


_COLLECTIVE = re.compile(
  r"=\s*(?P<type>\(.*?\)|\S+)\s+(?P<op>all-gather|all-reduce|reduce-scatter|all-to-all|"
  r"collective-permute)(?P<start>-start)?\("
)
_ARRAY = re.compile(r"(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}


def _array_bytes(dtype: str, shape: tuple[int, ...]) -> int:
  width = _DTYPE_BYTES.get(dtype)
  if width is None:
    digits = re.search(r"\d+", dtype)
    width = int(digits.group()) // 8 if digits else 4
  return width * math.prod(shape)


def collectives(compiled: Any) -> list[Collective]:
  """The collectives of a compiled program, from its optimized HLO.

  Args:
    compiled: ``jax.jit(f).lower(*args).compile()``, or its ``as_text()``.

  Returns:
    One :class:`Collective` per operation (asynchronous pairs counted once).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import alrao_jax.sharding as alrao_sharding
    >>> compiled = jax.jit(lambda x: x * 2).lower(jnp.ones(4)).compile()
    >>> alrao_sharding.collectives(compiled)
    []
  """
  text = compiled if isinstance(compiled, str) else compiled.as_text()
  found = []
  for line in text.splitlines():
    match = _COLLECTIVE.search(line)
    if match is None:
      continue
    arrays = [
      (m["dtype"], tuple(int(d) for d in m["dims"].split(",") if d))
      for m in _ARRAY.finditer(match["type"])
    ]
    if match["start"]:  # an asynchronous start yields (operands, results): keep the results
      arrays = arrays[len(arrays) // 2 :]
    found.append(
      Collective(
        match["op"],
        tuple(shape for _, shape in arrays),
        sum(_array_bytes(dtype, shape) for dtype, shape in arrays),
      )
    )
  return found


__all__ = [
  "COPIES_AXIS",
  "DATA_AXIS",
  "Collective",
  "batch_sharding",
  "collectives",
  "create_sharded_train_state",
  "make_mesh",
  "place",
  "replicate",
  "replicated",
  "shard_batch",
  "shard_eval_step",
  "shard_nnx",
  "shard_process_batch",
  "shard_train_state",
  "shard_train_step",
  "state_shardings",
]

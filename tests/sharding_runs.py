"""Runs shared by the sharding tests: the same model, data and steps on one device, on a mesh
of simulated CPU devices, and on several processes (``python tests/sharding_runs.py ...``,
started by ``tests/test_sharding.py`` with the device count set in the environment)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import alrao_jax
from alrao_jax import sharding

STEPS = 20
BATCH = 32
FEATURES = 12
CLASSES = 16
COPIES = 8
MESHES = ((8, 1), (4, 2), (2, 4), (1, 8))  # (data, copies)
NNX_ON_MESH = ("gpt", "resnet")  # the zoo's NNX models run on a mesh too


class Body(nn.Module):
  """Dense, LayerNorm, Dense (its kernel partitioned over a model axis when asked), head."""

  model_axis: str | None = None
  copies_at_once: int | None = None
  width: int = 32  # the head's inputs

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.LayerNorm()(nn.Dense(32)(x)))
    init = nn.initializers.lecun_normal()
    if self.model_axis is not None:
      init = nn.with_partitioning(init, (None, self.model_axis))
    x = nn.relu(nn.Dense(self.width, kernel_init=init)(x))
    return alrao_jax.AlraoHead(CLASSES, num_copies=COPIES, copies_at_once=self.copies_at_once)(x)


class NNXBody(nnx.Module):
  """The NNX twin, with BatchNorm (its statistics are sharded state too)."""

  def __init__(self, rngs):
    self.dense1 = nnx.Linear(FEATURES, 32, rngs=rngs)
    self.norm = nnx.BatchNorm(32, rngs=rngs)
    self.dense2 = nnx.Linear(32, 32, rngs=rngs)
    self.head = alrao_jax.nnx.AlraoHead(32, CLASSES, num_copies=COPIES, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.dense2(nnx.relu(self.norm(self.dense1(x))))))


def launch(*args) -> subprocess.Popen:
  """This file in a new process (CPU only), its output piped."""
  return subprocess.Popen(
    [sys.executable, __file__, *map(str, args)],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


STARTED: dict[str, object] = {}  # runs started in the background, by start_early


def start_early() -> None:
  """Starts the mesh runs and the two processes in the background: tests/conftest.py calls it
  once the sharding tests are collected, so that their compiles overlap the other tests'."""
  if STARTED:
    return
  STARTED["meshes"] = launch("meshes")
  folder = tempfile.mkdtemp(prefix="alrao-sharding-")
  port = free_port()
  STARTED["processes"] = (folder, [launch("process", i, port, folder) for i in range(2)])


def data(steps=STEPS):
  """The first ``steps`` batches of one fixed stream (any ``steps`` up to ``STEPS + 5``)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(STEPS + 5, BATCH, FEATURES)).astype(np.float32)
  y = rng.integers(0, CLASSES, size=(STEPS + 5, BATCH)).astype(np.int32)
  return x[:steps], y[:steps]


def optimizer():
  return alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(1), momentum=0.9)


def single_device_run(model, steps=STEPS):
  """The oracle: the same run on one device."""
  x, y = data(steps)
  tx = optimizer()
  state = alrao_jax.create_train_state(model, tx, jax.random.key(0), x[0])
  step = alrao_jax.make_train_step(model, tx)
  for i in range(steps):
    state, _ = step(state, x[i], y[i])
  return state


def mesh_run(model, mesh, steps=STEPS):
  """The run on a mesh, and the collectives of its compiled step."""
  x, y = data(steps)
  tx = optimizer()
  state = sharding.create_sharded_train_state(model, tx, jax.random.key(0), x[0], mesh=mesh)
  step = sharding.shard_train_step(alrao_jax.make_train_step(model, tx), state, mesh)
  compiled = step.lower(state, *sharding.shard_batch((x[0], y[0]), mesh)).compile()
  for i in range(steps):
    state, _ = compiled(state, *sharding.shard_batch((x[i], y[i]), mesh), None)  # no weights
  return state, sharding.collectives(compiled)


def nnx_run(mesh, steps=STEPS):
  x, y = data(steps)
  with nnx.use_eager_sharding(False):
    model = NNXBody(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optimizer(), wrt=nnx.Param)
  if mesh is not None:
    sharding.shard_nnx(model, opt, mesh)
  averaging = alrao_jax.init_averaging(model)
  step = alrao_jax.make_train_step(model, opt)
  for i in range(steps):
    batch = (x[i], y[i]) if mesh is None else sharding.shard_batch((x[i], y[i]), mesh)
    averaging, _ = step(averaging, *batch)
  return model, averaging


def max_difference(a, b):
  """The largest absolute difference of two trees' leaves, in NumPy (no compile per shape)."""
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return max(float(np.max(np.abs(np.subtract(*jax.device_get((u, v)))))) for u, v in pairs)


def leaf_specs(tree):
  return {
    jax.tree_util.keystr(path): str(leaf.sharding.spec)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def meshes_report():
  """Every mesh's run against the single-device one, the state's shardings, the collectives."""
  model = Body()
  reference = single_device_run(model)
  report = {}
  for data_size, copies in MESHES:
    state, found = mesh_run(model, sharding.make_mesh({"data": data_size, "copies": copies}))
    report[f"{data_size}x{copies}"] = {
      "params": max_difference(reference.params, state.params),
      "log_posterior": max_difference(
        reference.averaging_state.log_posterior, state.averaging_state.log_posterior
      ),
      "specs": leaf_specs(state),
      "collectives": [c._asdict() for c in found],
    }
  annotated = Body(model_axis="copies")
  state, _ = mesh_run(annotated, sharding.make_mesh({"data": 4, "copies": 2}))
  report["annotated"] = {  # the annotation changes the placement, not the values
    "params": max_difference(reference.params, state.params),
    "specs": leaf_specs(state),
  }
  deferred = Body(copies_at_once=COPIES)  # one copy per device, applied inside the loss
  state, found = mesh_run(deferred, sharding.make_mesh({"data": 1, "copies": 8}))
  report["deferred"] = {
    "params": max_difference(reference.params, state.params),
    "log_posterior": max_difference(
      reference.averaging_state.log_posterior, state.averaging_state.log_posterior
    ),
    "collectives": [c._asdict() for c in found],
  }
  # 32 examples through 8 inputs: each copy takes its examples in 4 chunks, the batch split
  # over 4 devices and the copies over 2
  chunked = Body(copies_at_once=2, width=8)
  steps = 5
  state, found = mesh_run(chunked, sharding.make_mesh({"data": 4, "copies": 2}), steps)
  narrow = single_device_run(Body(width=8), steps)
  report["chunked"] = {
    "params": max_difference(narrow.params, state.params),
    "log_posterior": max_difference(
      narrow.averaging_state.log_posterior, state.averaging_state.log_posterior
    ),
    "collectives": [c._asdict() for c in found],
  }
  nnx_model, nnx_averaging = nnx_run(None)
  model, averaging = nnx_run(sharding.make_mesh({"data": 2, "copies": 4}))
  report["nnx"] = {
    "params": max_difference(nnx.state(nnx_model), nnx.state(model)),
    "log_posterior": max_difference(nnx_averaging.log_posterior, averaging.log_posterior),
    "specs": {
      "/".join(map(str, path)): str(v.get_raw_value().sharding.spec)
      for path, v in nnx.to_flat_state(nnx.state(model))
    },
  }
  return report


def zoo_report():
  """The test zoo's models (scanned GPT, ResNet with BatchNorm, GRU, regression head) in
  linen, and the two whose NNX graphs differ most (the scanned stack, BatchNorm's statistics)
  in NNX: 10 steps with the batch over 8 devices against one device (their 3 copies do not
  divide over a copies axis)."""
  import test_zoo as zoo

  mesh = sharding.make_mesh({"data": 8, "copies": 1})
  report = {}
  for name in zoo.NAMES:
    model, build, kind, likelihood, train_kwargs, eval_kwargs, _ = zoo.ZOO[name]
    x, y = zoo._data(kind)
    kw = {"likelihood": likelihood} if likelihood else {}
    states = []
    for create in (alrao_jax.create_train_state, sharding.create_sharded_train_state):
      placed = create is sharding.create_sharded_train_state
      state = create(
        model, zoo._tx(), zoo.KEY, x, **({"mesh": mesh} if placed else {}), **eval_kwargs
      )
      step = alrao_jax.make_train_step(model, zoo._tx(), train_kwargs=train_kwargs, **kw)
      step = sharding.shard_train_step(step, state, mesh) if placed else step
      batch = sharding.shard_batch((x, y), mesh) if placed else (x, y)
      for _ in range(10):
        state, _ = step(state, *batch)
      states.append((state.params, state.averaging_state.log_posterior))
    report[name] = {"linen": max_difference(*states)}
    if name not in NNX_ON_MESH:
      continue
    nnx_states = []
    for placed in (False, True):
      net = build(nnx.Rngs(0))
      opt = nnx.Optimizer(net, zoo._tx(), wrt=nnx.Param)
      if placed:
        sharding.shard_nnx(net, opt, mesh)
      step, averaging = alrao_jax.make_train_step(net, opt, **kw), alrao_jax.init_averaging(net)
      batch = sharding.shard_batch((x, y), mesh) if placed else (x, y)
      for _ in range(10):
        averaging, _ = step(averaging, *batch)
      nnx_states.append((nnx.to_pure_dict(nnx.state(net, nnx.Param)), averaging.log_posterior))
    report[name]["nnx"] = max_difference(*nnx_states)
  return report


def carry_report():
  """fit on carried streams (the paper's truncated BPTT, test_carry's LSTM) with the 4 streams
  over a data axis of 4, against one device: params after 2 epochs and the history."""
  import test_carry

  tx = alrao_jax.alrao_sgd(1e-2, 1.0, key=jax.random.key(1))
  kw = {"epochs": 2, "batch_size": test_carry.STREAMS, "carry": ("carry",), **test_carry.MODES}
  runs = [
    alrao_jax.fit(test_carry._model(), tx, test_carry._splits(), mesh=mesh, **kw)
    for mesh in (None, sharding.make_mesh({"data": 4, "copies": 2}))
  ]
  losses = [[r[k] for r in run.history for k in ("train_loss", "valid_loss")] for run in runs]
  return {
    "params": max_difference(*jax.device_get([r.last_state.params for r in runs])),
    "losses": float(np.max(np.abs(np.subtract(*losses)))),
  }


def sweep_report():
  """A sweep of 4 learning rates with its members over a mesh axis of 4 devices, against one
  device: the histories, the best states, and where the members' parameters live."""
  import optax

  rng = np.random.default_rng(0)
  x = rng.normal(size=(160, FEATURES)).astype(np.float32)
  y = rng.integers(0, CLASSES, size=160).astype(np.int32)
  splits = alrao_jax.split_arrays(x, y, valid=32, test=32)
  kw = {"values": [0.01, 0.1, 1.0, 10.0], "epochs": 2, "batch_size": BATCH}
  mesh = jax.make_mesh((4,), ("members",))  # Explicit axes, as jax.make_mesh makes them
  auto = jax.make_mesh((4,), ("members",), axis_types=(jax.sharding.AxisType.Auto,))
  runs = [
    alrao_jax.sweep(nn.Dense(CLASSES), optax.sgd, splits, mesh=m, **kw) for m in (None, mesh, auto)
  ]
  losses = [
    [r[k] for h in run.histories for r in h for k in ("train_loss", "valid_loss")] for run in runs
  ]
  kernel = runs[1].states.params["kernel"]
  members = [[jax.device_get(run.state(i).params) for i in range(4)] for run in runs]
  nnx_models = []
  for m in (None, mesh):  # an NNX sweep indexes its winner itself, at its end
    model = NNXBody(nnx.Rngs(0))
    alrao_jax.sweep(model, optax.sgd, splits, mesh=m, **kw)
    nnx_models.append(jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
  return {
    "losses": max(float(np.nanmax(np.abs(np.subtract(losses[0], other)))) for other in losses),
    "params": max(max_difference(runs[0].states.params, r.states.params) for r in runs),
    "members": max(max_difference(members[0], other) for other in members[1:]),
    "nnx_winner": max_difference(*nnx_models),
    "best": [r.best_index for r in runs],
    "kernel_spec": str(kernel.sharding.spec),
    "kernel_devices": len(kernel.sharding.device_set),
  }


def explicit_report():
  """optax's sharding contract (sharding in types): init and update keep the state's types,
  and the rates are sharded like their parameters."""
  mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
  report = {}
  with jax.set_mesh(mesh):
    params = {
      "kernel": jnp.zeros((4, 16), out_sharding=jax.P(None, "x")),
      "bias": jnp.zeros((16,), out_sharding=jax.P("x")),
    }
    adam = alrao_jax.alrao_adam(1e-5, 0.1, key=jax.random.key(1))
    for name, tx in (("sgd", optimizer()), ("adam", adam)):
      state = tx.init(params)
      updates, new_state = tx.update(params, state, params)
      types = jax.tree.map(jax.typeof, state)
      report[name] = {
        "update_keeps_types": types == jax.tree.map(jax.typeof, new_state),
        "jit_init_keeps_types": types == jax.tree.map(jax.typeof, jax.jit(tx.init)(params)),
        "rates": {k: str(jax.typeof(v)) for k, v in state[-2].rates.items()},
        "updates": {k: str(jax.typeof(v)) for k, v in updates.items()},
      }
  return report


def process_run(process_id, port, folder):
  """One of 2 processes x 4 devices: 20 steps on its own half of every batch, a checkpoint
  written by both processes, and the parameters gathered to process 0."""
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  mesh = sharding.make_mesh({"data": 4, "copies": 2})
  model, tx = Body(), optimizer()
  x, y = data()
  state = sharding.create_sharded_train_state(model, tx, jax.random.key(0), x[0], mesh=mesh)
  step = sharding.shard_train_step(alrao_jax.make_train_step(model, tx), state, mesh)
  rows = slice(process_id * BATCH // 2, (process_id + 1) * BATCH // 2)
  for i in range(STEPS):
    state, _ = step(state, *sharding.shard_process_batch((x[i, rows], y[i, rows]), mesh))
  alrao_jax.save_checkpoint(f"{folder}/checkpoint", state, epoch=1)
  from jax.experimental import multihost_utils

  gathered = multihost_utils.process_allgather(state.params, tiled=True)
  if process_id == 0:
    flat = {
      jax.tree_util.keystr(p): np.asarray(v)
      for p, v in jax.tree_util.tree_flatten_with_path(gathered)[0]
    }
    np.savez(f"{folder}/params.npz", **flat)
  jax.distributed.shutdown()


if __name__ == "__main__":
  if sys.argv[1] == "meshes":
    jax.config.update("jax_num_cpu_devices", 8)
    print(
      json.dumps(
        {
          "meshes": meshes_report(),
          "explicit": explicit_report(),
          "zoo": zoo_report(),
          "carry": carry_report(),
          "sweep": sweep_report(),
        }
      )
    )
  else:
    jax.config.update("jax_num_cpu_devices", 4)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    process_run(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])

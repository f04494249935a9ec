"""Alrao on several devices: the sharded steps equal the single-device step, the head's
copies are never gathered, and a run on 2 processes equals one on a single process. The
meshes run in subprocesses of 8 simulated CPU devices (``tests/sharding_runs.py``), started
in the background as soon as these tests are collected (``tests/conftest.py``)."""

import functools
import json
import pathlib
import shutil
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType

import alrao_jax
from alrao_jax import sharding

RUNS = pathlib.Path(__file__).with_name("sharding_runs.py")
sys.path.insert(0, str(RUNS.parent))
import sharding_runs  # noqa: E402

TOLERANCE = 1e-5  # float32, 20 steps


def _finish(process):
  """The process's output once it ends. No time limit: a loaded machine only makes it slower
  (CI's own limit ends a run that hangs)."""
  out, err = process.communicate()
  assert process.returncode == 0, err[-3000:]
  return out


def _finish_all(processes):
  """The outputs of processes that wait for each other (collectives): when one fails, the
  others are killed instead of waiting for it forever."""
  while any(p.poll() is None for p in processes):
    if any(p.poll() not in (None, 0) for p in processes):
      for p in processes:
        p.kill()
      break
    time.sleep(0.5)
  return [_finish(p) for p in processes]


@functools.cache
def _mesh_outcome():
  """The mesh runs' report, or the error of their one subprocess: started once per test run,
  whatever happens to it (a failure is not retried by every test that reads it)."""
  process = sharding_runs.STARTED.pop("meshes", None) or sharding_runs.launch("meshes")
  try:
    return json.loads(_finish(process).splitlines()[-1]), None
  except AssertionError as err:
    return None, str(err)


def _meshes():
  report, error = _mesh_outcome()
  assert error is None, error
  return report


@pytest.mark.parametrize("mesh", ["8x1", "4x2", "2x4", "1x8"])
def test_sharded_step_equals_single_device_step(mesh):
  run = _meshes()["meshes"][mesh]
  assert run["params"] < TOLERANCE
  assert run["log_posterior"] < TOLERANCE


@pytest.mark.parametrize("mesh", ["4x2", "2x4", "1x8"])
def test_copies_and_their_rates_are_sharded_and_the_rest_replicated(mesh):
  specs = _meshes()["meshes"][mesh]["specs"]
  head = "['AlraoHead_0']['alrao_copies']"
  for tree in (".params", ".opt_state[0].trace", ".opt_state[1].rates"):
    assert specs[f"{tree}{head}['kernel']"] == "P('copies', None, None)"
    assert specs[f"{tree}{head}['bias']"] == "P('copies', None)"
    assert specs[f"{tree}['Dense_1']['kernel']"] == "P(None, None)"
  assert specs[".averaging_state.log_weights"] == "P(None, None)"
  assert specs[".rng"] == "P()"


@pytest.mark.parametrize("mesh", ["4x2", "2x4", "1x8"])
def test_compiled_step_never_gathers_the_head(mesh):
  found = _meshes()["meshes"][mesh]["collectives"]
  one_copy = 32 * sharding_runs.CLASSES  # elements of one copy's kernel
  gathers = [c for c in found if c["op"] == "all-gather"]
  assert all(int(np.prod(shape)) < one_copy for c in gathers for shape in c["shapes"]), gathers
  # Not a vacuous parse: the data-parallel gradients are all-reduced.
  if not mesh.startswith("1x"):
    assert any(c["op"] == "all-reduce" and c["bytes"] > 4 * one_copy for c in found)


def _equal_to_one_device_and_nothing_of_a_copy_gathered(run, one_copy):
  assert run["params"] < TOLERANCE
  assert run["log_posterior"] < TOLERANCE
  gathers = [c for c in run["collectives"] if c["op"] == "all-gather"]
  assert all(int(np.prod(shape)) < one_copy for c in gathers for shape in c["shapes"]), gathers


def test_a_deferred_head_with_one_copy_per_device_equals_the_full_head_on_one_device():
  run = _meshes()["meshes"]["deferred"]
  _equal_to_one_device_and_nothing_of_a_copy_gathered(run, 32 * sharding_runs.CLASSES)


def test_a_deferred_head_taking_its_examples_in_chunks_on_a_mesh_equals_one_device():
  # the batch over 4 devices, the copies over 2: every chunk of examples stays split over the
  # batch's devices, so neither the copies nor the examples are gathered
  run = _meshes()["meshes"]["chunked"]
  _equal_to_one_device_and_nothing_of_a_copy_gathered(run, 8 * sharding_runs.CLASSES)
  assert any(c["op"] == "all-reduce" for c in run["collectives"])


def test_model_partitioning_metadata_is_kept_and_the_rates_follow_it():
  run = _meshes()["meshes"]["annotated"]
  assert run["params"] < TOLERANCE
  for tree in (".params", ".opt_state[0].trace", ".opt_state[1].rates"):
    assert run["specs"][f"{tree}['Dense_1']['kernel'].value"] == "P(None, 'copies')"


def test_nnx_sharded_step_equals_single_device_step():
  run = _meshes()["meshes"]["nnx"]
  assert run["params"] < TOLERANCE
  assert run["log_posterior"] < TOLERANCE
  assert run["specs"]["head/alrao_copies/kernel"] == "P('copies',)"
  assert run["specs"]["dense1/kernel"] == "P()"


@pytest.mark.parametrize("name", ["gpt", "gru", "regression", "resnet"])
def test_the_zoo_sharded_over_the_batch_equals_one_device(name):
  run = _meshes()["zoo"][name]  # params and log posterior after 10 steps, linen and NNX
  assert run["linen"] < TOLERANCE
  if name in sharding_runs.NNX_ON_MESH:
    assert run["nnx"] < TOLERANCE
  else:
    assert set(run) == {"linen"}


def test_carried_streams_on_a_mesh_equal_one_device():
  run = _meshes()["carry"]  # truncated BPTT over 2 epochs, streams over the data axis
  assert run["params"] < TOLERANCE and run["losses"] < TOLERANCE


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_explicit_sharding_types_kept_and_rates_sharded_like_params(optimizer):
  run = _meshes()["explicit"][optimizer]
  assert run["update_keeps_types"] and run["jit_init_keeps_types"]
  assert run["rates"] == {"kernel": "float32[1,16@x]", "bias": "float32[16@x]"}
  assert run["updates"] == {"kernel": "float32[4,16@x]", "bias": "float32[16@x]"}


def test_two_processes_equal_one_and_their_checkpoint_resumes_in_one(tmp_path):
  folder, workers = sharding_runs.STARTED.pop("processes", (None, None))
  if workers is None:
    port = sharding_runs.free_port()
    folder, workers = (
      tmp_path,
      [sharding_runs.launch("process", i, port, tmp_path) for i in range(2)],
    )
  _finish_all(workers)
  if pathlib.Path(folder) != tmp_path:  # started early, in a folder of its own: move it here
    shutil.move(folder, tmp_path / "early")
    tmp_path = tmp_path / "early"
  model = sharding_runs.Body()
  reference = sharding_runs.single_device_run(model)
  gathered = np.load(tmp_path / "params.npz")
  flat = jax.tree_util.tree_flatten_with_path(reference.params)[0]
  assert sorted(gathered.files) == sorted(jax.tree_util.keystr(p) for p, _ in flat)
  for path, leaf in flat:
    np.testing.assert_allclose(gathered[jax.tree_util.keystr(path)], leaf, atol=TOLERANCE)
  # Restored on one process and one device, 5 more steps equal 25 uninterrupted ones.
  x, y = sharding_runs.data(sharding_runs.STEPS + 5)
  tx = sharding_runs.optimizer()
  like = alrao_jax.create_train_state(model, tx, jax.random.key(0), x[0])
  state = alrao_jax.restore_checkpoint(tmp_path / "checkpoint", like).state
  step = alrao_jax.make_train_step(model, tx)
  for i in range(sharding_runs.STEPS, sharding_runs.STEPS + 5):
    state, _ = step(state, x[i], y[i])
  longer = sharding_runs.single_device_run(model, steps=sharding_runs.STEPS + 5)
  assert sharding_runs.max_difference(longer.params, state.params) < TOLERANCE
  assert sharding_runs.max_difference(longer.opt_state, state.opt_state) < TOLERANCE
  assert (
    sharding_runs.max_difference(
      longer.averaging_state.log_posterior, state.averaging_state.log_posterior
    )
    < TOLERANCE
  )


# In-process checks of the arguments, on abstract meshes (no devices needed).


def _abstract_mesh(**axes):
  return AbstractMesh(tuple(axes.values()), tuple(axes), axis_types=(AxisType.Auto,) * len(axes))


def _state(copies=4, kernel_names=None):
  init = nn.initializers.lecun_normal()
  if kernel_names is not None:
    init = nn.with_partitioning(init, kernel_names)
  model = nn.Sequential([nn.Dense(16, kernel_init=init), alrao_jax.AlraoHead(8, num_copies=copies)])
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0))
  return jax.eval_shape(
    lambda: alrao_jax.create_train_state(model, tx, jax.random.key(1), jnp.ones((4, 6)))
  )


def test_state_shardings_rates_are_replicated_on_their_size_one_axes():
  shardings = sharding.state_shardings(
    _state(kernel_names=("model", None)),
    _abstract_mesh(data=2, copies=2, model=2),
    outputs_axis="model",
  )
  assert shardings.params["layers_0"]["kernel"].value.spec == jax.P("model", None)
  assert shardings.opt_state[1].rates["layers_0"]["kernel"].value.spec == jax.P(None, None)
  head = shardings.params["layers_1"]["alrao_copies"]
  assert head["kernel"].spec == jax.P("copies", None, "model")
  assert head["bias"].spec == jax.P("copies", "model")
  assert shardings.opt_state[1].rates["layers_1"]["alrao_copies"]["kernel"].spec == jax.P(
    "copies", None, None
  )


def test_state_shardings_without_a_copies_axis_replicate_the_head():
  shardings = sharding.state_shardings(_state(), _abstract_mesh(data=8))
  assert shardings.params["layers_1"]["alrao_copies"]["kernel"].spec == jax.P(None, None, None)


@pytest.mark.parametrize(
  ("state", "mesh", "message"),
  [
    (dict(copies=10), dict(data=1, copies=8), "num_copies a multiple of the 'copies'"),
    (dict(kernel_names=(None, "model")), dict(data=8), "lacks; add the axis"),
    (dict(kernel_names=(None, "model")), dict(data=1, model=3), "does not divide"),
  ],
)
def test_state_shardings_bad_layouts_are_named(state, mesh, message):
  with pytest.raises(ValueError, match=message):
    sharding.state_shardings(_state(**state), _abstract_mesh(**mesh))


@pytest.mark.parametrize(
  ("axes", "message"),
  [
    ({"data": 2}, "has 2 devices but 1 are given"),
    ({"data": -1, "copies": -1}, "only one mesh axis"),
    ({"data": 0}, "needs a size >= 1"),
    ({}, "at least one mesh axis"),
  ],
)
def test_make_mesh_bad_axes(axes, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(axes)


def test_shard_batch_rows_must_divide_over_the_data_axis():
  with pytest.raises(ValueError, match="use a batch size that is a multiple of 8"):
    sharding.shard_batch((np.ones((12, 3)), np.ones(12)), _abstract_mesh(data=8))


def test_collectives_parses_sync_async_and_tuple_collectives():
  text = "\n".join(
    [
      "  %ag = f32[8,256,100]{2,1,0} all-gather(f32[1,256,100]{2,1,0} %p), dimensions={0}",
      "  %ars = (f32[32]{0}, bf16[4,4]{1,0}) all-reduce-start(f32[32]{0} %a, bf16[4,4]{1,0} %b)",
      "  %ard = (f32[32]{0}, bf16[4,4]{1,0}) all-reduce-done(%ars)",
      "  %add = f32[32]{0} add(f32[32]{0} %a, f32[32]{0} %a)",
    ]
  )
  assert sharding.collectives(text) == [
    sharding.Collective("all-gather", ((8, 256, 100),), 4 * 8 * 256 * 100),
    sharding.Collective("all-reduce", ((4, 4),), 32),
  ]


class _ScannedBlock(nn.Module):
  @nn.compact
  def __call__(self, h, _):
    init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
    h = nn.relu(nn.Dense(16, kernel_init=init)(h))
    return h, None


class _ScannedStack(nn.Module):
  @nn.compact
  def __call__(self, x):
    stack = nn.scan(
      _ScannedBlock,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      length=3,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )
    h, _ = stack()(nn.Dense(16)(x), None)
    return alrao_jax.AlraoHead(8, num_copies=4)(h)


def test_scanned_layers_with_logical_names_map_through_the_rules():
  model = _ScannedStack()
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0), momentum=0.9)
  state = jax.eval_shape(
    lambda: alrao_jax.create_train_state(model, tx, jax.random.key(1), jnp.ones((4, 6)))
  )
  rules = (("layers", None), ("embed", None), ("mlp", "model"))
  shardings = sharding.state_shardings(
    state, _abstract_mesh(data=2, copies=2, model=2), rules=rules
  )
  kernel = ("Scan_ScannedBlock_0", "Dense_0", "kernel")  # stacked: (3, 16, 16), rates (3, 1, 16)

  def spec(tree):
    for key in kernel:
      tree = tree[key]
    return tree.value.spec

  assert spec(shardings.params) == jax.P(None, None, "model")
  assert spec(shardings.opt_state[0].trace) == jax.P(None, None, "model")
  assert spec(shardings.opt_state[1].rates) == jax.P(None, None, "model")
  with pytest.raises(ValueError, match="lacks; add the axis"):  # the rules map to 'model'
    sharding.state_shardings(state, _abstract_mesh(data=8), rules=rules)


def test_a_sweep_with_its_members_over_four_devices_equals_one_device():
  run = _meshes()["sweep"]  # on a mesh of Explicit axes (jax.make_mesh) and of Auto axes
  assert run["losses"] < 1e-5 and run["params"] < 1e-5
  assert run["members"] < 1e-5  # SweepResult.state(i) of every member, on either mesh
  assert run["nnx_winner"] < 1e-5  # an NNX sweep puts its winner in the model itself
  assert run["best"][0] == run["best"][1] == run["best"][2]
  assert run["kernel_spec"] == "P('members', None, None)" and run["kernel_devices"] == 4

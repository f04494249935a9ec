"""optax's contract (contrib/_common_test.py, _src/sharding_test.py) over our transforms."""

import subprocess
import sys
import textwrap
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import alrao_jax

KEY = jax.random.key(0)
OPTIMIZERS = {
  "alrao_sgd": (alrao_jax.alrao_sgd, {"lr_min": 0.05, "lr_max": 0.5}),
  "alrao_sgd_momentum": (alrao_jax.alrao_sgd, {"lr_min": 0.01, "lr_max": 0.1, "momentum": 0.9}),
  "alrao_adam": (alrao_jax.alrao_adam, {"lr_min": 0.01, "lr_max": 0.1}),
}
NAMES = sorted(OPTIMIZERS)


def _make(name, **extra):
  factory, kwargs = OPTIMIZERS[name]
  return factory(**kwargs, key=KEY, **extra)


def _params(dtype=jnp.float32):
  return {"dense": {"kernel": jnp.full((3, 4), 2.0, dtype), "bias": jnp.full((4,), -1.0, dtype)}}


def _objective(params):
  return sum(jnp.sum(jnp.square(p.astype(jnp.float32) - 0.5)) for p in jax.tree.leaves(params))


@pytest.mark.parametrize("name", NAMES)
def test_converges_without_retracing(name):
  tx = _make(name)

  @jax.jit
  def step(params, state):
    grads = jax.grad(_objective)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = _params(), tx.init(_params())
  for _ in range(600):
    params, state = step(params, state)
  assert step._cache_size() == 1  # no retrace after the first call
  chex.assert_trees_all_close(
    params, jax.tree.map(lambda p: jnp.full_like(p, 0.5), params), atol=1e-2
  )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_preserves_dtype(name, dtype):
  tx = _make(name)
  params = _params(dtype)
  grads = jax.grad(lambda p: _objective(p).astype(dtype))(params)
  updates, state = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
  assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
  assert jax.tree.map(lambda a: a.dtype, state) == jax.tree.map(lambda a: a.dtype, tx.init(params))


@pytest.mark.parametrize("name", NAMES)
def test_state_is_stable_under_lax_cond(name):
  tx = _make(name)

  @jax.jit
  def step(params, state):
    grads = jax.grad(_objective)(params)
    cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
    updates, state = jax.lax.cond(
      cond, lambda: tx.update(grads, state, params), lambda: (params, state)
    )
    return optax.apply_updates(params, updates), state

  params, state = _params(), tx.init(_params())
  for _ in range(2):
    params, state = step(params, state)
  assert jax.tree.structure(state) == jax.tree.structure(tx.init(_params()))


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_with_the_bounds_static(name):
  factory, kwargs = OPTIMIZERS[name]
  static = ("lr_min", "lr_max", "key")
  injected = optax.inject_hyperparams(factory, static_args=static)(**kwargs, key=KEY)
  plain = _make(name)
  params = _params()
  grads = jax.grad(_objective)(params)
  updates, new_state = jax.jit(plain.update)(grads, jax.jit(plain.init)(params), params)
  state = jax.jit(injected.init)(params)
  assert not set(static) & set(state.hyperparams)
  assert set(kwargs) - set(static) <= set(state.hyperparams)  # e.g. momentum stays injectable
  updates_injected, new_injected = jax.jit(injected.update)(grads, state, params)
  chex.assert_trees_all_close(updates_injected, updates, rtol=1e-5)
  chex.assert_trees_all_close(new_injected.inner_state, new_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_multi_steps_accumulates(name, dtype):
  tx = optax.MultiSteps(_make(name), every_k_schedule=4)
  params = _params(dtype)
  grads = jax.grad(lambda p: _objective(p).astype(dtype))(params)
  state = jax.jit(tx.init)(params)
  update = jax.jit(tx.update)
  for _ in range(3):
    updates, state = update(grads, state, params)
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, grads))
  updates, state = update(grads, state, params)
  direct, _ = _make(name).update(grads, _make(name).init(params), params)
  chex.assert_trees_all_close(updates, direct, rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_init_from_abstract_shapes(name):
  tx = _make(name)
  concrete = tx.init(_params())
  abstract = jax.eval_shape(tx.init, _params())
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, concrete)
  shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), _params())
  chex.assert_trees_all_equal_shapes_and_dtypes(tx.init(shapes), concrete)
  chex.assert_trees_all_equal(tx.init(shapes), concrete)  # the same rates: sampled from shapes


SHARDING_SCRIPT = textwrap.dedent(
  """
  import os
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = flags + " --xla_force_host_platform_device_count=8"
  import jax, jax.numpy as jnp
  import alrao_jax
  mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
  sharding = jax.sharding.NamedSharding(mesh, jax.P(None, "x"))
  vector = jax.sharding.NamedSharding(mesh, jax.P("x"))
  key = jax.random.key(0)
  txs = {
    "alrao_sgd": alrao_jax.alrao_sgd(1e-3, 1.0, key=key),
    "alrao_sgd_momentum": alrao_jax.alrao_sgd(1e-3, 1.0, key=key, momentum=0.9),
    "alrao_adam": alrao_jax.alrao_adam(1e-4, 1e-2, key=key),
  }
  with jax.set_mesh(mesh):
    params = {"dense": {
      "kernel": jnp.zeros((4, 16), jnp.float32, out_sharding=sharding),
      "bias": jnp.zeros((16,), jnp.float32, out_sharding=vector),
    }}
    for name, tx in txs.items():
      state0 = tx.init(params)
      _, state1 = tx.update(params, state0, params)
      _, state2 = jax.jit(tx.update)(params, state0, params)
      states = (state0, state1, state2, jax.jit(tx.init)(params))
      types = [jax.tree.map(jax.typeof, s) for s in states]
      assert all(t == types[0] for t in types), (name, types)
      print(name, "ok", len(jax.devices()))
  """
)


def test_state_shardings_unchanged_by_update_on_8_devices():
  out = subprocess.run([sys.executable, "-c", SHARDING_SCRIPT], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert sorted(out.stdout.strip().splitlines()) == [f"{n} ok 8" for n in NAMES]


# The contract over every parameter tree optax accepts, for every exported optimizer.
def _schedule_chain(**kwargs):
  """Alrao-SGD with a layer schedule chained after it (depths computed at init)."""

  def depths(params):
    return alrao_jax.layer_depths(lambda p: sum(jnp.sum(x) for x in jax.tree.leaves(p)), params)

  return optax.chain(
    alrao_jax.alrao_sgd(0.05, 0.5, key=KEY, **kwargs),
    alrao_jax.scale_by_layer_schedule(alrao_jax.discriminative_schedule(2), depths),
  )


TREE_OPTIMIZERS = {
  "alrao_sgd": lambda **kw: alrao_jax.alrao_sgd(0.05, 0.5, key=KEY, **kw),
  "alrao_sgd_momentum": lambda **kw: alrao_jax.alrao_sgd(0.01, 0.1, key=KEY, momentum=0.9, **kw),
  "alrao_sgd_nesterov": lambda **kw: alrao_jax.alrao_sgd(
    0.01, 0.1, key=KEY, momentum=0.9, nesterov=True, **kw
  ),
  "alrao_adam": lambda **kw: alrao_jax.alrao_adam(0.01, 0.1, key=KEY, **kw),
  "alrao_sgd+layer_schedule": _schedule_chain,
}


def _nnx_state():
  from flax import nnx

  return nnx.state(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), nnx.Param)


F32 = jnp.float32  # explicit: jnp.full(shape, 2.0) alone is weakly typed
TREES = {
  "bare_array": lambda: jnp.full((3, 2), 2.0, F32),
  "scalar": lambda: jnp.asarray(2.0, F32),
  "tuple": lambda: (jnp.full((4,), 2.0, F32), jnp.full((2, 3), -1.0, F32)),
  "nested_dicts": lambda: {"a": {"b": {"kernel": jnp.full((3, 2), 2.0, F32)}}, "c": jnp.ones(2)},
  "nnx_state": _nnx_state,
  "complex": lambda: {"w": jnp.full((2, 3), 2.0 - 1.0j, jnp.complex64)},
  "float16": lambda: {"w": jnp.full((2, 3), 2.0, jnp.float16)},
  "bfloat16": lambda: {"w": jnp.full((2, 3), 2.0, jnp.bfloat16)},
  "float64": lambda: {"w": jnp.full((2, 3), 2.0, jnp.float64)},
}


def _distance(params):
  """sum |p - 0.5|^2 in float32: real for every leaf dtype, complex included."""
  return sum(
    jnp.sum(jnp.abs(p.astype(jnp.result_type(p, jnp.float32)) - 0.5) ** 2)
    for p in jax.tree.leaves(params)
  )


def _grads(params):
  # JAX's gradient of a real function of complex parameters is the conjugate of the steepest
  # ascent direction (optax's convention): conjugate it back.
  return jax.tree.map(jnp.conj, jax.grad(_distance)(params))


@pytest.mark.parametrize("tree", sorted(TREES))
@pytest.mark.parametrize("name", sorted(TREE_OPTIMIZERS))
def test_contract_over_every_parameter_tree(name, tree):
  with jax.enable_x64(tree == "float64"), warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # no Flax layout: the fallback rule, warned
    tx, params = TREE_OPTIMIZERS[name](), TREES[tree]()
    dtypes = jax.tree.map(lambda p: p.dtype, params)
    # init from abstract shapes: the same state as from the arrays, rates included
    state = tx.init(params)
    abstract = jax.eval_shape(tx.init, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract, state)
    chex.assert_trees_all_equal(tx.init(jax.tree.map(jax.typeof, params)), state)
    # the state's types are stable: through update, and under lax.cond (traced only)
    grads = _grads(params)
    updates, new_state = tx.update(grads, state, params)
    assert jax.tree.map(lambda u: u.dtype, updates) == dtypes
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
    jax.eval_shape(
      lambda s: jax.lax.cond(True, lambda: tx.update(grads, s, params)[1], lambda: s), state
    )

    # converges on |p - 0.5|^2 in one compiled loop; a second call does not recompile
    @jax.jit
    def run(params, state):
      def body(_, carry):
        params, state = carry
        updates, state = tx.update(_grads(params), state, params)
        return optax.apply_updates(params, updates), state

      return jax.lax.fori_loop(0, 1000 if "adam" in name else 300, body, (params, state))

    params, state = run(params, state)
    run(params, state)
    assert run._cache_size() == 1
    assert jax.tree.map(lambda p: p.dtype, params) == dtypes
    # Adam's steps shrink slowly near the optimum; half precision holds 2-3 digits
    tolerance = 0.05 if tree in ("float16", "bfloat16") else 0.02 if "adam" in name else 1e-3
    for leaf in jax.tree.leaves(params):
      np.testing.assert_allclose(np.asarray(leaf, np.complex128), 0.5, atol=tolerance)


FLAX_SHARDING_SCRIPT = textwrap.dedent(
  """
  import os
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = flags + " --xla_force_host_platform_device_count=8"
  import jax, jax.numpy as jnp, optax, flax.linen as nn
  from flax import nnx
  import alrao_jax
  mesh = jax.make_mesh((4, 2), ("data", "model"))
  rows = ("model", None)  # a row-sharded kernel: its rates (1, out) cannot split rows
  x, y = jnp.ones((8, 8)), jnp.arange(8) % 3

  class NNXNet(nnx.Module):
    def __init__(self, rngs):
      init = nnx.with_partitioning(nnx.initializers.lecun_normal(), rows)
      self.dense = nnx.Linear(8, 6, kernel_init=init, rngs=rngs)
      self.head = alrao_jax.nnx.AlraoHead(6, 3, num_copies=2, rngs=rngs)
    def __call__(self, x):
      return self.head(nnx.relu(self.dense(x)))

  for eager in (True, False):  # Flax's default route (eager sharding), and the other one
    with jax.set_mesh(mesh), nnx.use_eager_sharding(eager):
      model = NNXNet(nnx.Rngs(0))
      tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0))
      optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
      step = alrao_jax.make_train_step(model, optimizer)
      averaging, metrics = step(alrao_jax.switch_init(2), x, y)
      assert jnp.isfinite(metrics["loss"])
      rates = optax.tree_utils.tree_get(nnx.state(optimizer), "rates")
      print("nnx eager" if eager else "nnx lazy", "ok", rates["dense"]["kernel"].shape)

  class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
      init = nn.with_partitioning(nn.initializers.lecun_normal(), rows)
      return alrao_jax.AlraoHead(3, num_copies=2)(nn.relu(nn.Dense(6, kernel_init=init)(x)))

  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0))

  def create():
    params = LinenNet().init(jax.random.key(1), x)["params"]  # boxed: nn.Partitioned
    return params, tx.init(params)

  auto = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  with jax.set_mesh(auto):  # linen's recipe: eval_shape -> nn.get_sharding -> jit
    abstract = jax.eval_shape(create)
    shardings = nn.get_sharding(abstract, auto)
    params, opt_state = jax.jit(create, out_shardings=shardings)()
    rate_box = opt_state[1].rates["Dense_0"]["kernel"]
    print("linen get_sharding ok", rate_box.names, rate_box.value.shape)

  # optax's route: the state's shardings from the parameters' with tree_map_params
  row = jax.sharding.NamedSharding(auto, jax.P("model", None))
  replicated = jax.sharding.NamedSharding(auto, jax.P())
  params = {"w": jax.device_put(jnp.ones((4, 6)), row)}
  sgd = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0), momentum=0.9)
  shardings = optax.tree_utils.tree_map_params(
    sgd, lambda _, s: s, jax.eval_shape(sgd.init, params), {"w": row},
    transform_non_params=lambda _: replicated,
  )
  state = jax.jit(sgd.init, out_shardings=shardings)(params)
  print("optax map_params ok", state[0].trace["w"].sharding.spec, state[1].rates["w"].shape)
  """
)


def test_flax_sharding_routes_with_a_row_sharded_kernel():
  out = subprocess.run([sys.executable, "-c", FLAX_SHARDING_SCRIPT], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines() == [
    "nnx eager ok (1, 6)",
    "nnx lazy ok (1, 6)",
    "linen get_sharding ok (None, None) (1, 6)",
    "optax map_params ok P('model', None) (1, 6)",
  ]


def test_optimizer_state_dtypes_as_in_optax():
  params = {"w": jnp.ones((3, 4), jnp.float32)}
  sgd = alrao_jax.alrao_sgd(0.01, 0.1, key=KEY, momentum=0.9, accumulator_dtype=jnp.bfloat16)
  adam = alrao_jax.alrao_adam(0.01, 0.1, key=KEY, mu_dtype=jnp.bfloat16)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    trace = sgd.init(params)[0].trace["w"]
    adam_state = adam.init(params)[0]
    updates, _ = sgd.update(params, sgd.init(params), params)
  assert trace.dtype == jnp.bfloat16 and updates["w"].dtype == jnp.float32
  assert adam_state.mu["w"].dtype == jnp.bfloat16 and adam_state.nu["w"].dtype == jnp.float32
  with pytest.raises(ValueError, match="apply to the momentum trace"):
    alrao_jax.alrao_sgd(0.01, 0.1, key=KEY, accumulator_dtype=jnp.bfloat16)

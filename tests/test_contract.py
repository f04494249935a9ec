"""optax's contract (contrib/_common_test.py, _src/sharding_test.py) over our transforms."""

import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
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
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
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
  out = subprocess.run(
    [sys.executable, "-c", SHARDING_SCRIPT], capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert sorted(out.stdout.strip().splitlines()) == [f"{n} ok 8" for n in NAMES]

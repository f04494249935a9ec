"""The Alrao optax transform against plain optax, inside optax combinators and under jit."""

import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, serialization

import alrao_jax

KEY = jax.random.key(0)


class TinyCNN(nn.Module):
  width: int = 4

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.width, (3, 3))(x))
    x = nn.BatchNorm(use_running_average=True)(x)
    return nn.Dense(3)(x.mean(axis=(1, 2)))


X = jax.random.normal(jax.random.key(1), (8, 6, 6, 1))
Y = jnp.arange(8) % 3
MODEL = TinyCNN()
VARIABLES = MODEL.init(KEY, X)
PARAMS = VARIABLES["params"]


def _loss(params, x, y):
  logits = MODEL.apply({"params": params, "batch_stats": VARIABLES["batch_stats"]}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _train(tx, steps=20, params=PARAMS):
  @jax.jit
  def step(params, state):
    grads = jax.grad(_loss)(params, X, Y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params


@pytest.mark.parametrize(
  ("alrao", "plain"),
  [
    (alrao_jax.alrao_sgd(0.3, 0.3, key=KEY), optax.sgd(0.3)),
    (alrao_jax.alrao_sgd(0.1, 0.1, key=KEY, momentum=0.9), optax.sgd(0.1, momentum=0.9)),
    (
      alrao_jax.alrao_sgd(0.1, 0.1, key=KEY, momentum=0.9, nesterov=True),
      optax.sgd(0.1, momentum=0.9, nesterov=True),
    ),
    (alrao_jax.alrao_adam(0.01, 0.01, key=KEY), optax.adam(0.01)),
  ],
  ids=["sgd", "momentum", "nesterov", "adam"],
)
def test_equal_bounds_match_plain_optax(alrao, plain):
  got, want = _train(alrao), _train(plain)
  chex.assert_trees_all_close(got, want, atol=1e-6, rtol=0)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), want, PARAMS)
  assert max(jax.tree.leaves(moved)) > 1e-2  # the runs really trained


def test_different_features_really_move_differently():
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY)
  updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
  kernel = np.asarray(updates["Conv_0"]["kernel"])
  assert len(np.unique(kernel[0, 0, 0])) == 4  # one rate per filter
  np.testing.assert_array_equal(kernel, np.broadcast_to(kernel[0, 0, 0], kernel.shape))
  np.testing.assert_array_equal(updates["Conv_0"]["bias"], kernel[0, 0, 0])


def test_inside_chain_and_partition():
  labels = jax.tree_util.tree_map_with_path(
    lambda p, _: "alrao" if "Conv_0" in jax.tree_util.keystr(p) else "sgd", PARAMS
  )
  tx = optax.partition(
    {"alrao": alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY), "sgd": optax.sgd(0.5)}, labels
  )
  tx = optax.chain(optax.clip_by_global_norm(10.0), tx)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  updates, _ = jax.jit(tx.update)(grads, tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(updates["Dense_0"]["bias"], -0.5 * np.ones(3), rtol=1e-6)
  conv = np.asarray(updates["Conv_0"]["bias"])
  assert len(np.unique(conv)) == 4 and ((conv < -1e-3 * 0.99) & (conv > -1.01)).all()


def test_inject_hyperparams_as_global_multiplier():
  schedule = optax.linear_schedule(1.0, 0.0, transition_steps=4)
  base = alrao_jax.alrao_sgd(1e-2, 1e-1, key=KEY)
  tx = optax.chain(base, optax.inject_hyperparams(optax.scale)(step_size=schedule))
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  state = tx.init(PARAMS)
  reference, _ = base.update(grads, base.init(PARAMS), PARAMS)
  update = jax.jit(tx.update)
  for t in range(4):
    updates, state = update(grads, state, PARAMS)
    factor = 1 - t / 4
    chex.assert_trees_all_close(
      updates, jax.tree.map(lambda u, f=factor: u * f, reference), rtol=1e-6
    )
  assert float(state[1].hyperparams["step_size"]) == 0.25  # the value used by the last update


def test_multisteps_accumulates_then_applies():
  tx = optax.MultiSteps(alrao_jax.alrao_sgd(0.2, 0.2, key=KEY), every_k_schedule=2)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  state = tx.init(PARAMS)
  first, state = tx.update(grads, state, PARAMS)
  assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(first))
  second, _ = tx.update(grads, state, PARAMS)
  chex.assert_trees_all_close(second, jax.tree.map(lambda g: -0.2 * g, grads), rtol=1e-6)


def test_second_jitted_call_does_not_retrace():
  tx = alrao_jax.alrao_adam(1e-4, 1e-1, key=KEY)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def update(grads, state, params):
    return tx.update(grads, state, params)

  state = tx.init(PARAMS)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  for _ in range(3):
    _, state = update(grads, state, PARAMS)


def test_bf16_params_get_bf16_updates():
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
  for tx in (
    alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY, momentum=0.9),
    alrao_jax.alrao_adam(1e-3, 1.0, key=KEY),
  ):
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert {u.dtype for u in jax.tree.leaves(updates)} == {jnp.dtype(jnp.bfloat16)}


def test_state_round_trips_through_flax_serialization():
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY, momentum=0.9)
  state = tx.init(PARAMS)
  _, state = tx.update(jax.tree.map(jnp.ones_like, PARAMS), state, PARAMS)
  blank = tx.init(jax.tree.map(jnp.zeros_like, PARAMS))
  blank = jax.tree.map(jnp.zeros_like, blank)
  restored = serialization.from_bytes(blank, serialization.to_bytes(state))
  chex.assert_trees_all_equal(restored, state)


def _compiled_text(width, baked):
  params = TinyCNN(width=width).init(KEY, X)["params"]
  rates = alrao_jax.sample_rates(KEY, params, 1e-3, 1.0)
  grads = jax.tree.map(jnp.ones_like, params)
  if baked:  # the alternative we reject: rates closed over as constants
    fn = jax.jit(lambda g: jax.tree.map(lambda u, r: u * r, g, rates))
    return fn.lower(grads).as_text()
  tx = alrao_jax.scale_by_rates(rates)
  return jax.jit(tx.update).lower(grads, tx.init(params)).as_text()


def test_rates_are_not_baked_into_the_compiled_update():
  small, large = _compiled_text(4, baked=False), _compiled_text(512, baked=False)
  assert len(large) < 1.05 * len(small)
  baked_small, baked_large = _compiled_text(4, baked=True), _compiled_text(512, baked=True)
  assert len(baked_large) > 2 * len(baked_small)  # the check detects baked constants


class NnxNet(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.out = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.conv(x)).mean(axis=(1, 2)))


def _nnx_train(tx, steps=5):
  model = NnxNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(X), Y).mean()

    optimizer.update(model, nnx.grad(loss_fn)(model))

  for _ in range(steps):
    step(model, optimizer)
  return nnx.state(model, nnx.Param)


def test_nnx_optimizer_matches_plain_sgd():
  got = _nnx_train(alrao_jax.alrao_sgd(0.2, 0.2, key=KEY, momentum=0.9))
  want = _nnx_train(optax.sgd(0.2, momentum=0.9))
  chex.assert_trees_all_close(got, want, atol=1e-6, rtol=0)


def test_nnx_optimizer_uses_per_feature_rates():
  model = NnxNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY), wrt=nnx.Param)
  before = np.array(model.conv.kernel[...])  # nnx.state aliases the live variables
  grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
  optimizer.update(model, grads)
  delta = before - np.asarray(model.conv.kernel[...])
  assert len(np.unique(np.round(delta[0, 0, 0], 7))) == 4
  np.testing.assert_allclose(delta, np.broadcast_to(delta[0, 0, 0], delta.shape), atol=1e-7)


def test_init_inside_jit_works():
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY)
  eager = tx.init(PARAMS)
  jitted = jax.jit(tx.init)(PARAMS)
  chex.assert_trees_all_close(jitted, eager, rtol=1e-6)


def test_update_with_mismatched_tree_is_an_error():
  tx = alrao_jax.scale_by_rates({"a": jnp.ones(2), "b": jnp.ones(2)})
  state = tx.init({"a": jnp.ones(2), "b": jnp.ones(2)})
  with pytest.raises(ValueError, match="initialise the transform"):
    tx.update({"a": jnp.ones(2)}, state)


def test_a_model_without_an_alrao_head_is_warned_by_name():
  plain = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
  headed = nn.Sequential([nn.Dense(8), nn.relu, alrao_jax.AlraoHead(3, num_copies=2)])
  x = jnp.ones((1, 4))
  for make in (alrao_jax.alrao_sgd, alrao_jax.alrao_adam):
    tx = make(1e-3, 1.0, key=jax.random.key(0))
    with pytest.warns(UserWarning, match=f"{make.__name__}: .*no Alrao head.*AlraoHead"):
      tx.init(plain.init(jax.random.key(1), x)["params"])
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      tx.init(headed.init(jax.random.key(1), x)["params"])
      tx.init(jnp.ones((3, 2)))  # a bare array is an optax tree, not a model
    assert not [w for w in caught if "no Alrao head" in str(w.message)]

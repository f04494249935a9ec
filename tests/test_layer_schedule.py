"""Layer depths from the forward pass (linen and NNX, stacks, cells) and the layer-wise
schedule transform, against hand-computed per-layer SGD."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from test_zoo import LAYERS, ZOO, _data

import alrao_jax
from alrao_jax.rates import leaf_paths, path_string


class Backwards(nn.Module):
  """Names sort against the forward order: z runs first, then m, then a, then the head."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(6, name="z")(x))
    x = nn.LayerNorm(name="b_norm")(x)
    x = nn.relu(nn.Dense(5, name="m")(x))
    x = nn.relu(nn.Dense(4, name="a")(x.astype(jnp.bfloat16)))
    return alrao_jax.AlraoHead(3, num_copies=2, name="head")(x.astype(jnp.float32))


class NBackwards(nnx.Module):
  def __init__(self, rngs):
    self.z = nnx.Linear(3, 6, rngs=rngs)
    self.b_norm = nnx.LayerNorm(6, rngs=rngs)
    self.a = nnx.Linear(6, 4, rngs=rngs)
    self.head = alrao_jax.nnx.AlraoHead(4, 3, num_copies=2, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.a(self.b_norm(nnx.relu(self.z(x))))))


def _by_path(tree):
  paths, leaves, _ = leaf_paths(tree)
  return {path_string(p): np.asarray(leaf) for p, leaf in zip(paths, leaves, strict=True)}


def test_linen_layers_follow_the_forward_pass_not_the_names():
  x = jnp.ones((2, 3))
  params = Backwards().init(jax.random.key(0), x)["params"]
  depths = alrao_jax.layer_depths(lambda p: Backwards().apply({"params": p}, x), params)
  assert depths.num_layers == 4
  assert [sorted({p.split("/")[0] for p in layer}) for layer in depths.layers] == [
    ["b_norm", "z"],  # the norm joins the layer before it
    ["m"],
    ["a"],  # its kernel is cast to bf16 first: the cast is not its use
    ["head"],
  ]
  d = _by_path(depths.fractions)
  np.testing.assert_allclose(d["z/kernel"], [[0.0]])
  np.testing.assert_allclose(d["b_norm/scale"], [0.0])
  np.testing.assert_allclose(d["m/bias"], [1 / 3])
  np.testing.assert_allclose(d["a/kernel"], [[2 / 3]], rtol=1e-6)
  np.testing.assert_allclose(d["head/alrao_copies/kernel"], [[[1.0]]])


def test_nnx_layers_follow_the_forward_pass_not_the_sorted_state():
  model = NBackwards(nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  x = jnp.ones((2, 3))
  depths = alrao_jax.layer_depths(lambda s: nnx.merge(graphdef, s, rest)(x), params)
  assert [sorted({p.split("/")[0] for p in layer}) for layer in depths.layers] == [
    ["b_norm", "z"],
    ["a"],
    ["head"],
  ]
  assert jax.tree.structure(depths.fractions) == jax.tree.structure(params)


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_a_scanned_stack_gives_each_block_its_own_depth(api):
  x, _ = _data("gpt")
  if api == "linen":
    model = ZOO["gpt"][0]
    params = model.init(jax.random.key(0), x)["params"]
    depths = alrao_jax.layer_depths(lambda p: model.apply({"params": p}, x), params)
  else:
    graphdef, params, rest = nnx.split(ZOO["gpt"][1](nnx.Rngs(0)), nnx.Param, ...)
    depths = alrao_jax.layer_depths(lambda s: nnx.merge(graphdef, s, rest)(x), params)
  # embed, block 0, block 1, head (ln_f joins the last block)
  assert depths.num_layers == 2 + LAYERS
  d = _by_path(depths.fractions)
  span = depths.num_layers - 1
  np.testing.assert_allclose(d["embed/embedding"].ravel(), [0.0])
  for leaf in ("blocks/up/kernel", "blocks/attn/query/kernel", "blocks/ln1/scale"):
    assert d[leaf].shape[0] == LAYERS and d[leaf].size == LAYERS
    np.testing.assert_allclose(d[leaf].ravel(), np.arange(1, LAYERS + 1) / span, rtol=1e-6)
  np.testing.assert_allclose(d["ln_f/scale"].ravel(), [LAYERS / span], rtol=1e-6)
  np.testing.assert_allclose(d["head/alrao_copies/kernel"].ravel(), [1.0])


@pytest.mark.parametrize("name", ["gru", "resnet"])
def test_cells_and_residual_blocks(name):
  model, _, kind, _, _, eval_kwargs, _ = ZOO[name]
  x, _ = _data(kind)
  variables = model.init(jax.random.key(0), x, **eval_kwargs)
  rest = {k: v for k, v in variables.items() if k != "params"}
  depths = alrao_jax.layer_depths(
    lambda p: model.apply({"params": p, **rest}, x, **eval_kwargs), variables["params"]
  )
  modules = [sorted({"/".join(p.split("/")[:-1]) for p in layer}) for layer in depths.layers]
  if name == "gru":  # every gate of the cell is one layer, then the head
    assert depths.num_layers == 2 and len(modules[0]) == 6 and modules[1] == ["head/alrao_copies"]
  else:  # stem, two convs per block (each with its BatchNorm), head
    assert depths.num_layers == 2 + 2 * LAYERS
    assert modules[0] == ["stem"] and modules[1] == ["stack_0/BatchNorm_0", "stack_0/Conv_0"]


def _mlp():
  model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(4), nn.relu, nn.Dense(2)])
  x = jax.random.normal(jax.random.key(1), (8, 3))
  params = model.init(jax.random.key(0), x)["params"]
  return model, x, params


def test_sgd_with_a_layer_schedule_equals_sgd_at_each_layers_rate():
  model, x, params = _mlp()
  y = jnp.arange(8) % 2
  depths = alrao_jax.layer_depths(lambda p: model.apply({"params": p}, x), params)
  schedule = alrao_jax.smith_schedule(10)
  tx = optax.chain(optax.sgd(0.1), alrao_jax.scale_by_layer_schedule(schedule, depths))

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

  @jax.jit
  def step(p, s):
    updates, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  def smith(d, t):  # Smith's profile by hand: 1.5 -> 0.5 over depth at the start, reversed
    progress = min(t / 10, 1.0)
    return (1.5 - d) * (1 - progress) + (0.5 + d) * progress

  fraction = {"layers_0": 0.0, "layers_2": 0.5, "layers_4": 1.0}
  p, s, oracle = params, tx.init(params), params
  for t in range(12):  # past total_steps: the profile stays reversed
    p, s = step(p, s)
    grads = jax.grad(loss)(oracle)
    rates = {name: 0.1 * smith(d, t) for name, d in fraction.items()}
    oracle = {
      name: jax.tree.map(lambda w, g, lr=lr: w - lr * g, oracle[name], grads[name])
      for name, lr in rates.items()
    }
  for got, want in zip(jax.tree.leaves(p), jax.tree.leaves(oracle), strict=True):
    np.testing.assert_allclose(got, want, atol=1e-6)
  assert int(s[1].count) == 12


def test_on_alrao_every_feature_rate_is_multiplied():
  model, x, params = _mlp()
  depths = alrao_jax.layer_depths(lambda p: model.apply({"params": p}, x), params)
  alrao = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(2))
  m = alrao_jax.discriminative_schedule(depths.num_layers, ratio=3.0)
  tx = optax.chain(alrao, alrao_jax.scale_by_layer_schedule(m, depths))
  grads = jax.tree.map(jnp.ones_like, params)
  with_schedule, _ = tx.update(grads, tx.init(params), params)
  without, _ = alrao.update(grads, alrao.init(params), params)
  for name, factor in (("layers_0", 1 / 9), ("layers_2", 1 / 3), ("layers_4", 1.0)):
    for leaf in ("kernel", "bias"):
      np.testing.assert_allclose(
        with_schedule[name][leaf], factor * without[name][leaf], rtol=1e-5, atol=0
      )


def test_nnx_optimizer_with_a_layer_schedule():
  model = NBackwards(nnx.Rngs(0))
  x = jnp.ones((4, 3))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  depths = alrao_jax.layer_depths(lambda s: nnx.merge(graphdef, s, rest)(x), params)
  tx = optax.chain(optax.sgd(0.5), alrao_jax.scale_by_layer_schedule(lambda d, t: 1.0 - d, depths))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  head_before = np.asarray(model.head.alrao_copies.kernel[...])
  z_before = np.asarray(model.z.kernel[...])
  grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
  optimizer.update(model, grads)
  np.testing.assert_allclose(
    model.head.alrao_copies.kernel[...], head_before
  )  # multiplier 0 at depth 1
  np.testing.assert_allclose(model.z.kernel[...], z_before - 0.5)  # multiplier 1 at depth 0


def test_a_depth_callable_is_computed_at_init():
  model, x, params = _mlp()
  found = []

  def depths(p):
    found.append(True)
    return alrao_jax.layer_depths(lambda q: model.apply({"params": q}, x), p)

  tx = alrao_jax.scale_by_layer_schedule(alrao_jax.discriminative_schedule(3), depths)
  state = jax.jit(tx.init)(params)
  assert found and float(state.fractions["layers_2"]["kernel"].ravel()[0]) == 0.5


def test_bad_input_is_named():
  model, x, params = _mlp()
  depths = alrao_jax.layer_depths(lambda p: model.apply({"params": p}, x), params)
  with pytest.raises(TypeError, match="multiplier must be a function"):
    alrao_jax.scale_by_layer_schedule(2.0, depths)
  with pytest.raises(TypeError, match="depths must be"):
    alrao_jax.scale_by_layer_schedule(lambda d, t: d, {"a": 1})
  with pytest.raises(ValueError, match="do not fit the parameters"):
    alrao_jax.scale_by_layer_schedule(lambda d, t: d, depths).init({"other": jnp.ones(3)})
  with pytest.raises(TypeError, match="must return a number or an array"):
    alrao_jax.scale_by_layer_schedule(lambda d, t: jnp.ones(7), depths).init(params)
  with pytest.raises(TypeError, match="forward must be a function"):
    alrao_jax.layer_depths(None, params)
  with pytest.raises(ValueError, match="num_layers must be an int >= 1"):
    alrao_jax.discriminative_schedule(0)
  with pytest.raises(ValueError, match="ratio must be > 0"):
    alrao_jax.discriminative_schedule(3, ratio=0.0)
  with pytest.raises(ValueError, match="total_steps must be an int >= 1"):
    alrao_jax.smith_schedule(0)
  with pytest.raises(ValueError, match="first and last must be > 0"):
    alrao_jax.smith_schedule(10, first=-1.0)


def test_optax_conventions_dtypes_abstract_init_and_multisteps():
  model, x, params = _mlp()
  depths = alrao_jax.layer_depths(lambda p: model.apply({"params": p}, x), params)
  tx = alrao_jax.scale_by_layer_schedule(alrao_jax.smith_schedule(4), depths)
  half = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  updates, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, half), tx.init(half))
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))  # the updates' dtype
  assert int(state.count) == 1
  abstract = jax.eval_shape(tx.init, params)  # init from shapes alone, as optax's tests do
  assert jax.tree.structure(abstract) == jax.tree.structure(tx.init(params))
  multi = optax.MultiSteps(optax.chain(optax.sgd(1.0), tx), every_k_schedule=2)
  multi_state = multi.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(2):
    updates, multi_state = multi.update(grads, multi_state, params)
  # one inner step after two micro-steps: the schedule is at step 0 (first layer 1.5)
  np.testing.assert_allclose(updates["layers_0"]["bias"], -1.5, rtol=1e-6)
  np.testing.assert_allclose(updates["layers_4"]["bias"], -0.5, rtol=1e-6)


def test_an_unused_parameter_is_no_layer_after_the_head():
  class WithSpare(nn.Module):
    @nn.compact
    def __call__(self, x):
      self.param("spare", nn.initializers.ones, (4, 4))  # declared, never used
      x = nn.relu(nn.Dense(8)(x))
      return alrao_jax.AlraoHead(3, num_copies=2)(nn.Dense(8)(x))

  x = jnp.ones((1, 5))
  params = WithSpare().init(jax.random.key(0), x)["params"]
  depths = alrao_jax.layer_depths(lambda p: WithSpare().apply({"params": p}, x), params)
  assert depths.num_layers == 3
  fractions = depths.fractions
  assert float(fractions["AlraoHead_0"]["alrao_copies"]["kernel"].max()) == 1.0
  assert float(fractions["spare"].max()) == 1.0  # documented: the last layer's depth
  schedule = alrao_jax.discriminative_schedule(3)
  tx = alrao_jax.scale_by_layer_schedule(schedule, depths)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params))
  np.testing.assert_allclose(updates["AlraoHead_0"]["alrao_copies"]["kernel"], 1.0)

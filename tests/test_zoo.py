"""User models the library was not built for, in linen and NNX: a scanned GPT decoder, a ResNet
stack with BatchNorm, a GRU classifier, a regression MLP. For each: the rates follow SPEC per
layer on actual updates, the one-backward gradients equal a naive per-copy loop, 30 steps
reduce the loss, and then, with a copy retired, the next step equals the full model's step with
that copy at zero weight."""

import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import alrao_jax
from alrao_jax.rates import leaf_paths, path_string
from alrao_jax.retire import slice_copies

N, LAYERS, WIDTH, VOCAB = 3, 2, 8, 11
KEY = jax.random.key(0)
GAUSS = alrao_jax.gaussian_log_likelihood(sigma=1.0)

# ----- linen -----


class Block(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    h = nn.LayerNorm(name="ln1")(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(
      h, h, mask=nn.make_causal_mask(x[..., 0])
    )
    h = nn.gelu(nn.Dense(2 * WIDTH, name="up")(nn.LayerNorm(name="ln2")(x)))
    return x + nn.Dense(WIDTH, name="down")(h), None


class GPT(nn.Module):
  def setup(self):
    self.embed = nn.Embed(VOCAB, WIDTH)
    stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=LAYERS)
    self.blocks = stack()
    self.ln_f = nn.LayerNorm()
    self.head = alrao_jax.AlraoHead(VOCAB, num_copies=N)

  def features(self, tokens):
    x, _ = self.blocks(self.embed(tokens), None)
    return self.ln_f(x)

  def __call__(self, tokens):
    return self.head(self.features(tokens))


class ResBlock(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    h = nn.Conv(WIDTH, (3, 3), use_bias=False)(x)
    h = nn.relu(nn.BatchNorm(use_running_average=not train)(h))
    h = nn.Conv(WIDTH, (3, 3), use_bias=False)(h)
    return nn.relu(x + nn.BatchNorm(use_running_average=not train)(h))


class ResNet(nn.Module):
  def setup(self):
    self.stem = nn.Conv(WIDTH, (3, 3))
    self.stack = [ResBlock() for _ in range(LAYERS)]
    self.head = alrao_jax.AlraoHead(4, num_copies=N)

  def features(self, x, train):
    x = self.stem(x)
    for block in self.stack:
      x = block(x, train)
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, x, train):
    return self.head(self.features(x, train))


class GRUClassifier(nn.Module):
  def setup(self):
    self.rnn = nn.RNN(nn.GRUCell(WIDTH))
    self.head = alrao_jax.AlraoHead(4, num_copies=N)

  def features(self, x):
    return self.rnn(x)[:, -1]

  def __call__(self, x):
    return self.head(self.features(x))


class RegressionMLP(nn.Module):
  def setup(self):
    self.hidden = nn.Dense(WIDTH)
    self.head = alrao_jax.AlraoHead(2, num_copies=N)

  def features(self, x):
    return nn.tanh(self.hidden(x))

  def __call__(self, x):
    return self.head(self.features(x))


# ----- NNX -----


class NBlock(nnx.Module):
  def __init__(self, rngs):
    self.ln1 = nnx.LayerNorm(WIDTH, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(2, WIDTH, decode=False, rngs=rngs)
    self.ln2 = nnx.LayerNorm(WIDTH, rngs=rngs)
    self.up = nnx.Linear(WIDTH, 2 * WIDTH, rngs=rngs)
    self.down = nnx.Linear(2 * WIDTH, WIDTH, rngs=rngs)

  def __call__(self, x):
    h = self.ln1(x)
    x = x + self.attn(h, h, mask=nnx.make_causal_mask(x[..., 0]))
    return x + self.down(nnx.gelu(self.up(self.ln2(x))))


class NGPT(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(VOCAB, WIDTH, rngs=rngs)

    @nnx.split_rngs(splits=LAYERS)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def blocks(rngs):
      return NBlock(rngs)

    self.blocks = blocks(rngs)
    self.ln_f = nnx.LayerNorm(WIDTH, rngs=rngs)
    self.head = alrao_jax.nnx.AlraoHead(WIDTH, VOCAB, num_copies=N, rngs=rngs)

  def features(self, tokens):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def run(x, block):
      return block(x)

    return self.ln_f(run(self.embed(tokens), self.blocks))

  def __call__(self, tokens):
    return self.head(self.features(tokens))


class NResBlock(nnx.Module):
  def __init__(self, rngs):
    self.conv1 = nnx.Conv(WIDTH, WIDTH, (3, 3), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(WIDTH, rngs=rngs)
    self.conv2 = nnx.Conv(WIDTH, WIDTH, (3, 3), use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(WIDTH, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.bn1(self.conv1(x)))
    return nnx.relu(x + self.bn2(self.conv2(h)))


class NResNet(nnx.Module):
  def __init__(self, rngs):
    self.stem = nnx.Conv(3, WIDTH, (3, 3), rngs=rngs)
    self.blocks = nnx.List([NResBlock(rngs) for _ in range(LAYERS)])
    self.head = alrao_jax.nnx.AlraoHead(WIDTH, 4, num_copies=N, rngs=rngs)

  def features(self, x):
    x = self.stem(x)
    for block in self.blocks:
      x = block(x)
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, x):
    return self.head(self.features(x))


class NGRUClassifier(nnx.Module):
  def __init__(self, rngs):
    self.rnn = nnx.RNN(nnx.GRUCell(3, WIDTH, rngs=rngs))
    self.head = alrao_jax.nnx.AlraoHead(WIDTH, 4, num_copies=N, rngs=rngs)

  def features(self, x):
    return self.rnn(x, initial_carry=jnp.zeros((x.shape[0], WIDTH)))[:, -1]

  def __call__(self, x):
    return self.head(self.features(x))


class NRegressionMLP(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(4, WIDTH, rngs=rngs)
    self.head = alrao_jax.nnx.AlraoHead(WIDTH, 2, num_copies=N, rngs=rngs)

  def features(self, x):
    return nnx.tanh(self.hidden(x))

  def __call__(self, x):
    return self.head(self.features(x))


def _data(kind):
  k1, k2 = jax.random.split(jax.random.key(3))
  if kind == "gpt":
    tokens = jax.random.randint(k1, (8, 6), 0, VOCAB)
    return tokens, jnp.roll(tokens, -1, axis=1)
  if kind == "resnet":
    return jax.random.normal(k1, (8, 6, 6, 3)), jax.random.randint(k2, (8,), 0, 4)
  if kind == "gru":
    return jax.random.normal(k1, (8, 5, 3)), jax.random.randint(k2, (8,), 0, 4)
  x = jax.random.normal(k1, (16, 4))
  return x, jnp.stack([x[:, 0] - x[:, 1], jnp.sin(x[:, 2])], -1)


# name: (linen model, nnx builder, data kind, likelihood, train kwargs, eval kwargs,
#        {rate path: expected rate-leaf shape})
ZOO = {
  "gpt": (
    GPT(),
    NGPT,
    "gpt",
    None,
    {},
    {},
    {
      "blocks/up/kernel": (LAYERS, 1, 2 * WIDTH),
      "blocks/up/bias": (LAYERS, 2 * WIDTH),
      "blocks/ln1/scale": (LAYERS, WIDTH),
      "blocks/attn/query/kernel": (LAYERS, 1, 2, WIDTH // 2),
      "embed/embedding": (1, WIDTH),
      "head/alrao_copies/kernel": (N, 1, 1),
    },
  ),
  "resnet": (
    ResNet(),
    NResNet,
    "resnet",
    None,
    {"train": True},
    {"train": False},
    {
      "stem/kernel": (1, 1, 1, WIDTH),
      "stem/bias": (WIDTH,),
    },
  ),
  "gru": (GRUClassifier(), NGRUClassifier, "gru", None, {}, {}, {}),
  "regression": (
    RegressionMLP(),
    NRegressionMLP,
    "regression",
    GAUSS,
    {},
    {},
    {
      "hidden/kernel": (1, WIDTH),
      "hidden/bias": (WIDTH,),
    },
  ),
}
NAMES = sorted(ZOO)


def _linen_params(name):
  model, _, kind, _, _, eval_kwargs, _ = ZOO[name]
  x, _ = _data(kind)
  return model.init(KEY, x, **eval_kwargs)


def _nnx_model(name):
  return ZOO[name][1](nnx.Rngs(0))


def _effective_rates(params, rates):
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 2.0), params)
  tx = alrao_jax.scale_by_rates(rates)
  updates, _ = tx.update(grads, tx.init(params))
  return jax.tree.map(lambda u: np.asarray(u) / 2.0, updates)


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("name", NAMES)
def test_rates_follow_the_spec_per_layer(name, api):
  params = (
    _linen_params(name)["params"] if api == "linen" else nnx.state(_nnx_model(name), nnx.Param)
  )
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # every parameter of the zoo has a SPEC rule
    rates = alrao_jax.sample_rates(jax.random.key(5), params, 1e-4, 1.0)
  effective = _effective_rates(params, rates)
  paths, rate_leaves, _ = leaf_paths(rates)
  eff_leaves = leaf_paths(effective)[1]
  shapes = {path_string(p): np.shape(r) for p, r in zip(paths, rate_leaves, strict=True)}
  for (path, rate), eff in zip(zip(paths, rate_leaves, strict=True), eff_leaves, strict=True):
    np.testing.assert_allclose(
      eff, np.broadcast_to(rate, eff.shape), rtol=1e-6, err_msg=path_string(path)
    )
  for path, want in ZOO[name][6].items():
    if api == "nnx":
      path = path.replace("blocks/attn", "blocks/attn").replace(
        "embed/embedding", "embed/embedding"
      )
    if path in shapes:
      assert shapes[path] == want, (path, shapes[path])
  stacked = [p for p, s in shapes.items() if p.startswith("blocks/") and name == "gpt"]
  for path in stacked:
    rate = np.asarray(rate_leaves[[path_string(q) for q in paths].index(path)])
    assert rate.shape[0] == LAYERS and not np.allclose(rate[0], rate[1]), path
  if name == "gru":  # all gates and both matrices of unit k share rate k
    flat = {
      p: np.asarray(r).reshape(-1)
      for p, r in zip(map(path_string, paths), rate_leaves, strict=True)
    }
    units = [r[:WIDTH] if r.size >= WIDTH else r for p, r in flat.items() if "rnn" in p]
    for r in units:
      np.testing.assert_array_equal(r, units[0])


def _naive_grads(features_fn, body_params, copies, z_args, targets, posterior, likelihood):
  """The Alrao gradients by brute force: a Python loop over copies, no custom VJP."""
  lik = likelihood or alrao_jax.categorical_log_likelihood

  def copy_ll(z, kernel, bias):
    return lik((z @ kernel + bias)[None], targets)[0].reshape(-1)

  def mixture_loss(body):
    z = features_fn(body, *z_args)
    per_copy = jnp.stack([copy_ll(z, copies["kernel"][j], copies["bias"][j]) for j in range(N)])
    return -jnp.mean(jax.nn.logsumexp(jnp.log(posterior)[:, None] + per_copy, axis=0))

  body_grads = jax.grad(mixture_loss)(body_params)
  z = jax.lax.stop_gradient(features_fn(body_params, *z_args))
  own = [
    jax.grad(lambda k, b: -jnp.mean(copy_ll(z, k, b)), argnums=(0, 1))(
      copies["kernel"][j], copies["bias"][j]
    )
    for j in range(N)
  ]
  return body_grads, jnp.stack([g[0] for g in own]), jnp.stack([g[1] for g in own])


POSTERIOR = jnp.array([0.2, 0.5, 0.3])


@pytest.mark.parametrize("name", NAMES)
def test_linen_one_backward_equals_a_naive_per_copy_loop(name):
  model, _, kind, likelihood, train_kwargs, _, _ = ZOO[name]
  x, y = _data(kind)
  variables = _linen_params(name)
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  mutable = list(rest)

  def apply(params, method=None):
    variables = {"params": params, **rest}
    if not mutable:
      return model.apply(variables, x, method=method, **train_kwargs)
    return model.apply(variables, x, method=method, mutable=mutable, **train_kwargs)[0]

  kw = {"likelihood": likelihood} if likelihood else {}
  grads = jax.grad(lambda p: alrao_jax.alrao_loss(apply(p), y, POSTERIOR, **kw)[0])(params)
  body = {k: v for k, v in params.items() if k != "head"}
  copies = params["head"]["alrao_copies"]

  def features(body):
    return apply({**body, "head": params["head"]}, method=type(model).features)

  want_body, want_kernel, want_bias = _naive_grads(
    features, body, copies, (), y, POSTERIOR, likelihood
  )
  chex.assert_trees_all_close({k: grads[k] for k in body}, want_body, atol=2e-5, rtol=1e-4)
  chex.assert_trees_all_close(grads["head"]["alrao_copies"]["kernel"], want_kernel, atol=2e-5)
  chex.assert_trees_all_close(grads["head"]["alrao_copies"]["bias"], want_bias, atol=2e-5)


@pytest.mark.parametrize("name", NAMES)
def test_nnx_one_backward_equals_a_naive_per_copy_loop(name):
  _, build, kind, likelihood, _, _, _ = ZOO[name]
  x, y = _data(kind)
  model = build(nnx.Rngs(0))
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  kw = {"likelihood": likelihood} if likelihood else {}

  def merged(p):  # fresh variables for the non-param state: BatchNorm updates them in place
    return nnx.merge(graphdef, p, jax.tree.map(lambda a: a, rest))

  grads = jax.grad(lambda p: alrao_jax.alrao_loss(merged(p)(x), y, POSTERIOR, **kw)[0])(params)
  copies = {
    "kernel": params["head"]["alrao_copies"]["kernel"][...],
    "bias": params["head"]["alrao_copies"]["bias"][...],
  }
  want_body, want_kernel, want_bias = _naive_grads(
    lambda p: merged(p).features(x), params, copies, (), y, POSTERIOR, likelihood
  )
  got = nnx.to_pure_dict(grads)
  want = nnx.to_pure_dict(want_body)
  body_keys = [k for k in got if k != "head"]
  chex.assert_trees_all_close(
    {k: got[k] for k in body_keys}, {k: want[k] for k in body_keys}, atol=2e-5, rtol=1e-4
  )
  chex.assert_trees_all_close(got["head"]["alrao_copies"]["kernel"], want_kernel, atol=2e-5)
  chex.assert_trees_all_close(got["head"]["alrao_copies"]["bias"], want_bias, atol=2e-5)


def _tx():
  return alrao_jax.alrao_sgd(1e-3, 0.3, key=jax.random.key(1), momentum=0.9)


KEEP = [0, 2]


def _zero_weight(averaging, retired):
  """The full averaging state whose mixture gives the retired copies no weight and the kept
  ones the retired state's weights: the oracle of a step after retirement."""
  log_posterior = np.full(N, -np.inf, np.float32)
  log_posterior[KEEP] = np.asarray(retired.log_posterior)
  return averaging._replace(log_posterior=jnp.asarray(log_posterior))


def _assert_sliced(got, full):
  """``got`` equals ``full`` with the retired copies cut (arrays under ``alrao_copies``)."""
  want = slice_copies(full, KEEP, N)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    if jax.dtypes.issubdtype(jnp.asarray(a).dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_linen_30_steps_reduce_the_loss(name):
  model, _, kind, likelihood, train_kwargs, eval_kwargs, _ = ZOO[name]
  x, y = _data(kind)
  kw = {"likelihood": likelihood} if likelihood else {}
  state = alrao_jax.create_train_state(model, _tx(), KEY, x, **eval_kwargs)
  step = alrao_jax.make_train_step(model, _tx(), train_kwargs=train_kwargs, **kw)
  losses = []
  for _ in range(30):  # the step's loss is the model's on the batch before its update
    state, metrics = step(state, x, y)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.8 * losses[0], losses
  # retire copy 1: the next step is the full step with copy 1 at zero weight
  retired = alrao_jax.retire_copies(jax.tree.map(jnp.copy, state), KEEP)
  zero = _zero_weight(state.averaging_state, retired.averaging_state)
  full = state.replace(averaging_state=zero)
  (after, got), (want_state, want) = step(retired, x, y), step(full, x, y)
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
  _assert_sliced(after.params, want_state.params)
  _assert_sliced(after.opt_state, want_state.opt_state)
  predictions = alrao_jax.predict(model, after, x, **eval_kwargs, **kw)
  assert np.all(np.isfinite(predictions)) and predictions.shape[0] == x.shape[0]


@pytest.mark.parametrize("name", NAMES)
def test_nnx_30_steps_reduce_the_loss(name):
  _, build, kind, likelihood, _, _, _ = ZOO[name]
  x, y = _data(kind)
  kw = {"likelihood": likelihood} if likelihood else {}
  model = build(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)
  step = alrao_jax.make_train_step(model, optimizer, **kw)
  averaging, losses = alrao_jax.switch_init(N), []
  for _ in range(30):
    averaging, metrics = step(averaging, x, y)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.8 * losses[0], losses
  # retire copy 1 in place; the full model, a clone, steps with copy 1 at zero weight
  full_model, full_optimizer = nnx.clone((model, optimizer))
  nnx.update((full_model, full_optimizer), jax.tree.map(jnp.copy, nnx.state((model, optimizer))))
  retired = alrao_jax.retire_nnx_copies((model, optimizer), averaging, KEEP)
  full_step = alrao_jax.make_train_step(full_model, full_optimizer, **kw)
  _, want = full_step(_zero_weight(averaging, retired), x, y)
  _, got = step(retired, x, y)
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
  assert model.head.alrao_copies.kernel.shape[0] == len(KEEP)
  _assert_sliced(nnx.to_pure_dict(nnx.state(model)), nnx.to_pure_dict(nnx.state(full_model)))
  _assert_sliced(
    nnx.to_pure_dict(nnx.state(optimizer)), nnx.to_pure_dict(nnx.state(full_optimizer))
  )

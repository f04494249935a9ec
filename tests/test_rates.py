"""Rate trees: every row of the SPEC table, in linen and nnx, checked on actual updates."""

import math
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import alrao_jax
from alrao_jax.rates import leaf_paths, path_string

KEY = jax.random.key(0)
LO, HI = 1e-4, 10.0


def _linen(module, *inputs):
  return module.init(KEY, *inputs)["params"]


def _nnx(module):
  return nnx.state(module, nnx.Param)


def _cols(shape):
  """Feature id = index along the last axis."""
  return np.broadcast_to(np.arange(shape[-1]), shape)


def _trailing(shape, n):
  """Feature id = flat index over the last ``n`` axes."""
  ids = np.arange(math.prod(shape[-n:])).reshape(shape[-n:])
  return np.broadcast_to(ids, shape)


def _mod_hidden(hidden):
  return lambda shape: np.broadcast_to(np.arange(shape[-1]) % hidden, shape)


def _effective_rates(params, rates):
  """Rates as seen through the transform: update / gradient, per scalar."""
  grads = jax.tree.map(lambda p: jax.random.normal(KEY, p.shape) + 3.0, params)
  tx = alrao_jax.scale_by_rates(rates)
  updates, _ = tx.update(grads, tx.init(params))
  paths, ups, _ = leaf_paths(updates)
  _, gs, _ = leaf_paths(grads)
  return {
    path_string(p): np.asarray(u) / np.asarray(g) for p, u, g in zip(paths, ups, gs, strict=True)
  }


def assert_features(params, rates, groups):
  """``groups`` maps a group name to {path regex suffix: feature-id function of the shape}.

  Within a group, entries with one feature id share one rate; different ids differ.
  Every parameter leaf must be covered by exactly one group.
  """
  eff = _effective_rates(params, rates)
  chex_ok = jax.tree.map(
    lambda r, p: np.broadcast_shapes(r.shape, p.shape) == p.shape, rates, params
  )
  assert all(jax.tree.leaves(chex_ok)), "rate leaves must broadcast to their params"
  covered = set()
  for members in groups.values():
    by_id = {}
    for suffix, id_fn in members.items():
      matches = [p for p in eff if p.endswith(suffix)]
      assert len(matches) == 1, (suffix, list(eff))
      (path,) = matches
      covered.add(path)
      values = eff[path]
      ids = id_fn(values.shape)
      for i in np.unique(ids):
        by_id.setdefault(int(i), []).append(values[ids == i])
    reps = {}
    for i, chunks in by_id.items():
      allv = np.concatenate([c.ravel() for c in chunks])
      np.testing.assert_allclose(allv, allv[0], rtol=1e-5, err_msg=f"feature {i} mixes rates")
      reps[i] = allv[0]
    vals = np.array(list(reps.values()))
    assert len(np.unique(np.round(np.log(vals), 6))) == len(vals), "features must differ"
    assert ((vals >= LO * (1 - 1e-6)) & (vals <= HI * (1 + 1e-6))).all()
  assert covered == set(eff), f"uncovered: {set(eff) - covered}"


class _Wrap(nn.Module):
  """Applies one auto-named module, as a model does (its class name lands in the path)."""

  cls: type
  args: tuple

  @nn.compact
  def __call__(self, x):
    return self.cls(*self.args)(x)


X2 = jnp.ones((2, 5))
X4 = jnp.ones((2, 8, 8, 3))
RNG = nnx.Rngs(0)


def _lstm_groups(prefix="", gates=("ii", "if", "ig", "io", "hi", "hf", "hg", "ho")):
  members = {f"{g}/kernel": _cols for g in gates}
  members.update({f"{g}/bias": _cols for g in gates if g.startswith("h")})
  return {"cell": members}


CASES = {
  "linen Dense": (lambda: _linen(nn.Dense(6), X2), {"d": {"kernel": _cols, "bias": _cols}}),
  "nnx Linear": (lambda: _nnx(nnx.Linear(5, 6, rngs=RNG)), {"d": {"kernel": _cols, "bias": _cols}}),
  "linen DenseGeneral": (
    lambda: _linen(nn.DenseGeneral((3, 4)), X2),
    {"d": {"kernel": lambda s: _trailing(s, 2), "bias": lambda s: _trailing(s, 2)}},
  ),
  "nnx LinearGeneral": (
    lambda: _nnx(nnx.LinearGeneral(5, (3, 4), rngs=RNG)),
    {"d": {"kernel": lambda s: _trailing(s, 2), "bias": lambda s: _trailing(s, 2)}},
  ),
  "linen Einsum": (
    lambda: _linen(nn.Einsum((5, 3, 4), "ab,bcd->acd"), X2),
    {"d": {"kernel": lambda s: _trailing(s, 2), "bias": lambda s: _trailing(s, 2)}},
  ),
  "nnx Einsum": (
    lambda: _nnx(nnx.Einsum("ab,bcd->acd", (5, 3, 4), (3, 4), rngs=RNG)),
    {"d": {"kernel": lambda s: _trailing(s, 2), "bias": lambda s: _trailing(s, 2)}},
  ),
  "linen Conv": (lambda: _linen(nn.Conv(4, (3, 3)), X4), {"c": {"kernel": _cols, "bias": _cols}}),
  "nnx Conv": (
    lambda: _nnx(nnx.Conv(3, 4, (3, 3), rngs=RNG)),
    {"c": {"kernel": _cols, "bias": _cols}},
  ),
  "linen ConvTranspose": (
    lambda: _linen(nn.ConvTranspose(4, (3, 3)), X4),
    {"c": {"kernel": _cols, "bias": _cols}},
  ),
  "nnx ConvTranspose": (
    lambda: _nnx(nnx.ConvTranspose(3, 4, (3, 3), rngs=RNG)),
    {"c": {"kernel": _cols, "bias": _cols}},
  ),
  "linen ConvLocal": (  # inside a model: its name tells its per-position axes from layers
    lambda: _linen(_Wrap(nn.ConvLocal, (4, (3, 3))), X4),
    {"c": {"ConvLocal_0/kernel": _cols, "ConvLocal_0/bias": _cols}},
  ),
  "linen BatchNorm": (
    lambda: _linen(nn.BatchNorm(use_running_average=True), X2),
    {"n": {"scale": _cols, "bias": _cols}},
  ),
  "nnx BatchNorm": (
    lambda: _nnx(nnx.BatchNorm(5, rngs=RNG)),
    {"n": {"scale": _cols, "bias": _cols}},
  ),
  "linen LayerNorm": (lambda: _linen(nn.LayerNorm(), X2), {"n": {"scale": _cols, "bias": _cols}}),
  "nnx LayerNorm": (
    lambda: _nnx(nnx.LayerNorm(5, rngs=RNG)),
    {"n": {"scale": _cols, "bias": _cols}},
  ),
  "linen GroupNorm": (
    lambda: _linen(nn.GroupNorm(num_groups=1), X2),
    {"n": {"scale": _cols, "bias": _cols}},
  ),
  "nnx GroupNorm": (
    lambda: _nnx(nnx.GroupNorm(5, num_groups=1, rngs=RNG)),
    {"n": {"scale": _cols, "bias": _cols}},
  ),
  "linen RMSNorm": (lambda: _linen(nn.RMSNorm(), X2), {"n": {"scale": _cols}}),
  "nnx RMSNorm": (lambda: _nnx(nnx.RMSNorm(5, rngs=RNG)), {"n": {"scale": _cols}}),
  "linen Embed": (
    lambda: _linen(nn.Embed(10, 4), jnp.ones((2,), jnp.int32)),
    {"e": {"embedding": _cols}},
  ),
  "nnx Embed": (lambda: _nnx(nnx.Embed(10, 4, rngs=RNG)), {"e": {"embedding": _cols}}),
  "linen LSTMCell": (
    lambda: _linen(nn.LSTMCell(7), nn.LSTMCell(7).initialize_carry(KEY, (2, 5)), X2),
    _lstm_groups(),
  ),
  "linen OptimizedLSTMCell": (
    lambda: _linen(
      nn.OptimizedLSTMCell(7), nn.OptimizedLSTMCell(7).initialize_carry(KEY, (2, 5)), X2
    ),
    _lstm_groups(),
  ),
  "nnx LSTMCell": (
    lambda: _nnx(nnx.LSTMCell(5, 7, rngs=RNG)),
    _lstm_groups(gates=("ii", "if_", "ig", "io", "hi", "hf", "hg", "ho")),
  ),
  "nnx OptimizedLSTMCell": (
    lambda: _nnx(nnx.OptimizedLSTMCell(5, 7, rngs=RNG)),
    {
      "cell": {
        "dense_i/kernel": _mod_hidden(7),
        "dense_h/kernel": _mod_hidden(7),
        "dense_h/bias": _mod_hidden(7),
      }
    },
  ),
  "linen GRUCell": (
    lambda: _linen(nn.GRUCell(7), nn.GRUCell(7).initialize_carry(KEY, (2, 5)), X2),
    {
      "cell": {
        **{f"{g}/kernel": _cols for g in ("ir", "iz", "in", "hr", "hz", "hn")},
        **{f"{g}/bias": _cols for g in ("ir", "iz", "in", "hn")},
      }
    },
  ),
  "nnx GRUCell": (
    lambda: _nnx(nnx.GRUCell(5, 7, rngs=RNG)),
    {
      "cell": {
        "dense_i/kernel": _mod_hidden(7),
        "dense_i/bias": _mod_hidden(7),
        "dense_h/kernel": _mod_hidden(7),
      }
    },
  ),
  "linen MultiHeadAttention": (
    lambda: _linen(
      nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, out_features=6),
      jnp.ones((2, 3, 5)),
    ),
    {
      **{
        n: {f"{n}/kernel": lambda s: _trailing(s, 2), f"{n}/bias": lambda s: _trailing(s, 2)}
        for n in ("query", "key", "value")
      },
      "out": {"out/kernel": _cols, "out/bias": _cols},
    },
  ),
  "nnx MultiHeadAttention": (
    lambda: _nnx(
      nnx.MultiHeadAttention(
        num_heads=2, in_features=5, qkv_features=8, out_features=6, decode=False, rngs=RNG
      )
    ),
    {
      **{
        n: {f"{n}/kernel": lambda s: _trailing(s, 2), f"{n}/bias": lambda s: _trailing(s, 2)}
        for n in ("query", "key", "value")
      },
      "out": {"out/kernel": _cols, "out/bias": _cols},
    },
  ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_feature_rule_on_updates(name):
  build, groups = CASES[name]
  params = build()
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # every SPEC row has a rule: no fallback warning
    rates = alrao_jax.sample_rates(jax.random.key(7), params, LO, HI)
  assert jax.tree.structure(rates) == jax.tree.structure(params)
  assert_features(params, rates, groups)


def test_leaves_are_broadcast_shaped_not_full_size():
  params = _linen(nn.Conv(16, (3, 3)), X4)
  rates = alrao_jax.sample_rates(KEY, params, LO, HI)
  assert rates["kernel"].shape == (1, 1, 1, 16)
  assert rates["bias"].shape == (16,)


def test_attention_without_bias_keeps_head_axes():
  params = _linen(
    nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, use_bias=False),
    jnp.ones((2, 3, 5)),
  )
  rates = alrao_jax.sample_rates(KEY, params, LO, HI)
  assert rates["query"]["kernel"].shape == (1, 2, 4)
  assert rates["out"]["kernel"].shape == (1, 1, 5)


def test_log_rates_are_uniform_kolmogorov_smirnov():
  params = {"dense": {"kernel": jnp.zeros((1, 12_000)), "bias": jnp.zeros((12_000,))}}
  rates = np.asarray(alrao_jax.sample_rates(jax.random.key(3), params, 1e-5, 10.0)["dense"]["bias"])
  assert rates.min() >= 1e-5 * (1 - 1e-6) and rates.max() <= 10.0 * (1 + 1e-6)
  u = (np.log(rates) - np.log(1e-5)) / (np.log(10.0) - np.log(1e-5))
  assert scipy.stats.kstest(u, "uniform").pvalue > 0.01
  # The same statistic rejects a plain uniform (not log-uniform) sample: the test has teeth.
  wrong = np.random.default_rng(0).uniform(1e-5, 10.0, 12_000)
  uw = (np.log(wrong) - np.log(1e-5)) / (np.log(10.0) - np.log(1e-5))
  assert scipy.stats.kstest(uw, "uniform").pvalue < 1e-6


@settings(deadline=None, max_examples=25)
@given(n=st.integers(1, 40), lo_exp=st.floats(-6, 0), span=st.floats(0, 6))
def test_copy_rates_match_formula(n, lo_exp, span):
  lo, hi = 10.0**lo_exp, 10.0 ** (lo_exp + span)
  got = np.asarray(alrao_jax.copy_rates(n, lo, hi), np.float64)
  if n == 1:
    np.testing.assert_allclose(got, [lo], rtol=1e-6)
    return
  want = [math.exp(math.log(lo) + j / (n - 1) * math.log(hi / lo)) for j in range(n)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose([got[0], got[-1]], [lo, hi], rtol=1e-7)


def test_copies_module_gets_the_grid_on_its_leading_axis():
  params = {
    "head": {"alrao_copies": {"kernel": jnp.zeros((5, 3, 2)), "bias": jnp.zeros((5, 2))}},
    "dense": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros((3,))},
  }
  rates = alrao_jax.sample_rates(KEY, params, LO, HI)
  grid = np.asarray(alrao_jax.copy_rates(5, LO, HI))
  np.testing.assert_array_equal(rates["head"]["alrao_copies"]["kernel"].ravel(), grid)
  np.testing.assert_array_equal(rates["head"]["alrao_copies"]["bias"].ravel(), grid)
  assert rates["head"]["alrao_copies"]["kernel"].shape == (5, 1, 1)


def test_weight_and_layer_granularity():
  params = _linen(nn.Dense(6), X2)
  per_weight = alrao_jax.sample_rates(KEY, params, LO, HI, granularity="weight")
  assert per_weight["kernel"].shape == (5, 6)
  assert len(np.unique(per_weight["kernel"])) == 30
  per_layer = alrao_jax.sample_rates(KEY, params, LO, HI, granularity="layer")
  assert per_layer["kernel"].size == 1 and per_layer["bias"].size == 1
  assert per_layer["kernel"].ravel()[0] == per_layer["bias"].ravel()[0]


def test_equal_bounds_give_exactly_that_rate():
  params = _linen(nn.Dense(6), X2)
  rates = alrao_jax.sample_rates(KEY, params, 0.05, 0.05)
  assert all(bool((r == np.float32(0.05)).all()) for r in jax.tree.leaves(rates))


def test_rules_callable_and_label_tree():
  params = {"enc": _linen(nn.Dense(4), X2), "emb": {"embedding": jnp.zeros((9, 3))}}

  def rule(path, leaf):
    del leaf
    return 0.0 if path.startswith("emb") else "layer" if path.endswith("bias") else None

  rates = alrao_jax.sample_rates(KEY, params, LO, HI, rules=rule)
  assert float(rates["emb"]["embedding"].ravel()[0]) == 0.0
  assert rates["enc"]["bias"].size == 1 and rates["enc"]["kernel"].shape == (1, 4)
  labels = {"enc": {"kernel": (0,), "bias": None}, "emb": {"embedding": "weight"}}
  rates = alrao_jax.sample_rates(KEY, params, LO, HI, rules=labels)
  assert rates["enc"]["kernel"].shape == (5, 1)
  assert rates["emb"]["embedding"].shape == (9, 3)


def test_fallback_warns_with_paths():
  params = {"prelu": {"negative_slope": jnp.zeros(())}, "odd": {"alpha": jnp.zeros((3, 2))}}
  with pytest.warns(UserWarning, match=r"prelu/negative_slope.*odd/alpha|odd/alpha.*prelu"):
    rates = alrao_jax.sample_rates(KEY, params, LO, HI)
  assert rates["odd"]["alpha"].shape == (1, 2)
  assert rates["prelu"]["negative_slope"].shape == ()


@pytest.mark.parametrize(
  ("lo", "hi", "match"),
  [
    (0.0, 1.0, "lr_min must be > 0"),
    (-1.0, 1.0, "lr_min must be > 0"),
    (1.0, 0.1, "lr_min .* must be <= lr_max"),
    (float("nan"), 1.0, "lr_min must be finite"),
    (1e-3, float("inf"), "lr_max must be finite"),
  ],
)
def test_bad_bounds(lo, hi, match):
  params = _linen(nn.Dense(2), X2)
  with pytest.raises(ValueError, match=match):
    alrao_jax.sample_rates(KEY, params, lo, hi)
  with pytest.raises(ValueError, match=match):
    alrao_jax.alrao_sgd(lo, hi, key=KEY)
  with pytest.raises(ValueError, match=match):
    alrao_jax.copy_rates(3, lo, hi)


def test_bad_arguments():
  params = _linen(nn.Dense(2), X2)
  with pytest.raises(ValueError, match="num_copies must be >= 1"):
    alrao_jax.copy_rates(0, 1e-3, 1.0)
  with pytest.raises(TypeError, match="num_copies must be an int"):
    alrao_jax.copy_rates(2.5, 1e-3, 1.0)
  with pytest.raises(ValueError, match="granularity must be one of"):
    alrao_jax.sample_rates(KEY, params, 1e-3, 1.0, granularity="unit")
  with pytest.raises(ValueError, match="unknown label 'fast'"):
    alrao_jax.sample_rates(KEY, params, 1e-3, 1.0, rules=lambda p, x: "fast")
  with pytest.raises(TypeError, match="key must be a PRNG key"):
    alrao_jax.alrao_adam(1e-3, 1.0, key=0)


def test_rates_that_do_not_fit_params():
  params = _linen(nn.Dense(3), X2)
  tx = alrao_jax.scale_by_rates({"kernel": jnp.ones((1, 4)), "bias": jnp.ones((3,))})
  with pytest.raises(ValueError, match="kernel has shape \\(1, 4\\)"):
    tx.init(params)
  tx = alrao_jax.scale_by_rates({"kernel": jnp.ones((1, 3))})
  with pytest.raises(ValueError, match=r"structure of params.*bias"):
    tx.init(params)
  tx = alrao_jax.scale_by_rates(jax.tree.map(lambda p: jnp.ones(p.shape, jnp.int32), params))
  with pytest.raises(TypeError, match="must be floating"):
    tx.init(params)


def test_nnx_state_and_linen_dict_give_the_same_paths():
  linen_params = _linen(nn.Dense(3), X2)
  nnx_params = _nnx(nnx.Linear(5, 3, rngs=RNG))
  a = alrao_jax.sample_rates(KEY, linen_params, LO, HI)
  b = alrao_jax.sample_rates(KEY, nnx_params, LO, HI)
  chex_leaves = [np.asarray(x) for x in jax.tree.leaves(b)]
  np.testing.assert_array_equal(np.asarray(a["bias"]), chex_leaves[0])
  assert isinstance(b, nnx.State)


def test_optax_masked_passes_through():
  params = _linen(nn.Dense(3), X2)
  tx = optax.masked(alrao_jax.alrao_sgd(LO, HI, key=KEY), {"kernel": True, "bias": False})
  state = tx.init(params)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  np.testing.assert_array_equal(updates["bias"], np.ones(3))
  assert (np.asarray(updates["kernel"]) < 0).all()


# Stacked layers (SPEC section 7): every rule holds per layer of a scanned / vmapped stack.


def _per_layer(fn):
  """Feature id of a stacked leaf: (layer, id of ``fn`` on one layer's shape)."""

  def ids(shape):
    inner = fn(shape[1:])
    span = int(inner.max()) + 1
    return np.arange(shape[0]).reshape(-1, *(1,) * len(shape[1:])) * span + inner

  return ids


def _copy_ids(shape):
  return np.broadcast_to(np.arange(shape[0]).reshape(-1, *(1,) * (len(shape) - 1)), shape)


class _Block(nn.Module):
  """A pre-norm Transformer block: attention, LayerNorm, MLP."""

  width: int

  @nn.compact
  def __call__(self, x, _):
    h = nn.LayerNorm(name="ln1")(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(h, h)
    h = nn.gelu(nn.Dense(2 * self.width, name="up")(nn.LayerNorm(name="ln2")(x)))
    return x + nn.Dense(self.width, name="down")(h), None


def _scanned_blocks(layers, width):
  return nn.scan(_Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=layers)(
    width, name="blocks"
  )


class _ScannedGPT(nn.Module):
  layers: int = 3
  width: int = 8

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(13, self.width, name="embed")(tokens)
    x, _ = _scanned_blocks(self.layers, self.width)(x, None)
    return alrao_jax.AlraoHead(13, num_copies=3, name="head")(nn.LayerNorm(name="ln_f")(x))


def _stacked_block_groups(prefix):
  two = lambda s: _trailing(s, 2)  # noqa: E731
  groups = {
    f"{n}": {
      f"{prefix}ln{n[-1]}/scale": _per_layer(_cols),
      f"{prefix}ln{n[-1]}/bias": _per_layer(_cols),
    }
    for n in ("ln1", "ln2")
  }
  for name in ("query", "key", "value"):
    groups[name] = {
      f"{prefix}attn/{name}/kernel": _per_layer(two),
      f"{prefix}attn/{name}/bias": _per_layer(two),
    }
  for name in ("attn/out", "up", "down"):
    groups[name] = {
      f"{prefix}{name}/kernel": _per_layer(_cols),
      f"{prefix}{name}/bias": _per_layer(_cols),
    }
  return groups


def test_scanned_transformer_gets_rates_per_layer():
  params = _linen(_ScannedGPT(), jnp.zeros((2, 5), jnp.int32))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    rates = alrao_jax.sample_rates(jax.random.key(7), params, LO, HI)
  assert rates["blocks"]["up"]["kernel"].shape == (3, 1, 16)
  assert rates["blocks"]["ln1"]["scale"].shape == (3, 8)
  groups = _stacked_block_groups("blocks/")
  groups["embed"] = {"embed/embedding": _cols}
  groups["ln_f"] = {"ln_f/scale": _cols, "ln_f/bias": _cols}
  groups["head"] = {"head/alrao_copies/kernel": _copy_ids, "head/alrao_copies/bias": _copy_ids}
  assert_features(params, rates, groups)


class _NNXBlock(nnx.Module):
  def __init__(self, width, *, rngs):
    self.ln1 = nnx.LayerNorm(width, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(2, width, decode=False, rngs=rngs)
    self.ln2 = nnx.LayerNorm(width, rngs=rngs)
    self.up = nnx.Linear(width, 2 * width, rngs=rngs)
    self.down = nnx.Linear(2 * width, width, rngs=rngs)


def test_nnx_vmapped_stack_gets_rates_per_layer():
  @nnx.split_rngs(splits=3)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(rngs):
    return _NNXBlock(8, rngs=rngs)

  params = _nnx(make(nnx.Rngs(0)))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    rates = alrao_jax.sample_rates(jax.random.key(7), params, LO, HI)
  assert_features(params, rates, _stacked_block_groups(""))


@pytest.mark.parametrize("fused", [False, True])
def test_stacked_recurrent_cells_share_rates_per_unit_per_layer(fused):
  hidden = 5
  if fused:

    @nnx.split_rngs(splits=4)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
      return nnx.GRUCell(3, hidden, rngs=rngs)

    params = _nnx(make(nnx.Rngs(0)))
    unit = _per_layer(_mod_hidden(hidden))
    groups = {
      "cell": {f"dense_{m}/{n}": unit for m, n in (("i", "kernel"), ("i", "bias"), ("h", "kernel"))}
    }
  else:
    cell = nn.vmap(nn.GRUCell, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=0)(
      hidden
    )
    carry = jnp.zeros((4, 2, hidden))
    params = cell.init(KEY, carry, jnp.ones((4, 2, 3)))["params"]
    gates = ("ir", "iz", "in", "hr", "hz", "hn")
    groups = {
      "cell": {
        **{f"{g}/kernel": _per_layer(_cols) for g in gates},
        **{f"{g}/bias": _per_layer(_cols) for g in ("ir", "iz", "in", "hn")},
      }
    }
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    rates = alrao_jax.sample_rates(jax.random.key(7), params, LO, HI)
  assert_features(params, rates, groups)


class _DenseBlock(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    return nn.relu(nn.Dense(x.shape[-1], name="dense")(x)), None


def _dense_stack(layers, width):
  stack = nn.scan(
    _DenseBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=layers
  )
  return stack().init(KEY, jnp.ones((2, width)), None)["params"]


def test_width_equal_to_depth_is_warned_and_named_explicitly():
  params = _dense_stack(8, 8)  # kernel (8, 8, 8), bias (8, 8): a DenseGeneral fits too
  with pytest.warns(UserWarning, match=r"stacked=\{'dense': 1\}"):
    alrao_jax.sample_rates(KEY, params, LO, HI)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    rates = alrao_jax.sample_rates(KEY, params, LO, HI, stacked={"dense": 1})
  assert rates["dense"]["kernel"].shape == (8, 1, 8)
  groups = {"d": {"kernel": _per_layer(_cols), "bias": _per_layer(_cols)}}
  assert_features(params, rates, groups)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    flat = alrao_jax.sample_rates(KEY, params, LO, HI, stacked={"dense": 0})
  assert flat["dense"]["kernel"].shape == (1, 8, 8)


def test_stacked_layer_granularity_and_axis_rules():
  params = _dense_stack(3, 4)
  per_layer = alrao_jax.sample_rates(KEY, params, LO, HI, granularity="layer")
  assert per_layer["dense"]["kernel"].shape == (3, 1, 1)
  np.testing.assert_array_equal(
    per_layer["dense"]["kernel"].ravel(), per_layer["dense"]["bias"].ravel()
  )
  assert len(np.unique(per_layer["dense"]["bias"])) == 3
  rates = alrao_jax.sample_rates(KEY, params, LO, HI, rules=lambda path, leaf: (0, -1))
  np.testing.assert_array_equal(rates["dense"]["kernel"][:, 0, :], rates["dense"]["bias"])
  with pytest.warns(UserWarning, match=r"layers share rates.*Include axes \(0,\)"):
    alrao_jax.sample_rates(KEY, params, LO, HI, rules=lambda path, leaf: (-1,))


def test_stacked_option_errors():
  params = _dense_stack(3, 4)
  with pytest.raises(ValueError, match=r"matches no parameter path.*'dense'"):
    alrao_jax.sample_rates(KEY, params, LO, HI, stacked={"blocks": 1})
  with pytest.raises(ValueError, match="do not share 3 leading axes"):
    alrao_jax.sample_rates(KEY, params, LO, HI, stacked={"dense": 3})
  with pytest.raises(ValueError, match="must be an int >= 0"):
    alrao_jax.sample_rates(KEY, params, LO, HI, stacked={"dense": -1})
  with pytest.raises(TypeError, match="stacked must be a mapping"):
    alrao_jax.alrao_sgd(LO, HI, key=KEY, stacked=1).init(params)


def test_unstacked_models_are_not_taken_for_stacks():
  """Coincidences of sizes that must not read as a layer axis."""
  square = _linen(nn.Dense(5), X2)  # kernel (5, 5), bias (5,)
  conv3 = _linen(nn.Conv(3, (3, 3)), jnp.ones((1, 4, 4, 3)))  # kernel (3, 3, 3, 3), bias (3,)
  general = _linen(nn.DenseGeneral((3, 4)), jnp.ones((2, 7)))  # kernel (7, 3, 4), bias (3, 4)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert alrao_jax.sample_rates(KEY, square, LO, HI)["kernel"].shape == (1, 5)
    assert alrao_jax.sample_rates(KEY, conv3, LO, HI)["kernel"].shape == (1, 1, 1, 3)
    assert alrao_jax.sample_rates(KEY, general, LO, HI)["kernel"].shape == (1, 3, 4)


@pytest.mark.parametrize("make", [alrao_jax.alrao_sgd, alrao_jax.alrao_adam])
def test_a_bare_array_is_a_parameter_tree(make):
  tx = make(1e-3, 1.0, key=KEY)
  with pytest.warns(UserWarning, match="one rate per index of their last axis"):
    state = tx.init(jnp.zeros((2, 3)))
    abstract = jax.eval_shape(tx.init, jax.ShapeDtypeStruct((3,), jnp.float32))
  rates = optax.tree_utils.tree_get(state, "rates")
  assert rates.shape == (1, 3) and (rates >= 1e-3).all() and (rates <= 1.0).all()
  assert optax.tree_utils.tree_get(abstract, "rates").shape == (3,)
  updates, _ = tx.update(jnp.ones((2, 3)), state, jnp.zeros((2, 3)))
  assert updates.shape == (2, 3) and (updates < 0).all()
  with pytest.warns(UserWarning):
    sampled = alrao_jax.sample_rates(KEY, jax.ShapeDtypeStruct((4, 2), jnp.float32), 0.1, 1.0)
  assert sampled.shape == (1, 2)


@pytest.mark.parametrize(("lo", "hi"), [(1e-45, 1e-44), (1e30, 1e39), (1e-40, 1.0)])
def test_bounds_outside_float32_are_refused(lo, hi):
  with pytest.raises(ValueError, match="outside float32's normal range"):
    alrao_jax.alrao_sgd(lo, hi, key=KEY)


@pytest.mark.parametrize(("lo", "hi"), [(1e-20, 1e20), (1.2e-38, 3.4e38), (1e-30, 1e15)])
def test_bounds_inside_float32_whose_ratio_is_not_sample_finite_rates(lo, hi):
  """Before: lr_min * exp(u * log(ratio)) overflowed, 159 of 4,096 rates inf for [1e-20, 1e20]."""
  params = {"kernel": jnp.zeros((2, 4096)), "bias": jnp.zeros(4096)}
  rates = np.asarray(alrao_jax.sample_rates(KEY, params, lo, hi)["kernel"], np.float64)
  assert np.isfinite(rates).all() and (rates >= lo * 0.999).all() and (rates <= hi * 1.001).all()
  exponents = (np.log(rates) - np.log(lo)) / (np.log(hi) - np.log(lo))  # uniform in [0, 1)
  assert abs(exponents.mean() - 0.5) < 0.03 and exponents.min() < 0.01 and exponents.max() > 0.99


def test_leaves_without_a_learning_rate_are_named():
  for dtype in (jnp.int32, jnp.bool_):
    with pytest.raises(TypeError, match=r"floating or complex.*w \("):
      alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY).init({"w": jnp.ones((2, 3), dtype)})
  model = nnx.Sequential(nnx.Linear(3, 4, rngs=RNG), nnx.BatchNorm(4, rngs=RNG))
  with pytest.raises(TypeError, match=r"BatchStat.*nnx.state\(model, nnx.Param\)"):
    alrao_jax.sample_rates(KEY, nnx.state(model), 1e-3, 1.0)
  alrao_jax.sample_rates(KEY, nnx.state(model, nnx.Param), 1e-3, 1.0)
  with pytest.raises(TypeError, match="key must be a PRNG key"):
    alrao_jax.alrao_sgd(1e-3, 1.0, key=jnp.zeros(2))  # a float array is no key
  alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.PRNGKey(0))  # a raw key is one
  with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
    alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY, momentum=1.5)
  with pytest.raises(ValueError, match=r"b2 must be in \[0, 1\)"):
    alrao_jax.alrao_adam(1e-3, 1.0, key=KEY, b2=1.0)
  alrao_jax.gaussian_log_likelihood(sigma=jnp.float32(0.5))  # a JAX scalar is a float


class _BareBlock(nn.Module):  # no bias, no norm: nothing in its shapes says "stack"
  @nn.compact
  def __call__(self, x, _):
    return nn.relu(nn.Dense(6, use_bias=False)(x)), None


def test_a_stack_shapes_cannot_tell_is_warned_and_named_explicitly():
  stack = nn.scan(
    _BareBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=3
  )
  model = nn.Sequential([nn.Dense(6), lambda x: stack()(x, None)[0]])
  params = model.init(KEY, jnp.ones((2, 4)))["params"]
  with pytest.warns(UserWarning, match=r"stacked=\{'Scan_BareBlock_0/Dense_0': 1\}"):
    alrao_jax.sample_rates(KEY, params, LO, HI)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    rates = alrao_jax.sample_rates(KEY, params, LO, HI, stacked={"Scan_BareBlock_0": 1})
  kernel_rates = rates["Scan_BareBlock_0"]["Dense_0"]["kernel"]
  assert kernel_rates.shape == (3, 1, 6)
  assert len(np.unique(np.asarray(kernel_rates))) == 18  # every layer, every unit its own
  head = {"body": {"kernel": jnp.ones((4, 3))}, "alrao_copies": {"kernel": jnp.ones((2, 3, 5))}}
  with pytest.raises(ValueError, match="covers the Alrao head's copies"):
    alrao_jax.sample_rates(KEY, head, LO, HI, stacked={"": 1})
  with pytest.raises(ValueError, match=r"less than a \(in, out\) kernel"):
    alrao_jax.sample_rates(KEY, _dense_stack(3, 4), LO, HI, stacked={"dense": 2})


def test_a_stack_declared_in_flax_metadata_is_read():
  """linen nn.scan(metadata_params={nn.PARTITION_NAME: 'layers'}) and NNX
  nnx.vmap(transform_metadata={nnx.PARTITION_NAME: 'layers'}): no shape says stack, the
  declaration does."""

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
      init = nn.with_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
      return nn.relu(nn.Dense(6, use_bias=False, kernel_init=init)(x)), None

  stack = nn.scan(
    Block,
    variable_axes={"params": 0},
    split_rngs={"params": True},
    length=3,
    metadata_params={nn.PARTITION_NAME: "layers"},
  )
  linen = stack().init(KEY, jnp.ones((2, 6)), None)["params"]

  class NNXBlock(nnx.Module):
    def __init__(self, rngs):
      init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"))
      self.dense = nnx.Linear(6, 6, use_bias=False, kernel_init=init, rngs=rngs)

  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make(key):
    return NNXBlock(nnx.Rngs(key))

  with nnx.use_eager_sharding(False):
    blocks = make(jax.random.split(KEY, 3))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # read, not guessed: no warning
    linen_rates = alrao_jax.sample_rates(KEY, linen, LO, HI)["Dense_0"]["kernel"]
    nnx_rates = alrao_jax.sample_rates(KEY, nnx.state(blocks, nnx.Param), LO, HI)
  for rates in (linen_rates.value, nnx_rates["dense"]["kernel"].get_value()):
    assert rates.shape == (3, 1, 6)
    assert len(np.unique(np.asarray(rates))) == 18  # each layer and unit its own rate
  assert linen_rates.names == ("layers", None, "mlp")  # the rates keep the layer axis' name

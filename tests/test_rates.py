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
  "linen ConvLocal": (
    lambda: _linen(nn.ConvLocal(4, (3, 3)), X4),
    {"c": {"kernel": _cols, "bias": _cols}},
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

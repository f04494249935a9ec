"""Properties, for any input hypothesis draws: the averaging posteriors, the rates, and
Alrao with one rate equal to optax.sgd."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import example, given, settings
from hypothesis import strategies as st

import alrao_jax

# A log-likelihood is finite or -inf (a diverged copy); NaN and +inf also count as -inf.
SCORE = st.one_of(
  st.floats(-1e6, 0.0, allow_nan=False, width=32),
  st.sampled_from([-np.inf, np.nan, np.inf, -1e30]),
)
UPDATES = {
  "switch": (alrao_jax.switch_init, alrao_jax.switch_update),
  "switch_theta_0": (lambda n: alrao_jax.switch_init(n, theta=0.0), alrao_jax.switch_update),
  "switch_theta_1": (lambda n: alrao_jax.switch_init(n, theta=1.0), alrao_jax.switch_update),
  "bayes": (alrao_jax.bayes_init, alrao_jax.bayes_update),
}


@st.composite
def _sequences(draw):
  n = draw(st.sampled_from([2, 3, 5]))
  rows = draw(st.lists(st.lists(SCORE, min_size=n, max_size=n), min_size=1, max_size=6))
  return np.asarray(rows, np.float32)


def _posterior_after(kind, rows):
  init, update = UPDATES[kind]
  state = init(rows.shape[1])
  for row in rows:
    state = update(state, jnp.asarray(row))
  return np.asarray(jnp.exp(state.log_posterior), np.float64)


@settings(deadline=None, max_examples=40)
@given(rows=_sequences(), kind=st.sampled_from(sorted(UPDATES)), shift=st.floats(-50, 50))
# found by hypothesis: every weight near -1e30, whose log-sum-exp lost its log 2 in float32
@example(rows=np.array([[0, -1e30], [-1e30, 0]], np.float32), kind="bayes", shift=0.0)
@example(rows=np.array([[0, -1e30], [-1e30, 0]], np.float32), kind="switch_theta_0", shift=0.0)
def test_posteriors_are_distributions_and_shift_invariant(rows, kind, shift):
  post = _posterior_after(kind, rows)
  assert np.isfinite(post).all() and (post >= 0).all()
  np.testing.assert_allclose(post.sum(), 1.0, atol=1e-5)
  finite = np.isfinite(rows)
  shifted = np.where(finite, rows + np.float32(shift), rows)  # a common shift of every score
  np.testing.assert_allclose(_posterior_after(kind, shifted), post, atol=2e-4)


@settings(deadline=None, max_examples=25)
@given(
  low=st.floats(-37.0, 37.0),
  decades=st.floats(0.0, 12.0),
  seed=st.integers(0, 2**31 - 1),
)
def test_rates_lie_within_every_accepted_interval(low, decades, seed):
  lr_min = 10.0**low
  lr_max = min(lr_min * 10.0**decades, 3e38)
  params = {"dense": {"kernel": jnp.ones((3, 7)), "bias": jnp.ones(7)}, "head": jnp.ones((7, 2))}
  key = jax.random.key(seed)
  rates = alrao_jax.sample_rates(key, params, lr_min, lr_max, rules=lambda *_: "feature")
  for leaf in jax.tree.leaves(rates):
    leaf = np.asarray(leaf, np.float64)
    assert np.isfinite(leaf).all() and (leaf > 0).all()
    assert (leaf >= lr_min * (1 - 1e-6)).all() and (leaf <= lr_max * (1 + 1e-6)).all()


@st.composite
def _trees(draw):
  def leaf():
    shape = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))
    size = int(np.prod(shape))
    values = draw(st.lists(st.floats(-3, 3), min_size=size, max_size=size))
    return np.asarray(values, np.float32).reshape(shape)

  kind = draw(st.sampled_from(["array", "tuple", "dict"]))
  if kind == "array":
    return jnp.asarray(leaf())
  if kind == "tuple":
    return tuple(jnp.asarray(leaf()) for _ in range(draw(st.integers(1, 3))))
  return {f"m{i}": {"w": jnp.asarray(leaf())} for i in range(draw(st.integers(1, 3)))}


@settings(deadline=None, max_examples=25)
@given(tree=_trees(), lr=st.floats(1e-4, 1.0), momentum=st.sampled_from([None, 0.9]))
def test_one_rate_is_optax_sgd(tree, lr, momentum):
  alrao = alrao_jax.alrao_sgd(
    lr, lr, key=jax.random.key(0), momentum=momentum, rules=lambda *_: "feature"
  )
  sgd = optax.sgd(lr, momentum=momentum)
  grads = jax.tree.map(lambda p: jnp.sin(3 * p) + 0.5, tree)
  state_a, state_s = alrao.init(tree), sgd.init(tree)
  for _ in range(2):
    updates_a, state_a = alrao.update(grads, state_a, tree)
    updates_s, state_s = sgd.update(grads, state_s, tree)
    chex.assert_trees_all_close(updates_a, updates_s, rtol=1e-6, atol=1e-7)

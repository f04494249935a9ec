"""The switch against the SPEC trace and a brute-force enumeration of the hidden paths."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import alrao_jax
from alrao_jax.switch import update_with_batch

THETA = 0.9999
update = jax.jit(alrao_jax.switch_update)


def _run(ll_rows, n, theta=THETA):
  state = alrao_jax.switch_init(n, theta=theta)
  for row in ll_rows:
    state = update(state, jnp.asarray(row, jnp.float32))
  return state


def test_reference_trace_from_spec():
  trace = [
    ([-2, -1, -3], [0.289026, 0.499304, 0.211670]),
    ([-2, -1, -3], [0.222858, 0.635938, 0.141204]),
    ([-0.5, -1, -3], [0.352846, 0.549820, 0.097335]),
    ([-0.5, -1.5, -3], [0.567963, 0.354033, 0.078004]),
  ]
  state = alrao_jax.switch_init(3, theta=THETA)
  for ll, want in trace:
    state = update(state, jnp.asarray(ll, jnp.float32))
    np.testing.assert_allclose(alrao_jax.switch_posterior(state), want, atol=1e-5)


def brute_force_posterior(ll, theta):
  """Posterior over the copy at step T+1, summing over every path of hidden states.

  States are (copy k, flag): flag 0 may still switch, flag 1 never switches again. The
  first state is drawn from theta/N (flag 0) and (1-theta)/N (flag 1). After observation t
  (1-based) a flag-0 state keeps its copy with probability 1 - pi_t, pi_t = 1/(t+1), and
  otherwise switches to a uniformly drawn copy with flag 0 (prob. theta) or 1 (1 - theta).
  """
  ll = np.asarray(ll, np.float64)
  steps, n = ll.shape
  states = [(k, f) for k in range(n) for f in (0, 1)]

  def start(s):
    return (theta if s[1] == 0 else 1 - theta) / n

  def move(a, b, t):
    pi = 1.0 / (t + 1)
    if a[1] == 1:
      return float(a == b)
    switch = pi * (theta if b[1] == 0 else 1 - theta) / n
    return switch + ((1 - pi) if a == b else 0.0)

  # Every path of hidden states at once: (paths, steps + 1) state indices.
  paths = np.array(list(itertools.product(range(len(states)), repeat=steps + 1)))
  start_p = np.array([start(st) for st in states])
  move_p = [
    np.array([[move(a, b, t) for b in states] for a in states]) for t in range(1, steps + 1)
  ]
  copy_of = np.array([k for k, _ in states])
  prob = start_p[paths[:, 0]]
  for t in range(steps):
    prob = prob * np.exp(ll[t, copy_of[paths[:, t]]]) * move_p[t][paths[:, t], paths[:, t + 1]]
  weight = np.bincount(copy_of[paths[:, -1]], weights=prob, minlength=n)
  return weight / weight.sum()


@settings(deadline=None, max_examples=15)
@example(n=3, steps=5, seed=0, theta=THETA)
@example(n=2, steps=5, seed=1, theta=0.5)
@given(
  n=st.sampled_from([2, 3]),
  steps=st.integers(1, 5),
  seed=st.integers(0, 2**31 - 1),
  theta=st.sampled_from([THETA, 0.9, 0.5]),
)
def test_recursion_equals_brute_force_enumeration(n, steps, seed, theta):
  ll = np.random.default_rng(seed).uniform(-4.0, 0.0, (steps, n))
  got = alrao_jax.switch_posterior(_run(ll, n, theta))
  np.testing.assert_allclose(got, brute_force_posterior(ll, theta), atol=1e-5)


@settings(deadline=None, max_examples=20)
@given(seed=st.integers(0, 2**31 - 1), shift=st.floats(-50, 50), steps=st.integers(1, 6))
def test_normalised_permutation_equivariant_and_shift_invariant(seed, shift, steps):
  rng = np.random.default_rng(seed)
  ll = rng.uniform(-5.0, 0.0, (steps, 4)).astype(np.float32)
  post = np.asarray(alrao_jax.switch_posterior(_run(ll, 4)))
  np.testing.assert_allclose(post.sum(), 1.0, atol=1e-6)
  perm = rng.permutation(4)
  permuted = np.asarray(alrao_jax.switch_posterior(_run(ll[:, perm], 4)))
  np.testing.assert_allclose(permuted, post[perm], atol=1e-6)
  shifted = np.asarray(alrao_jax.switch_posterior(_run(ll + np.float32(shift), 4)))
  np.testing.assert_allclose(shifted, post, atol=1e-5)


@pytest.mark.parametrize("steps_before", [0, 1, 5, 30])
def test_diverged_copy_gets_at_most_the_switch_prior_share(steps_before):
  n = 4
  state = _run(np.full((steps_before, n), -1.0), n)
  t = int(state.step)
  state = update(state, jnp.array([-1.0, -jnp.inf, -2.0, -1.5]))
  post = np.asarray(alrao_jax.switch_posterior(state))
  assert np.isfinite(post).all() and abs(post.sum() - 1) < 1e-6
  assert 0.0 < post[1] <= 1.0 / ((t + 1) * n) * (1 + 1e-5)
  chex.assert_tree_all_finite(state.log_weights[:, [0, 2, 3]])


def test_diverged_copy_gets_exactly_zero_under_bayes():
  state = alrao_jax.bayes_update(alrao_jax.bayes_init(3), jnp.array([-1.0, -jnp.inf, jnp.nan]))
  post = np.asarray(alrao_jax.bayes_posterior(state))
  np.testing.assert_array_equal(post[1:], [0.0, 0.0])
  assert post[0] == 1.0
  state = alrao_jax.bayes_update(state, jnp.array([-3.0, 0.0, 0.0]))
  assert np.asarray(alrao_jax.bayes_posterior(state)).tolist() == [1.0, 0.0, 0.0]


def test_all_minus_inf_gives_no_nan():
  for init, upd in (
    (alrao_jax.switch_init, alrao_jax.switch_update),
    (alrao_jax.bayes_init, alrao_jax.bayes_update),
  ):
    state = upd(init(3), jnp.array([-1.0, -2.0, -3.0]))
    before = np.asarray(alrao_jax.switch_posterior(state))
    state = upd(state, jnp.full((3,), -jnp.inf))
    state = upd(state, jnp.full((3,), jnp.nan))
    post = np.asarray(alrao_jax.switch_posterior(state))
    assert np.isfinite(post).all() and abs(post.sum() - 1) < 1e-6
    assert post.argmax() == before.argmax()


def _float64_log_space_switch(ll_rows, theta=THETA):
  """The recursion as the authors' code runs it (log space, logaddexp), in float64."""
  n = ll_rows.shape[1]
  with np.errstate(divide="ignore"):  # theta = 0 or 1: log 0 = -inf, as intended
    return _log_space_switch(ll_rows, n, theta)


def _log_space_switch(ll_rows, n, theta):
  logw = np.log([theta, 1 - theta])[:, None] - np.log(n) + np.zeros((2, n))
  for t, ll in enumerate(ll_rows, 1):
    logw = logw + np.where(np.isfinite(ll), ll - np.max(ll[np.isfinite(ll)]), -np.inf)
    pool = np.logaddexp.reduce(logw[0]) - np.log(t + 1) - np.log(n)
    logw = np.stack(
      [
        np.logaddexp(logw[0] + np.log1p(-1 / (t + 1)), np.log(theta) + pool),
        np.logaddexp(logw[1], np.log1p(-theta) + pool),
      ]
    )
    logw -= np.logaddexp.reduce(logw.ravel())
  return np.exp(np.logaddexp(logw[0], logw[1]))


def test_a_thousand_steps_equal_the_float64_log_space_recursion():
  """The float32 update (in probabilities relative to the largest weight) against the
  authors' log-space recursion in float64: drifting copies, one of them diverging now and
  then."""
  rng = np.random.default_rng(0)
  t = np.arange(1, 1001)[:, None]
  ll = (
    rng.uniform(-3, -0.5, 10)
    + rng.normal(0, 0.3, (1000, 10))
    + 0.5 * np.sin(t / 50 + np.arange(10))
  )
  ll[::97, 3] = -np.inf
  state = alrao_jax.switch_init(10)
  for row in ll:
    state = update(state, jnp.asarray(row, jnp.float32))
  got = np.asarray(alrao_jax.switch_posterior(state))
  np.testing.assert_allclose(got, _float64_log_space_switch(ll), atol=2e-6)


def test_a_million_updates_stay_finite_and_normalised():
  keys = jax.random.split(jax.random.key(0), 1_000_000)

  def body(state, key):
    ll = jax.random.uniform(key, (5,), minval=-6.0, maxval=0.0)
    ll = ll.at[4].set(jnp.where(jax.random.bernoulli(key, 0.01), -jnp.inf, ll[4]))
    return alrao_jax.switch_update(state, ll), None

  state = jax.jit(lambda s: jax.lax.scan(body, s, keys)[0])(alrao_jax.switch_init(5))
  post = np.asarray(alrao_jax.switch_posterior(state))
  assert int(state.step) == 1_000_001
  assert np.isfinite(post).all() and abs(post.sum() - 1) < 1e-5
  chex.assert_tree_all_finite(state.log_weights)


def test_batch_reductions():
  ll = jnp.asarray(np.random.default_rng(0).uniform(-3, 0, (6, 3)), jnp.float32)
  init = alrao_jax.switch_init(3)
  mean = update_with_batch(alrao_jax.switch_update, init, ll)
  chex.assert_trees_all_close(mean, alrao_jax.switch_update(init, ll.mean(0)))
  total = update_with_batch(alrao_jax.switch_update, init, ll, reduction="sum")
  chex.assert_trees_all_close(total, alrao_jax.switch_update(init, ll.sum(0)))
  seq = update_with_batch(alrao_jax.switch_update, init, ll, reduction="sequential")
  looped = init
  for row in ll:
    looped = alrao_jax.switch_update(looped, row)
  chex.assert_trees_all_close(seq, looped, atol=1e-6)
  assert int(seq.step) == 7
  avg = alrao_jax.switch_averaging(reduction="sequential")
  chex.assert_trees_all_close(avg.update(avg.init(3), ll), looped, atol=1e-6)


def test_bad_arguments():
  with pytest.raises(ValueError, match="theta must be in"):
    alrao_jax.switch_init(3, theta=1.5)
  with pytest.raises(ValueError, match="num_copies must be >= 1"):
    alrao_jax.switch_init(0)
  with pytest.raises(ValueError, match="reduction must be one of"):
    alrao_jax.switch_averaging(reduction="median")
  with pytest.raises(ValueError, match=r"shape \(batch, num_copies\)"):
    update_with_batch(alrao_jax.switch_update, alrao_jax.switch_init(3), jnp.zeros(3))


def test_theta_zero_is_bayes_and_a_copy_far_behind_can_come_back():
  """theta = 0 never switches: the switch is Bayes' rule. A copy 100 nats behind is 1e-44
  relative, below float32's normal range: it must still be able to win."""
  rows = [[0.0, -100.0], [-100.0, 0.0], [-100.0, 0.0]]
  switch = alrao_jax.switch_init(2, theta=0.0)
  bayes = alrao_jax.bayes_init(2)
  for row in rows:
    switch = update(switch, jnp.asarray(row))
    bayes = alrao_jax.bayes_update(bayes, jnp.asarray(row))
  np.testing.assert_allclose(alrao_jax.switch_posterior(switch), [0.0, 1.0], atol=1e-6)
  np.testing.assert_allclose(alrao_jax.bayes_posterior(bayes), [0.0, 1.0], atol=1e-6)
  rng = np.random.default_rng(1)
  ll = rng.normal(0, 40, (300, 3))  # large swings: weights far beyond float32's range
  state = alrao_jax.switch_init(3, theta=0.0)
  for row in ll:
    state = update(state, jnp.asarray(row, jnp.float32))
  np.testing.assert_allclose(
    alrao_jax.switch_posterior(state), _float64_log_space_switch(ll, theta=0.0), atol=1e-5
  )


def test_bayes_never_returns_nan_or_an_unnormalised_posterior():
  state = alrao_jax.bayes_init(2)
  for row in ([-jnp.inf, 0.0], [0.0, -jnp.inf]):  # each copy refuted once
    state = alrao_jax.bayes_update(state, jnp.asarray(row))
  post = np.asarray(alrao_jax.bayes_posterior(state))
  np.testing.assert_array_equal(post, [0.0, 1.0])  # the second observation refutes all: kept
  for score in (-1e7, -1e8):  # the dead copy scores best: it must not set the shift
    state = alrao_jax.BayesState(jnp.log(jnp.asarray([0.7, 0.0, 0.3])))
    state = alrao_jax.bayes_update(state, jnp.asarray([score, 0.0, score]))
    np.testing.assert_allclose(alrao_jax.bayes_posterior(state), [0.7, 0.0, 0.3], atol=1e-6)

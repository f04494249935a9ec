"""Predictions: divergence is per example, a diverged best copy is skipped, no copy is NaN."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import alrao_jax

X = jax.random.normal(jax.random.key(0), (64, 5))


def _state(num_outputs=3, copies=4):
  model = nn.Sequential([nn.Dense(8), nn.relu, alrao_jax.AlraoHead(num_outputs, num_copies=copies)])
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(1))
  return model, alrao_jax.create_train_state(model, tx, jax.random.key(2), X)


def test_one_non_finite_row_spoils_only_that_row():
  model, state = _state()
  bad = X.at[7, 2].set(jnp.nan)
  regression = alrao_jax.gaussian_log_likelihood()
  for kwargs in ({}, {"best": True}):
    clean = alrao_jax.predict(model, state, X, **kwargs)
    spoiled = alrao_jax.predict(model, state, bad, **kwargs)
    assert np.isnan(spoiled[7]).all()
    np.testing.assert_allclose(np.delete(spoiled, 7, 0), np.delete(clean, 7, 0), rtol=1e-6)
    clean = alrao_jax.predict(model, state, X, likelihood=regression, **kwargs)
    spoiled = alrao_jax.predict(model, state, bad, likelihood=regression, **kwargs)
    assert np.isnan(spoiled[7]).all()
    np.testing.assert_allclose(np.delete(spoiled, 7, 0), np.delete(clean, 7, 0), rtol=1e-6)


def test_best_skips_a_diverged_leading_copy_and_no_usable_copy_is_nan():
  model, state = _state()
  averaging = state.averaging_state._replace(log_posterior=jnp.log(jnp.array([0.1, 0.1, 0.1, 0.7])))
  copies = state.params["layers_2"]["alrao_copies"]
  kernel = copies["kernel"].at[3].set(jnp.nan)
  params = {**state.params, "layers_2": {"alrao_copies": {**copies, "kernel": kernel}}}
  state = state.replace(params=params, averaging_state=averaging)
  mixture = alrao_jax.predict(model, state, X)
  best = alrao_jax.predict(model, state, X, best=True)
  assert np.isfinite(mixture).all() and np.isfinite(best).all()
  # The best finite copy is one of copies 0-2 (equal weights: the first, by argmax).
  logits = model.apply({"params": params}, X).own
  np.testing.assert_allclose(best, jax.nn.softmax(logits[0]), rtol=1e-6)
  dead = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
  state = state.replace(params=dead)
  for kwargs in ({}, {"best": True}, {"likelihood": alrao_jax.gaussian_log_likelihood()}):
    assert np.isnan(alrao_jax.predict(model, state, X, **kwargs)).all()  # not 1/K


def test_mixture_and_best_copy_send_gradients_to_the_body_and_the_copies():
  model, state = _state()
  labels = jnp.arange(64) % 3

  def mixture_nll(params):
    outputs = model.apply({"params": params}, X)
    log_probs = alrao_jax.mixture_log_probs(outputs, state.averaging_state)
    return -jnp.take_along_axis(log_probs, labels[:, None], 1).mean()

  def plain_nll(params):  # the same mixture from the copies' raw outputs, no routing
    z = nn.relu(nn.Dense(8).apply({"params": params["layers_0"]}, X))
    copies = params["layers_2"]["alrao_copies"]
    logits = jnp.einsum("bd,ndk->nbk", z, copies["kernel"]) + copies["bias"][:, None]
    log_probs = jax.nn.logsumexp(
      jax.nn.log_softmax(logits) + state.averaging_state.log_posterior[:, None, None], axis=0
    )
    return -jnp.take_along_axis(log_probs, labels[:, None], 1).mean()

  got, want = jax.grad(mixture_nll)(state.params), jax.grad(plain_nll)(state.params)
  assert float(jnp.abs(got["layers_0"]["kernel"]).max()) > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), got, want)
  best = jax.grad(lambda p: alrao_jax.best_copy(model.apply({"params": p}, X), jnp.ones(4)).sum())
  assert float(jnp.abs(best(state.params)["layers_0"]["kernel"]).max()) > 0


def test_a_blown_up_copy_with_a_huge_learned_sigma_is_left_out_of_the_mean():
  learned = alrao_jax.gaussian_log_likelihood(sigma="learned")
  # copy 0 predicts 0.5 with sigma ~0.1; copy 1 blew up: its mean AND its scale are ~1e11, so
  # its own likelihood of 0.5 is only ~ -25 nats: it "explains" the good mean
  outputs = jnp.array([[[0.5, -2.2]], [[1e11, 1e11]]])
  posterior = jnp.array([0.999, 0.001])  # the switch's prior keeps a share for every copy
  assert float(learned(outputs[1:], jnp.array([[0.5]]))[0, 0]) > -30
  mean = alrao_jax.mixture_mean(outputs, posterior, likelihood=learned)
  np.testing.assert_allclose(mean, [[0.5]], rtol=1e-6)
  # two plausible copies keep their posterior weights
  close = jnp.array([[[0.5, -2.2]], [[0.6, -2.2]]])
  np.testing.assert_allclose(
    alrao_jax.mixture_mean(close, jnp.array([0.75, 0.25]), likelihood=learned), [[0.525]], rtol=1e-5
  )

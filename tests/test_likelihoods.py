"""Outputs that are not classes: the Bernoulli likelihood (logits), its predictions, and the
prediction helpers refusing a likelihood they cannot serve."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import alrao_jax

COPIES, BATCH, DIM, OUT = 3, 6, 5, 4


def _copies():
  keys = jax.random.split(jax.random.key(0), 4)
  z = jax.random.normal(keys[0], (BATCH, DIM))
  kernel = jax.random.normal(keys[1], (COPIES, DIM, OUT))
  bias = jax.random.normal(keys[2], (COPIES, OUT))
  targets = jax.random.bernoulli(keys[3], 0.4, (BATCH, OUT)).astype(jnp.float32)
  return z, kernel, bias, targets


def _logits(z, kernel, bias):
  return jnp.einsum("bd,ndk->nbk", z, kernel) + bias[:, None]


@pytest.mark.parametrize("soft", [False, True])
def test_bernoulli_log_likelihood_is_optax_sigmoid_cross_entropy(soft):
  z, kernel, bias, targets = _copies()
  if soft:
    targets = jnp.clip(targets * 0.8 + 0.1, 0.0, 1.0)  # probabilities as targets
  logits = _logits(z, kernel, bias)
  found = alrao_jax.bernoulli_log_likelihood(logits, targets)
  oracle = -optax.sigmoid_binary_cross_entropy(logits, jnp.broadcast_to(targets, logits.shape))
  np.testing.assert_allclose(found, oracle.sum(-1), rtol=1e-5)
  with pytest.raises(ValueError, match="targets"):
    alrao_jax.bernoulli_log_likelihood(logits, targets[:, 0])  # no output axis


def test_alrao_loss_trains_each_bernoulli_copy_on_its_own_cross_entropy():
  z, kernel, bias, targets = _copies()
  posterior = jnp.array([0.2, 0.3, 0.5])

  def loss(kernel, bias):
    outputs = alrao_jax.copy_outputs(z, kernel, bias)
    return alrao_jax.alrao_loss(
      outputs, targets, posterior, likelihood=alrao_jax.bernoulli_log_likelihood
    )

  (_, aux), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(kernel, bias)

  def per_copy(kernel, bias):
    logits = _logits(z, kernel, bias)
    ce = optax.sigmoid_binary_cross_entropy(logits, jnp.broadcast_to(targets, logits.shape))
    return ce.sum(-1).mean(-1)  # (N,)

  np.testing.assert_allclose(aux.copy_nll, per_copy(kernel, bias), rtol=1e-5)
  want = jax.grad(lambda k, b: per_copy(k, b).sum(), argnums=(0, 1))(kernel, bias)
  np.testing.assert_allclose(grads[0], want[0], atol=1e-5)
  np.testing.assert_allclose(grads[1], want[1], atol=1e-5)


class _MultiLabel(nn.Module):
  @nn.compact
  def __call__(self, x):
    return alrao_jax.AlraoHead(OUT, num_copies=COPIES)(nn.relu(nn.Dense(16)(x)))


def test_a_multilabel_head_fits_and_predicts_probabilities():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, DIM)).astype(np.float32)
  y = (x[:, :OUT] > 0).astype(np.float32)  # each output: the sign of one input
  splits = alrao_jax.split_arrays(x, y, valid=50, test=50)
  tx = alrao_jax.alrao_sgd(1e-3, 10.0, key=jax.random.key(1))
  likelihood = alrao_jax.bernoulli_log_likelihood
  result = alrao_jax.fit(
    _MultiLabel(), tx, splits, epochs=6, batch_size=25, likelihood=likelihood
  )
  assert result.test["loss"] < 0.5 * OUT * np.log(2.0)  # well below a coin per output
  assert "accuracy" not in result.test  # no classes: no accuracy
  state = result.state
  probs = alrao_jax.predict(_MultiLabel(), state, splits.test.inputs, likelihood=likelihood)
  logits = _MultiLabel().apply({"params": state.params}, splits.test.inputs).own
  weights = alrao_jax.switch_posterior(state.averaging_state)
  np.testing.assert_allclose(
    probs, jnp.einsum("n,nbk->bk", weights, jax.nn.sigmoid(logits)), rtol=1e-5
  )
  assert float(jnp.mean((probs > 0.5) == (splits.test.targets > 0.5))) > 0.9
  best = alrao_jax.predict(
    _MultiLabel(), state, splits.test.inputs, likelihood=likelihood, best=True
  )
  np.testing.assert_allclose(best, jax.nn.sigmoid(logits[int(jnp.argmax(weights))]), rtol=1e-5)


def test_mixture_mean_refuses_logits_and_names_the_helper():
  logits = jnp.zeros((COPIES, BATCH, OUT))
  for likelihood in (alrao_jax.categorical_log_likelihood, alrao_jax.bernoulli_log_likelihood):
    with pytest.raises(ValueError, match=r"alrao_jax\.predict"):
      alrao_jax.mixture_mean(logits, jnp.full(COPIES, 1 / COPIES), likelihood=likelihood)
  diverged = logits.at[0].set(jnp.nan)
  probs = alrao_jax.mixture_probabilities(diverged, jnp.array([0.8, 0.1, 0.1]))
  np.testing.assert_allclose(probs, 0.5)  # the diverged copy left out, the others renormalised


def test_check_copies_names_diverged_copies_and_raises_when_all_have():
  assert alrao_jax.check_copies({"copy_nll": np.array([0.7, 0.5, 1.2])}) == []
  with pytest.warns(RuntimeWarning, match=r"copies 2 \(lr 10\) of 3 diverged"):
    found = alrao_jax.check_copies({"copy_nll": np.array([0.7, 0.5, np.inf])}, rates=[0.1, 1, 10])
  assert found == [2]
  # a body that overflows: every copy NaN in the user's own step, which the check stops
  z, kernel, bias, targets = _copies()
  outputs = alrao_jax.copy_outputs(z.at[0, 0].set(jnp.nan), kernel, bias)
  _, aux = alrao_jax.alrao_loss(
    outputs, targets, jnp.full(COPIES, 1 / COPIES), likelihood=alrao_jax.bernoulli_log_likelihood
  )
  with pytest.raises(FloatingPointError, match=r"every copy's loss is not finite.*lr_max"):
    alrao_jax.check_copies(aux)


def test_a_learned_sigma_is_a_gaussian_of_softplus_scale_and_its_head_predicts_means():
  learned = alrao_jax.gaussian_log_likelihood(sigma="learned")
  outputs = jax.random.normal(jax.random.key(4), (COPIES, BATCH, 2 * OUT)) * 3.0
  targets = jax.random.normal(jax.random.key(5), (BATCH, OUT))
  means, raw = outputs[..., :OUT], outputs[..., OUT:]
  sigma = np.log1p(np.exp(np.asarray(raw, np.float64))) + 1e-3
  z = (np.asarray(targets, np.float64) - np.asarray(means, np.float64)) / sigma
  oracle = (-0.5 * z**2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)).sum(-1)
  np.testing.assert_allclose(learned(outputs, targets), oracle, rtol=1e-5)
  with pytest.raises(ValueError, match=r"AlraoHead\(2 \* D\)"):
    learned(outputs[..., :OUT], targets)  # a head of D outputs: no scales
  with pytest.raises(ValueError, match="learned"):
    alrao_jax.gaussian_log_likelihood(sigma="fitted")

  # noise that grows with |x|: the head learns it, and predicts the means alone
  class Regressor(nn.Module):
    @nn.compact
    def __call__(self, x):
      return alrao_jax.AlraoHead(2, num_copies=COPIES)(nn.tanh(nn.Dense(32)(x)))

  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (600, 1)).astype(np.float32)
  y = (x + rng.normal(size=x.shape) * (0.05 + 0.3 * np.abs(x))).astype(np.float32)
  splits = alrao_jax.split_arrays(x, y, valid=100, test=100)
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(2))
  result = alrao_jax.fit(Regressor(), tx, splits, epochs=15, batch_size=20, likelihood=learned)
  fixed = alrao_jax.fit(
    Regressor(), tx, splits, epochs=15, batch_size=20,
    likelihood=_first_output(alrao_jax.gaussian_log_likelihood(sigma=0.3)),
  )
  assert result.test["loss"] < fixed.test["loss"] - 0.05  # a learned sigma fits the noise better
  means = alrao_jax.predict(Regressor(), result.state, splits.test.inputs, likelihood=learned)
  best = alrao_jax.predict(
    Regressor(), result.state, splits.test.inputs, likelihood=learned, best=True
  )
  assert means.shape == best.shape == splits.test.targets.shape
  assert float(jnp.mean(jnp.abs(means - splits.test.inputs))) < 0.15


def _first_output(likelihood):
  """A fixed-sigma Gaussian on the first of two outputs (the same head, the scale unused)."""
  return lambda outputs, targets: likelihood(outputs[..., :1], targets)


def test_label_smoothing_trains_on_optax_smoothed_cross_entropy_and_reports_the_nll():
  smoothed = alrao_jax.smoothed_categorical_log_likelihood(label_smoothing=0.2)
  assert alrao_jax.smoothed_categorical_log_likelihood(label_smoothing=0.0) is (
    alrao_jax.categorical_log_likelihood
  )
  with pytest.raises(ValueError, match="label_smoothing"):
    alrao_jax.smoothed_categorical_log_likelihood(label_smoothing=1.0)
  z, kernel, bias, _ = _copies()
  labels = jnp.arange(BATCH) % OUT
  logits = _logits(z, kernel, bias)
  oracle = optax.softmax_cross_entropy(
    logits, optax.smooth_labels(jax.nn.one_hot(labels, OUT), 0.2)[None]
  )
  np.testing.assert_allclose(smoothed(logits, labels), -oracle, rtol=1e-5)
  posterior = jnp.full(COPIES, 1 / COPIES)
  aux = alrao_jax.alrao_loss(
    alrao_jax.copy_outputs(z, kernel, bias), labels, posterior, likelihood=smoothed
  )[1]
  np.testing.assert_allclose(aux.copy_nll, oracle.mean(-1), rtol=1e-5)  # trains on the score
  found = alrao_jax.evaluation_metrics(logits, labels, posterior, likelihood=smoothed)
  plain = alrao_jax.evaluation_metrics(logits, labels, posterior)
  assert found.keys() == plain.keys() and "accuracy" in found  # reports the plain NLL
  for name in plain:
    np.testing.assert_allclose(found[name], plain[name], rtol=1e-6)
  x = np.random.default_rng(1).normal(size=(200, DIM)).astype(np.float32)
  splits = alrao_jax.split_arrays(x, x[:, :OUT].argmax(-1), valid=40, test=40)
  tx = alrao_jax.alrao_sgd(1e-3, 10.0, key=jax.random.key(1))
  result = alrao_jax.fit(_MultiLabel(), tx, splits, epochs=4, batch_size=20, likelihood=smoothed)
  assert result.test["accuracy"] > 0.6  # chance: 1/4; labels checked, accuracy reported
  bad = alrao_jax.split_arrays(x, x[:, :OUT].argmax(-1) + OUT, valid=40, test=40)
  with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
    alrao_jax.fit(_MultiLabel(), tx, bad, epochs=1, batch_size=20, likelihood=smoothed)


def test_mixture_log_probs_refuses_outputs_that_are_not_class_logits():
  logits = jax.random.normal(jax.random.key(0), (COPIES, BATCH, OUT))
  posterior = jnp.full((COPIES,), 1 / COPIES)
  plain = alrao_jax.mixture_log_probs(logits, posterior)
  for categorical in (
    alrao_jax.categorical_log_likelihood,
    alrao_jax.smoothed_categorical_log_likelihood(label_smoothing=0.1),
  ):
    np.testing.assert_array_equal(
      alrao_jax.mixture_log_probs(logits, posterior, likelihood=categorical), plain
    )
  for other, helper in (
    (alrao_jax.bernoulli_log_likelihood, "mixture_probabilities"),
    (alrao_jax.gaussian_log_likelihood(sigma=0.5), "mixture_mean"),
  ):
    with pytest.raises(ValueError, match=helper):
      alrao_jax.mixture_log_probs(logits, posterior, likelihood=other)

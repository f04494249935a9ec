"""A large head's copies applied a few at a time: equal to the full outputs, values and grads."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import alrao_jax
from alrao_jax.head import copy_outputs

N, E, D, K = 5, 6, 4, 9  # 5 copies: groups of 2 leave a remainder
KEYS = jax.random.split(jax.random.key(0), 4)
Z = jax.random.normal(KEYS[0], (2, 3, D))  # a batch of 2 x 3 positions
KERNEL = jax.random.normal(KEYS[1], (N, D, K))
BIAS = jax.random.normal(KEYS[2], (N, K))
LABELS = jax.random.randint(KEYS[3], (2, 3), 0, K)
POSTERIOR = jnp.array([0.1, 0.3, 0.2, 0.15, 0.25])


def _loss(outputs_of, posterior=POSTERIOR, labels=LABELS):
  def loss(z, kernel, bias):
    return alrao_jax.alrao_loss(outputs_of(z, kernel, bias), labels, posterior)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _deferred(copies_at_once):
  return lambda z, k, b: alrao_jax.DeferredCopyOutputs(z, k, b, copies_at_once)


@pytest.mark.parametrize("copies_at_once", [1, 2, N])
def test_deferred_loss_equals_the_full_outputs_loss_values_and_gradients(copies_at_once):
  want = _loss(copy_outputs)(Z, KERNEL, BIAS)
  got = _loss(_deferred(copies_at_once))(Z, KERNEL, BIAS)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def test_deferred_loss_leaves_out_a_diverged_copy_as_the_full_loss_does():
  kernel = KERNEL.at[3, 0, 0].set(jnp.nan)
  (loss, aux), grads = _loss(_deferred(2))(Z, kernel, BIAS)
  (want_loss, want_aux), want = _loss(copy_outputs)(Z, kernel, BIAS)
  assert np.isfinite(loss) and np.isinf(aux.copy_nll[3])
  assert all(bool(jnp.isfinite(g).all()) for g in grads)
  assert not np.any(grads[1][3]) and not np.any(grads[2][3])  # the diverged copy is not trained
  chex.assert_trees_all_close((loss, aux, grads), (want_loss, want_aux, want), rtol=1e-5, atol=1e-6)


def test_deferred_loss_takes_examples_in_padded_chunks_as_the_full_loss_takes_them_at_once():
  # 7 examples through 4 inputs: two chunks of 4 (the last padded); an example of weight 0 and a
  # diverged copy on top
  keys = jax.random.split(jax.random.key(5), 2)
  z = jax.random.normal(keys[0], (7, D))
  labels = jax.random.randint(keys[1], (7,), 0, K)
  weights = jnp.array([1.0, 0.0, 2.0, 1.0, 1.0, 0.5, 1.0])
  kernel = KERNEL.at[1, 2, 3].set(jnp.inf)

  def loss(outputs_of):
    def value(z, kernel, bias):
      return alrao_jax.alrao_loss(outputs_of(z, kernel, bias), labels, POSTERIOR, weights=weights)

    return jax.jit(jax.value_and_grad(value, argnums=(0, 1, 2), has_aux=True))(z, kernel, BIAS)

  (value, aux), grads = loss(_deferred(2))
  assert np.isfinite(value) and np.isinf(aux.copy_nll[1]) and not np.any(grads[1][1])
  chex.assert_trees_all_close(((value, aux), grads), loss(copy_outputs), rtol=1e-5, atol=1e-6)


def test_bfloat16_copies_deferred_equal_their_float32_values_computed_at_once():
  # bfloat16 copies are taken out of their stack as 16-bit integers on CPU: the loss and its
  # gradients are those of the same weights in float32 (bfloat16's own rounding apart)
  kernel, bias, z = (x.astype(jnp.bfloat16) for x in (KERNEL, BIAS, Z))
  (value, aux), grads = _loss(_deferred(2))(z, kernel, bias)
  assert grads[1].dtype == jnp.bfloat16 and grads[0].dtype == jnp.bfloat16
  as_f32 = [x.astype(jnp.float32) for x in (z, kernel, bias)]
  (want, want_aux), want_grads = _loss(copy_outputs)(*as_f32)
  chex.assert_trees_all_close(
    (value, aux.copy_nll, tuple(g.astype(jnp.float32) for g in grads)),
    (want, want_aux.copy_nll, want_grads),
    rtol=2e-2,
    atol=2e-3,
  )


def test_deferred_loss_gradient_scales_with_the_loss_cotangent():
  def doubled(kernel):
    return 2.0 * alrao_jax.alrao_loss(_deferred(2)(Z, kernel, BIAS), LABELS, POSTERIOR)[0]

  def once(kernel):
    return alrao_jax.alrao_loss(_deferred(2)(Z, kernel, BIAS), LABELS, POSTERIOR)[0]

  grads = jax.jit(lambda k: (jax.grad(doubled)(k), jax.grad(once)(k)))(KERNEL)
  chex.assert_trees_all_close(grads[0], 2.0 * grads[1], rtol=1e-6)


def test_deferred_outputs_read_in_full_wherever_outputs_are_read():
  deferred, full = _deferred(1)(Z, KERNEL, BIAS), copy_outputs(Z, KERNEL, BIAS)
  assert deferred.shape == full.own.shape == (N, 2, 3, K)
  chex.assert_trees_all_close(
    alrao_jax.mixture_log_probs(deferred, POSTERIOR), alrao_jax.mixture_log_probs(full, POSTERIOR)
  )
  targets = jax.random.normal(KEYS[3], (2, 3, K))
  gaussian = alrao_jax.gaussian_log_likelihood(sigma=2.0)
  got, want = jax.jit(
    lambda a, b: [alrao_jax.alrao_loss(o, targets, POSTERIOR, likelihood=gaussian) for o in (a, b)]
  )(deferred, full)
  chex.assert_trees_all_close(got, want)
  with pytest.raises(TypeError, match="not logits"):
    jnp.asarray(deferred)


def test_deferred_loss_checks_labels_and_posterior_as_the_full_loss_does():
  deferred = _deferred(2)(Z, KERNEL, BIAS)
  with pytest.raises(ValueError, match="labels have shape"):
    alrao_jax.alrao_loss(deferred, LABELS[0], POSTERIOR)
  with pytest.raises(TypeError, match="integer class indices"):
    alrao_jax.alrao_loss(deferred, LABELS.astype(float), POSTERIOR)
  with pytest.raises(ValueError, match=r"averaging\.init"):
    alrao_jax.alrao_loss(deferred, LABELS, POSTERIOR[:3])


@pytest.mark.parametrize("bad, error", [(0, ValueError), (1.5, TypeError), (True, TypeError)])
def test_a_bad_copies_at_once_is_named(bad, error):
  with pytest.raises(error, match="copies_at_once"):
    alrao_jax.AlraoHead(K, num_copies=N, copies_at_once=bad).init(jax.random.key(0), Z)
  with pytest.raises(error, match="copies_at_once"):
    alrao_jax.nnx.AlraoHead(D, K, num_copies=N, copies_at_once=bad, rngs=nnx.Rngs(0))


class WordNet(nn.Module):
  copies_at_once: int | None

  @nn.compact
  def __call__(self, tokens):
    z = jnp.tanh(nn.Dense(D)(nn.Embed(K, D)(tokens)))
    return alrao_jax.AlraoHead(K, num_copies=N, copies_at_once=self.copies_at_once)(z)


def test_training_steps_with_a_deferred_head_equal_the_full_heads():
  tx = alrao_jax.alrao_sgd(1e-3, 10.0, key=jax.random.key(3))
  states = []
  for copies_at_once in (None, 2):
    model = WordNet(copies_at_once)
    state = alrao_jax.create_train_state(model, tx, jax.random.key(1), LABELS)
    step = alrao_jax.make_train_step(model, tx)
    for _ in range(3):
      state, metrics = step(state, LABELS, LABELS)
    evaluated = alrao_jax.make_eval_step(model)(state, LABELS, LABELS)
    states.append((state.params, state.averaging_state, metrics, evaluated))
  chex.assert_trees_all_close(states[1], states[0], rtol=1e-4, atol=1e-6)


def _metrics(outputs_of, posterior, kernel, z=Z):
  return jax.jit(lambda k: alrao_jax.evaluation_metrics(outputs_of(z, k, BIAS), LABELS, posterior))(
    kernel
  )


@pytest.mark.parametrize("copies_at_once", [1, 2, N])
def test_deferred_evaluation_equals_the_full_outputs_metrics(copies_at_once):
  # copy 2 overflows on one example only: left out of that example's mixture and, as a copy,
  # of the losses; copy 4 is NaN everywhere. Log weights far below float32's range (a long
  # Bayes average) order the copies without underflowing.
  z = Z.at[0, 1, 0].set(1e10)
  kernel = KERNEL.at[2, 0, :].set(1e30).at[4].set(jnp.nan)
  switch = alrao_jax.switch_averaging().init(N)
  switch = switch._replace(log_posterior=jnp.array([-300.0, -200.0, 0.0, -250.0, -1.0]))
  for posterior in (POSTERIOR, switch):
    want = _metrics(copy_outputs, posterior, kernel, z)
    got = _metrics(_deferred(copies_at_once), posterior, kernel, z)
    assert set(got) == set(want) and np.isfinite(want["loss"])
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def test_deferred_evaluation_with_no_usable_copy_is_inf_and_nan():
  metrics = _metrics(_deferred(2), POSTERIOR, jnp.full_like(KERNEL, jnp.nan))
  assert np.isinf(metrics["loss"]) and np.isinf(metrics["best_copy_loss"])
  assert np.isnan(metrics["accuracy"]) and np.isnan(metrics["best_copy_accuracy"])


def test_nnx_head_defers_its_copies_and_trains_like_linen():
  head = alrao_jax.nnx.AlraoHead(D, K, num_copies=N, copies_at_once=2, rngs=nnx.Rngs(0))
  outputs = head(Z)
  assert isinstance(outputs, alrao_jax.DeferredCopyOutputs) and outputs.copies_at_once == 2
  kernel, bias = head.alrao_copies.kernel[...], head.alrao_copies.bias[...]
  want = _loss(copy_outputs)(Z, kernel, bias)
  chex.assert_trees_all_close(_loss(_deferred(2))(Z, kernel, bias), want, rtol=1e-5, atol=1e-6)
  optimizer = nnx.Optimizer(head, optax.sgd(0.1), wrt=nnx.Param)
  grads = nnx.grad(lambda h: alrao_jax.alrao_loss(h(Z), LABELS, POSTERIOR)[0])(head)
  optimizer.update(head, grads)
  assert not np.allclose(head.alrao_copies.kernel[...], kernel)

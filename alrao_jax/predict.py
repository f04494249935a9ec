"""Predictions of an Alrao model: the mixture of its copies, or its best copy."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alrao_jax.head import (
  CopyOutputs,
  Posterior,
  as_copy_outputs,
  best_copy,
  mixture_log_probs,
  per_example_prior,
)
from alrao_jax.loss import (
  Likelihood,
  bernoulli_log_likelihood,
  categorical_log_likelihood,
  gaussian_log_likelihood,
  is_categorical,
  means_of,
)
from alrao_jax.nnx_types import is_nnx, nnx
from alrao_jax.steps import model_args


def mixture_mean(
  outputs: CopyOutputs | jax.Array,
  posterior: Posterior,
  *,
  likelihood: Likelihood | None = None,
) -> jax.Array:
  """Posterior-weighted mean of the copies' regression outputs, over the copies that predict.

  A copy predicts an example when its outputs for it are finite and its weighted likelihood of
  the best copy's prediction, relative to the best copy's own, has not underflowed:
  ``log a_j + log p_j(m) - log a_b - log p_b(m) > log(tiny)`` with ``m`` the best copy's
  mean and ``tiny`` the smallest normal float of the outputs' dtype; nor the best copy's
  likelihood of its mean ``m_j``, weighted the same way (``log a_j + log p_b(m_j) - log a_b -
  log p_b(m)``): with a learned sigma a blown-up copy's scale is huge too, and explains any
  mean. A copy that has blown up (outputs of 1e19 while the others predict 0.5) is therefore
  left out, whatever share of the posterior the switch's prior still gives it; copies that
  could have produced the best copy's prediction, and whose prediction it could have
  produced, keep their posterior weights, renormalised.

  Args:
    outputs: copy means ``(N, *batch, D)`` or :class:`CopyOutputs`.
    posterior: averaging weights ``(N,)`` or the averaging state.
    likelihood: the per-copy log-likelihood used in training (default
      ``gaussian_log_likelihood(sigma=1.0)``); with ``sigma="learned"`` the means are the
      first half of the outputs' last axis.

  Returns:
    Shape ``(*batch, D)``.

  Example:
    >>> import jax.numpy as jnp, alrao_jax
    >>> means = jnp.array([[[0.5], [0.2]], [[3e19], [-3e19]]])
    >>> alrao_jax.mixture_mean(means, jnp.array([0.999, 0.001])).tolist()
    [[0.5], [0.20000000298023224]]
  """
  if is_categorical(likelihood) or likelihood is bernoulli_log_likelihood:
    raise ValueError(
      "mixture_mean averages regression means; the copies' outputs here are logits, whose "
      "average is no prediction: use alrao_jax.predict(..., likelihood=...) (probabilities: "
      "the mixture of softmaxes, or of sigmoids), or alrao_jax.mixture_probabilities."
    )
  likelihood = likelihood or gaussian_log_likelihood()
  values, finite, log_prior = per_example_prior(outputs, posterior)  # finite: (N, *batch)
  safe = jnp.where(finite[..., None], values, 0.0)
  best = jnp.argmax(log_prior, axis=0)[None]  # per example, among the finite copies
  best_outputs = jnp.take_along_axis(safe, best[..., None], axis=0)[0]
  ll = likelihood(safe, means_of(best_outputs, likelihood))  # (N, *batch)
  # and the reverse: the best copy's likelihood of each copy's mean (with a learned sigma, a
  # blown-up copy's own scale is huge too, and would explain the best mean)
  reverse = jax.vmap(lambda means: likelihood(best_outputs[None], means)[0])(
    means_of(safe, likelihood)
  )
  floor = jnp.log(jnp.finfo(values.dtype).tiny)

  def plausible(log_likelihood: jax.Array) -> jax.Array:
    joint = jnp.where(finite, log_prior + log_likelihood, -jnp.inf)
    return joint - jnp.take_along_axis(joint, best, axis=0) > floor

  predicts = plausible(ll) & plausible(reverse)
  logw = jnp.where(predicts, log_prior, -jnp.inf)  # an example no copy predicts: NaN below
  weights = jnp.exp(logw - jax.nn.logsumexp(logw, axis=0))
  mixed = jnp.sum(weights[..., None] * means_of(safe, likelihood), axis=0)
  return mixed.astype(values.dtype)


def mixture_probabilities(outputs: CopyOutputs | jax.Array, posterior: Posterior) -> jax.Array:
  """The mixture's probabilities of independent Bernoulli outputs: ``sum_j a_j sigmoid(l_j)``.

  What a head trained with :func:`alrao_jax.bernoulli_log_likelihood` predicts: each output's
  probability of being 1 (a pixel, a label of a multi-label task). A copy whose logits for an
  example are not all finite is left out of that example (the weights renormalised over the
  others); an example that no copy predicts gets NaN.

  Args:
    outputs: copy logits ``(N, *batch, D)`` or :class:`CopyOutputs`.
    posterior: averaging weights ``(N,)`` or the averaging state.

  Returns:
    Shape ``(*batch, D)``, in ``[0, 1]``.

  Example:
    >>> import jax.numpy as jnp, alrao_jax
    >>> logits = jnp.array([[[0.0]], [[jnp.inf]]])  # copy 1 diverged: left out
    >>> alrao_jax.mixture_probabilities(logits, jnp.array([0.5, 0.5])).tolist()
    [[0.5]]
  """
  values, _, log_prior = per_example_prior(outputs, posterior)
  weights = jnp.exp(log_prior - jax.nn.logsumexp(log_prior, axis=0))  # NaN: no copy predicts
  safe = jnp.where(jnp.isfinite(log_prior)[..., None], values, 0.0)
  return jnp.sum(weights[..., None] * jax.nn.sigmoid(safe), axis=0).astype(values.dtype)


def _outputs(model: Any, state: Any, inputs: Any, model_kwargs: dict) -> tuple:
  if is_nnx(model):
    model.eval()
    return as_copy_outputs(model(*model_args(inputs), **model_kwargs)), state
  if not isinstance(model, nn.Module):
    raise TypeError(f"model must be a flax linen or nnx Module, got {type(model).__name__}.")
  variables = {"params": state.params, **state.model_state}
  outputs = model.apply(variables, *model_args(inputs), **model_kwargs)
  return as_copy_outputs(outputs), state.averaging_state


def predict(
  model: nn.Module | nnx.Module,
  state: Any,
  inputs: Any,
  *,
  likelihood: Likelihood = categorical_log_likelihood,
  best: bool = False,
  **model_kwargs: Any,
) -> jax.Array:
  """What an Alrao model predicts: the mixture of its copies (default) or its best copy.

  With :func:`alrao_jax.categorical_log_likelihood`, class probabilities: the mixture's
  ``sum_j a_j softmax(logits_j)`` over the copies with finite logits (weights from the
  log posterior, so none underflows), or the best copy's softmax. With
  :func:`alrao_jax.bernoulli_log_likelihood`, each output's probability of 1:
  :func:`mixture_probabilities`, or the best copy's sigmoid. With any other
  likelihood (regression), means: :func:`mixture_mean` (copies that have blown up are left
  out) or the best copy's means, which is what the authors' code predicts.

  Diverged copies are left out example by example: a row whose inputs are not finite
  predicts NaN and leaves the other rows as they are, ``best=True`` takes the best copy that
  is finite, and a model with no usable copy predicts NaN (not uniform probabilities).

  Args:
    model: the linen or NNX module ending with an Alrao head.
    state: linen: the :class:`alrao_jax.TrainState`; NNX: the averaging state (the model
      holds its parameters; it is put in ``eval()`` mode).
    inputs: the model's inputs.
    likelihood: the per-copy log-likelihood used in training.
    best: predict with the (finite) copy of largest posterior weight, not the mixture.
    **model_kwargs: keyword arguments of the model call, e.g. ``train=False``.

  Returns:
    ``(*batch, K)`` class probabilities, ``(*batch, D)`` Bernoulli probabilities or
    ``(*batch, D)`` regression means.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, alrao_jax
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, alrao_jax.AlraoHead(3, num_copies=4)])
    >>> tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(1))
    >>> state = alrao_jax.create_train_state(model, tx, jax.random.key(0), jnp.ones((2, 5)))
    >>> probs = alrao_jax.predict(model, state, jnp.ones((2, 5)))
    >>> probs.shape, bool(jnp.allclose(probs.sum(-1), 1.0))
    ((2, 3), True)
  """
  outputs, averaging_state = _outputs(model, state, inputs, model_kwargs)
  if is_categorical(likelihood):
    if best:
      return jax.nn.softmax(best_copy(outputs, averaging_state))
    return jnp.exp(mixture_log_probs(outputs, averaging_state))
  if likelihood is bernoulli_log_likelihood:
    if best:
      return jax.nn.sigmoid(best_copy(outputs, averaging_state))
    return mixture_probabilities(outputs, averaging_state)
  if best:
    return means_of(best_copy(outputs, averaging_state), likelihood)
  return mixture_mean(outputs, averaging_state, likelihood=likelihood)

"""The Alrao loss: one backward pass trains the pre-classifier and every copy."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alrao_jax.example_weights import example_shares, keep_weighted, weighted_mean
from alrao_jax.head import (
  CopyOutputs,
  DeferredCopyOutputs,
  Posterior,
  broadcast_copy_axis,
  canonical,
  log_posterior_of,
  mask_diverged,
  mixture_log_weights,
)
from alrao_jax.large_head import fused_alrao_loss

Likelihood = Callable[[jax.Array, jax.Array], jax.Array]


def _check_batch(values: jax.Array, targets: jax.Array, *, event_axes: int, what: str) -> None:
  """Trace-time check that ``targets`` fit the copies' outputs ``(N, *batch, K)``."""
  batch = values.shape[1:-1]
  want = values.shape[1 : values.ndim - 1 + event_axes]
  if np.shape(targets) != want:
    hint = ""
    if event_axes == 0 and np.shape(targets) == (*batch, values.shape[-1]):
      hint = " They look one-hot: pass integer class indices, e.g. y.argmax(-1)."
    elif event_axes == 0 and np.shape(targets) == (*batch, 1):
      hint = " Drop the last axis, e.g. y[..., 0]."
    elif event_axes == 1 and np.shape(targets) == batch:
      hint = f" Add the output axis, e.g. y[..., None] (the head has {values.shape[-1]} output)."
    raise ValueError(
      f"{what} have shape {np.shape(targets)}, but the head's outputs {values.shape[1:]} "
      f"(batch {batch}) need {what} of shape {want}.{hint}"
    )


def categorical_log_likelihood(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-copy, per-example ``log softmax(logits)[label]``.

  Shapes and dtypes are checked when traced (a `ValueError` or `TypeError`); label values
  cannot be checked inside ``jit``, so a label outside ``[0, K)`` gives NaN (as optax's
  cross-entropies do), never a silent 0.

  Args:
    logits: ``(N, *batch, K)`` with ``K >= 2``.
    labels: integer labels ``(*batch,)`` in ``[0, K)``.

  Returns:
    Shape ``(N, *batch)``.

  Example:
    >>> import jax.numpy as jnp, alrao_jax
    >>> ll = alrao_jax.categorical_log_likelihood(jnp.zeros((3, 2, 4)), jnp.array([0, 1]))
    >>> ll.shape, round(float(ll[0, 0]), 4)
    ((3, 2), -1.3863)
  """
  _check_categorical(logits, labels)
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  ll = jnp.sum(jax.nn.log_softmax(logits) * one_hot, axis=-1)
  in_range = (labels >= 0) & (labels < logits.shape[-1])
  return jnp.where(in_range, ll, jnp.nan)


def smoothed_categorical_log_likelihood(*, label_smoothing: float) -> Likelihood:
  """The categorical likelihood with label smoothing, as a score to train on.

  ``(1 - a) log p(label) + a mean_k log p(k)``: minus optax's
  ``softmax_cross_entropy(logits, optax.smooth_labels(one_hot, a))``. Each copy trains on
  it and the switch weighs the copies by it; the reported losses
  (:func:`alrao_jax.evaluation_metrics`, ``fit``'s validation and test) and the predictions
  stay those of the plain categorical likelihood, so that runs with and without smoothing
  compare.

  Args:
    label_smoothing: ``a`` in ``[0, 1)``; 0 is :func:`categorical_log_likelihood` itself.

  Returns:
    A likelihood ``(logits (N, *batch, K), labels (*batch,)) -> (N, *batch)``.

  Example:
    >>> import jax.numpy as jnp, alrao_jax
    >>> smoothed = alrao_jax.smoothed_categorical_log_likelihood(label_smoothing=0.1)
    >>> round(float(smoothed(jnp.array([[[2.0, 0.0]]]), jnp.array([0]))[0, 0]), 4)
    -0.2269
  """
  if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
    raise TypeError(f"label_smoothing must be a float in [0, 1), got {label_smoothing!r}.")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}; e.g. 0.1.")
  if label_smoothing == 0:
    return categorical_log_likelihood
  smoothing = float(label_smoothing)

  def smoothed(logits: jax.Array, labels: jax.Array) -> jax.Array:
    plain = categorical_log_likelihood(logits, labels)
    uniform = jnp.mean(jax.nn.log_softmax(logits), axis=-1)
    return (1.0 - smoothing) * plain + smoothing * uniform

  smoothed.categorical = True
  return smoothed


categorical_log_likelihood.categorical = True  # what a prediction helper reads (head.py)


def is_categorical(likelihood: Likelihood) -> bool:
  """Whether ``likelihood`` scores class labels (plain or smoothed): its predictions are
  class probabilities, its metrics include accuracy, and its reported loss is the plain NLL."""
  return getattr(likelihood, "categorical", False)


def _check_categorical(logits: Any, labels: jax.Array) -> None:
  num_classes = logits.shape[-1]
  if num_classes < 2:
    raise ValueError(
      f"a categorical head needs K >= 2 classes, got K = {num_classes}; for one output use "
      "alrao_jax.gaussian_log_likelihood(), or two classes."
    )
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise TypeError(
      f"labels must be integer class indices, got dtype {jnp.result_type(labels)}; cast them "
      "(y.astype(int)) or, for regression targets, use alrao_jax.gaussian_log_likelihood()."
    )
  _check_batch(logits, labels, event_axes=0, what="labels")


LEARNED = "learned"
MIN_SIGMA = 1e-3  # a learned sigma's floor: softplus(raw) + MIN_SIGMA


def _learned_sigma_log_likelihood(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """``log N(y; mu, diag(sigma^2))`` with ``[mu, raw]`` on the last axis and
  ``sigma = softplus(raw) + MIN_SIGMA`` (no ``exp`` to overflow)."""
  dim = outputs.shape[-1] // 2
  if outputs.shape[-1] % 2 or (*outputs.shape[1:-1], dim) != np.shape(targets):
    raise ValueError(
      f"with a learned sigma the head outputs [means, scales] (2 D values), but its outputs "
      f"{outputs.shape[1:]} do not pair with targets of shape {np.shape(targets)}; give the "
      "head twice the targets' last axis, e.g. AlraoHead(2 * D)."
    )
  means, raw = outputs[..., :dim], outputs[..., dim:]
  sigma = jax.nn.softplus(raw) + MIN_SIGMA
  z = (targets - means) / sigma
  return jnp.sum(-0.5 * z**2 - jnp.log(sigma) - 0.5 * math.log(2 * math.pi), axis=-1)


def means_of(outputs: jax.Array, likelihood: Likelihood | None) -> jax.Array:
  """The means a Gaussian head predicts: the first half of the last axis with a learned
  sigma (:func:`gaussian_log_likelihood` ``(sigma="learned")``), else the outputs."""
  if getattr(likelihood, "learned_sigma", False):
    return outputs[..., : outputs.shape[-1] // 2]
  return outputs


def gaussian_log_likelihood(*, sigma: float | str = 1.0) -> Likelihood:
  """Per-copy, per-example ``log N(y; mu_j, sigma^2 I)``, with the full D-dim constant.

  With ``sigma="learned"`` the head predicts its own noise: it outputs ``2 D`` values per
  example, ``[mu, raw]``, and ``sigma = softplus(raw) + 1e-3`` per output (heteroscedastic
  regression, a VAE's Gaussian decoder); the floor and the softplus keep a fast unit from
  overflowing where ``exp(log_sigma)`` would. :func:`alrao_jax.mixture_mean`,
  :func:`alrao_jax.predict` and :func:`alrao_jax.evaluation_metrics` given this likelihood
  read the means from the first half.

  Args:
    sigma: the fixed standard deviation, > 0, or ``"learned"``.

  Returns:
    A function ``(means (N, *batch, D), targets (*batch, D)) -> (N, *batch)`` (outputs
    ``(N, *batch, 2 D)`` for a learned sigma); it raises a `ValueError` when traced with
    targets of another shape (e.g. ``(B,)`` for ``D = 1``).

  Example:
    >>> import jax.numpy as jnp, alrao_jax
    >>> ll = alrao_jax.gaussian_log_likelihood(sigma=1.0)(jnp.zeros((1, 1, 2)), jnp.zeros((1, 2)))
    >>> round(float(ll[0, 0]), 4)  # -log(2 pi)
    -1.8379
  """
  if isinstance(sigma, str):
    if sigma != LEARNED:
      raise ValueError(f"sigma must be a float > 0 or {LEARNED!r}, got {sigma!r}.")

    def learned(outputs: jax.Array, targets: jax.Array) -> jax.Array:
      return _learned_sigma_log_likelihood(outputs, targets)

    learned.learned_sigma = True
    return learned
  if isinstance(sigma, jax.Array | np.ndarray) and np.ndim(sigma) == 0:
    sigma = float(sigma)  # a NumPy or JAX scalar, e.g. jnp.float32(0.5)
  if (
    isinstance(sigma, bool)
    or not isinstance(sigma, numbers.Real)
    or not (math.isfinite(sigma) and sigma > 0)
  ):
    raise ValueError(f"sigma must be a finite float > 0, got {sigma!r}.")

  def log_likelihood(means: jax.Array, targets: jax.Array) -> jax.Array:
    _check_batch(means, targets, event_axes=1, what="targets")
    dim = means.shape[-1]
    sq = jnp.sum(jnp.square(means - targets), axis=-1)
    return -0.5 * sq / sigma**2 - dim * math.log(sigma) - 0.5 * dim * math.log(2 * math.pi)

  return log_likelihood


def bernoulli_log_likelihood(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-copy, per-example log-likelihood of independent Bernoulli outputs given as logits.

  ``sum_d y_d log sigmoid(l_d) + (1 - y_d) log sigmoid(-l_d)``: binary targets (a VAE's
  binarised pixels, multi-label classification), or probabilities in ``[0, 1]`` as soft
  targets (the cross-entropy optax's ``sigmoid_binary_cross_entropy`` computes, summed over
  the outputs). Predictions with this likelihood are probabilities:
  ``predict(..., likelihood=alrao_jax.bernoulli_log_likelihood)`` mixes the copies'
  ``sigmoid(logits)``; :func:`alrao_jax.mixture_mean` refuses it.

  Args:
    logits: ``(N, *batch, D)``.
    targets: ``(*batch, D)``, in ``[0, 1]`` (values cannot be checked inside ``jit``).

  Returns:
    Shape ``(N, *batch)``.

  Example:
    >>> import jax.numpy as jnp, alrao_jax
    >>> ll = alrao_jax.bernoulli_log_likelihood(jnp.zeros((2, 1, 3)), jnp.array([[1., 0., 1.]]))
    >>> ll.shape, round(float(ll[0, 0]), 4)  # 3 log(1/2)
    ((2, 1), -2.0794)
  """
  _check_batch(logits, targets, event_axes=1, what="targets")
  dtype = jnp.result_type(targets)
  if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
          or dtype == jnp.bool_):
    raise TypeError(f"targets must be real numbers in [0, 1], got dtype {dtype}.")
  y = jnp.asarray(targets).astype(jnp.promote_types(logits.dtype, jnp.float32))
  logits = logits.astype(y.dtype)
  terms = y * jax.nn.log_sigmoid(logits) + (1.0 - y) * jax.nn.log_sigmoid(-logits)
  return jnp.sum(terms, axis=-1)


@jax.custom_vjp
def _merge_routes(shared: jax.Array, own: jax.Array, responsibilities: jax.Array) -> jax.Array:
  """Returns ``own``; its cotangent c goes to ``own`` and ``responsibilities * c`` to
  ``shared``: the mixture's gradient for the pre-classifier, each copy's own for itself."""
  del shared, responsibilities
  return own


def _merge_routes_fwd(shared, own, responsibilities):
  del shared
  return own, responsibilities


def _merge_routes_bwd(responsibilities, cotangent):
  shared = responsibilities[..., None] * cotangent
  return shared, cotangent, jnp.zeros_like(responsibilities)


_merge_routes.defvjp(_merge_routes_fwd, _merge_routes_bwd)


def _check_nonempty(shape: tuple[int, ...]) -> None:
  """Trace-time check that the copies' outputs ``(N, *batch, K)`` hold >= 1 example."""
  if math.prod(shape[1:-1]) == 0:
    raise ValueError(f"the batch is empty (outputs of shape {shape}); pass >= 1 example.")


def masked_log_likelihoods(
  values: jax.Array,
  targets: jax.Array,
  likelihood: Likelihood,
  *,
  shares: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-copy log-likelihoods with diverged copies left out.

  Args:
    values: copy outputs ``(N, *batch, K)``.
    targets: labels or regression targets.
    likelihood: per-copy, per-example log-likelihood.
    shares: the examples' shares of the mean (see
      :func:`alrao_jax.example_weights.example_shares`); an example of share 0 (a pad) scores
      0 for every copy, whatever its target, and is no evidence of a copy's divergence.

  Returns:
    ``(masked values, log-likelihoods (N, examples), usable (N,))``: a copy whose outputs
    are not all finite has its outputs replaced by 0 (masking the input, not only the
    output, so that no NaN reaches a gradient); a copy is usable when its outputs are
    finite and no log-likelihood is ``-inf``. A NaN log-likelihood comes from the targets
    (a label out of range), not from a copy: it is kept, and makes the loss NaN.
  """
  _check_nonempty(values.shape)
  masked, finite = mask_diverged(values)
  ll = keep_weighted(likelihood(masked, targets).reshape(values.shape[0], -1), shares)
  return masked, ll, finite & ~(ll == -jnp.inf).any(axis=1)


def mixture_log_likelihood(
  log_likelihoods: jax.Array, usable: jax.Array, posterior: Posterior
) -> tuple[jax.Array, jax.Array]:
  """The mixture's per-example log-likelihood over the usable copies.

  Args:
    log_likelihoods: ``(N, examples)``.
    usable: ``(N,)``; the others are left out and the weights renormalised.
    posterior: averaging weights ``(N,)`` or the averaging state.

  Returns:
    ``(joint (N, examples), mixture (examples,))`` with
    ``joint = log a_j + log p_j`` and ``mixture = logsumexp_j joint``.
  """
  log_w = mixture_log_weights(log_posterior_of(posterior), usable)
  joint = log_w[:, None] + jnp.where(usable[:, None], log_likelihoods, 0.0)
  return joint, jax.nn.logsumexp(joint, axis=0)


def has_usable_copy(usable: jax.Array, posterior: Posterior) -> jax.Array:
  """Whether any copy is usable and has weight: else the mixture is undefined (its loss inf).

  Args:
    usable: boolean ``(N,)`` from :func:`masked_log_likelihoods`.
    posterior: averaging weights ``(N,)`` or the averaging state.

  Returns:
    A boolean scalar.
  """
  return (usable & (log_posterior_of(posterior) > -jnp.inf)).any()


def _check_posterior(posterior: Posterior, num_copies: int) -> None:
  if jnp.shape(log_posterior_of(posterior)) != (num_copies,):
    raise ValueError(
      f"the posterior has shape {jnp.shape(log_posterior_of(posterior))}, but the head has "
      f"{num_copies} copies; start the averaging state from averaging.init({num_copies})."
    )


def _deferred_loss(
  outputs: DeferredCopyOutputs,
  targets: jax.Array,
  posterior: Posterior,
  likelihood: Likelihood,
  weights: jax.Array | None,
) -> tuple[jax.Array, AlraoLossAux]:
  """:func:`alrao_loss` of a large head's copies, a few at a time (categorical only)."""
  if outputs.kernel.ndim != 3:
    raise ValueError(
      f"the large head's kernels have shape {outputs.kernel.shape}, not (N, d, K): a scan "
      "(nn.RNN, nn.scan, jax.lax.scan) stacked them, once per step. Apply a head with "
      "copies_at_once after the scan, on the stacked features (see the guide 'Sequence "
      "models')."
    )
  if likelihood is not categorical_log_likelihood:
    # Another likelihood sees the copies' outputs in full, as CopyOutputs would give them.
    return alrao_loss(
      outputs.outputs(), targets, posterior, likelihood=likelihood, weights=weights
    )
  _check_posterior(posterior, outputs.shape[0])
  _check_categorical(jax.ShapeDtypeStruct(outputs.shape, outputs.dtype), targets)
  _check_nonempty(outputs.shape)
  fused = fused_alrao_loss(outputs, targets, log_posterior_of(posterior), weights=weights)
  aux = AlraoLossAux(fused.mixture_nll, fused.copy_nll, fused.log_likelihoods)
  return fused.loss, aux


class AlraoLossAux(NamedTuple):
  """What :func:`alrao_loss` reports besides the loss to differentiate."""

  mixture_nll: jax.Array  # shape=(): mean NLL of the mixture (inf if every copy diverged)
  copy_nll: jax.Array  # shape=(N,): each copy's mean NLL (inf for a diverged copy)
  log_likelihoods: jax.Array  # shape=(examples, N): per-example, for the model averaging


def alrao_loss(
  outputs: CopyOutputs,
  targets: jax.Array,
  posterior: Posterior,
  *,
  likelihood: Likelihood = categorical_log_likelihood,
  weights: jax.Array | None = None,
) -> tuple[jax.Array, AlraoLossAux]:
  """The loss whose single gradient is the Alrao gradient.

  Its value is ``-mean log sum_j a_j p_j(y|x)  +  sum_j -mean log p_j(y|x)``; its gradient
  gives the pre-classifier (through ``outputs.shared``) the gradient of the mixture loss, and
  copy j (through ``outputs.own``) the gradient of its own loss with the pre-classifier
  output held constant. The likelihood is evaluated once: the mixture's gradient with
  respect to copy j's outputs is its own gradient times its posterior responsibility for
  each example. A copy whose outputs or likelihood are non-finite is left out of both terms
  and scores ``-inf`` for the model averaging.

  Args:
    outputs: :class:`CopyOutputs` of an :class:`alrao_jax.AlraoHead`.
    targets: labels ``(*batch,)`` or regression targets ``(*batch, D)``.
    posterior: averaging weights ``(N,)`` or the averaging state, whose log posterior is
      used without underflow (a constant for the gradient).
    likelihood: per-copy, per-example log-likelihood, e.g. :func:`categorical_log_likelihood`
      or ``gaussian_log_likelihood(sigma=...)``.
    weights: per-example (per-token) weights ``(*batch,)`` or a boolean mask, e.g.
      ``targets != pad_id``: every mean becomes ``sum_i w_i l_i / sum_i w_i``, and an
      example of weight 0 (a pad) is left out of the loss, of the gradient and of the
      divergence check, whatever its target. None: the plain mean.

  Returns:
    ``(loss, aux)`` for ``jax.value_and_grad(..., has_aux=True)``; with ``weights``,
    ``aux.log_likelihoods`` is 0 at the examples of weight 0 (pass the same weights to the
    averaging's update, as :func:`alrao_jax.make_train_step`'s step does).

  Example:
    >>> import jax, jax.numpy as jnp, alrao_jax
    >>> z = jnp.ones((2, 3))
    >>> loss = lambda kernel, bias: alrao_jax.alrao_loss(
    ...     alrao_jax.copy_outputs(z, kernel, bias), jnp.array([0, 1]), jnp.array([0.5, 0.5]))[0]
    >>> grads = jax.grad(loss)(jnp.ones((2, 3, 4)), jnp.zeros((2, 4)))
    >>> grads.shape
    (2, 3, 4)

  References:
    Blier, Wolinski & Ollivier, `Learning with Random Learning Rates
    <https://arxiv.org/abs/1810.01322>`_, 2018 (eq. 4 and 5).
  """
  outputs = canonical(outputs)
  if isinstance(outputs, DeferredCopyOutputs):
    return _deferred_loss(outputs, targets, posterior, likelihood, weights)
  if not isinstance(outputs, CopyOutputs):
    raise TypeError(
      f"outputs must be the CopyOutputs of an Alrao head (AlraoHead, alrao_jax.nnx.AlraoHead), "
      f"got {type(outputs).__name__}{getattr(outputs, 'shape', '')}; a model whose output layer "
      "is a plain Dense trains with an optax loss, not alrao_loss."
    )
  num_copies = outputs.own.shape[0]
  _check_posterior(posterior, num_copies)
  shares = example_shares(weights, outputs.own.shape[1:-1])
  own, fixed_ll, ok = masked_log_likelihoods(outputs.own, targets, likelihood, shares=shares)
  shared = jnp.where(broadcast_copy_axis(ok, outputs.shared.ndim), outputs.shared, 0.0)
  fixed_ll = jax.lax.stop_gradient(fixed_ll)
  batch_shape = outputs.own.shape[1:-1]  # a likelihood reduces the last axis
  joint, mixed = mixture_log_likelihood(fixed_ll, ok, jax.lax.stop_gradient(posterior))
  responsibilities = jnp.exp(joint - mixed).reshape((num_copies, *batch_shape))
  # One likelihood evaluation for both terms: d(mixture NLL)/d(outputs_j) equals
  # r_j * d(NLL_j)/d(outputs_j), with r_j copy j's posterior responsibility per example.
  ll = likelihood(_merge_routes(shared, own, responsibilities), targets).reshape(num_copies, -1)
  copy_nll = -weighted_mean(jnp.where(ok[:, None], ll, 0.0), shares)
  any_usable = has_usable_copy(ok, posterior)
  mixture_nll = jax.lax.stop_gradient(-weighted_mean(mixed, shares))
  loss = mixture_nll + jnp.sum(copy_nll)
  aux = AlraoLossAux(
    mixture_nll=jnp.where(any_usable, mixture_nll, jnp.inf),
    copy_nll=jax.lax.stop_gradient(jnp.where(ok, copy_nll, jnp.inf)),
    log_likelihoods=jnp.where(ok[:, None], fixed_ll, -jnp.inf).T,
  )
  return loss, aux

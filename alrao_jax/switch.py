"""Model-averaging weights for the output copies: the switch and plain Bayes, in log space.

All functions are pure, jittable and safe with ``-inf`` log-likelihoods (a diverged copy).
Non-finite log-likelihoods (NaN, +inf) count as ``-inf``; when every copy scores ``-inf``
the observation is treated as uninformative, so no NaN can appear.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from alrao_jax.checks import check_num_copies

REDUCTIONS = ("mean", "sum", "sequential")


class SwitchState(NamedTuple):
  """State of the switch posterior over the copies."""

  log_weights: jax.Array  # shape=(2, N): row 0 may still switch, row 1 never switches again
  step: jax.Array  # shape=(), int32, starts at 1
  log_theta: jax.Array  # shape=(2,): log(theta), log(1 - theta)
  log_posterior: jax.Array  # shape=(N,): log-probability of each copy for the next prediction


class BayesState(NamedTuple):
  """State of plain Bayesian model averaging over the copies."""

  log_posterior: jax.Array  # shape=(N,)


class ModelAveraging(NamedTuple):
  """A model-averaging method: ``init(num_copies)``, ``update(state, ll)``, ``posterior``.

  ``update`` takes per-example log-likelihoods of shape ``(batch, N)`` and reduces them
  as the method was built to (see :func:`switch_averaging` and :func:`bayes_averaging`);
  the averagings built here also take ``update(state, ll, weights)``, per-example weights
  ``(batch,)`` (a pad's 0: no evidence), which a step passes only when it is given weights.
  """

  init: Callable[[int], Any]
  update: Callable[[Any, jax.Array], Any]
  posterior: Callable[[Any], jax.Array]


def _check_theta(theta: float) -> None:
  if isinstance(theta, bool) or not isinstance(theta, numbers.Real):
    raise TypeError(f"theta must be a float in [0, 1], got {theta!r}.")
  if not 0.0 <= theta <= 1.0:
    raise ValueError(f"theta must be in [0, 1], got {theta}; the authors use 0.9999.")


def _finite(log_likelihoods: jax.Array, dtype: Any) -> jax.Array:
  """Non-finite -> -inf."""
  ll = jnp.asarray(log_likelihoods, dtype)
  return jnp.where(jnp.isfinite(ll), ll, -jnp.inf)


def _relative(log_likelihoods: jax.Array, log_prior: jax.Array) -> jax.Array:
  """Non-finite -> -inf; shifted so that the best copy with prior weight scores 0.

  The shift is taken among the copies whose prior (``log_prior``, broadcast over the
  leading axes) is > 0, so that a copy already at 0 cannot push the others' scores beyond
  float precision; when no such copy scores above ``-inf``, all scores are ``-inf``.
  """
  ll = _finite(log_likelihoods, log_prior.dtype)
  live = (log_prior > -jnp.inf).reshape(-1, ll.shape[-1]).any(axis=0)
  top = jnp.max(jnp.where(live, ll, -jnp.inf))
  return jnp.where(jnp.isfinite(top), ll - top, -jnp.inf)


def _normalised(log_weights: jax.Array) -> jax.Array:
  """``log_weights`` minus their log-sum-exp, taken after a shift by their maximum: weights
  that are all far below 0 (every copy scoring -1e30, say) still sum to 1 in float32."""
  shifted = log_weights - jnp.max(log_weights)
  return shifted - jax.nn.logsumexp(shifted)


def switch_init(num_copies: int, *, theta: float = 0.9999) -> SwitchState:
  """Initial switch state: uniform over copies, mass ``theta`` on "may still switch".

  Args:
    num_copies: number of copies ``N``.
    theta: prior probability that the active copy may switch again after a switch.

  Returns:
    A :class:`SwitchState` with a uniform posterior.

  Example:
    >>> import alrao_jax
    >>> alrao_jax.switch_posterior(alrao_jax.switch_init(4)).tolist()
    [0.25, 0.25, 0.25, 0.25]

  References:
    van Erven, Grunwald & de Rooij, `Catching up faster by switching sooner
    <https://arxiv.org/abs/0807.1005>`_, 2012.
  """
  check_num_copies(num_copies)
  _check_theta(theta)
  log_theta = jnp.log(jnp.asarray([theta, 1.0 - theta], jnp.float32))
  uniform = jnp.zeros((2, num_copies), jnp.float32)  # float32 under jax_enable_x64 too
  log_weights = log_theta[:, None] - math.log(num_copies) + uniform
  return SwitchState(
    log_weights=log_weights,
    step=jnp.ones((), jnp.int32),
    log_theta=log_theta,
    log_posterior=jnp.full((num_copies,), -math.log(num_copies), jnp.float32),
  )


def switch_update(state: SwitchState, log_likelihoods: jax.Array) -> SwitchState:
  """One step of the switch's forward recursion, in log space.

  Args:
    state: the current :class:`SwitchState`.
    log_likelihoods: shape ``(N,)``, each copy's log-likelihood of the observation,
      computed before the copies were updated on it.

  Returns:
    The new state; its posterior is over the copy used for the next prediction.

  Example:
    >>> import jax.numpy as jnp, alrao_jax
    >>> state = alrao_jax.switch_update(alrao_jax.switch_init(3), jnp.array([-2., -1., -3.]))
    >>> [round(p, 6) for p in alrao_jax.switch_posterior(state).tolist()]
    [0.289026, 0.499304, 0.21167]

  References:
    van Erven, de Rooij & Grunwald, `Catching up faster in Bayesian model selection and
    model averaging <https://papers.nips.cc/paper/3216>`_, NeurIPS 2007.
  """
  num_copies = state.log_weights.shape[1]
  # In log space, scores shifted so that the best live copy scores 0: no weight underflows
  # to 0 (theta = 0 included, where the settled row is Bayes' rule), and a copy that trails
  # by any finite amount can still come back.
  logw = state.log_weights + _relative(log_likelihoods, state.log_weights)
  informative = jnp.max(logw) > -jnp.inf  # else every live copy scored -inf: keep the prior
  logw = jnp.where(informative, logw, state.log_weights)
  hazard = 1.0 / (state.step.astype(logw.dtype) + 1.0)  # pi_T(t) = 1 / (t (t + 1))
  log_pool = jax.nn.logsumexp(logw[0]) + jnp.log(hazard) - math.log(num_copies)
  stay = logw[0] + jnp.log1p(-hazard)
  may_switch = jnp.logaddexp(stay, state.log_theta[0] + log_pool)
  settled = jnp.logaddexp(logw[1], state.log_theta[1] + log_pool)
  new = _normalised(jnp.stack([may_switch, settled]))
  return SwitchState(
    log_weights=new,
    step=state.step + 1,
    log_theta=state.log_theta,
    log_posterior=jnp.logaddexp(new[0], new[1]),
  )


def switch_posterior(state: SwitchState | BayesState) -> jax.Array:
  """The averaging weights: probabilities of shape ``(N,)`` that sum to 1.

  Args:
    state: a :class:`SwitchState` or :class:`BayesState`.

  Returns:
    ``exp(state.log_posterior)``.
  """
  return jnp.exp(state.log_posterior)


def bayes_init(num_copies: int) -> BayesState:
  """Initial state of plain Bayesian model averaging: the uniform prior.

  Args:
    num_copies: number of copies ``N``.

  Returns:
    A :class:`BayesState`.

  Example:
    >>> import alrao_jax
    >>> alrao_jax.bayes_posterior(alrao_jax.bayes_init(2)).tolist()
    [0.5, 0.5]
  """
  check_num_copies(num_copies)
  return BayesState(jnp.full((num_copies,), -math.log(num_copies), jnp.float32))


def bayes_update(state: BayesState, log_likelihoods: jax.Array) -> BayesState:
  """Bayes' rule: multiply by each copy's likelihood and renormalise.

  Args:
    state: the current :class:`BayesState`.
    log_likelihoods: shape ``(N,)``.

  Returns:
    The new state. A copy that scores ``-inf`` gets probability exactly 0 from then on;
    an observation that every copy with weight scores ``-inf`` is uninformative (the
    posterior is kept), so the posterior always sums to 1.

  Example:
    >>> import jax.numpy as jnp, alrao_jax
    >>> state = alrao_jax.bayes_update(alrao_jax.bayes_init(2), jnp.array([-1., -2.]))
    >>> [round(p, 4) for p in alrao_jax.bayes_posterior(state).tolist()]
    [0.7311, 0.2689]
  """
  logp = state.log_posterior + _relative(log_likelihoods, state.log_posterior)
  logp = jnp.where(jnp.max(logp) > -jnp.inf, logp, state.log_posterior)
  return BayesState(_normalised(logp))


bayes_posterior = switch_posterior


def _check_reduction(reduction: str) -> None:
  if reduction not in REDUCTIONS:
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")


def update_with_batch(
  update: Callable[[Any, jax.Array], Any],
  state: Any,
  log_likelihoods: jax.Array,
  *,
  reduction: str = "mean",
  weights: jax.Array | None = None,
) -> Any:
  """Feeds a batch of per-example log-likelihoods to a one-observation ``update``.

  Args:
    update: :func:`switch_update` or :func:`bayes_update`.
    state: its state.
    log_likelihoods: shape ``(batch, N)``.
    reduction: ``"mean"`` (one update with the batch mean, as the authors' code),
      ``"sum"`` (one update with the batch sum: the batch as one observation) or
      ``"sequential"`` (one update per example, in order, with ``lax.scan``).
    weights: per-example weights ``(batch,)`` or a mask: the weighted mean or sum; in
      sequence, each example's log-likelihoods times its weight. An example of weight 0 is
      no observation (skipped in sequence, whatever it scored), and a batch whose weights
      are all 0 leaves the state as it was.

  Returns:
    The new state.

  Example:
    >>> import jax.numpy as jnp, alrao_jax
    >>> from alrao_jax.switch import update_with_batch
    >>> ll = jnp.array([[-1., -2.], [-1., -3.]])
    >>> state = update_with_batch(alrao_jax.bayes_update, alrao_jax.bayes_init(2), ll,
    ...                           reduction="sum")
    >>> round(float(alrao_jax.bayes_posterior(state)[0]), 4)
    0.9526
  """
  _check_reduction(reduction)
  ll = jnp.asarray(log_likelihoods)
  if ll.ndim != 2:
    raise ValueError(f"log_likelihoods must have shape (batch, num_copies), got {ll.shape}.")
  if weights is None:
    if reduction == "mean":
      return update(state, jnp.mean(ll, axis=0))
    if reduction == "sum":
      return update(state, jnp.sum(ll, axis=0))
    return jax.lax.scan(lambda s, row: (update(s, row), None), state, ll)[0]
  if jnp.shape(weights) != ll.shape[:1]:
    raise ValueError(
      f"weights must have shape {ll.shape[:1]} (one per example of log_likelihoods), got "
      f"{jnp.shape(weights)}."
    )
  w = jnp.asarray(weights).astype(jnp.promote_types(ll.dtype, jnp.float32))
  scored = jnp.where(w[:, None] > 0, w[:, None] * ll, 0.0)  # a pad's -inf or NaN is no score
  total = jnp.sum(w)

  def keep_if_empty(new: Any, observed: jax.Array) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(observed, a, b), new, state)

  if reduction == "mean":
    mean = jnp.sum(scored, axis=0) / jnp.where(total > 0, total, 1.0)
    return keep_if_empty(update(state, mean), total > 0)
  if reduction == "sum":
    return keep_if_empty(update(state, jnp.sum(scored, axis=0)), total > 0)

  def one(s, row_and_weight):
    row, weight = row_and_weight
    return jax.tree.map(lambda a, b: jnp.where(weight > 0, a, b), update(s, row), s), None

  return jax.lax.scan(one, state, (scored, w))[0]


def switch_averaging(*, theta: float = 0.9999, reduction: str = "mean") -> ModelAveraging:
  """The switch model averaging of the Alrao paper, as a :class:`ModelAveraging`.

  Args:
    theta: see :func:`switch_init`.
    reduction: how a batch is fed; see :func:`update_with_batch`.

  Returns:
    A :class:`ModelAveraging` built on :func:`switch_init` and :func:`switch_update`.

  Example:
    >>> import jax.numpy as jnp, alrao_jax
    >>> avg = alrao_jax.switch_averaging(theta=0.9999)
    >>> state = avg.update(avg.init(3), jnp.array([[-2., -1., -3.]]))
    >>> int(avg.posterior(state).argmax())
    1

  References:
    Blier, Wolinski & Ollivier, `Learning with Random Learning Rates
    <https://arxiv.org/abs/1810.01322>`_, 2018 (Appendix A).
  """
  _check_theta(theta)
  _check_reduction(reduction)
  return ModelAveraging(
    init=lambda num_copies: switch_init(num_copies, theta=theta),
    update=lambda state, ll, weights=None: update_with_batch(
      switch_update, state, ll, reduction=reduction, weights=weights
    ),
    posterior=switch_posterior,
  )


def bayes_averaging(*, reduction: str = "mean") -> ModelAveraging:
  """Plain Bayesian model averaging (no switching), for comparison with :func:`switch_averaging`.

  Args:
    reduction: how a batch is fed; see :func:`update_with_batch`.

  Returns:
    A :class:`ModelAveraging` built on :func:`bayes_init` and :func:`bayes_update`.
  """
  _check_reduction(reduction)
  return ModelAveraging(
    init=bayes_init,
    update=lambda state, ll, weights=None: update_with_batch(
      bayes_update, state, ll, reduction=reduction, weights=weights
    ),
    posterior=bayes_posterior,
  )

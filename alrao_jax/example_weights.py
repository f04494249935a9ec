"""Per-example (per-token) weights: a padding mask, or any non-negative weights, in a mean.

A translation batch pads its sentences; a masked token is not a target. Every loss and
metric that takes ``weights`` forms its mean as ``sum_i w_i l_i / sum_i w_i`` over the
examples whose weight is > 0, as Flax's translation example and a masked optax loss do, and
a masked example is no evidence for the model averaging.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def example_shares(weights: jax.Array | None, batch_shape: tuple[int, ...]) -> jax.Array | None:
  """Each example's share of a weighted mean, flat: ``w / sum(w)`` of shape ``(examples,)``.

  Checked when traced: ``weights`` must have the batch's shape (the outputs' axes between
  the copy axis and the output axis) and a real or boolean dtype. Weights are not checked
  for sign inside ``jit``; a negative weight is the caller's error, as in optax. When every
  weight is 0 the shares are all 0 (a batch of padding: loss 0, no gradient).

  Args:
    weights: ``(*batch,)`` non-negative weights, or a boolean mask, or None.
    batch_shape: the batch's shape.

  Returns:
    ``(examples,)`` shares in the outputs' float dtype (float32 at least), or None for
    ``weights=None`` (the plain mean).

  Example:
    >>> import jax.numpy as jnp
    >>> from alrao_jax.example_weights import example_shares
    >>> example_shares(jnp.array([[1, 1], [1, 0]], bool), (2, 2)).tolist()
    [0.3333333432674408, 0.3333333432674408, 0.3333333432674408, 0.0]
  """
  if weights is None:
    return None
  dtype = jnp.result_type(weights)
  if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
          or dtype == jnp.bool_):
    raise TypeError(f"weights must be a boolean mask or real weights, got dtype {dtype}.")
  if np.shape(weights) != tuple(batch_shape):
    raise ValueError(
      f"weights have shape {np.shape(weights)}, but the batch has shape {tuple(batch_shape)}: "
      "one weight per example (per token for a sequence), e.g. (targets != pad_id)."
    )
  flat = jnp.asarray(weights).reshape(-1).astype(jnp.promote_types(dtype, jnp.float32))
  total = jnp.sum(flat)
  return jnp.where(total > 0, flat / jnp.where(total > 0, total, 1.0), 0.0)


def weighted_mean(values: jax.Array, shares: jax.Array | None, axis: int = -1) -> jax.Array:
  """The mean of ``values`` over their examples' ``axis``, weighted by ``shares``.

  A value at an example of share 0 is left out, NaN included (a pad's out-of-range label).

  Args:
    values: per-example values, examples on ``axis``.
    shares: from :func:`example_shares`, or None for the plain mean.
    axis: the examples' axis.

  Returns:
    ``values`` reduced over ``axis``.
  """
  if shares is None:
    return jnp.mean(values, axis=axis)
  shape = [1] * values.ndim
  shape[axis] = -1
  shares = shares.reshape(shape)
  return jnp.sum(jnp.where(shares > 0, values, 0) * shares, axis=axis)


def keep_weighted(values: jax.Array, shares: jax.Array | None, fill: float = 0.0) -> jax.Array:
  """``values`` (examples on the last axis) with the examples of share 0 set to ``fill``."""
  if shares is None:
    return values
  return jnp.where(shares > 0, values, fill)

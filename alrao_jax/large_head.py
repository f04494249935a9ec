"""Large heads: the Alrao loss of N copies applied a few at a time, gradients formed inside.

A word-level language model's output layer (d x 10,000) is most of its compute; its N copies
are N times that, and their logits ``N x batch x K`` most of the memory of a step. Here the
loss applies ``copies_at_once`` copies at a time (``lax.map``), and forms each copy's
gradients while its logits are at hand: the step then does the copies' FLOPs exactly once
each (forward, kernel gradient, pre-classifier gradient, as three plain heads would) and
holds one group's logits at a time instead of all of them. A copy with more examples than
inputs takes its examples a chunk at a time, so that it holds no more logits than its kernel
has weights.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alrao_jax.example_weights import example_shares
from alrao_jax.head import DeferredCopyOutputs, Posterior, log_posterior_of, mixture_log_weights


class _PerCopy(NamedTuple):
  log_likelihoods: jax.Array  # (E,): log softmax(logits)[label]
  finite: jax.Array  # (): every logit finite
  dkernel: jax.Array  # (d, K): gradient of the copy's mean NLL
  dbias: jax.Array  # (K,)
  dz: jax.Array  # (E, d): d log p(label) / d z, per example


def _compute_dtype(deferred: DeferredCopyOutputs) -> jnp.dtype:
  # The softmax in float32 at least, whatever the copies' dtype (bfloat16 copies included).
  return jnp.promote_types(deferred.dtype, jnp.float32)


def _logits(z, kernel, bias, dtype):
  return (z @ kernel + bias).astype(dtype)


def _example_chunks(num_examples: int, width: int) -> tuple[int, int]:
  """``(chunks, rows)``: a copy's examples taken ``rows`` at a time, so that one chunk's logits
  (``rows x K``) are no larger than the copy's kernel (``width x K``); ``chunks * rows`` covers
  every example (the last chunk padded with examples of share 0)."""
  chunks = max(1, -(-num_examples // max(width, 1)))
  return chunks, -(-num_examples // chunks)


def _chunk_work(z, labels, shares, kernel, bias, dtype, with_grads):
  """One copy on one chunk of examples: ``(ll, finite)``, and with ``with_grads`` the chunk's
  shares of the kernel's and the bias's gradients (in ``dtype``) and ``dz``."""
  logits = _logits(z, kernel, bias, dtype)
  log_norm = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  ll = jnp.where(shares > 0, picked - log_norm, 0.0)  # a pad scores 0, whatever its label
  # 0 * a logit is NaN exactly when the logit is not finite, and a sum keeps a NaN: no
  # (examples x K) mask of the logits is held
  finite = jnp.isfinite(jnp.sum(logits * 0))
  if not with_grads:
    return ll, finite
  # d ll / d logits = onehot - softmax, the one-hot added in place (a label out of range,
  # negative included, adds nothing, as in jax.nn.one_hot). The copy's mean NLL has
  # cotangent -share per example; the shares weight z rather than the logits' gradient. So a
  # chunk holds two (examples x K) arrays: its logits and their gradient.
  num_outputs = logits.shape[-1]
  columns = jnp.where((labels < 0) | (labels >= num_outputs), num_outputs, labels)
  dlogits = -jnp.exp(logits - log_norm[:, None])
  dlogits = dlogits.at[jnp.arange(len(labels)), columns].add(1.0, mode="drop")
  weighted_z = z.astype(dtype) * shares[:, None].astype(dtype)
  dkernel = -(weighted_z.T @ dlogits)
  dbias = -(shares.astype(dtype) @ dlogits)
  dz = dlogits.astype(kernel.dtype) @ kernel.T
  return ll, finite, dkernel, dbias, dz.astype(dtype)


def _one_copy(z, labels, shares, dtype, with_grads):
  """The per-copy work, for ``lax.map`` over ``(kernel, bias)``; ``shares`` (E,) are the
  examples' shares of the mean (``1/E`` each without weights). A copy's examples are taken a
  chunk at a time (``_example_chunks``) when there are more of them than its input width: the
  gradients are sums over the chunks."""
  num_examples, width = z.shape
  chunks, rows = _example_chunks(num_examples, width)
  pad = chunks * rows - num_examples

  # Example i goes to chunk i mod chunks: an example axis split over devices (in blocks)
  # stays split the same way within every chunk.
  def in_chunks(x):
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return jnp.moveaxis(x.reshape(rows, chunks, *x.shape[1:]), 1, 0)

  def joined(x):
    return jnp.moveaxis(x, 0, 1).reshape(rows * chunks, *x.shape[2:])[:num_examples]

  split = (in_chunks(z), in_chunks(labels), in_chunks(shares))

  def in_turn(kernel, bias):
    def step(carry, chunk):
      found = _chunk_work(*chunk, kernel, bias, dtype, with_grads)
      if not with_grads:
        return carry & found[1], found[0]
      ll, finite, dkernel, dbias, dz = found
      all_finite, kernel_sum, bias_sum = carry
      return (all_finite & finite, kernel_sum + dkernel, bias_sum + dbias), (ll, dz)

    if not with_grads:
      finite, ll = jax.lax.scan(step, jnp.bool_(True), split)
      return joined(ll), finite
    start = (jnp.bool_(True), jnp.zeros(kernel.shape, dtype), jnp.zeros(bias.shape, dtype))
    (finite, dkernel, dbias), (ll, dz) = jax.lax.scan(step, start, split)
    return joined(ll), finite, dkernel, dbias, joined(dz)

  def apply(pair):
    kernel, bias = pair
    if chunks == 1:
      found = _chunk_work(z, labels, shares, kernel, bias, dtype, with_grads)
    else:
      found = in_turn(kernel, bias)
    if not with_grads:
      return found
    ll, finite, dkernel, dbias, dz = found
    return _PerCopy(ll, finite, dkernel.astype(kernel.dtype), dbias.astype(bias.dtype), dz)

  return apply


def _scan_in_groups(step, carry, pairs, copies_at_once: int):
  """``step(carry, group) -> (carry, per-copy outputs)`` folded over the copies,
  ``copies_at_once`` of them at a time; the per-copy outputs come back in copy order.

  The copies ``j, N/c + j, 2N/c + j, ...`` form group ``j`` (a leading axis of ``c``), taken
  from ``(c, N/c, ...)`` in place: a copy axis sharded over devices stays the leading, sharded
  axis, so that each device applies its own copies (scanning the groups as ``xs`` would
  transpose a copy). When ``c`` does not divide ``N``, the last ``N mod c`` copies form one
  more group after the others.
  """
  num_copies = len(jax.tree.leaves(pairs)[0])
  at_once = min(copies_at_once, num_copies)
  grouped = num_copies - num_copies % at_once
  steps = grouped // at_once
  groups = jax.tree.map(lambda x: x[:grouped].reshape(at_once, steps, *x.shape[1:]), pairs)

  def body(carry, j):
    group = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, j, 1, False), groups)
    return step(carry, group)

  carry, found = jax.lax.scan(body, carry, jnp.arange(steps))  # (N/c, c, ...)
  found = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(grouped, *x.shape[2:]), found)
  if grouped == num_copies:
    return carry, found
  carry, rest = step(carry, jax.tree.map(lambda x: x[grouped:], pairs))
  return carry, jax.tree.map(lambda a, b: jnp.concatenate([a, b]), found, rest)


def _in_groups(apply, pairs, copies_at_once: int):
  """``apply`` mapped over the copies, ``copies_at_once`` of them at a time (see
  :func:`_scan_in_groups`)."""

  def step(carry, group):
    return carry, jax.vmap(apply)(group)

  return _scan_in_groups(step, (), pairs, copies_at_once)[1]


def _per_copy(deferred: DeferredCopyOutputs, labels, shares, *, with_grads: bool):
  z = deferred.z.reshape(-1, deferred.z.shape[-1])
  apply = _one_copy(z, labels.reshape(-1), shares, _compute_dtype(deferred), with_grads)
  kernel, dtype = deferred.kernel, deferred.kernel.dtype
  if dtype.itemsize != 2 or jax.default_backend() != "cpu":
    return _in_groups(apply, (kernel, deferred.bias), deferred.copies_at_once)
  # XLA:CPU computes every 16-bit float op in float32, the slice that takes a copy out of the
  # stack included: it would convert the whole (N, d, K) stack to float32 before the loop
  # (twice the stack's bytes, held through the step). Sliced as 16-bit integers, each copy is
  # converted inside the loop instead, where its own kernel is all that is held.
  bits = jax.lax.bitcast_convert_type(kernel, jnp.uint16)

  def from_bits(pair):
    return apply((jax.lax.bitcast_convert_type(pair[0], dtype), pair[1]))

  return _in_groups(from_bits, (bits, deferred.bias), deferred.copies_at_once)


def _mixture(ll, finite, log_posterior):
  usable = finite & ~(ll == -jnp.inf).any(axis=1)
  log_w = mixture_log_weights(log_posterior, usable)
  joint = log_w[:, None] + jnp.where(usable[:, None], ll, 0.0)
  mixed = jax.nn.logsumexp(joint, axis=0)
  return usable, joint, mixed


class FusedLoss(NamedTuple):
  """What :func:`fused_alrao_loss` returns besides its gradients."""

  loss: jax.Array  # shape=(): the value alrao_loss returns
  mixture_nll: jax.Array  # shape=(): inf when no copy is usable
  copy_nll: jax.Array  # shape=(N,): inf for a copy left out
  log_likelihoods: jax.Array  # shape=(examples, N): -inf for a copy left out


def _outcome(ll, usable, mixed, log_posterior, shares) -> FusedLoss:
  copy_nll = -jnp.sum(jnp.where(usable[:, None], ll, 0.0) * shares, axis=1)
  mixture_nll = -jnp.sum(mixed * shares)
  any_usable = (usable & (log_posterior > -jnp.inf)).any()
  return FusedLoss(
    loss=mixture_nll + jnp.sum(copy_nll),
    mixture_nll=jnp.where(any_usable, mixture_nll, jnp.inf),
    copy_nll=jnp.where(usable, copy_nll, jnp.inf),
    log_likelihoods=jnp.where(usable[:, None], ll, -jnp.inf).T,
  )


def _fused_value(z, kernel, bias, labels, shares, log_posterior, copies_at_once):
  deferred = DeferredCopyOutputs(z, kernel, bias, copies_at_once)
  ll, finite = _per_copy(deferred, labels, shares, with_grads=False)
  usable, _, mixed = _mixture(ll, finite, log_posterior)
  return _outcome(ll, usable, mixed, log_posterior, shares)


def _fused_fwd(z, kernel, bias, labels, shares, log_posterior, copies_at_once):
  deferred = DeferredCopyOutputs(z, kernel, bias, copies_at_once)
  per = _per_copy(deferred, labels, shares, with_grads=True)
  usable, joint, mixed = _mixture(per.log_likelihoods, per.finite, log_posterior)
  # The pre-classifier gets the mixture's gradient: copy j's share of each example is its
  # posterior responsibility r_j times its own gradient (a copy left out has r_j = 0, and
  # its gradients, possibly NaN, are dropped before they are summed).
  responsibilities = jnp.exp(joint - mixed)
  keep = usable[:, None, None]
  dz = -jnp.einsum("ne,ned->ed", responsibilities, jnp.where(keep, per.dz, 0.0))
  dz = (dz * shares[:, None].astype(dz.dtype)).reshape(z.shape).astype(z.dtype)
  dkernel = jnp.where(keep, per.dkernel, 0.0).astype(kernel.dtype)
  dbias = jnp.where(usable[:, None], per.dbias, 0.0).astype(bias.dtype)
  outcome = _outcome(per.log_likelihoods, usable, mixed, log_posterior, shares)
  return outcome, (dz, dkernel, dbias)


def _fused_bwd(copies_at_once, grads, cotangents):
  del copies_at_once
  scale = cotangents.loss  # the other outputs are reports: no gradient flows from them
  dz, dkernel, dbias = grads
  return (
    (scale * dz).astype(dz.dtype),
    (scale * dkernel).astype(dkernel.dtype),
    (scale * dbias).astype(dbias.dtype),
    None,
    None,
    None,
  )


_fused = jax.custom_vjp(_fused_value, nondiff_argnums=(6,))
_fused.defvjp(_fused_fwd, _fused_bwd)


def _shares(outputs: DeferredCopyOutputs, weights: jax.Array | None) -> jax.Array:
  """The examples' shares of the mean, ``(examples,)``: uniform without weights."""
  batch = outputs.z.shape[:-1]
  shares = example_shares(weights, batch)
  if shares is None:
    num_examples = max(1, int(np.prod(batch)))
    return jnp.full((num_examples,), 1.0 / num_examples, _compute_dtype(outputs))
  return shares


def fused_alrao_loss(
  outputs: DeferredCopyOutputs,
  labels: jax.Array,
  log_posterior: jax.Array,
  *,
  weights: jax.Array | None = None,
) -> FusedLoss:
  """The categorical Alrao loss of a large head, its copies applied a few at a time.

  Equal in value and gradients to :func:`alrao_jax.alrao_loss` on the same copies'
  outputs (each copy trained on its own loss, the pre-classifier on the mixture's), but
  the logits of only ``outputs.copies_at_once`` copies exist at a time, and each copy's
  gradients are formed while its logits are at hand (no second pass over the copies).

  Args:
    outputs: :class:`alrao_jax.head.DeferredCopyOutputs`, from
      ``AlraoHead(copies_at_once=c)``.
    labels: integer labels ``(*batch,)`` (shapes checked by :func:`alrao_jax.alrao_loss`).
    log_posterior: the averaging's log weights ``(N,)`` (a constant for the gradient).
    weights: per-example weights ``(*batch,)`` or a mask (see :func:`alrao_jax.alrao_loss`).

  Returns:
    :class:`FusedLoss`; only its ``loss`` carries a gradient.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from alrao_jax.head import DeferredCopyOutputs
    >>> from alrao_jax.large_head import fused_alrao_loss
    >>> loss = lambda kernel: fused_alrao_loss(DeferredCopyOutputs(
    ...     jnp.ones((2, 3)), kernel, jnp.zeros((4, 5)), 2), jnp.array([0, 1]),
    ...     jnp.log(jnp.full(4, 0.25))).loss
    >>> jax.grad(loss)(jnp.zeros((4, 3, 5))).shape
    (4, 3, 5)

  References:
    Blier, Wolinski & Ollivier, `Learning with Random Learning Rates
    <https://arxiv.org/abs/1810.01322>`_, 2018 (eq. 4 and 5).
  """
  return _fused(
    outputs.z,
    outputs.kernel,
    outputs.bias,
    labels,
    _shares(outputs, weights),
    jax.lax.stop_gradient(log_posterior),
    outputs.copies_at_once,
  )


def _evaluate_copy(z, labels, shares, dtype):
  """Per copy, for :func:`fused_evaluation_metrics`: ``(ll, finite, hits, log_probs,
  finite_rows)``."""

  def apply(pair):
    kernel, bias = pair
    logits = _logits(z, kernel, bias, dtype)
    log_probs = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    ll = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    ll = jnp.where(shares > 0, ll, 0.0)
    finite_rows = jnp.isfinite(logits).all(axis=-1)
    hits = jnp.argmax(logits, axis=-1) == labels
    return ll, finite_rows.all(), hits, log_probs, finite_rows

  return apply


def _mix_probabilities(apply):
  """A scan step that adds a group of copies' weighted probabilities to the running mixture.

  The carry is ``(sum_j w_j softmax_j / exp(m), m)`` per example, ``m`` the largest log
  weight added so far: a copy whose logits for an example are not finite is left out of that
  example (as :func:`alrao_jax.mixture_log_probs` does), and no weight underflows.
  """

  def step(carry, group):
    total, top = carry
    pairs, log_w = group
    ll, finite, hits, log_probs, finite_rows = jax.vmap(apply)(pairs)
    joins = finite_rows & (log_w[:, None] > -jnp.inf)  # (g, E)
    new_top = jnp.maximum(top, jnp.where(joins, log_w[:, None], -jnp.inf).max(axis=0))
    scale = jnp.where(top > -jnp.inf, jnp.exp(top - new_top), 0.0)
    weights = jnp.where(joins, jnp.exp(log_w[:, None] - new_top), 0.0)
    added = jnp.where(joins[..., None], weights[..., None] * jnp.exp(log_probs), 0.0).sum(0)
    return (total * scale[:, None] + added, new_top), (ll, finite, hits)

  return step


def fused_evaluation_metrics(
  outputs: DeferredCopyOutputs,
  labels: jax.Array,
  posterior: Posterior,
  *,
  weights: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """The categorical test metrics of a large head, its copies applied a few at a time.

  Equal to :func:`alrao_jax.evaluation_metrics` on the same copies' outputs (the mixture's
  loss and accuracy, the best usable copy's), but the logits of only
  ``outputs.copies_at_once`` copies exist at a time: the mixture's probabilities are summed
  copy by copy, each scaled by its posterior weight.

  Args:
    outputs: :class:`alrao_jax.head.DeferredCopyOutputs`, from
      ``AlraoHead(copies_at_once=c)``.
    labels: integer labels ``(*batch,)``.
    posterior: averaging weights ``(N,)`` or the averaging state.
    weights: per-example weights ``(*batch,)`` or a mask: weighted means, pads left out.

  Returns:
    ``loss``, ``best_copy_loss``, ``accuracy`` and ``best_copy_accuracy``.

  Example:
    >>> import jax.numpy as jnp
    >>> from alrao_jax.head import DeferredCopyOutputs
    >>> from alrao_jax.large_head import fused_evaluation_metrics
    >>> outputs = DeferredCopyOutputs(jnp.eye(2), jnp.stack([jnp.eye(2), -jnp.eye(2)]),
    ...                               jnp.zeros((2, 2)), 1)
    >>> metrics = fused_evaluation_metrics(outputs, jnp.array([0, 1]), jnp.array([0.9, 0.1]))
    >>> float(metrics["accuracy"]), float(metrics["best_copy_accuracy"])
    (1.0, 1.0)

  References:
    Blier, Wolinski & Ollivier, `Learning with Random Learning Rates
    <https://arxiv.org/abs/1810.01322>`_, 2018 (eq. 3).
  """
  z = outputs.z.reshape(-1, outputs.z.shape[-1])
  labels = labels.reshape(-1)
  dtype = _compute_dtype(outputs)
  shares = _shares(outputs, weights)
  log_posterior = log_posterior_of(posterior)
  start = (
    jnp.zeros((z.shape[0], outputs.kernel.shape[-1]), dtype),
    jnp.full((z.shape[0],), -jnp.inf, dtype),
  )
  (total, _), (ll, finite, hits) = _scan_in_groups(
    _mix_probabilities(_evaluate_copy(z, labels, shares, dtype)),
    start,
    ((outputs.kernel, outputs.bias), log_posterior),
    outputs.copies_at_once,
  )
  usable, _, mixed = _mixture(ll, finite, log_posterior)
  best = jnp.argmax(jnp.where(usable, log_posterior, -jnp.inf))
  any_usable = (usable & (log_posterior > -jnp.inf)).any()
  mixture_hits = jnp.argmax(total, -1) == labels
  return {
    "loss": jnp.where(any_usable, -jnp.sum(mixed * shares), jnp.inf),
    "best_copy_loss": jnp.where(any_usable, -jnp.sum(ll[best] * shares), jnp.inf),
    "accuracy": jnp.where(any_usable, jnp.sum(mixture_hits * shares), jnp.nan),
    "best_copy_accuracy": jnp.where(any_usable, jnp.sum(hits[best] * shares), jnp.nan),
  }

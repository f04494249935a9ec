"""The Alrao output head: N copies of the output layer, and their mixture."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from alrao_jax.checks import check_bool, check_copies_at_once, check_num_copies
from alrao_jax.rates import COPIES_MODULE

_NOT_LOGITS = (
  "an Alrao head returns CopyOutputs, the outputs of its N copies (N, *batch, K), not logits: "
  "train with alrao_jax.alrao_loss(outputs, targets, averaging_state); for the mixture's "
  "log-probabilities (batch, K), where logits would go (argmax, metrics, an optax loss), use "
  "alrao_jax.mixture_log_probs(outputs, averaging_state); outputs.astype(dtype) casts both "
  "routes."
)


class CopyOutputs(NamedTuple):
  """The outputs of the copies, twice: equal values, different gradient routes.

  Both have shape ``(N, *batch, K)``. Gradients through ``shared`` reach the pre-classifier
  only (the mixture loss trains it); gradients through ``own`` reach each copy only, with
  the pre-classifier output held constant (each copy trains "as if it were the only output").
  """

  shared: jax.Array
  own: jax.Array

  def astype(self, dtype: Any) -> CopyOutputs:
    """Both routes cast to ``dtype`` (what ``logits.astype(jnp.float32)`` does to logits)."""
    return CopyOutputs(self.shared.astype(dtype), self.own.astype(dtype))

  @property
  def shape(self) -> tuple[int, ...]:
    """``(N, *batch, K)``: the copies' outputs."""
    return self.own.shape

  @property
  def dtype(self) -> Any:
    """The outputs' dtype."""
    return self.own.dtype

  def __jax_array__(self) -> jax.Array:
    raise TypeError(_NOT_LOGITS)

  @property
  def ndim(self) -> int:
    raise TypeError(_NOT_LOGITS)


class _ViaOutputs:
  """``own`` and ``shared`` of outputs held in another form, through their ``outputs()``."""

  def outputs(self) -> CopyOutputs:
    raise NotImplementedError

  @property
  def own(self) -> jax.Array:
    """Each copy's outputs ``(N, *batch, K)``, gradients to the copy only (see
    :class:`CopyOutputs`)."""
    return self.outputs().own

  @property
  def shared(self) -> jax.Array:
    """The copies' outputs ``(N, *batch, K)``, gradients to the pre-classifier only."""
    return self.outputs().shared

  def __jax_array__(self) -> jax.Array:
    raise TypeError(_NOT_LOGITS)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeferredCopyOutputs(_ViaOutputs):
  """The copies of a large head, not yet applied: what ``AlraoHead(copies_at_once=c)`` returns.

  :func:`alrao_jax.alrao_loss` with the categorical likelihood applies the copies ``c`` at a
  time inside the loss (:func:`alrao_jax.large_head.fused_alrao_loss`), so that the
  ``N x batch x K`` logits are never held at once; anything else that reads ``own`` or
  ``shared`` (predictions, metrics, another likelihood) gets the copies' outputs computed
  in full, as :class:`CopyOutputs` would give them.

  Attributes:
    z: the pre-classifier output ``(*batch, d)``.
    kernel: the copies' kernels ``(N, d, K)``.
    bias: the copies' biases ``(N, K)``.
    copies_at_once: how many copies the loss applies together (a static int).
  """

  z: jax.Array
  kernel: jax.Array
  bias: jax.Array
  copies_at_once: int = dataclasses.field(metadata={"static": True}, default=1)

  def outputs(self) -> CopyOutputs:
    """The copies' outputs in full (:func:`copy_outputs`)."""
    return copy_outputs(self.z, self.kernel, self.bias)

  @property
  def shape(self) -> tuple[int, ...]:
    """``(N, *batch, K)``: the copies' outputs."""
    return (self.kernel.shape[0], *self.z.shape[:-1], self.kernel.shape[-1])

  @property
  def dtype(self) -> Any:
    """The outputs' dtype."""
    return jnp.result_type(self.z, self.kernel, self.bias)

  def astype(self, dtype: Any) -> CopyOutputs:
    """The copies' outputs in full, cast to ``dtype``."""
    return self.outputs().astype(dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StepCopyOutputs(_ViaOutputs):
  """The copies' outputs with the copy axis next to the outputs: what
  ``AlraoHead(per_step=True)`` returns, for a head applied step by step inside a scan.

  Its arrays are laid out ``(*batch, N, K)``, so that ``nn.RNN``, ``nn.scan``,
  ``jax.lax.scan`` or ``jax.vmap`` stack the steps where they stack any per-example output
  (``nn.RNN``: ``(batch, time, N, K)``; a time-major scan: ``(time, batch, N, K)``), whatever
  the batch and time sizes. ``own``, ``shared`` and :meth:`outputs` give them in the
  ``(N, *batch, K)`` layout of :class:`CopyOutputs`, and every function that takes an Alrao
  head's outputs (:func:`alrao_jax.alrao_loss`, :func:`alrao_jax.mixture_log_probs`, the
  steps) takes these.

  Attributes:
    shared_by_example: the outputs routed to the pre-classifier, ``(*batch, N, K)``.
    own_by_example: the outputs routed to each copy, ``(*batch, N, K)``.

  Example:
    >>> import jax, jax.numpy as jnp, alrao_jax
    >>> head = alrao_jax.AlraoHead(num_outputs=5, num_copies=3, per_step=True)
    >>> z = jnp.ones((7, 2, 8))  # (time, batch, features), the steps of a scan
    >>> variables = head.init(jax.random.key(0), z[0])
    >>> step = lambda carry, z_t: (carry, head.apply(variables, z_t))
    >>> _, stacked = jax.lax.scan(step, None, z)
    >>> stacked.own_by_example.shape, stacked.own.shape  # (time, batch, N, K), (N, time, batch, K)
    ((7, 2, 3, 5), (3, 7, 2, 5))
  """

  shared_by_example: jax.Array
  own_by_example: jax.Array

  def outputs(self) -> CopyOutputs:
    """The outputs as :class:`CopyOutputs`, ``(N, *batch, K)``."""
    return CopyOutputs(
      jnp.moveaxis(self.shared_by_example, -2, 0), jnp.moveaxis(self.own_by_example, -2, 0)
    )

  @property
  def shape(self) -> tuple[int, ...]:
    """``(N, *batch, K)``: the copies' outputs."""
    *batch, n, k = self.own_by_example.shape
    return (n, *batch, k)

  @property
  def dtype(self) -> Any:
    """The outputs' dtype."""
    return self.own_by_example.dtype

  def astype(self, dtype: Any) -> StepCopyOutputs:
    """Both routes cast to ``dtype``."""
    return StepCopyOutputs(self.shared_by_example.astype(dtype), self.own_by_example.astype(dtype))

  @property
  def ndim(self) -> int:
    raise TypeError(_NOT_LOGITS)


HEAD_OUTPUTS = (CopyOutputs, DeferredCopyOutputs, StepCopyOutputs)  # what an Alrao head returns


def by_example(outputs: CopyOutputs) -> StepCopyOutputs:
  """:class:`CopyOutputs` laid out ``(*batch, N, K)`` (:class:`StepCopyOutputs`)."""
  return StepCopyOutputs(jnp.moveaxis(outputs.shared, 0, -2), jnp.moveaxis(outputs.own, 0, -2))


def _finite_per_copy(values: jax.Array) -> jax.Array:
  # Reduced over the axes, not a reshape: a reshape would gather an axis sharded on a mesh.
  return jnp.isfinite(values).all(axis=tuple(range(1, values.ndim)))


@jax.custom_vjp
def copy_outputs(z: jax.Array, kernel: jax.Array, bias: jax.Array) -> CopyOutputs:
  """Applies N stacked copies of a Dense layer with one batched matmul.

  Args:
    z: pre-classifier output, shape ``(*batch, d)``.
    kernel: shape ``(N, d, K)``.
    bias: shape ``(N, K)``.

  Returns:
    :class:`CopyOutputs` of shape ``(N, *batch, K)``. A copy with non-finite weights sends
    no gradient to ``z``.

  Example:
    >>> import jax.numpy as jnp, alrao_jax
    >>> out = alrao_jax.copy_outputs(jnp.ones((4, 3)), jnp.ones((2, 3, 5)), jnp.zeros((2, 5)))
    >>> out.own.shape
    (2, 4, 5)
  """
  out = _forward(z, kernel, bias)
  return CopyOutputs(out, out)


# From this many outputs on, the copies run as a batched matmul over the copy axis (z
# broadcast); below it, as one matmul with the copies among the output columns. Measured on
# CPU, forward and backward of the head alone, d = 256, N = 10: the batched form is 2.1x
# faster at K = 1000 and 1.5x at K = 256, even at K = 32, and 1.7x slower at K = 10.
BATCHED_MIN_OUTPUTS = 32


# From this many kernel bytes on, on CPU, the backward's dz runs one matmul per copy
# (``lax.map``) instead of one batched matmul: XLA's batched CPU matmul slows down once the
# kernel leaves the caches by far. Measured on 2 cores, d = 256, 32 examples: per copy is
# 2.2x faster at N = 50, K = 10,000 (512 MB) and 1.2x slower at N = 10, K = 10,000 (102 MB).
PER_COPY_MIN_BYTES = 256 * 2**20


def _batched(kernel: jax.Array) -> bool:
  return kernel.shape[-1] >= BATCHED_MIN_OUTPUTS


def _per_copy(kernel: jax.Array) -> bool:
  big = kernel.size * kernel.dtype.itemsize >= PER_COPY_MIN_BYTES
  return big and jax.default_backend() == "cpu"


def _broadcast_examples(z: jax.Array, num_copies: int) -> jax.Array:
  flat = z.reshape(-1, z.shape[-1])
  return jnp.broadcast_to(flat, (num_copies, *flat.shape))


def _forward(z: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  if _batched(kernel):
    flat = _broadcast_examples(z, kernel.shape[0])
    out = jnp.einsum("ned,ndk->nek", flat, kernel).reshape(
      (kernel.shape[0], *z.shape[:-1], kernel.shape[-1])
    )
  else:
    out = jnp.einsum("...d,ndk->n...k", z, kernel)
  return out + bias.reshape(bias.shape[0], *(1,) * (z.ndim - 1), bias.shape[-1])


def _copy_outputs_fwd(z, kernel, bias):
  out = _forward(z, kernel, bias)
  # A copy with a non-finite weight has non-finite outputs (0 * inf is NaN): the outputs, N x
  # batch x K, say which copies diverged without reading the N x d x K kernel again.
  # The bias rides along (N x K, small) for its dtype: every gradient keeps its input's dtype.
  return CopyOutputs(out, out), (z, kernel, bias, _finite_per_copy(out))


def _copy_outputs_bwd(residuals, cotangents):
  z, kernel, bias, finite = residuals
  shared, own = cotangents
  n, k = kernel.shape[0], kernel.shape[-1]
  # A diverged copy's cotangent is 0, but 0 * inf = NaN: its share of dz must be dropped,
  # either by zeroing its weights before the matmul (a copy of the N x d x K kernel) or its
  # share after it (an N x examples x d array): whichever is smaller.
  if _batched(kernel) and k > math.prod(z.shape[:-1]):
    # A large head (per copy is then also the faster contraction on CPU).
    if _per_copy(kernel):
      per_copy = jax.lax.map(lambda pair: pair[0] @ pair[1].T, (shared.reshape(n, -1, k), kernel))
    else:
      per_copy = jnp.einsum("nek,ndk->ned", shared.reshape(n, -1, k), kernel)
    dz = jnp.where(finite[:, None, None], per_copy, 0.0).sum(axis=0).reshape(z.shape)
  else:
    safe = jnp.where(finite[:, None, None], kernel, jnp.zeros_like(kernel))
    dz = jnp.einsum("n...k,ndk->...d", shared, safe)
  if _batched(kernel):
    flat = _broadcast_examples(z, n)
    dkernel = jnp.einsum("ned,nek->ndk", flat, own.reshape(n, -1, k))
  else:
    dkernel = jnp.einsum("...d,n...k->ndk", z, own)
  dbias = own.reshape(n, -1, k).sum(axis=1)
  return dz.astype(z.dtype), dkernel.astype(kernel.dtype), dbias.astype(bias.dtype)


copy_outputs.defvjp(_copy_outputs_fwd, _copy_outputs_bwd)


class _CopyParams(nn.Module):
  """One copy's Dense parameters; vmapped by :class:`AlraoHead` into stacked copies."""

  in_features: int
  features: int
  kernel_init: Callable[..., jax.Array]
  bias_init: Callable[..., jax.Array]
  param_dtype: Any

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    kernel = self.param(
      "kernel", self.kernel_init, (self.in_features, self.features), self.param_dtype
    )
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    return kernel, bias


class AlraoHead(nn.Module):
  """N copies of a Dense output layer (Flax linen), applied with one batched matmul.

  The copies live under a submodule named ``alrao_copies`` with a leading copy axis, so
  that :func:`alrao_jax.sample_rates` gives copy j the rate ``copy_rates(N, ...)[j]``.

  Attributes:
    num_outputs: classes ``K`` (logits) or output dimension ``D`` (regression means).
    num_copies: number of copies ``N`` (the parameters may hold fewer once copies are retired:
      :func:`alrao_jax.retire_copies`; the head applies those it holds).
    kernel_init: initializer of one copy's ``(d, K)`` kernel, as for ``nn.Dense``.
    bias_init: initializer of one copy's ``(K,)`` bias.
    param_dtype: dtype of the parameters (e.g. ``jnp.bfloat16`` for a large head; the loss's
      softmax runs in float32 whatever it is).
    copies_at_once: None (the default) returns :class:`CopyOutputs`, every copy's outputs
      at once; an int ``c`` returns :class:`DeferredCopyOutputs`, which
      :func:`alrao_jax.alrao_loss` applies ``c`` copies at a time: for a head with many
      outputs (a word-level language model's), where the ``N x batch x K`` logits would
      dominate a step's memory. A copy with more examples than inputs ``d`` takes them ``d``
      or fewer at a time, so that it holds no more logits than its kernel has weights.
    per_step: True returns :class:`StepCopyOutputs`, laid out ``(*batch, N, K)``: for a head
      applied at each step of a scan (a decoder inside ``nn.RNN`` or ``nn.scan``), whose
      stacked outputs then keep the copy axis where every function expects it, whatever the
      batch and time sizes. (The default layout ``(N, *batch, K)`` stacked by a scan puts
      time before the copies, or, through ``nn.RNN``, between copies and batch.)

  Example:
    >>> import jax, jax.numpy as jnp, alrao_jax
    >>> head = alrao_jax.AlraoHead(num_outputs=10, num_copies=4)
    >>> variables = head.init(jax.random.key(0), jnp.ones((2, 8)))
    >>> variables['params']['alrao_copies']['kernel'].shape
    (4, 8, 10)
    >>> head.apply(variables, jnp.ones((2, 8))).own.shape
    (4, 2, 10)

  References:
    Blier, Wolinski & Ollivier, `Learning with Random Learning Rates
    <https://arxiv.org/abs/1810.01322>`_, 2018 (eq. 3 and 5).
  """

  num_outputs: int
  num_copies: int = 10
  kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()
  param_dtype: Any = jnp.float32
  copies_at_once: int | None = None
  per_step: bool = False

  @nn.compact
  def __call__(self, z: jax.Array) -> CopyOutputs | DeferredCopyOutputs | StepCopyOutputs:
    check_num_copies(self.num_copies)
    check_copies_at_once(self.copies_at_once)
    check_per_step(self.per_step, self.copies_at_once)
    copies = nn.vmap(
      _CopyParams,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      axis_size=self._copies_held(),
    )(
      z.shape[-1],
      self.num_outputs,
      self.kernel_init,
      self.bias_init,
      self.param_dtype,
      name=COPIES_MODULE,
    )
    kernel, bias = copies()
    if self.copies_at_once is not None:
      return DeferredCopyOutputs(z, kernel, bias, self.copies_at_once)
    outputs = copy_outputs(z, kernel, bias)
    return by_example(outputs) if self.per_step else outputs

  def _copies_held(self) -> int:
    """The copies the parameters hold: ``num_copies`` at init, fewer once some were retired
    (:func:`alrao_jax.retire_copies`), never more."""
    held = self.variables.get("params", {}).get(COPIES_MODULE, {}).get("kernel")
    if held is None:
      return self.num_copies
    found = int(jnp.shape(held)[0])
    if found > self.num_copies:
      raise ValueError(
        f"the head's parameters hold {found} copies, more than its num_copies={self.num_copies}; "
        f"build the head with num_copies={found}."
      )
    return found


def embedding_init(
  table: jax.Array | Callable[[], jax.Array], *, scale: float = 1.0
) -> Callable[..., jax.Array]:
  """An initializer that starts every copy's kernel at the transposed embedding table.

  Tied input and output embeddings (Flax's translation example's ``logits_via_embedding``)
  share one matrix; Alrao's copies each need their own output layer, trained at their own
  rate. This is the untied route that starts from the tie: pass it as the head's
  ``kernel_init`` and each copy's ``(d, K)`` kernel starts as ``scale * table.T``, then trains
  on its own (the embedding trains at its own units' rates).

  Args:
    table: the embedding table ``(K, d)`` (e.g. ``nn.Embed``'s ``embedding``, read inside a
      compact ``__call__`` after the embedding is first used), or a function of no argument
      that returns it when the head is initialised (in a ``setup`` module:
      ``lambda: self.embed.embedding``).
    scale: a factor, e.g. ``1 / sqrt(d)`` as Flax's example divides its tied logits.

  Returns:
    ``init(key, shape, dtype)``: ``scale * table.T`` of ``shape``; a ``ValueError`` at init
    when ``shape`` is not ``(d, K)``.

  Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp, alrao_jax
    >>> class LM(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, tokens):
    ...     embed = nn.Embed(7, 4)
    ...     h = embed(tokens)
    ...     init = alrao_jax.embedding_init(embed.embedding)
    ...     return alrao_jax.AlraoHead(7, num_copies=3, kernel_init=init)(h)
    >>> params = LM().init(jax.random.key(0), jnp.zeros((2,), int))['params']
    >>> kernel = params['AlraoHead_0']['alrao_copies']['kernel']
    >>> kernel.shape, bool((kernel == params['Embed_0']['embedding'].T).all())
    ((3, 4, 7), True)
  """

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    del key
    values = table() if callable(table) else table
    if tuple(shape) != values.shape[::-1]:
      raise ValueError(
        f"embedding_init: the head's kernel has shape {tuple(shape)}, the embedding table "
        f"{values.shape} (K, d); the head's num_outputs must be the vocabulary size and its "
        "input the embedding's width."
      )
    return (scale * values.T).astype(dtype)

  return init


def check_per_step(per_step: Any, copies_at_once: int | None) -> None:
  """Raises ``TypeError``/``ValueError`` for a ``per_step`` that is not a bool, or that is
  combined with ``copies_at_once`` (a deferred head inside a scan would stack its kernels)."""
  check_bool(per_step, "per_step")
  if per_step and copies_at_once is not None:
    raise ValueError(
      "per_step=True and copies_at_once cannot be combined: a scan would stack the deferred "
      "head's kernels at every step. Apply a large head after the scan, on the stacked "
      "features (see the guide 'Sequence models')."
    )


def canonical(outputs: Any) -> Any:
  """:class:`StepCopyOutputs` as :class:`CopyOutputs`; anything else as it is."""
  return outputs.outputs() if isinstance(outputs, StepCopyOutputs) else outputs


def as_copy_outputs(outputs: Any) -> CopyOutputs | DeferredCopyOutputs:
  """A model's outputs as :class:`CopyOutputs`: an Alrao head's as they are, a plain output
  layer's ``(*batch, K)`` as one copy, so that one step and one loop train both (the
  baseline and Alrao); a plain layer's gradient then is its loss's, as with an optax loss."""
  if isinstance(outputs, HEAD_OUTPUTS):
    return canonical(outputs)
  if not isinstance(outputs, jax.Array):
    raise TypeError(
      f"the model returned {type(outputs).__name__}; it must return an Alrao head's "
      "CopyOutputs or one array of logits (regression means)."
    )
  one = outputs[None]
  return CopyOutputs(one, jax.lax.stop_gradient(one))


def copy_values(outputs: CopyOutputs | DeferredCopyOutputs | jax.Array) -> jax.Array:
  """The copies' output values ``(N, *batch, K)`` of :class:`CopyOutputs` or of an array."""
  if isinstance(outputs, HEAD_OUTPUTS):
    return outputs.own
  return jnp.asarray(outputs)


def mask_diverged(values: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(values with non-finite copies replaced by 0, finite per copy (N,))``.

  The input is masked, not only what is computed from it, so that no NaN reaches a
  gradient through ``jnp.where``.
  """
  finite = _finite_per_copy(values)
  return jnp.where(broadcast_copy_axis(finite, values.ndim), values, 0.0), finite


Posterior = Any  # averaging weights (N,), or an averaging state with a ``log_posterior``


def log_posterior_of(posterior: Posterior) -> jax.Array:
  """The log averaging weights ``(N,)``, from probabilities or from an averaging state.

  A state (:class:`alrao_jax.SwitchState`, :class:`alrao_jax.BayesState`) gives its log
  posterior as is, so that weights below the float range (Bayes averaging after a few
  hundred steps) stay > 0; probabilities equal to 0 give ``-inf``.
  """
  log_posterior = getattr(posterior, "log_posterior", None)
  if log_posterior is not None:
    return jnp.asarray(log_posterior)
  weights = jnp.asarray(posterior)
  return jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)


def mixture_log_weights(log_posterior: jax.Array, usable: jax.Array) -> jax.Array:
  """Log mixture weights: the posterior renormalised over the usable copies.

  Args:
    log_posterior: log averaging weights ``(N,)`` (see :func:`log_posterior_of`).
    usable: boolean ``(N,)``, False for a copy left out (diverged).

  Returns:
    Shape ``(N,)``: ``-inf`` for left-out copies. When no copy is usable, ``-log N`` for
    all, so that what is computed from them stays finite.
  """
  usable = usable & (log_posterior > -jnp.inf)
  logw = jnp.where(usable, log_posterior, -jnp.inf)
  logw = logw - jax.nn.logsumexp(jnp.where(usable.any(), logw, 0.0))
  return jnp.where(usable.any(), logw, -jnp.log(log_posterior.shape[0]))


def broadcast_copy_axis(x: jax.Array, ndim: int) -> jax.Array:
  """Reshapes a per-copy array ``(N,)`` to broadcast against ``ndim``-dimensional outputs."""
  return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def full_route(outputs: CopyOutputs | jax.Array) -> jax.Array:
  """The copies' outputs with both gradient routes: to each copy and to the pre-classifier.

  ``own`` alone sends gradients to the copies only and ``shared`` to the pre-classifier
  only (see :class:`CopyOutputs`); ``own + shared - stop_gradient(shared)`` has the same
  value and sends the gradient of whatever is computed from it to both, as a plain output
  layer would. An array is returned as it is.
  """
  if isinstance(outputs, DeferredCopyOutputs | StepCopyOutputs):
    outputs = outputs.outputs()
  if not isinstance(outputs, CopyOutputs):
    return jnp.asarray(outputs)
  return outputs.own + (outputs.shared - jax.lax.stop_gradient(outputs.shared))


def per_example_prior(
  outputs: CopyOutputs | jax.Array, posterior: Posterior
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """What a prediction leaves out, example by example.

  Returns:
    ``(values, finite, log_prior)``: the copies' outputs ``(N, *batch, K)`` with both
    gradient routes (:func:`full_route`), whether copy j's outputs for an example are all
    finite ``(N, *batch)``, and the log posterior broadcast to ``(N, *batch)``, ``-inf``
    where the copy's outputs for the example are not finite.
  """
  values = full_route(outputs)
  finite = jnp.isfinite(values).all(axis=-1)
  log_posterior = broadcast_copy_axis(log_posterior_of(posterior), finite.ndim)
  return values, finite, jnp.where(finite, log_posterior, -jnp.inf)


def mixture_log_probs(
  outputs: CopyOutputs | jax.Array, posterior: Posterior, *, likelihood: Any = None
) -> jax.Array:
  """Log-probabilities of the mixture ``sum_j a_j softmax(logits_j)``, example by example.

  A copy whose logits for an example are not all finite is left out of that example's
  mixture (the weights renormalised over the others); the other examples keep it. An
  example that no copy with weight predicts (its inputs non-finite, or every copy
  diverged) gets NaN, never a uniform guess.

  Gradients reach the copies and the pre-classifier (see :func:`full_route`): the gradient
  of the mixture's log-likelihood, which is not the Alrao gradient (that trains each copy
  on its own loss); train with :func:`alrao_jax.alrao_loss`.

  Args:
    outputs: copy logits ``(N, *batch, K)`` or :class:`CopyOutputs`.
    posterior: averaging weights ``(N,)`` or the averaging state (see
      :func:`log_posterior_of`).
    likelihood: the likelihood the head was trained with, when it is not the default: a
      categorical one (plain or smoothed) is accepted; another raises a ``ValueError``
      naming the helper that predicts its outputs (a softmax of Bernoulli logits or of
      regression means is no prediction).

  Returns:
    Shape ``(*batch, K)``.

  Example:
    >>> import jax.numpy as jnp, alrao_jax
    >>> logits = jnp.array([[[0., 0.], [0., 1.]], [[jnp.nan, 0.], [0., 0.]]])
    >>> probs = jnp.exp(alrao_jax.mixture_log_probs(logits, jnp.array([0.5, 0.5])))
    >>> (100 * probs).round().tolist()  # row 0: copy 1 left out; row 1: both copies
    [[50.0, 50.0], [38.0, 62.0]]
  """
  if likelihood is not None and not getattr(likelihood, "categorical", False):
    raise ValueError(
      "mixture_log_probs mixes softmaxes of class logits; a head trained with "
      f"{getattr(likelihood, '__name__', 'this likelihood')} predicts with "
      "alrao_jax.mixture_probabilities (Bernoulli logits: the mixture of sigmoids) or "
      "alrao_jax.mixture_mean (regression means), or alrao_jax.predict(..., likelihood=...)."
    )
  values, finite, logw = per_example_prior(outputs, posterior)
  safe = jnp.where(finite[..., None], values, 0.0)
  norm = jax.nn.logsumexp(logw, axis=0)
  predicted = norm > -jnp.inf
  logw = logw - jnp.where(predicted, norm, 0.0)
  mixed = jax.nn.logsumexp(logw[..., None] + jax.nn.log_softmax(safe), axis=0)
  return jnp.where(predicted[..., None], mixed, jnp.nan)


def best_copy(outputs: CopyOutputs | jax.Array, posterior: Posterior) -> jax.Array:
  """For each example, the outputs of the copy with the largest posterior weight among the
  copies whose outputs for it are finite (NaN when there is none).

  Gradients reach the copy and the pre-classifier (see :func:`full_route`).

  Args:
    outputs: ``(N, *batch, K)`` or :class:`CopyOutputs`.
    posterior: averaging weights ``(N,)`` or the averaging state.

  Returns:
    Shape ``(*batch, K)``.

  Example:
    >>> import jax.numpy as jnp, alrao_jax
    >>> outputs = jnp.array([[[1.], [2.]], [[jnp.nan], [4.]]])  # copy 1 diverged on example 0
    >>> alrao_jax.best_copy(outputs, jnp.array([0.3, 0.7])).tolist()
    [[1.0], [4.0]]
  """
  values, finite, score = per_example_prior(outputs, posterior)
  chosen = jnp.argmax(score, axis=0)
  picked = jnp.take_along_axis(values, chosen[None, ..., None], axis=0)[0]
  return jnp.where(finite.any(axis=0)[..., None], picked, jnp.nan)

"""Flax NNX twin of :class:`alrao_jax.AlraoHead`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from alrao_jax.checks import check_copies_at_once, check_num_copies
from alrao_jax.head import (
  CopyOutputs,
  DeferredCopyOutputs,
  StepCopyOutputs,
  by_example,
  check_per_step,
  copy_outputs,
)

DEFAULT_KERNEL_INIT = nnx.initializers.lecun_normal()
DEFAULT_BIAS_INIT = nnx.initializers.zeros_init()


class AlraoHead(nnx.Module):
  """N copies of an ``nnx.Linear`` output layer, applied with one batched matmul.

  The copies are created with ``nnx.vmap`` under the attribute ``alrao_copies``
  (kernel ``(N, d, K)``, bias ``(N, K)``), so :func:`alrao_jax.sample_rates` gives copy j
  the rate ``copy_rates(N, ...)[j]``.

  Args:
    in_features: dimension ``d`` of the pre-classifier output.
    out_features: classes ``K`` or regression dimension ``D``.
    num_copies: number of copies ``N``.
    kernel_init: initializer of one copy's kernel, as for ``nnx.Linear``.
    bias_init: initializer of one copy's bias.
    param_dtype: dtype of the parameters.
    copies_at_once: None returns every copy's outputs at once (:class:`CopyOutputs`); an int
      ``c`` returns :class:`alrao_jax.head.DeferredCopyOutputs`, applied ``c`` copies at a time
      by :func:`alrao_jax.alrao_loss` (see :class:`alrao_jax.AlraoHead`).
    per_step: True returns :class:`alrao_jax.StepCopyOutputs` ``(*batch, N, K)``, for a head
      applied at each step of a scan (``nnx.scan``, ``nnx.RNN``); see
      :class:`alrao_jax.AlraoHead`.
    rngs: ``nnx.Rngs`` for the initialisation.

  Example:
    >>> import jax.numpy as jnp, alrao_jax
    >>> from flax import nnx
    >>> head = alrao_jax.nnx.AlraoHead(8, 10, num_copies=4, rngs=nnx.Rngs(0))
    >>> head(jnp.ones((2, 8))).own.shape
    (4, 2, 10)

  References:
    Blier, Wolinski & Ollivier, `Learning with Random Learning Rates
    <https://arxiv.org/abs/1810.01322>`_, 2018 (eq. 3 and 5).
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    num_copies: int = 10,
    kernel_init: Callable[..., jax.Array] = DEFAULT_KERNEL_INIT,
    bias_init: Callable[..., jax.Array] = DEFAULT_BIAS_INIT,
    param_dtype: Any = jnp.float32,
    copies_at_once: int | None = None,
    per_step: bool = False,
    rngs: nnx.Rngs,
  ):
    check_num_copies(num_copies)
    check_copies_at_once(copies_at_once)
    check_per_step(per_step, copies_at_once)

    @nnx.split_rngs(splits=num_copies)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs: nnx.Rngs) -> nnx.Linear:
      return nnx.Linear(
        in_features,
        out_features,
        kernel_init=kernel_init,
        bias_init=bias_init,
        param_dtype=param_dtype,
        rngs=rngs,
      )

    self.num_copies = num_copies
    self.copies_at_once = copies_at_once
    self.per_step = per_step
    self.alrao_copies = create(rngs)

  def __call__(self, z: jax.Array) -> CopyOutputs | DeferredCopyOutputs | StepCopyOutputs:
    kernel, bias = self.alrao_copies.kernel[...], self.alrao_copies.bias[...]
    if self.copies_at_once is not None:
      return DeferredCopyOutputs(z, kernel, bias, self.copies_at_once)
    outputs = copy_outputs(z, kernel, bias)
    return by_example(outputs) if self.per_step else outputs

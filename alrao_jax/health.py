"""Whether a step's copies still learn: the check a user's own training loop calls on the host."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def check_copies(metrics: Any, *, rates: Sequence[float] | None = None) -> list[int]:
  """The copies whose loss on the last batch is not finite; raises when every copy's is not.

  The Alrao loss leaves a diverged copy out of the mixture (its posterior weight goes to the
  others), so one fast copy blowing up is expected and harmless; when every copy's loss is
  inf or NaN the mixture is undefined and training goes on on NaN: the body diverged (a fast
  unit overflowed, e.g. a VAE's ``exp(logvar)``), or the interval's every rate is too large.
  Call it on the host, outside ``jit``, on what a step returns (``fit`` stops by itself).

  Args:
    metrics: a step's metrics (a mapping with ``copy_nll``, as
      :func:`alrao_jax.make_train_step`'s step returns), or an :class:`alrao_jax.AlraoLossAux`.
    rates: the copies' learning rates (e.g. ``alrao_jax.copy_rates(N, lr_min, lr_max)``), to
      name them in the warning.

  Returns:
    The indices of the diverged copies (empty when none), after a `RuntimeWarning` naming
    them when there are any.

  Raises:
    FloatingPointError: every copy's loss is not finite, with what to do.

  Example:
    >>> import numpy as np, alrao_jax
    >>> alrao_jax.check_copies({"copy_nll": np.array([0.7, 0.5, 1.2])})
    []
  """
  copy_nll = metrics["copy_nll"] if isinstance(metrics, Mapping) else metrics.copy_nll
  losses = np.asarray(copy_nll, np.float64).reshape(-1)
  bad = np.flatnonzero(~np.isfinite(losses)).tolist()
  if rates is not None and len(rates) != len(losses):
    raise ValueError(f"rates has {len(rates)} entries for {len(losses)} copies.")
  named = [f"{i} (lr {rates[i]:.3g})" if rates is not None else str(i) for i in bad]
  if len(bad) == len(losses):
    raise FloatingPointError(
      f"every copy's loss is not finite ({losses.tolist()}): the body diverged, or every copy "
      "did, and the mixture is undefined. Lower lr_max (a fast unit of the body overflowed, "
      "e.g. an exp), clip the gradients (optax.clip_by_global_norm), or restart from the last "
      "finite checkpoint."
    )
  if bad:
    warnings.warn(
      f"copies {', '.join(named)} of {len(losses)} diverged; the mixture leaves them out and "
      "the others train on.",
      RuntimeWarning,
      stacklevel=2,
    )
  return bad

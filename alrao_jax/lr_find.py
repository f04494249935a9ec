"""The learning-rate range test (Smith), as fastai's ``lr_find`` and Lightning's tuner run it.

Provided next to Alrao as the usual alternative and for comparison: one short run with an
exponentially growing learning rate, a smoothed loss curve, and suggested rates.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from alrao_jax.rates import check_bounds


class LRFindResult(NamedTuple):
  """The curve of a range test and the rates it suggests."""

  learning_rates: np.ndarray  # one per step taken
  losses: np.ndarray  # the batch loss at each step, before the update
  smoothed: np.ndarray  # bias-corrected exponential moving average of ``losses``
  suggestions: dict[str, float]  # 'steep', 'valley' and 'minimum'


SKIP_BEGIN, SKIP_END = 10, 1  # as Lightning: the first points are the noisiest


def _suggest(lrs: np.ndarray, smoothed: np.ndarray) -> dict[str, float]:
  """Rates read off the smoothed curve (before it diverged), its noisy ends left out."""
  if len(lrs) > SKIP_BEGIN + SKIP_END + 2:
    lrs, smoothed = lrs[SKIP_BEGIN:-SKIP_END], smoothed[SKIP_BEGIN:-SKIP_END]
  if len(lrs) < 3:
    return {"steep": float("nan"), "valley": float("nan"), "minimum": float("nan")}
  width = max(1, len(lrs) // 20)  # slope over +-5% of the curve: pointwise slopes are noise
  log_lrs = np.log(lrs)
  slope = (smoothed[2 * width :] - smoothed[: -2 * width]) / (
    log_lrs[2 * width :] - log_lrs[: -2 * width]
  )
  falling = np.diff(smoothed) < 0
  best_len, best_start, run = 0, 0, 0
  for i, down in enumerate(falling):  # the longest stretch over which the loss keeps falling
    run = run + 1 if down else 0
    if run > best_len:
      best_len, best_start = run, i + 1 - run
  middle = best_start + best_len // 2
  return {
    "steep": float(lrs[width + int(np.argmin(slope))]) if len(slope) else float("nan"),
    "valley": float(lrs[middle]),
    "minimum": float(lrs[int(np.argmin(smoothed))] / 10.0),
  }


def lr_find(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  batches: Iterable[Any],
  *,
  optimizer: Callable[..., optax.GradientTransformation] = optax.sgd,
  start_lr: float = 1e-7,
  end_lr: float = 10.0,
  num_steps: int = 100,
  beta: float = 0.98,
  diverge_factor: float = 4.0,
) -> LRFindResult:
  """Runs the learning-rate range test; the caller's parameters are left as they were.

  Step ``i`` trains with ``start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))`` and
  records the batch loss before its update. The test stops after ``num_steps`` steps, when
  ``batches`` runs out, or when the smoothed loss exceeds ``diverge_factor`` times its best
  (or is not finite). A sequence of batches is cycled; any other iterable is read once.

  Args:
    loss_fn: ``(params, batch) -> scalar loss``, any model.
    params: the starting parameters (not modified: JAX arrays are immutable and nothing is
      donated).
    batches: training batches.
    optimizer: a factory ``learning_rate -> GradientTransformation`` such as ``optax.sgd``.
    start_lr: first learning rate, > 0.
    end_lr: last learning rate, > ``start_lr``.
    num_steps: number of steps of the ramp, >= 3.
    beta: smoothing factor of the moving average.
    diverge_factor: stop when the smoothed loss exceeds this multiple of its best.

  Returns:
    An :class:`LRFindResult`. Suggestions, read off the smoothed curve without its first 10
    and last point (as Lightning): ``steep`` (steepest fall against log lr, measured over
    +-5% of the curve),
    ``valley`` (middle of the longest stretch of falling loss) and ``minimum`` (a tenth of
    the rate at the lowest smoothed loss).

  Example:
    >>> import jax, jax.numpy as jnp, alrao_jax
    >>> x = jax.random.normal(jax.random.key(0), (64, 3)); y = x @ jnp.ones(3)
    >>> loss = lambda w, batch: jnp.mean((batch[0] @ w - batch[1]) ** 2)
    >>> result = alrao_jax.lr_find(loss, jnp.zeros(3), [(x, y)], start_lr=1e-4, end_lr=10.)
    >>> 1e-2 < result.suggestions["steep"] < 1.0
    True

  References:
    Smith, `Cyclical Learning Rates for Training Neural Networks
    <https://arxiv.org/abs/1506.01186>`_, 2017.
  """
  check_bounds(start_lr, end_lr, names=("start_lr", "end_lr"))
  if end_lr <= start_lr:
    raise ValueError(f"end_lr ({end_lr}) must be > start_lr ({start_lr}).")
  if not isinstance(num_steps, int) or num_steps < 3:
    raise ValueError(f"num_steps must be an int >= 3, got {num_steps!r}.")
  if not 0.0 <= beta < 1.0:
    raise ValueError(f"beta must be in [0, 1), got {beta}.")
  if not diverge_factor > 1.0:
    raise ValueError(f"diverge_factor must be > 1, got {diverge_factor}.")
  tx = optax.inject_hyperparams(optimizer)(learning_rate=start_lr)

  @jax.jit
  def step(params, opt_state, batch, lr):
    opt_state.hyperparams["learning_rate"] = lr
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  source = itertools.cycle(batches) if isinstance(batches, list | tuple) else iter(batches)
  ratio = math.log(end_lr / start_lr)
  lrs, losses, smoothed = [], [], []
  current, opt_state = params, tx.init(params)
  average, best = 0.0, math.inf
  for i, batch in zip(range(num_steps), source, strict=False):
    lr = start_lr * math.exp(ratio * i / (num_steps - 1))
    current, opt_state, loss = step(current, opt_state, batch, np.float32(lr))
    loss = float(loss)
    average = beta * average + (1 - beta) * loss
    smooth = average / (1 - beta ** (i + 1))
    lrs.append(lr)
    losses.append(loss)
    smoothed.append(smooth)
    if not math.isfinite(smooth) or smooth > diverge_factor * best:
      break
    best = min(best, smooth)
  lrs_a, smoothed_a = np.asarray(lrs), np.asarray(smoothed)
  stable = np.isfinite(smoothed_a) & (smoothed_a <= diverge_factor * np.nanmin(smoothed_a))
  return LRFindResult(
    learning_rates=lrs_a,
    losses=np.asarray(losses),
    smoothed=smoothed_a,
    suggestions=_suggest(lrs_a[stable], smoothed_a[stable]),
  )

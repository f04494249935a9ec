"""The learning-rate range test (Smith), as fastai's ``lr_find`` and Lightning's tuner run it.

One short run with an exponentially growing learning rate, a smoothed loss curve, suggested
rates, and the interval it suggests for Alrao. It runs on any loss function, or directly on
a linen or NNX model (with an Alrao head or a plain output), in training mode: BatchNorm
normalises with the batch's statistics and updates its running averages, dropout is on.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from alrao_jax.checks import check_bounds, check_rng_streams
from alrao_jax.head import HEAD_OUTPUTS
from alrao_jax.loss import Likelihood, alrao_loss, categorical_log_likelihood
from alrao_jax.nnx_types import is_nnx, nnx
from alrao_jax.splits import Split, rows_of, take
from alrao_jax.steps import TrainState, stream_keys


class LRFindResult(NamedTuple):
  """The curve of a range test, the rates it suggests, and what was wrong with it."""

  learning_rates: np.ndarray  # one per step taken
  losses: np.ndarray  # the batch loss at each step, before the update
  smoothed: np.ndarray  # bias-corrected exponential moving average of ``losses``
  suggestions: dict[str, float]  # 'steep', 'valley' and 'minimum' (nan: see notes)
  alrao_interval: tuple[float, float]  # (lr_min, lr_max) suggested for Alrao (nan: see notes)
  notes: tuple[str, ...] = ()  # why there are no suggestions: a curve too short or flat

  def plot(self, ax: Any = None, *, title: str = "") -> Any:
    """Draws the batch and smoothed loss against the rate, the suggestions marked and
    explained, the suggested Alrao interval shaded, the y axis clipped to the useful range
    (the divergence spike would flatten the curve), and the notes, if any, in the title.

    Args:
      ax: a matplotlib ``Axes`` (default: a new figure's).
      title: what was tested (task, optimizer).

    Returns:
      The ``Axes``.

    Raises:
      ImportError: matplotlib is not installed (``pip install "alrao-jax[cli]"``).
    """
    try:
      import matplotlib.pyplot as plt
    except ImportError as err:
      raise ImportError(
        'LRFindResult.plot needs matplotlib: pip install matplotlib (or "alrao-jax[cli]").'
      ) from err

    if ax is None:
      ax = plt.figure(figsize=(10, 4.5), layout="constrained").add_subplot()
    lrs, smoothed = self.learning_rates, self.smoothed
    low, high = self.alrao_interval
    if np.isfinite(low) and np.isfinite(high):
      label = f"Alrao interval: [{low:.2g}, {high:.2g}]"
      ax.axvspan(low, high, color="C1", alpha=0.12, label=label)
    ax.plot(lrs, self.losses, color="C0", alpha=0.3, label="batch loss")
    ax.plot(lrs, smoothed, color="C0", label="smoothed loss")
    if len(lrs) > SKIP_BEGIN:
      ax.axvspan(lrs[0], lrs[SKIP_BEGIN], color="0.5", alpha=0.1, label="noisy start (skipped)")
    meaning = {
      "steep": "steepest fall",
      "valley": "middle of the longest fall",
      "minimum": "lowest loss's rate / 10",
    }
    for (name, lr), color in zip(self.suggestions.items(), ("C2", "C3", "C4"), strict=False):
      if np.isfinite(lr):
        ax.axvline(
          lr, color=color, linestyle="--", label=f"{name} ({meaning.get(name, name)}): {lr:.2g}"
        )
    finite = smoothed[np.isfinite(smoothed)]
    if len(finite):
      bottom, start = float(finite.min()), float(finite[: max(1, len(finite) // 10)].max())
      top = max(start, bottom) + 0.25 * (max(start, bottom) - bottom + 1e-12)
      ax.set_ylim(bottom - 0.1 * (top - bottom), top)
    heading = (title + ": " if title else "") + "learning-rate range test"
    if self.notes:
      heading += "\n" + "\n".join(self.notes)
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss")
    ax.set_title(heading, fontsize="medium" if not self.notes else "small")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


SKIP_BEGIN, SKIP_END = 10, 1  # as Lightning: the first points are the noisiest
MIN_POINTS = 10  # points the curve needs after the skipped ends to suggest anything
FLAT_NOISE = 6.5  # a fall within this many standard errors of the noise is no fall
NEGLIGIBLE = 1e-4  # nor is a fall (or a rise) under this fraction of the loss's own size
DIVERGE_NOISE = 3.0  # a rise within this many batch-noise deviations is no divergence
ALRAO_DECADES = 4  # the suggested Alrao interval spans this many decades below its top
NO_SUGGESTIONS = {"steep": float("nan"), "valley": float("nan"), "minimum": float("nan")}


def _batch_noise(losses: np.ndarray, *, robust_only: bool = False) -> float:
  """The batch losses' standard deviation, from consecutive differences (a trend cancels):
  the larger of a robust estimate (median absolute deviation) and the plain one, so that
  neither a few outliers nor a skewed, heavy-tailed loss makes noise look like a fall.
  ``robust_only``: the robust estimate alone, where a climb to divergence is in the curve."""
  if len(losses) < 3:
    return 0.0
  steps = np.diff(losses)
  robust = 1.4826 * float(np.median(np.abs(steps - np.median(steps))))
  return (robust if robust_only else max(robust, float(np.std(steps)))) / np.sqrt(2.0)


def _rose_too_far(smoothed: np.ndarray, losses: np.ndarray, factor: float, offset: float) -> bool:
  """Whether the last point of a curve has diverged: not finite, or risen above the best
  before it (past the noisy start) by more than ``factor - 1`` times the curve's own scale,
  the largest of its fall to that best, ``DIVERGE_NOISE`` batch-noise deviations and
  ``NEGLIGIBLE`` of the loss's size before it (the curves are given less ``offset``). Only
  differences of losses enter otherwise: a constant shift of the loss moves nothing
  (fastai's ``factor`` times the best loss would)."""
  last = smoothed[-1]
  if not (np.isfinite(last) and np.isfinite(losses[-1])):
    return True
  if len(smoothed) <= SKIP_BEGIN + 1:
    return False
  level = _level(losses[:-1] + offset)
  best_at = SKIP_BEGIN + int(np.argmin(smoothed[SKIP_BEGIN:-1]))  # a lucky start is no best
  best = smoothed[best_at]
  fall = float(np.max(smoothed[: best_at + 1]) - best)
  noise = _batch_noise(losses, robust_only=True)  # the climb itself is no noise
  scale = max(fall, DIVERGE_NOISE * noise, NEGLIGIBLE * level)
  return bool(last - best > (factor - 1.0) * scale)


def _stable_length(smoothed: np.ndarray, losses: np.ndarray, factor: float, offset: float) -> int:
  """How many points come before the curve's first diverged one (see :func:`_rose_too_far`)."""
  for i in range(len(smoothed)):
    if _rose_too_far(smoothed[: i + 1], losses[: i + 1], factor, offset):
      return i
  return len(smoothed)


def _level(losses: np.ndarray) -> float:
  """The loss's own size: its largest finite magnitude."""
  finite = np.abs(losses[np.isfinite(losses)])
  return float(finite.max()) if len(finite) else 0.0


def _usable(
  lrs: np.ndarray,
  smoothed: np.ndarray,
  losses: np.ndarray | None = None,
  diverge_factor: float = 4.0,
  *,
  offset: float = 0.0,
  kept: int | None = None,
) -> tuple[np.ndarray, np.ndarray, str | None]:
  """The curve without its noisy ends and its divergence, or why it cannot be read.

  A curve is flat when the batch losses' running mean (over an eighth of the curve, at least
  3 points) never falls by more than ``FLAT_NOISE`` standard errors of that mean, the batch
  noise measured from consecutive losses: whatever it does is noise; or when that fall is
  under ``NEGLIGIBLE`` of the loss's own size (its largest magnitude before divergence): the
  loss did not move. Only differences of losses are read otherwise, so that a constant shift
  of the loss changes nothing (the curves may be given less any ``offset``: the size is read
  on the losses themselves). ``kept``: how many points precede divergence, when the caller
  found it already (:func:`lr_find` stops there); otherwise it is found here.
  """
  losses = smoothed if losses is None else losses
  if kept is None:
    kept = _stable_length(smoothed, losses, diverge_factor, offset)
  lrs, smoothed, losses = lrs[:kept], smoothed[:kept], losses[:kept]
  level = _level(losses + offset)
  if len(lrs) - SKIP_BEGIN - SKIP_END < MIN_POINTS:
    return lrs[:0], smoothed[:0], (
      f"too short: {len(lrs)} usable steps, of which the first {SKIP_BEGIN} (noisy) and the "
      f"last are skipped; run at least {SKIP_BEGIN + SKIP_END + MIN_POINTS} steps (num_steps, "
      "--steps) or give more batches"
    )
  keep = slice(SKIP_BEGIN, len(lrs) - SKIP_END)
  lrs, smoothed, losses = lrs[keep], smoothed[keep], losses[keep]
  window = max(3, len(losses) // 8)
  mean = np.convolve(losses, np.ones(window) / window, mode="valid")
  fall = float(np.max(np.maximum.accumulate(mean) - mean))
  lowest = int(np.argmin(smoothed))  # past it the loss turns up: a climb, not noise
  before = losses[: lowest + 1] if lowest >= MIN_POINTS else losses
  noise = max(_batch_noise(before), _batch_noise(losses, robust_only=True)) / np.sqrt(window)
  if fall <= FLAT_NOISE * noise:
    return lrs[:0], smoothed[:0], (
      f"flat: between {lrs[0]:.2g} and {lrs[-1]:.2g} the loss never fell by more than its "
      f"noise (it fell by {fall:.3g}; noise {noise:.3g}); the good rates are not in this "
      "range: raise end_lr if it stayed flat, lower start_lr if it rose from the start"
    )
  if fall <= NEGLIGIBLE * level:
    return lrs[:0], smoothed[:0], (
      f"flat: between {lrs[0]:.2g} and {lrs[-1]:.2g} the loss barely moved (it fell by "
      f"{fall:.3g}, under {NEGLIGIBLE:g} of its size {level:.3g}); the good rates are not in "
      "this range: raise end_lr if it stayed flat, lower start_lr if it rose from the start"
    )
  return lrs, smoothed, None


def _suggest(lrs: np.ndarray, smoothed: np.ndarray) -> dict[str, float]:
  """Rates read off a usable smoothed curve (see :func:`_usable`)."""
  if not len(lrs):
    return dict(NO_SUGGESTIONS)
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


def alrao_interval(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, float]:
  """The Alrao interval a range test suggests: ``(lr_top / 10**4, lr_top)``.

  ``lr_top`` is the rate at the lowest smoothed loss, read as the suggestions are: without
  the first 10 points (the moving average's noisy start, where a lucky first batch can be
  the lowest point of a flat curve) and the last, and before divergence. Beyond it the loss
  climbs towards divergence, so units with larger rates would only saturate; below it, four
  decades leave room for the layers that want smaller rates (Alrao works once the interval
  holds a good rate, and a wider one costs only the share of units that get useless rates).
  A curve too short or flat to read (see :func:`lr_find`'s notes) gives ``(nan, nan)``.
  """
  lrs, smoothed, _ = _usable(np.asarray(lrs), np.asarray(smoothed))
  return _interval(lrs, smoothed)


def _interval(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, float]:
  if not len(lrs):
    return (float("nan"), float("nan"))
  top = float(lrs[int(np.argmin(smoothed))])
  return (top / 10.0**ALRAO_DECADES, top)


def _batch_loss(outputs: Any, targets: jax.Array, likelihood: Likelihood) -> tuple:
  """(objective to differentiate, loss to record) of one batch, for a plain or Alrao output."""
  if isinstance(outputs, HEAD_OUTPUTS):  # every copy at the test's rate
    num_copies = outputs.shape[0]
    loss, aux = alrao_loss(
      outputs, targets, jnp.full((num_copies,), 1.0 / num_copies), likelihood=likelihood
    )
    return loss, aux.mixture_nll
  loss = -jnp.mean(likelihood(outputs[None], targets))
  return loss, loss


def _linen_objective(model, state, likelihood, kwargs, streams):
  if isinstance(state, TrainState):
    variables, rng = {"params": state.params, **state.model_state}, state.rng
  elif isinstance(state, dict) and "params" in state:
    variables, rng = dict(state), jax.random.key(0)
  else:
    raise TypeError(
      "a linen model's range test needs its TrainState (alrao_jax.create_train_state) or its "
      f"variables dict (model.init(...)), got {type(state).__name__}."
    )
  params = variables.pop("params")
  mutable = list(variables)

  def objective(params, carry, batch):
    collections, rng = carry
    rng, step_key = jax.random.split(rng)
    rngs = stream_keys(step_key, streams)
    outputs, collections = model.apply(
      {"params": params, **collections}, batch[0], rngs=rngs, mutable=mutable, **kwargs
    )
    loss, recorded = _batch_loss(outputs, batch[1], likelihood)
    return loss, (recorded, (dict(collections), rng))

  return objective, params, (variables, rng)


def _nnx_objective(model, likelihood, kwargs):
  copy = nnx.clone(model)  # the caller's model keeps its values and its mode
  copy.train()
  graphdef, params, rest = nnx.split(copy, nnx.Param, ...)

  def objective(params, rest, batch):
    module = nnx.merge(graphdef, params, rest, copy=True)
    loss, recorded = _batch_loss(module(batch[0], **kwargs), batch[1], likelihood)
    return loss, (recorded, nnx.state(module, nnx.Not(nnx.Param)))

  return objective, params, rest


def _plain_objective(loss_fn):
  def objective(params, carry, batch):
    loss = loss_fn(params, batch)
    return loss, (loss, carry)

  return objective


def takes_learning_rate(
  optimizer: Callable[..., optax.GradientTransformation],
) -> Callable[..., optax.GradientTransformation]:
  """The factory with its rate as a keyword named ``learning_rate`` (what
  ``optax.inject_hyperparams`` injects): ``lambda lr: ...`` is called with it positionally."""
  if not callable(optimizer):
    raise TypeError(f"optimizer must be a factory lr -> GradientTransformation, got {optimizer!r}.")
  try:
    parameters = inspect.signature(optimizer).parameters
  except (TypeError, ValueError):
    return optimizer
  if "learning_rate" in parameters:
    return optimizer

  def factory(learning_rate: Any) -> optax.GradientTransformation:
    return optimizer(learning_rate)

  return factory


def range_test_batches(
  split: Split, *, batch_size: int, num_steps: int, seed: int = 0, in_order: bool = False
) -> list[tuple[Any, np.ndarray]]:
  """The ``(inputs, targets)`` batches of a range test: ``num_steps`` batches of the split,
  its rows shuffled afresh at each pass (``in_order``: the rows in order, as carried streams
  are trained), as many passes as it takes.

  Example:
    >>> import numpy as np
    >>> from alrao_jax.lr_find import range_test_batches
    >>> from alrao_jax.splits import Split
    >>> split = Split(np.arange(10.0)[:, None], np.arange(10) % 2)
    >>> [x.shape for x, _ in range_test_batches(split, batch_size=4, num_steps=3)]
    [(4, 1), (4, 1), (4, 1)]
  """
  rows = rows_of(split.inputs)
  passes = -(-num_steps * batch_size // rows)
  rng = np.random.default_rng(seed)
  if in_order:
    order = np.tile(np.arange(rows), passes)
  else:
    order = np.concatenate([rng.permutation(rows) for _ in range(passes)])
  index = order[: num_steps * batch_size].reshape(num_steps, batch_size)
  return [(take(split.inputs, i), np.asarray(split.targets)[i]) for i in index]


def lr_find(
  loss_fn: Callable[[Any, Any], jax.Array] | nn.Module | nnx.Module,
  params: Any,
  batches: Iterable[Any],
  *,
  optimizer: Callable[..., optax.GradientTransformation] = optax.sgd,
  start_lr: float = 1e-7,
  end_lr: float = 10.0,
  num_steps: int = 100,
  beta: float = 0.98,
  diverge_factor: float = 4.0,
  likelihood: Likelihood = categorical_log_likelihood,
  train_kwargs: Mapping[str, Any] | None = None,
  rng_streams: Sequence[str] = ("dropout",),
) -> LRFindResult:
  """Runs the learning-rate range test; the caller's parameters and model are left as they were.

  Step ``i`` trains with ``start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))`` and
  records the batch loss before its update. The test stops after ``num_steps`` steps, when
  ``batches`` runs out, or when the loss diverges: it is not finite, or (past the first 10
  steps) the smoothed loss has risen above its best by more than ``diverge_factor - 1``
  times the curve's own scale (the larger of its fall to that best and 3 deviations of the
  batch noise). Only differences of losses are read, so that a constant shift of the loss
  (a likelihood's normalising constant, a loss below zero) changes nothing; fastai's rule,
  ``diverge_factor`` times the best loss, stops a negative loss at once. A sequence of
  batches is cycled; any other iterable is read once.

  The first argument is a loss function ``(params, batch) -> scalar``, or a model:

  * a linen module, with ``params`` its :class:`alrao_jax.TrainState` or variables dict;
    it runs with ``train_kwargs`` (e.g. ``{"train": True}``), its other collections
    (BatchNorm's ``batch_stats``) updated as in training and a fresh key per RNG stream;
  * an NNX module, with ``params=None``; a clone of it runs in ``train()`` mode.

  A model with an Alrao head trains every copy at the test's rate and records the loss of
  their even mixture; a plain output records its own loss (``likelihood`` of its outputs).
  Every parameter, each copy and each feature, gets the same rate: the curve says where the
  network's good rates lie, which is what Alrao's interval must cover.

  Args:
    loss_fn: ``(params, batch) -> scalar loss``, or a linen or NNX model.
    params: the starting parameters (a model's TrainState or variables; ``None`` for NNX).
      Nothing is modified: JAX arrays are immutable and nothing is donated.
    batches: training batches; ``(inputs, targets)`` pairs for a model.
    optimizer: a factory ``learning_rate -> GradientTransformation`` such as ``optax.sgd``
      (its rate as a keyword ``learning_rate`` or as its first argument, ``lambda lr: ...``)
      or ``optax.adam``.
    start_lr: first learning rate, > 0.
    end_lr: last learning rate, > ``start_lr``.
    num_steps: number of steps of the ramp, >= 3.
    beta: smoothing factor of the moving average.
    diverge_factor: stop when the smoothed loss rises above its best by more than
      ``diverge_factor - 1`` times the curve's scale (see above), > 1.
    likelihood: a model's per-example log-likelihood (default categorical).
    train_kwargs: keyword arguments of a model's call in training.
    rng_streams: a linen model's RNG streams in training (see
      :func:`alrao_jax.create_train_state`).

  Returns:
    An :class:`LRFindResult`. Suggestions, read off the smoothed curve without its first 10
    and last point (as Lightning) and its divergence: ``steep`` (steepest fall against log
    lr, measured over +-5% of the curve), ``valley`` (middle of the longest stretch of
    falling loss) and ``minimum`` (a tenth of the rate at the lowest smoothed loss);
    ``alrao_interval`` (see :func:`alrao_interval`) for Alrao over the same optimizer. A
    curve with fewer than 10 points left, or a flat one, suggests nothing: its suggestions
    and interval are ``nan`` and ``notes`` says why and what to change. A curve is flat
    (the good rates lie outside the range tested) when its batch loss's running mean never
    falls by more than 6.5 standard errors of its noise (simulated pure noise, skewed or
    heavy-tailed included, exceeds that in about 0.5% of curves) or by more than 1e-4 of the
    loss's own size. ``result.plot()``
    draws the curve.

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
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 3:
    raise ValueError(f"num_steps must be an int >= 3, got {num_steps!r}.")
  if not 0.0 <= beta < 1.0:
    raise ValueError(f"beta must be in [0, 1), got {beta}.")
  if not diverge_factor > 1.0:
    raise ValueError(f"diverge_factor must be > 1, got {diverge_factor}.")
  kwargs = dict(train_kwargs or {})
  if is_nnx(loss_fn, "Module"):
    if params is not None:
      raise TypeError("an NNX model's range test takes params=None: the model holds them.")
    objective, params, carry = _nnx_objective(loss_fn, likelihood, kwargs)
  elif isinstance(loss_fn, nn.Module):
    streams = check_rng_streams(rng_streams)
    objective, params, carry = _linen_objective(loss_fn, params, likelihood, kwargs, streams)
  elif callable(loss_fn):
    if kwargs:
      raise TypeError("train_kwargs apply to a model; a loss function takes (params, batch).")
    objective, carry = _plain_objective(loss_fn), ()
  else:
    raise TypeError(f"loss_fn must be a loss function or a model, got {type(loss_fn).__name__}.")
  tx = optax.inject_hyperparams(takes_learning_rate(optimizer))(learning_rate=start_lr)

  @jax.jit
  def step(params, opt_state, carry, batch, lr):
    opt_state.hyperparams["learning_rate"] = lr
    grads, (loss, carry) = jax.grad(objective, has_aux=True)(params, carry, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, carry, loss

  source = itertools.cycle(batches) if isinstance(batches, list | tuple) else iter(batches)
  ratio = math.log(end_lr / start_lr)
  # The curve is read relative to its first loss: a constant shift of the loss moves nothing.
  lrs, losses, relative, smoothed = [], [], [], []
  current, opt_state = params, tx.init(params)
  first, average, diverged = None, 0.0, False
  for i, batch in zip(range(num_steps), source, strict=False):
    lr = start_lr * math.exp(ratio * i / (num_steps - 1))
    current, opt_state, carry, loss = step(current, opt_state, carry, batch, np.float32(lr))
    loss = float(loss)
    first = loss if first is None else first
    average = beta * average + (1 - beta) * (loss - first)
    lrs.append(lr)
    losses.append(loss)
    relative.append(loss - first)
    smoothed.append(average / (1 - beta ** (i + 1)))
    diverged = _rose_too_far(np.asarray(smoothed), np.asarray(relative), diverge_factor, first)
    if diverged:
      break
  if not lrs:
    raise ValueError("batches is empty: the range test needs at least one batch.")
  lrs_a, relative_a, smoothed_a = np.asarray(lrs), np.asarray(relative), np.asarray(smoothed)
  usable_lrs, usable, problem = _usable(
    lrs_a, smoothed_a, relative_a, diverge_factor, offset=first, kept=len(lrs) - diverged
  )
  return LRFindResult(
    learning_rates=lrs_a,
    losses=np.asarray(losses),
    smoothed=smoothed_a + first,
    suggestions=_suggest(usable_lrs, usable),
    alrao_interval=_interval(usable_lrs, usable),
    notes=() if problem is None else (problem,),
  )

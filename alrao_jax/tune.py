"""A learning rate for the user's own model: one Alrao run, then a short race of the rates it
points to.

:func:`tune` trains the model once with Alrao, reads the candidates off that run
(:func:`alrao_jax.suggest_lr`: the switch's choice, the copies that learned, the body's
movement), adds their neighbours half a decade away, and races them with the plain optimizer
for a few epochs in one vmapped program (:func:`alrao_jax.sweep`); the suggestion holds unless
the race's validation loss clearly beat it (:func:`alrao_jax.race_pick`).
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
import optax

from alrao_jax.checks import check_bool, check_bounds, check_int
from alrao_jax.defaults import RACE_EPOCHS, TOLERANCE
from alrao_jax.loop import FitResult, fit
from alrao_jax.loss import Likelihood, categorical_log_likelihood
from alrao_jax.nnx_types import is_nnx, nnx
from alrao_jax.splits import as_splits, rows_of
from alrao_jax.steps import copy_tree
from alrao_jax.suggest_lr import LRSuggestion, suggest_lr
from alrao_jax.sweep import SweepResult, sweep
from alrao_jax.transform import alrao_adam, alrao_sgd

OPTIMIZERS = {"sgd": (alrao_sgd, optax.sgd), "adam": (alrao_adam, optax.adam)}
NEIGHBOUR_DECADES = 0.5  # each candidate is raced with its neighbours this far on each side
MERGE_DECADES = 0.2  # candidates closer than this are raced once
LADDER_DECADES = 0.5  # the widest gap the race leaves between two racers, budget allowing
MAX_RACERS = 10  # the race's budget of racers: a wider ladder than this thins its fill
WINDOW_DECADES = 0.5  # racers stay within the Alrao interval widened by this much each side


class TuneResult(NamedTuple):
  """What :func:`tune` returns."""

  lr: float  # the rate picked (see race_pick; nan when every racer diverged)
  suggestion: LRSuggestion  # the evidence of the Alrao run
  candidates: np.ndarray  # the rates raced, increasing (none when a trusted suggestion skipped it)
  race: SweepResult | None  # the race: each candidate's history and best validation loss
  alrao: FitResult  # the Alrao run
  seconds: dict[str, float]  # wall time of the Alrao run, the race, and both
  ladder: Ladder | None = None  # how the candidates were laid out, and what they left untried


class Ladder(NamedTuple):
  """What :func:`race_ladder` returns."""

  rates: np.ndarray  # the rates to race, increasing
  untried: tuple[tuple[float, float], ...]  # stretches between racers wider than LADDER_DECADES
  clipped: dict[str, float]  # the weighed rates outside the window, by name: raced at its edge
  dropped: tuple[str, ...]  # the weighed rates left out as implausible (a copy that never learned)


def _fill(kept: list[float], step: float) -> list[float]:
  """``kept`` (sorted log-rates) with evenly spaced points in every gap wider than ``step``."""
  filled = [kept[0]]
  for low, high in itertools.pairwise(kept):
    count = int(np.ceil((high - low) / step - 1e-9))
    filled.extend(low + (high - low) * np.arange(1, count + 1) / count)
  return filled


def race_ladder(suggestion: LRSuggestion, *, max_racers: int = MAX_RACERS) -> Ladder:
  """The rates :func:`tune` races, and what the race leaves untried.

  1. The centres: the suggestion and the rates it weighed (:attr:`LRSuggestion.candidates`),
     less those from a copy that barely moved (when the suggestion followed the copies that
     learned, the posterior's and the leading copy's rates are dropped), each clipped into
     the Alrao interval widened by half a decade on each side (a body's or a posterior's
     rate cannot point further than the copies that gave it).
  2. Each centre with its neighbours half a decade below and above; a rate closer than 0.2
     decades to one already kept (the suggestion and its neighbours first, then the others
     from the lowest up) is merged into it, so the suggestion is raced as it is.
  3. A geometric ladder in every gap between them wider than half a decade
     (:data:`LADDER_DECADES`), so that no stretch between the lowest and the highest racer is
     left untried; when that takes more than ``max_racers`` racers, the ladder's steps widen
     until it fits, and the gaps still wider than half a decade are returned as untried.

  Args:
    suggestion: the Alrao run's :class:`alrao_jax.LRSuggestion`.
    max_racers: the race's budget; the centres and their neighbours are raced whatever it is.

  Returns:
    A :class:`Ladder`.

  Example:
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from alrao_jax.tune import race_ladder
    >>> evidence = SimpleNamespace(lr=0.01, candidates={'body': 1.0}, copy_lrs=np.array([1e-4, 10]))
    >>> ladder = race_ladder(evidence)  # 0.01 and 1.0, their neighbours, and 0.1 between them
    >>> np.log10(ladder.rates).round(2).tolist(), ladder.untried
    ([-2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5], ())
    >>> far = SimpleNamespace(lr=0.01, candidates={'body': 300.0}, copy_lrs=np.array([1e-4, 10]))
    >>> race_ladder(far).clipped  # raced at the window's top, 10 ** 1.5
    {'body': 300.0}
  """
  max_racers = check_int(max_racers, "max_racers", minimum=1)
  weighed = dict(suggestion.candidates)
  dropped = ("posterior", "leading") if "learned" in weighed else ()
  copy_lrs = np.asarray(getattr(suggestion, "copy_lrs", ()), np.float64)
  copy_lrs = copy_lrs[np.isfinite(copy_lrs) & (copy_lrs > 0)]
  low, high = -np.inf, np.inf
  if copy_lrs.size:
    low = np.log10(copy_lrs.min()) - WINDOW_DECADES
    high = np.log10(copy_lrs.max()) + WINDOW_DECADES
  clipped = {}
  centres = [("suggestion", suggestion.lr)]
  centres += [(name, rate) for name, rate in weighed.items() if name not in dropped]
  logs = []
  for name, rate in centres:
    if not (np.isfinite(rate) and rate > 0):
      continue
    value = float(np.log10(rate))
    if not low <= value <= high:
      clipped[name] = float(rate)
    logs.append(float(np.clip(value, low, high)))
  around = [float(np.clip(c + k * NEIGHBOUR_DECADES, low, high)) for c in logs for k in (0, -1, 1)]
  first = around[:3] if np.isfinite(suggestion.lr) and suggestion.lr > 0 else []
  kept: list[float] = []
  for value in first + sorted(around[len(first) :]):
    if all(abs(value - k) >= MERGE_DECADES for k in kept):
      kept.append(value)
  if not kept:
    return Ladder(np.zeros(0), (), clipped, ())
  kept.sort()
  step = LADDER_DECADES
  while len(filled := _fill(kept, step)) > max(max_racers, len(kept)):
    step += 0.1
  rates = np.asarray(filled)
  untried = tuple(
    (float(10**a), float(10**b))
    for a, b in itertools.pairwise(rates)
    if b - a > LADDER_DECADES + 1e-9
  )
  return Ladder(10.0**rates, untried, clipped, tuple(n for n in dropped if n in weighed))


def race_candidates(suggestion: LRSuggestion, *, max_racers: int = MAX_RACERS) -> np.ndarray:
  """The rates :func:`tune` races, increasing: :attr:`Ladder.rates` of :func:`race_ladder`."""
  return race_ladder(suggestion, max_racers=max_racers).rates


def race_length(epochs: int, racers: int) -> int:
  """The race's default length in epochs: ``epochs // racers``, at least 1 and at most
  :data:`RACE_EPOCHS` (2).

  The racers together then train about as many epochs as the Alrao run (``epochs``), so that on
  a CPU, where a vmapped member costs about one run's share, the race costs about one plain run
  (an Alrao run of 5 epochs and 7 racers: 1 epoch); a longer run races for 2 epochs.

  Args:
    epochs: the Alrao run's epochs.
    racers: the number of rates raced.

  Returns:
    The race's epochs, 1 or 2.

  Example:
    >>> from alrao_jax.tune import race_length
    >>> race_length(60, 6), race_length(5, 7)
    (2, 1)
  """
  return int(np.clip(epochs // max(racers, 1), 1, RACE_EPOCHS))


def annealed(
  optimizer: Callable[..., optax.GradientTransformation], *, steps: int, last: int
) -> Callable[..., optax.GradientTransformation]:
  """``optimizer`` with its updates scaled from 1 down to 0, linearly, over the last ``last``
  of ``steps`` steps: the racers of :func:`race_suggestion` (``anneal=True``) are then compared
  at the end of a schedule, where a fast rate no longer leads by the noise it still carries.

  Args:
    optimizer: a factory ``learning_rate -> GradientTransformation``, e.g. ``optax.sgd``.
    steps: the race's steps.
    last: how many of them anneal, ``1 <= last <= steps``.

  Returns:
    A factory of the same signature (:func:`alrao_jax.sweep` injects its rate).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from alrao_jax.tune import annealed
    >>> tx = annealed(optax.sgd, steps=4, last=2)(learning_rate=1.0)
    >>> state, grads = tx.init(jnp.zeros(1)), jnp.ones(1)
    >>> moves = []
    >>> for _ in range(4):
    ...   updates, state = tx.update(grads, state)
    ...   moves.append(float(-updates[0]))
    >>> moves
    [1.0, 1.0, 1.0, 0.5]
  """
  steps = check_int(steps, "steps", minimum=1)
  last = check_int(last, "last", minimum=1)
  if last > steps:
    raise ValueError(f"last must be at most steps ({steps}), got {last}.")
  schedule = optax.linear_schedule(1.0, 0.0, transition_steps=last, transition_begin=steps - last)

  def factory(learning_rate: Any) -> optax.GradientTransformation:
    return optax.chain(optimizer(learning_rate), optax.scale_by_schedule(schedule))

  return factory


def check_tolerance(tolerance: float) -> None:
  """Raises a ValueError when ``tolerance`` (see :func:`alrao_jax.race_pick`) is not in [0, 1]."""
  if not 0.0 <= tolerance <= 1.0:
    raise ValueError(
      f"tolerance must be in [0, 1] (a share of the best racer's progress), got {tolerance}."
    )


def race_pick(
  values: Any,
  valid_losses: Any,
  start_loss: float,
  suggestion: float,
  *,
  tolerance: float = TOLERANCE,
) -> int:
  """The racer that :func:`tune` picks: the suggestion's, unless the race clearly beat it.

  A race of a few epochs rewards the rates that learn fastest at first, which are often above
  the rate that ends best (a short-horizon bias: on the bundled tasks the best of a two-epoch
  race sat 0.2-0.5 decades above the grid's best rate, see ``benchmarks/results/tune_rules.md``).
  The race is therefore a check on the Alrao run's suggestion rather than a contest: the
  racer nearest the suggestion (in log-rate) is kept when its validation loss fell from the
  racers' common start by at least ``1 - tolerance`` of what the best racer's fell; otherwise
  the best racer is picked.

  Args:
    values: the raced rates.
    valid_losses: each racer's best validation loss (inf or nan: diverged).
    start_loss: the validation loss of the racers' common start.
    suggestion: the Alrao run's suggestion (:attr:`alrao_jax.LRSuggestion.lr`).
    tolerance: the share of the best racer's progress the suggestion's racer may lag by, in
      ``[0, 1]``; 0 picks the best racer unless the suggestion's ties it.

  Returns:
    The index of the racer picked; -1 when no racer has a finite loss.

  Raises:
    ValueError: a tolerance outside [0, 1], rates that are not positive and finite, or
      values and losses of different lengths.

  Example:
    >>> import alrao_jax
    >>> rates, losses = [0.03, 0.1, 0.3], [1.8, 1.67, 1.60]  # from 2.30: 0.63, 0.70 fallen
    >>> alrao_jax.race_pick(rates, losses, start_loss=2.30, suggestion=0.1)  # 0.63 >= 0.8 * 0.70
    1
    >>> alrao_jax.race_pick(rates, [1.8, 2.0, 1.60], start_loss=2.30, suggestion=0.1)  # 0.3 < 0.56
    2
  """
  check_tolerance(tolerance)
  rates = np.asarray(values, np.float64)
  losses = np.asarray(valid_losses, np.float64)
  if rates.shape != losses.shape or rates.ndim != 1:
    raise ValueError(
      f"values and valid_losses must be 1-D and of one length, got {rates.shape} and "
      f"{losses.shape}."
    )
  if not (np.isfinite(rates).all() and (rates > 0).all()):
    raise ValueError(f"values must be learning rates > 0, got {rates.tolist()}.")
  losses = np.where(np.isfinite(losses), losses, np.inf)
  if not np.isfinite(losses).any():
    return -1
  best = int(np.argmin(losses))
  if not (np.isfinite(suggestion) and suggestion > 0):
    return best
  nearest = int(np.argmin(np.abs(np.log10(rates) - np.log10(suggestion))))
  progress = start_loss - losses
  learned = np.isfinite(progress[best]) and progress[best] > 0
  if learned and progress[nearest] >= (1.0 - tolerance) * progress[best]:
    return nearest
  return best


def picked_rate(race: SweepResult, suggestion: float, *, tolerance: float = TOLERANCE) -> float:
  """The rate :func:`race_pick` takes from a race run by :func:`alrao_jax.sweep` (nan when
  every racer diverged)."""
  pick = race_pick(
    race.values, race.valid_losses, race.start_valid_loss, suggestion, tolerance=tolerance
  )
  return float(race.values[pick]) if pick >= 0 else float("nan")


def tune(
  model: nn.Module | nnx.Module,
  splits: Any,
  *,
  lr_min: float,
  lr_max: float,
  epochs: int,
  race_epochs: int | None = None,
  tolerance: float = TOLERANCE,
  optimizer: str = "sgd",
  plain_model: nn.Module | nnx.Module | None = None,
  seed: int = 0,
  batch_size: int = 32,
  patience: int | None = None,
  likelihood: Likelihood = categorical_log_likelihood,
  train_kwargs: Mapping[str, Any] | None = None,
  eval_kwargs: Mapping[str, Any] | None = None,
  rng_streams: Sequence[str] = ("dropout",),
  carry: Sequence[str] = (),
  eval_model: nn.Module | None = None,
  plain_eval_model: nn.Module | None = None,
  max_racers: int = MAX_RACERS,
  anneal: bool = False,
  trust_high: bool = False,
) -> TuneResult:
  """Picks a learning rate for the model's plain optimizer from one Alrao run and a race.

  1. One Alrao run (:func:`alrao_jax.alrao_sgd` or :func:`alrao_jax.alrao_adam` over
     ``[lr_min, lr_max]``), kept at its best validation epoch (:func:`alrao_jax.fit`).
  2. :func:`alrao_jax.suggest_lr` on it, with the run's posteriors and its initial
     parameters: the suggestion and every candidate it weighed, each with its neighbours
     half a decade away, and a ladder that leaves no gap wider than half a decade between
     them (:func:`race_ladder`, at most ``max_racers`` racers).
  3. A race of the candidates with ``optax.sgd`` (or ``optax.adam``): ``race_epochs``
     epochs, all in one program (:func:`alrao_jax.sweep`, read on validation only). The
     suggestion's racer is picked unless the race clearly beat it, else the best racer
     (:func:`alrao_jax.race_pick`, ``tolerance``).

  Args:
    model: a linen or NNX module ending with an Alrao head. An NNX model is trained in place
      by the Alrao run (it ends with its best epoch); the race trains clones of its start.
    splits: an :class:`alrao_jax.Splits`, as for fit.
    lr_min: the Alrao interval's lower end.
    lr_max: its upper end.
    epochs: epochs of the Alrao run.
    race_epochs: epochs of the race, >= 1; default :func:`race_length` (``epochs`` divided by
      the number of racers, 1 or 2: the race costs about one plain run).
    tolerance: how far the suggestion's racer may lag the best racer and still be picked, as a
      share of the best racer's fall in validation loss (see :func:`alrao_jax.race_pick`); 0 picks
      the race's best.
    optimizer: ``"sgd"`` or ``"adam"``: Alrao-SGD suggests SGD's rate, Alrao-Adam Adam's.
    plain_model: the model the race trains (e.g. the same network with a plain output layer);
      default: ``model`` itself (its copies all at the raced rate).
    seed: seed of the parameters, the shuffles and the Alrao rates.
    batch_size: examples per step.
    patience: early stopping of the Alrao run (see fit).
    likelihood: the per-example log-likelihood.
    train_kwargs: keyword arguments of the model call in training.
    eval_kwargs: keyword arguments of the model call in evaluation.
    rng_streams: linen: the RNG streams the model draws from in training.
    carry: linen: the variable collections the model carries from batch to batch (an RNN on
      streams, see :func:`alrao_jax.fit`); the Alrao run and the race both keep the streams'
      order.
    eval_model: linen: the module that evaluates ``model`` when it differs from the training
      one (e.g. a dropout rate or ``deterministic`` flag set as a field, as for
      :func:`alrao_jax.fit`); it evaluates the race too when the race trains ``model``.
    plain_eval_model: linen: the module that evaluates ``plain_model``, when both are given.
    max_racers: the race's budget of racers (:func:`race_ladder`); a stretch of the evidence
      it cannot cover at half a decade is warned about and listed in the result's ladder.
    anneal: the racers' rates fall to 0 over the race's last epoch (see
      :func:`race_suggestion`); with ``race_epochs`` a quarter of the final run's epochs, the
      best race measured, for more of the race's compute.
    trust_high: a suggestion of "high" confidence is taken as it is, with no race (``race``
      None, no candidates): the race costs about one plain run, and on the 6 "high" seeds of
      ``benchmarks/results/tune.md`` and ``tune_races.md`` it kept the suggestion every time.

  Returns:
    A :class:`TuneResult`.

  Raises:
    ValueError: an unknown optimizer, bad bounds, epochs or tolerance; ``plain_eval_model``
      without ``plain_model``.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, alrao_jax
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return alrao_jax.AlraoHead(2, num_copies=4)(nn.relu(nn.Dense(16)(x)))
    >>> x = jax.random.normal(jax.random.key(0), (160, 4)); y = (x[:, 0] > 0).astype(int)
    >>> splits = alrao_jax.split_arrays(x, y, valid=32, test=32)
    >>> result = alrao_jax.tune(Net(), splits, lr_min=1e-4, lr_max=10.0, epochs=3,
    ...                         race_epochs=1, batch_size=16)
    >>> bool(1e-5 < result.lr < 100), len(result.race.values) == len(result.candidates)
    (True, True)

  References:
    Blier, Wolinski & Ollivier, `Learning with Random Learning Rates
    <https://arxiv.org/abs/1810.01322>`_, 2018 (section 4: the switch's posterior).
  """
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}.")
  check_bounds(lr_min, lr_max)
  if race_epochs is not None:
    race_epochs = check_int(race_epochs, "race_epochs", minimum=1)
  check_tolerance(tolerance)
  check_bool(trust_high, "trust_high")
  epochs = check_int(epochs, "epochs", minimum=1)
  if plain_eval_model is not None and plain_model is None:
    raise ValueError(
      "plain_eval_model evaluates plain_model, which is not given: the race trains model "
      "itself and eval_model evaluates it; pass plain_model too, or eval_model alone."
    )
  make_alrao, plain = OPTIMIZERS[optimizer]
  tx = make_alrao(lr_min, lr_max, key=jax.random.key(seed + 1))
  splits = as_splits(splits)
  kwargs = {"likelihood": likelihood, "train_kwargs": train_kwargs, "eval_kwargs": eval_kwargs}
  start = time.perf_counter()
  fit_kwargs = {"epochs": epochs, "seed": seed, "batch_size": batch_size, "patience": patience}
  if is_nnx(model):
    racer = plain_model
    if racer is None:  # the start of the model, in buffers of its own: fit donates the model's
      racer = nnx.clone(model)
      nnx.update(racer, copy_tree(nnx.state(racer)))
    linen_kwargs = {"carry": tuple(carry)} if tuple(carry) else {}  # fit refuses them, naming
    if eval_model is not None:
      linen_kwargs["eval_model"] = eval_model
    race_kwargs = linen_kwargs if plain_eval_model is None else {"eval_model": plain_eval_model}
  else:
    racer = plain_model if plain_model is not None else model
    linen_kwargs = {"rng_streams": rng_streams, "carry": carry, "eval_model": eval_model}
    race_eval = eval_model if plain_model is None else plain_eval_model
    race_kwargs = {**linen_kwargs, "eval_model": race_eval}
  result = fit(model, tx, splits, **fit_kwargs, **kwargs, **linen_kwargs)
  if is_nnx(model):  # trained in place, left at its best epoch
    params, averaging_state = nnx.state(model, nnx.Param), result.state
  else:
    params, averaging_state = result.state.params, result.state.averaging_state
  history = result.history[: max(result.best_epoch, 1)]
  with warnings.catch_warnings():  # a low confidence is what the race is for
    warnings.simplefilter("ignore", UserWarning)
    suggestion = suggest_lr(
      params,
      tx.init(result.initial_params),  # the run's rates: the same key and parameter tree
      averaging_state,
      initial_params=result.initial_params,
      posteriors=[r["posterior"] for r in history],
    )
  alrao_seconds = time.perf_counter() - start
  if trust_high and suggestion.confidence == "high":
    seconds = {"alrao": alrao_seconds, "race": 0.0, "total": alrao_seconds}
    return TuneResult(suggestion.lr, suggestion, np.zeros(0), None, result, seconds)
  raced = race_suggestion(
    racer,
    plain,
    splits,
    suggestion,
    epochs=epochs,
    race_epochs=race_epochs,
    tolerance=tolerance,
    max_racers=max_racers,
    anneal=anneal,
    seed=seed,
    batch_size=batch_size,
    **kwargs,
    **race_kwargs,
  )
  return TuneResult(
    lr=raced.lr,
    suggestion=suggestion,
    candidates=raced.candidates,
    race=raced.race,
    alrao=result,
    seconds={"alrao": alrao_seconds, "race": raced.seconds, "total": alrao_seconds + raced.seconds},
    ladder=raced.ladder,
  )


class Race(NamedTuple):
  """What :func:`race_suggestion` returns."""

  lr: float  # the rate picked (race_pick), or the fallback when every racer diverged
  candidates: np.ndarray  # the rates raced, increasing
  race: SweepResult  # each candidate's history and best validation loss
  epochs: int  # the race's length
  seconds: float  # its wall time, compilation included
  ladder: Ladder  # how the candidates were laid out (race_ladder)


def race_suggestion(
  model: nn.Module | nnx.Module,
  optimizer: Callable[..., optax.GradientTransformation],
  splits: Any,
  suggestion: LRSuggestion,
  *,
  epochs: int,
  race_epochs: int | None = None,
  tolerance: float = TOLERANCE,
  fallback: float = float("nan"),
  max_racers: int = MAX_RACERS,
  anneal: bool = False,
  **sweep_kwargs: Any,
) -> Race:
  """The race of step 3 of :func:`tune`: the suggestion's candidates
  (:func:`race_ladder`) trained with ``optimizer`` in one program (:func:`alrao_jax.sweep`,
  read on validation only), and the rate :func:`race_pick` takes from it.

  Args:
    model: the model the racers train (a plain output layer, or the Alrao model itself).
    optimizer: a factory ``learning_rate -> GradientTransformation``, e.g. ``optax.sgd``.
    splits: an :class:`alrao_jax.Splits`.
    suggestion: the Alrao run's :class:`alrao_jax.LRSuggestion`.
    epochs: the Alrao run's epochs, which set the race's default length (:func:`race_length`).
    race_epochs: the race's length in epochs, >= 1 (default: :func:`race_length`).
    tolerance: see :func:`race_pick`.
    fallback: the rate returned when every racer diverged (default nan: none).
    max_racers: the race's budget of racers (see :func:`race_ladder`); a stretch the budget
      leaves untried is warned about, by its rates.
    anneal: the racers' rates fall linearly to 0 over the race's last epoch
      (:func:`annealed`), so that they are compared at the end of a schedule. Over two epochs
      measured no better than a constant rate (the fast racers settle too); over a quarter of
      the run, annealed or not, the best of the races measured: no seed above 1.19x (1.08x at
      a constant rate) the sweep's pick on the bundled tasks and four other networks, against
      2.04x for two epochs at a constant rate (``benchmarks/results/tune_races.md``).
    **sweep_kwargs: more keyword arguments of :func:`alrao_jax.sweep` (seed, batch_size, ...).

  Returns:
    A :class:`Race`.
  """
  start = time.perf_counter()
  ladder = race_ladder(suggestion, max_racers=max_racers)
  candidates = ladder.rates
  if ladder.untried:
    stretches = ", ".join(f"{a:.3g}-{b:.3g}" for a, b in ladder.untried)
    warnings.warn(
      f"the race left {stretches} untried (gaps wider than {LADDER_DECADES} decades): "
      f"its evidence spans more than {max_racers} racers cover; raise max_racers to race "
      "them.",
      stacklevel=2,
    )
  length = race_length(epochs, len(candidates)) if race_epochs is None else race_epochs
  if anneal:
    per_epoch = rows_of(as_splits(splits).train.inputs) // sweep_kwargs.get("batch_size", 32)
    optimizer = annealed(optimizer, steps=length * per_epoch, last=per_epoch)
  race = sweep(
    model,
    optimizer,
    splits,
    values=candidates,
    epochs=length,
    evaluate_test=False,
    **sweep_kwargs,
  )
  picked = picked_rate(race, suggestion.lr, tolerance=tolerance)
  lr = picked if np.isfinite(picked) else fallback
  return Race(lr, candidates, race, length, time.perf_counter() - start, ladder)

"""Alrao as a learning-rate tuner on the bundled tasks: one Alrao run, a short race of the rates
it points to, then plain SGD at the winner.

:func:`tune` is the protocol of ``alrao-jax tune`` (:func:`alrao_jax.tune` with the tasks'
methods and their extras); :func:`refocus` is a one-run variant that narrows the body's rates
around the suggestion after a warm-up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from alrao_jax.checks import check_bool, check_int
from alrao_jax.epochs import test_metrics_of
from alrao_jax.experiments.compare import RunResult, task_method, timed_fit
from alrao_jax.experiments.methods import Method, make_method
from alrao_jax.experiments.tasks import MODES, Task
from alrao_jax.lr_find import LRFindResult, lr_find, range_test_batches
from alrao_jax.rates import COPIES_MODULE, leaf_paths, sample_rates
from alrao_jax.steps import create_train_state
from alrao_jax.suggest_lr import LRSuggestion, find_rates, suggest_lr
from alrao_jax.sweep import SweepResult
from alrao_jax.transform import ScaleByRatesState
from alrao_jax.tune import TOLERANCE, check_tolerance, race_suggestion

REFOCUS_DECADES = 1.0  # the refocused body's rates span this many decades each side


class TuneResult(NamedTuple):
  """What :func:`tune` returns."""

  lr: float  # the rate picked: the race's winner, or ``suggestion.lr`` without a race
  suggestion: LRSuggestion
  alrao: RunResult
  sgd: RunResult  # the plain optimizer (SGD, or Adam for Alrao-Adam) at ``lr``
  race: SweepResult | None  # the race of the candidates; None with race_epochs=0
  race_seconds: float  # wall time of the race, compilation included (0 without one)
  race_epochs: int  # the race's length in epochs (race_length by default; 0 without a race)


def task_lr_find(
  task: Task,
  *,
  seed: int = 0,
  copies: int | None = None,
  optimizer: Callable[..., optax.GradientTransformation] = optax.sgd,
  **options: Any,
) -> LRFindResult:
  """:func:`alrao_jax.lr_find` on ``task``'s model: shuffled training batches (in order
  for carried streams), training mode.

  Args:
    task: an :class:`alrao_jax.experiments.tasks.Task`.
    seed: seed of the parameters and of the batches' order.
    copies: output copies of the model (default: the task's; 1 is a plain SGD model).
    optimizer: the factory ``learning_rate -> GradientTransformation`` the test runs.
    **options: more keyword arguments of :func:`alrao_jax.lr_find` (``start_lr``,
      ``end_lr``, ``num_steps``; 100 steps from 1e-7 to 10 by default).

  Returns:
    The :class:`alrao_jax.LRFindResult`.
  """
  copies = task.copies if copies is None else copies
  steps = options.setdefault("num_steps", 100)
  train, batch = task.splits.train, task.batch_size
  model = task.build(copies)
  state = create_train_state(
    model, optax.sgd(0.1), jax.random.key(seed), train.inputs[:batch], **MODES["eval_kwargs"]
  )
  batches = range_test_batches(
    train, batch_size=batch, num_steps=steps, seed=seed, in_order=bool(task.carry)
  )
  return lr_find(
    model,
    state,
    batches,
    optimizer=optimizer,
    train_kwargs=MODES["train_kwargs"],
    **options,
  )


def racing_optimizer(
  make: Callable[..., Method], name: str, *, seed: int = 0
) -> Callable[..., optax.GradientTransformation]:
  """``learning_rate -> make(name, lr=learning_rate).optimizer`` for a traced rate: the method
  at rate 1, its updates scaled by the rate. Exact for SGD and Adam and every extra of
  :func:`alrao_jax.experiments.methods.make_method` (momentum, weight decay, clipping, the
  schedules): each is linear in the rate, which only scales the last step.

  Args:
    make: builds a method, as for :func:`tune`.
    name: the plain optimizer, ``"sgd"`` or ``"adam"``.
    seed: passed to ``make``.

  Returns:
    A factory for :func:`alrao_jax.sweep` (``optax.inject_hyperparams`` injects the rate).
  """
  unit = make(name, lr=1.0, seed=seed).optimizer

  def scaled(learning_rate: Any) -> optax.GradientTransformation:
    return optax.chain(unit, optax.scale(learning_rate))

  return scaled


def half_of(epochs: int) -> int:
  """The default length of :func:`tune`'s Alrao run: half the final run's ``epochs``, rounded up.

  Example:
    >>> from alrao_jax.experiments.tune import half_of
    >>> half_of(40), half_of(5), half_of(1)
    (20, 3, 1)
  """
  return -(-epochs // 2)


def tune(
  task: Task,
  *,
  epochs: int,
  seed: int = 0,
  make: Callable[..., Method] = make_method,
  alrao_options: dict[str, Any] | None = None,
  optimizer: str = "sgd",
  race_epochs: int | None = None,
  tolerance: float = TOLERANCE,
  alrao_epochs: int | None = None,
  trust_high: bool = False,
  **fit_kwargs: Any,
) -> TuneResult:
  """One Alrao-SGD run, :func:`alrao_jax.suggest_lr` on its kept epoch, a race of the rates it
  weighed (:func:`alrao_jax.tune.race_candidates`), one SGD run at the winner (with
  ``optimizer="adam"``: Alrao-Adam, a race of Adams, then Adam).

  The Alrao run trains half the final run's epochs by default: the switch settles long before
  the run ends, and the run is most of ``tune``'s cost (``benchmarks/results/
  tune_alrao_length.md``: on digits and MNIST-1D's two networks, 3 seeds each, the suggestion
  and the body's knee after half the epochs were the whole run's; on PTB characters, 5 epochs
  and still learning, the suggestion moved 0.24 decades down, its knee not at all, for 0.71 of
  the run's wall time).

  The suggestion averages the log-rate over the posteriors of the epochs up to the kept one.
  The race trains the plain model (one output copy) at every candidate rate for
  ``race_epochs`` epochs in one program (:func:`alrao_jax.sweep`), with the optimizer ``make``
  builds (its extras included) scaled by each rate; the suggestion's racer is picked unless the
  race clearly beat it (:func:`alrao_jax.race_pick`), else the best racer. A task
  that carries streams across batches (``Task.carry``) races on them in order, as it trains.

  Args:
    task: an :class:`alrao_jax.experiments.tasks.Task`.
    epochs: epochs of the final run (the best validation epoch is kept).
    seed: seed of every run (the same initialisation and data order).
    make: builds a method from ``(name, lr=..., lr_min=..., lr_max=..., copies=..., seed=...)``
      (e.g. :func:`alrao_jax.experiments.methods.make_method` with momentum or a schedule
      bound), used for every run.
    alrao_options: ``lr_min``, ``lr_max``, ``copies`` (default: the task's).
    optimizer: ``"sgd"`` or ``"adam"``, the plain optimizer whose rate is tuned.
    race_epochs: epochs of the race; 0: no race, the final run is at the suggestion; default
      :func:`alrao_jax.tune.race_length` (``alrao_epochs`` over the number of racers, 1 or 2).
    tolerance: see :func:`alrao_jax.race_pick` (0: the race's best).
    alrao_epochs: epochs of the Alrao run, >= 1, which also set the race's default length
      (default: half of ``epochs``, rounded up).
    trust_high: no race when the suggestion's confidence is "high" (see
      :func:`alrao_jax.tune`).
    **fit_kwargs: more keyword arguments of :func:`alrao_jax.fit`.

  Returns:
    A :class:`TuneResult`.
  """
  if optimizer not in ("sgd", "adam"):
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}.")
  if race_epochs is not None:
    race_epochs = check_int(race_epochs, "race_epochs", minimum=0)
  check_tolerance(tolerance)
  check_bool(trust_high, "trust_high")
  epochs = check_int(epochs, "epochs", minimum=1)
  if alrao_epochs is None:
    alrao_epochs = half_of(epochs)
  alrao_epochs = check_int(alrao_epochs, "alrao_epochs", minimum=1)
  low, high = task.interval(f"alrao-{optimizer}")
  options = {"lr_min": low, "lr_max": high, "copies": task.copies}
  options.update(alrao_options or {})
  alrao = make(f"alrao-{optimizer}", seed=seed, **options)
  alrao_run, result = timed_fit(task, alrao, seed=seed, epochs=alrao_epochs, **fit_kwargs)
  suggestion = suggest_lr(
    result.state,
    initial_params=result.initial_params,
    posteriors=[r["posterior"] for r in result.history[: max(result.best_epoch, 1)]],
  )
  lr, race, race_seconds = suggestion.lr, None, 0.0
  if trust_high and suggestion.confidence == "high":
    race_epochs = 0
  if race_epochs != 0:
    raced = race_suggestion(
      task.build(1),
      racing_optimizer(make, optimizer, seed=seed),
      task.splits,
      suggestion,
      epochs=alrao_epochs,
      race_epochs=race_epochs,
      tolerance=tolerance,
      fallback=suggestion.lr,
      seed=seed,
      batch_size=task.batch_size,
      carry=task.carry,
      **MODES,
    )
    lr, race, race_seconds, race_epochs = raced.lr, raced.race, raced.seconds, raced.epochs
  sgd_run, _ = timed_fit(
    task, make(optimizer, lr=lr, seed=seed), seed=seed, epochs=epochs, **fit_kwargs
  )
  return TuneResult(lr, suggestion, alrao_run, sgd_run, race, race_seconds, race_epochs)


def replace_body_rates(opt_state: Any, rates: Any) -> Any:
  """``opt_state`` with the Alrao body's rates taken from ``rates`` (the copies' kept)."""
  old = find_rates(opt_state)
  paths, old_leaves, treedef = leaf_paths(old)
  _, new_leaves, _ = leaf_paths(rates)
  merged = [
    o if COPIES_MODULE in p[:-1] else n
    for p, o, n in zip(paths, old_leaves, new_leaves, strict=True)
  ]
  tree = jax.tree_util.tree_unflatten(treedef, merged)
  return jax.tree.map(
    lambda s: ScaleByRatesState(tree) if isinstance(s, ScaleByRatesState) else s,
    opt_state,
    is_leaf=lambda s: isinstance(s, ScaleByRatesState),
  )


def refocus(
  task: Task, *, epochs: int, warmup_epochs: int, seed: int = 0, **fit_kwargs: Any
) -> tuple[RunResult, LRSuggestion]:
  """One Alrao run that narrows its body's rates after a warm-up (a one-run variant).

  The run trains ``warmup_epochs`` with the task's interval, reads :func:`suggest_lr` off its
  state, resamples every body feature's rate log-uniformly in ``[lr / 10, 10 lr]`` (the output
  copies, their rates and the switch go on unchanged), and trains the remaining epochs. The
  result is the epoch with the best validation loss over the whole run.

  Args:
    task: an :class:`alrao_jax.experiments.tasks.Task`.
    epochs: epochs of the whole run.
    warmup_epochs: epochs before the rates are narrowed, in ``[1, epochs)``.
    seed: seed of the run.
    **fit_kwargs: more keyword arguments of :func:`alrao_jax.fit`.

  Returns:
    The run's :class:`RunResult` (method ``alrao-sgd refocused``; seconds of both phases) and
    the suggestion the body was narrowed around.
  """
  if not 1 <= warmup_epochs < epochs:
    raise ValueError(f"warmup_epochs must be in [1, {epochs}), got {warmup_epochs}.")
  method = task_method(task, "alrao-sgd", seed=seed)
  first, warm = timed_fit(task, method, seed=seed, epochs=warmup_epochs, **fit_kwargs)
  suggestion = suggest_lr(
    warm.last_state,
    initial_params=warm.initial_params,
    posteriors=[r["posterior"] for r in warm.history],
  )
  low, high = suggestion.lr / 10**REFOCUS_DECADES, suggestion.lr * 10**REFOCUS_DECADES
  body = sample_rates(jax.random.key(seed + 2), warm.last_state.params, low, high)
  state = warm.last_state.replace(opt_state=replace_body_rates(warm.last_state.opt_state, body))
  second, _ = timed_fit(
    task, method, seed=seed + 1000, epochs=epochs - warmup_epochs, initial_state=state, **fit_kwargs
  )
  history = first.history + [{**r, "epoch": r["epoch"] + warmup_epochs} for r in second.history]
  best = min(range(len(history)), key=lambda i: _valid(history[i]))
  run = RunResult(
    "alrao-sgd refocused",
    None,
    seed,
    best + 1,
    _valid(history[best]),
    test_metrics_of(history[best]),
    history,
    first.seconds + second.seconds,
  )
  return run, suggestion


def _valid(record: dict[str, Any]) -> float:
  loss = record["valid_loss"]
  return float(loss) if np.isfinite(loss) else float("inf")

"""Comparing Alrao with tuned SGD, Adam and learning-rate-free optimizers on one task.

The protocol is the paper's (Table 1): every method is trained with early stopping on the
validation split and tested at its best validation epoch; SGD runs at every learning rate
of a grid and the rate with the lowest mean validation loss is its result.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from alrao_jax.experiments.methods import LR_FREE, Method, make_method
from alrao_jax.experiments.tasks import MODES, Task
from alrao_jax.loop import FitResult, fit
from alrao_jax.screen import SGD_GRID
from alrao_jax.transform import alrao_sgd


class RunResult(NamedTuple):
  """One training run (see :func:`run_method`)."""

  method: str
  lr: float | None  # a peer's learning rate; None for Alrao
  seed: int
  best_epoch: int  # 0 when no epoch had a finite validation loss
  valid_loss: float  # at the best epoch, in nats; inf when there is none
  test: dict[str, float]  # test metrics at the best epoch
  history: list[dict[str, Any]]  # per epoch, see alrao_jax.fit
  seconds: float  # wall time of the whole run, compilation included


class Comparison(NamedTuple):
  """What :func:`compare` returns."""

  task: str
  grid: dict[float, list[RunResult]]  # SGD at every learning rate of the grid
  best_lr: float  # the grid's learning rate with the lowest mean validation loss
  runs: dict[str, list[RunResult]]  # per method, one run per seed ('sgd' at best_lr)


def run_result(method: Method, seed: int, result: FitResult, seconds: float) -> RunResult:
  """The :class:`RunResult` of a finished :func:`alrao_jax.fit` of ``method``."""
  best = result.history[result.best_epoch - 1]["valid_loss"] if result.best_epoch else np.inf
  lr = None if method.name.startswith("alrao-") else method.copy_lrs[0]
  return RunResult(
    method.name, lr, seed, result.best_epoch, float(best), result.test, result.history, seconds
  )


def timed_fit(
  task: Task, method: Method, *, seed: int, epochs: int, **fit_kwargs: Any
) -> tuple[RunResult, FitResult]:
  """Trains ``task``'s model with ``method`` and times it.

  Args:
    task: an :class:`alrao_jax.experiments.tasks.Task`.
    method: an :class:`alrao_jax.experiments.methods.Method` (built with the same ``seed``).
    seed: seed of the parameters and of the data order.
    epochs: the most epochs (early stopping keeps the best validation epoch).
    **fit_kwargs: more keyword arguments of :func:`alrao_jax.fit`, e.g. ``patience``.

  Returns:
    The :class:`RunResult` and the whole :class:`alrao_jax.FitResult` (its states).
  """
  start = time.perf_counter()
  with warnings.catch_warnings():  # a grid's diverging rates are expected: inf is recorded
    warnings.filterwarnings("ignore", "alrao_jax.fit: no epoch had a finite", RuntimeWarning)
    result = _fit(task, method, seed=seed, epochs=epochs, **fit_kwargs)
  return run_result(method, seed, result, time.perf_counter() - start), result


def _fit(task: Task, method: Method, *, seed: int, epochs: int, **fit_kwargs: Any) -> FitResult:
  return fit(
    task.build(len(method.copy_lrs)),
    method.optimizer,
    task.splits,
    epochs=epochs,
    seed=seed,
    batch_size=task.batch_size,
    eval_params=method.eval_params,
    carry=task.carry,
    **MODES,
    **fit_kwargs,
  )


def run_method(
  task: Task, method: Method, *, seed: int, epochs: int, **fit_kwargs: Any
) -> RunResult:
  """Trains ``task``'s model with ``method``, timed (:func:`timed_fit` without the states)."""
  return timed_fit(task, method, seed=seed, epochs=epochs, **fit_kwargs)[0]


def select_lr(grid: Mapping[float, Sequence[RunResult]]) -> float:
  """The learning rate whose runs have the lowest mean validation loss (inf if diverged).

  Example:
    >>> from alrao_jax.experiments.compare import RunResult, select_lr
    >>> run = lambda lr, v: RunResult('sgd', lr, 0, 1, v, {}, [], 0.0)
    >>> select_lr({0.1: [run(0.1, 0.3)], 1.0: [run(1.0, float('inf'))], 0.01: [run(0.01, 0.5)]})
    0.1
  """
  if not grid:
    raise ValueError("select_lr needs at least one learning rate.")
  return lowest_mean({lr: [r.valid_loss for r in runs] for lr, runs in grid.items()})


def lowest_mean(losses: Mapping[float, Sequence[float]]) -> float:
  """The key (e.g. a learning rate) whose losses have the lowest mean; a non-finite mean (a
  diverged run) comes after every finite one.

  Example:
    >>> from alrao_jax.experiments.compare import lowest_mean
    >>> lowest_mean({0.01: [0.5, 0.5], 0.1: [0.2, 0.4], 1.0: [0.1, float('inf')]})
    0.1
  """
  means = {key: float(np.mean(values)) for key, values in losses.items()}
  return min(means, key=lambda key: (not np.isfinite(means[key]), means[key]))


def compare(
  task: Task,
  *,
  epochs: int,
  seeds: Sequence[int] = (0, 1, 2),
  grid: Sequence[float] = SGD_GRID,
  grid_seeds: int | None = None,
  methods: Sequence[str] = ("alrao-sgd", "adam", *LR_FREE),
  on_run: Callable[[RunResult], None] | None = None,
  **fit_kwargs: Any,
) -> Comparison:
  """Runs the paper's comparison on ``task``: the SGD grid, then every method per seed.

  Alrao uses the task's interval and copies; Adam and the learning-rate-free optimizers
  their defaults (see :mod:`alrao_jax.experiments.methods`). All runs see the same splits, and runs
  with the same seed the same initialisation and data order.

  Args:
    task: an :class:`alrao_jax.experiments.tasks.Task`.
    epochs: the most epochs per run.
    seeds: one run per seed and method.
    grid: SGD's learning rates.
    grid_seeds: run the whole grid on the first ``grid_seeds`` seeds only (default: all),
      then the selected rate on the other seeds; the selection uses those first seeds.
    methods: the methods besides SGD, names from :data:`alrao_jax.experiments.methods.METHODS`.
    on_run: called with each :class:`RunResult` as it finishes.
    **fit_kwargs: more keyword arguments of :func:`alrao_jax.fit`.

  Returns:
    A :class:`Comparison`.
  """
  seeds = list(seeds)
  grid_seeds = len(seeds) if grid_seeds is None else grid_seeds
  if not seeds or not 1 <= grid_seeds <= len(seeds):
    raise ValueError(f"need seeds and 1 <= grid_seeds <= {len(seeds)}, got {grid_seeds}.")
  if not grid or "sgd" in methods:
    raise ValueError("grid must be non-empty, and SGD is run through it, not through methods.")
  builders = {name: _builder(task, name) for name in methods}  # bad names fail before training

  def run(method: Method, seed: int) -> RunResult:
    result = run_method(task, method, seed=seed, epochs=epochs, **fit_kwargs)
    if on_run is not None:
      on_run(result)
    return result

  sgd = {lr: [run(make_method("sgd", lr=lr), s) for s in seeds[:grid_seeds]] for lr in grid}
  best_lr = select_lr(sgd)
  more = [run(make_method("sgd", lr=best_lr), seed) for seed in seeds[grid_seeds:]]
  runs = {"sgd": sgd[best_lr] + more}
  for name, build in builders.items():
    runs[name] = [run(build(seed), seed) for seed in seeds]
  return Comparison(task.name, sgd, best_lr, runs)


def task_method(task: Task, name: str, *, seed: int = 0, **extras: Any) -> Method:
  """The method ``name`` as the task runs it: Alrao on the task's interval for that optimizer
  (``task.interval``) with its copies, a peer at its default rate.

  Args:
    task: a bundled task.
    name: one of :data:`~alrao_jax.experiments.methods.METHODS`.
    seed: Alrao's rates' seed (see :func:`~alrao_jax.experiments.methods.make_method`).
    **extras: ``make_method``'s other options (``schedule``, ``layers``, ...).

  Returns:
    The :class:`~alrao_jax.experiments.methods.Method`.

  Example:
    >>> from alrao_jax.experiments.compare import task_method
    >>> from alrao_jax.experiments.tasks import load_task
    >>> task = load_task("digits")
    >>> task_method(task, "alrao-adam").copy_lrs[0], task_method(task, "alrao-sgd").copy_lrs[0]
    (1e-06, 1e-05)
  """
  if name.startswith("alrao-"):
    lr_min, lr_max = task.interval(name)
    return make_method(
      name, lr_min=lr_min, lr_max=lr_max, copies=task.copies, seed=seed, **extras
    )
  return make_method(name, **extras)


def _builder(task: Task, name: str) -> Callable[[int], Method]:
  task_method(task, name)  # a bad name fails before any training
  return lambda seed: task_method(task, name, seed=seed)


def summarize(runs: Sequence[RunResult], *, loss_scale: float = 1.0) -> dict[str, float]:
  """Mean and standard deviation over seeds of the test loss and accuracy, and the time.

  Args:
    runs: runs of one method.
    loss_scale: factor from nats to the reported unit (``Task.loss_scale``).

  Returns:
    ``loss``, ``loss_std``, ``accuracy``, ``accuracy_std``, ``seconds`` (mean per run),
    ``epochs`` (mean best epoch) and ``diverged`` (runs without a finite test loss).
  """
  loss = np.array([r.test["loss"] for r in runs]) * loss_scale
  accuracy = np.array([r.test.get("accuracy", np.nan) for r in runs])
  finite = np.isfinite(loss).all()
  return {  # over runs of which one diverged: loss inf, accuracy nan (it is nan there)
    "loss": float(np.mean(loss)) if finite else np.inf,
    "loss_std": float(np.std(loss)) if finite else np.nan,
    "accuracy": float(np.mean(accuracy)),
    "accuracy_std": float(np.std(accuracy)),
    "seconds": float(np.mean([r.seconds for r in runs])),
    "epochs": float(np.mean([r.best_epoch for r in runs])),
    "diverged": int(np.sum(~np.isfinite(loss))),
  }


def alrao_ablations(
  task: Task, *, lr: float, seed: int, epochs: int, **fit_kwargs: Any
) -> dict[str, RunResult]:
  """Alrao's parts one at a time, to find where a gap to tuned SGD comes from.

  * ``body only``: Alrao's random per-feature rates in the network, one output layer at ``lr``.
  * ``head only``: every pre-classifier rate at ``lr``, Alrao's copies and switch on top.
  * ``interval [lr/10, 10 lr]``: full Alrao in a narrow interval around ``lr``.

  Args:
    task: an :class:`alrao_jax.experiments.tasks.Task`.
    lr: the reference rate, e.g. :attr:`Comparison.best_lr`.
    seed: the seed of every run.
    epochs: the most epochs per run.
    **fit_kwargs: more keyword arguments of :func:`alrao_jax.fit`.

  Returns:
    Name -> :class:`RunResult`.
  """
  key = jax.random.key(seed + 1)
  lo, hi = task.lr_min, task.lr_max

  def in_head(path: str, leaf: Any) -> bool:
    del leaf
    return "alrao_copies" in path

  body = alrao_sgd(lo, hi, key=key, rules=lambda p, leaf: lr if in_head(p, leaf) else None)
  head = alrao_sgd(lo, hi, key=key, rules=lambda p, leaf: None if in_head(p, leaf) else lr)
  head_lrs = make_method("alrao-sgd", lr_min=lo, lr_max=hi, copies=task.copies).copy_lrs
  narrow = make_method("alrao-sgd", lr_min=lr / 10, lr_max=lr * 10, copies=task.copies, seed=seed)
  methods = {
    "body only": Method("alrao-sgd body only", body, (lr,), None),
    "head only": Method("alrao-sgd head only", head, head_lrs, None),
    f"interval [{lr / 10:g}, {lr * 10:g}]": narrow,
  }
  return {
    name: run_method(task, method, seed=seed, epochs=epochs, **fit_kwargs)
    for name, method in methods.items()
  }

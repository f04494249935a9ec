"""The epoch loop that :func:`alrao_jax.fit` and :func:`alrao_jax.sweep` share: train on the
shuffled batches, evaluate, keep each run's best epoch, stop, checkpoint, report.

The loop drives one or more runs trained side by side (a sweep's members, or fit's one run)
through a :class:`Trainer`, which each kind of run (a linen state, an NNX model, a sweep's
stacked members) implements once; the loop itself holds only the bookkeeping, in a
:class:`Progress`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from alrao_jax.splits import Split, rows_of, take

STOP_REASONS = {
  "epochs": "ran every epoch",
  "patience": "no better validation loss for `patience` epochs",
  "diverged": "the training loss is not finite: every copy of the head (or the whole body) "
  "diverged; lower lr_max (or the rate), or clip the gradients",
}


class Trainer(Protocol):
  """One kind of run as the epoch loop sees it: ``runs`` runs trained side by side."""

  runs: int

  def begin_epoch(self) -> None:
    """Called before an epoch's first step (e.g. to zero a carried RNN state)."""

  def step(self, inputs: Any, targets: Any, weights: Any = None) -> jax.Array:
    """Trains every run on one batch (its per-example weights, or None); returns their
    losses, ``(runs,)`` or a scalar."""

  def posteriors(self) -> np.ndarray:
    """Each run's averaging posterior after the last step, ``(runs, copies)``."""

  def evaluate(self, split: Split) -> list[dict[str, Any]]:
    """Each run's metrics on a whole split (floats, or lists for a metric with an axis)."""

  def keep(self, improved: np.ndarray) -> None:
    """Keeps the current state as the best one of the runs where ``improved`` is True."""


@dataclasses.dataclass
class Progress:
  """The loop's bookkeeping, one entry per run: what a checkpoint holds besides the states."""

  histories: list[list[dict[str, Any]]]  # per run, per epoch: fit's history records
  best: np.ndarray  # (runs,) best validation loss so far (inf: none finite)
  best_epochs: np.ndarray  # (runs,) its epoch, 1-based; 0: none
  stopped: list[str | None]  # why each run stopped, None while it trains

  @classmethod
  def start(cls, runs: int) -> Progress:
    """The progress of runs that have not trained yet."""
    return cls([[] for _ in range(runs)], np.full(runs, np.inf), np.zeros(runs, int), [None] * runs)

  @classmethod
  def resumed(
    cls, history: list[dict[str, Any]], best: float, best_epoch: int, patience: int | None
  ) -> Progress:
    """One run's progress as a checkpoint gives it back: a run that stopped early stays
    stopped, so that re-running it gives the same answer."""
    stopped = stop_reason(history[-1], best_epoch, patience) if history else None
    return cls([list(history)], np.array([best], float), np.array([best_epoch]), [stopped])

  @property
  def done(self) -> bool:
    return all(reason is not None for reason in self.stopped)


def stop_reason(record: Mapping[str, Any], best_epoch: int, patience: int | None) -> str | None:
  """Why training stops after the epoch of ``record``, or None to go on."""
  if not np.isfinite(record["train_loss"]):
    return "diverged"
  if patience is not None and record["epoch"] - best_epoch >= patience:
    return "patience"
  return None


def test_metrics_of(record: Mapping[str, Any]) -> dict[str, Any]:
  """The test metrics of an epoch's record in ``fit``'s history, without their prefix."""
  return {k[len("test_") :]: v for k, v in record.items() if k.startswith("test_")}


def epoch_batches(
  rows: int, batch_size: int, *, seed: int, epoch: int, in_order: bool = False
) -> np.ndarray:
  """The training rows of an epoch, ``(steps, batch_size)``: a shuffle drawn from ``(seed,
  epoch)`` (or the rows in order, for carried streams), the last partial batch dropped."""
  steps = rows // batch_size
  order = np.arange(rows) if in_order else np.random.default_rng([seed, epoch]).permutation(rows)
  return order[: steps * batch_size].reshape(steps, batch_size)


def _train_epoch(
  trainer: Trainer, train: Split, batches: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Trains every run over one epoch's batches: each run's mean loss (the batches weighed by
  their total weights, when the split has weights) and posterior."""
  trainer.begin_epoch()
  losses = [
    trainer.step(take(train.inputs, idx), train.targets[idx], take(train.weights, idx))
    for idx in batches
  ]
  if train.weights is None:
    mean = np.asarray(jnp.mean(jnp.stack(losses), axis=0), np.float64).reshape(trainer.runs)
  else:
    stacked = np.asarray(jnp.stack(losses), np.float64).reshape(len(batches), trainer.runs)
    totals = np.array([np.sum(train.weights[idx]) for idx in batches], np.float64)
    shares = totals / totals.sum() if totals.sum() > 0 else np.full(len(batches), 1 / len(batches))
    mean = np.where(shares[:, None] > 0, stacked, 0.0).T @ shares
  return mean, np.asarray(trainer.posteriors(), np.float64)


def run_epochs(
  trainer: Trainer,
  progress: Progress,
  train: Split,
  evaluated: Sequence[tuple[str, Split]],
  *,
  epochs: int,
  batch_size: int,
  seed: int,
  in_order: bool = False,
  patience: int | None,
  labels: Sequence[Mapping[str, Any]] | None = None,
  retire: Callable[[Progress], None] | None = None,
  checkpoint: Callable[[int, Progress], None] | None = None,
  on_epoch: Callable[[int, Progress], None] | None = None,
) -> Progress:
  """Trains until ``epochs`` or until every run has stopped, from the epoch after the
  progress's last one.

  Each epoch trains every run on the epoch's batches of ``train`` (:func:`epoch_batches`),
  evaluates the ``evaluated`` splits, and appends to each run that still trains a record:
  ``epoch``,
  ``train_loss``, ``posterior``, the run's ``labels`` (e.g. its learning rate), then
  ``{prefix}_{metric}`` for each evaluated split, and ``stopped`` on its last epoch. A run
  keeps its best state at its lowest finite validation loss (the ``valid`` prefix) and stops
  at a non-finite training loss, or ``patience`` epochs after its best; a stopped run still
  trains with the others (they share the step) but its record and best state stay.

  Args:
    trainer: the runs (see :class:`Trainer`).
    progress: where they stand; updated in place and returned.
    train: the training split.
    evaluated: ``(prefix, split)`` pairs evaluated after each epoch, ``valid`` among them.
    epochs: the last epoch.
    batch_size: examples per step.
    seed: seed of the epochs' shuffles.
    in_order: the rows in order every epoch (carried streams), not shuffled.
    patience: epochs without a better validation loss before a run stops (None: never).
    labels: per run, entries every record of it holds.
    retire: called after each epoch's records and best states, before the checkpoint: it
      may drop output copies from the runs' states (``fit(retire=...)``).
    checkpoint: called after each epoch's records and best states, with the epoch.
    on_epoch: called last in each epoch, with the epoch.

  Returns:
    ``progress``.
  """
  labels = labels or [{}] * trainer.runs
  rows = rows_of(train.inputs)
  first = max(map(len, progress.histories)) + 1
  for epoch in range(first, epochs + 1):
    if progress.done:
      break
    batches = epoch_batches(rows, batch_size, seed=seed, epoch=epoch, in_order=in_order)
    train_losses, posteriors = _train_epoch(trainer, train, batches)
    found = {prefix: trainer.evaluate(split) for prefix, split in evaluated}
    improved = np.zeros(trainer.runs, bool)
    for i, history in enumerate(progress.histories):
      if progress.stopped[i] is not None:
        continue
      record = {
        "epoch": epoch,
        "train_loss": float(train_losses[i]),
        "posterior": posteriors[i].tolist(),
        **labels[i],
      }
      for prefix, metrics in found.items():
        record.update({f"{prefix}_{k}": v for k, v in metrics[i].items()})
      if np.isfinite(record["valid_loss"]) and record["valid_loss"] < progress.best[i]:
        progress.best[i], progress.best_epochs[i], improved[i] = record["valid_loss"], epoch, True
      progress.stopped[i] = stop_reason(record, int(progress.best_epochs[i]), patience)
      if progress.stopped[i] is not None:
        record["stopped"] = progress.stopped[i]
      history.append(record)
    if improved.any():
      trainer.keep(improved)
    if retire is not None:
      retire(progress)
    if checkpoint is not None:
      checkpoint(epoch, progress)
    if on_epoch is not None:
      on_epoch(epoch, progress)
  return progress

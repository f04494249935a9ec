"""The training loop: :func:`fit` trains a linen or NNX model with early stopping on
validation, checkpoints every epoch and resumes exactly."""

from __future__ import annotations

import functools
import operator
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from alrao_jax.checkpoint import restore_checkpoint, restore_items, save_checkpoint, save_items
from alrao_jax.checks import check_carry, check_int, check_labels
from alrao_jax.loss import Likelihood, categorical_log_likelihood
from alrao_jax.sharding import (
  DATA_AXIS,
  create_sharded_train_state,
  replicate,
  shard_batch,
  shard_eval_step,
  shard_train_state,
  shard_train_step,
)
from alrao_jax.splits import Splits, as_splits, rows_of, take
from alrao_jax.steps import (
  TrainState,
  check_carry_in,
  copies_or_one,
  create_train_state,
  head_outputs,
  make_eval_step,
  make_train_step,
  model_args,
)
from alrao_jax.switch import ModelAveraging, switch_averaging
from alrao_jax.transform import rates_of


class FitResult(NamedTuple):
  """What :func:`fit` returns."""

  state: TrainState  # at the best validation epoch
  last_state: TrainState  # after the last epoch
  best_epoch: int  # 1-based; 0 when no epoch had a finite validation loss
  history: list[dict[str, Any]]  # per epoch: train loss, validation and test metrics
  test: dict[str, float]  # test metrics at the best validation epoch
  stopped: str  # why training ended: "epochs", "patience" or "diverged" (see fit)


STOP_REASONS = {
  "epochs": "ran every epoch",
  "patience": "no better validation loss for `patience` epochs",
  "diverged": "the training loss is not finite: every copy of the head (or the whole body) "
  "diverged; lower lr_max (or the rate), or clip the gradients",
}


def _epoch_record(epoch: int, losses: Sequence[jax.Array], posterior: jax.Array) -> dict:
  """An epoch's record in ``fit``'s history before evaluation: its mean training loss and
  the averaging posterior after it."""
  return {
    "epoch": epoch,
    "train_loss": float(jnp.mean(jnp.stack(losses))),
    "posterior": [float(p) for p in posterior],
  }


def check_split_labels(splits: Any, num_classes: int) -> None:
  """Every split's labels are class indices in ``[0, num_classes)`` (checked on the host)."""
  for name, split in zip(splits._fields, splits, strict=True):
    check_labels(split.targets, num_classes, name=f"splits.{name}.targets")


def stop_reason(record: Mapping[str, Any], best_epoch: int, patience: int | None) -> str | None:
  """Why training stops after the epoch of ``record``, or None to go on."""
  if not np.isfinite(record["train_loss"]):
    return "diverged"
  if patience is not None and record["epoch"] - best_epoch >= patience:
    return "patience"
  return None


def _as_floats(metrics: Mapping[str, jax.Array]) -> dict[str, Any]:
  return {k: float(v) if jnp.ndim(v) == 0 else [float(x) for x in v] for k, v in metrics.items()}


def test_metrics_of(record: Mapping[str, Any]) -> dict[str, Any]:
  """The test metrics of an epoch's record in ``fit``'s history, without their prefix."""
  return {k[len("test_") :]: v for k, v in record.items() if k.startswith("test_")}


def check_eval_batch_size(chunk: Any) -> None:
  if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
    raise ValueError(f"eval_batch_size must be an int >= 1 or None, got {chunk!r}.")


def evaluate_in_chunks(
  evaluate: Callable, state: Any, inputs: Any, targets: Any, chunk: int | None
) -> dict[str, float]:
  """Metrics of a whole split, evaluated ``chunk`` examples at a time (all at once for None):
  each metric is a mean over examples, so the chunks' means weighted by their sizes give the
  split's. Memory then grows with ``chunk``, not with the split; at most two shapes compile
  (the full chunks and the last one). A copy is left out of the chunks where its outputs are
  not finite.

  Args:
    evaluate: ``evaluate(state, inputs, targets) -> metrics`` (see
      :func:`alrao_jax.make_eval_step`).
    state: its first argument.
    inputs: the split's inputs, examples on the leading axis (a pytree of arrays).
    targets: its targets.
    chunk: examples per evaluation call, >= 1, or None.

  Returns:
    Each metric as a float (a list of floats for a metric with an axis, e.g. one value per
    member of a :func:`alrao_jax.sweep`).
  """
  rows = len(jax.tree.leaves(inputs)[0])
  check_eval_batch_size(chunk)
  chunk = rows if chunk is None else chunk
  totals: dict[str, np.ndarray] = {}
  for start in range(0, rows, chunk):
    part = slice(start, min(start + chunk, rows))
    found = evaluate(state, jax.tree.map(operator.itemgetter(part), inputs), targets[part])
    share = (part.stop - part.start) / rows
    for name, value in found.items():
      totals[name] = totals.get(name, 0.0) + share * np.asarray(value, np.float64)
  return _as_floats(totals)


def checked_splits(splits: Any, batch_size: int) -> tuple[Splits, int]:
  """``splits`` as :class:`alrao_jax.Splits` (checked, see :func:`alrao_jax.splits.as_splits`)
  and its training rows, which a batch may not exceed.

  Raises:
    ValueError: bad splits, or ``batch_size`` above the training rows.
  """
  splits = as_splits(splits)
  rows = rows_of(splits.train.inputs)
  if batch_size > rows:
    raise ValueError(f"batch_size must be in [1, {rows}], got {batch_size}.")
  return splits, rows


def check_streams(carry: Sequence[str], splits: Any, batch_size: int) -> tuple[str, ...]:
  """``carry`` checked, and every split cut into ``batch_size`` streams when it is not empty.

  Raises:
    ValueError: a bad ``carry``, or a split whose rows are not whole windows of the streams.
  """
  carry = check_carry(carry)
  if not carry:
    return carry
  for name, split in zip(("train", "valid", "test"), splits, strict=True):
    rows = len(jax.tree.leaves(split.inputs)[0])
    if rows % batch_size:
      raise ValueError(
        f"with carry, every split holds batch_size={batch_size} streams window by window, "
        f"but splits.{name} has {rows} rows, not a multiple of it; cut the streams with the "
        "same batch_size (e.g. load_ptb_char(batch_size=...))."
      )
  return carry


def check_carried(model_state: Mapping[str, Any], carry: Sequence[str]) -> None:
  """Raises a ValueError when ``carry`` names a collection the model does not hold, or is
  empty while the model keeps a ``carry`` collection (which shuffled batches would mix up)."""
  check_carry_in(model_state, carry)
  if not carry and "carry" in model_state:
    raise ValueError(
      "the model keeps a 'carry' collection (a state passed from batch to batch), which "
      "shuffled batches would mix up; pass carry=('carry',) to train and evaluate its "
      "streams in order."
    )


def zero_collections(state: TrainState, names: Sequence[str]) -> TrainState:
  """The state with the variable collections ``names`` set to zeros (a carried RNN state's
  start), each leaf keeping its shape, dtype and placement."""
  if not names:
    return state
  zeros = {
    name: jax.tree.map(lambda x: jax.device_put(jnp.zeros_like(x), x.sharding), collection)
    for name, collection in state.model_state.items()
    if name in names
  }
  return state.replace(model_state={**state.model_state, **zeros})


def evaluate_streams(
  evaluate: Callable,
  state: TrainState,
  inputs: Any,
  targets: Any,
  *,
  streams: int,
  carry: Sequence[str],
  chunk: int | None,
) -> dict[str, float]:
  """Metrics of a split of carried streams: its windows in order, the ``carry``
  collections starting from zeros and passed from window to window.

  Args:
    evaluate: a carried evaluation, ``evaluate(state, windows_in, windows_out) -> (state,
      metrics)`` (see :func:`alrao_jax.make_eval_step` with ``carry``).
    state: the state to evaluate; it is not changed.
    inputs: the split's inputs, window-major rows: rows ``[i * streams, (i + 1) * streams)``
      are window ``i`` of every stream.
    targets: its targets, laid out alike.
    streams: the number of streams (rows per window).
    carry: the collections carried from window to window.
    chunk: rows per call, rounded down to whole windows (at least one); ``None``: the
      whole split in one call.

  Returns:
    Each metric as a float, over the whole split.
  """
  rows = len(jax.tree.leaves(inputs)[0])
  check_eval_batch_size(chunk)
  current = [zero_collections(state, carry)]

  def evaluate_windows(_, part_in, part_out):
    windows = jax.tree.map(lambda x: x.reshape(-1, streams, *x.shape[1:]), (part_in, part_out))
    current[0], metrics = evaluate(current[0], *windows)
    return metrics

  per_call = streams * max(1, (rows if chunk is None else chunk) // streams)
  return evaluate_in_chunks(evaluate_windows, state, inputs, targets, per_call)


def epoch_batches(
  rows: int, batch_size: int, *, seed: int, epoch: int, in_order: bool = False
) -> np.ndarray:
  """The training rows of an epoch, ``(steps, batch_size)``: a shuffle drawn from ``(seed,
  epoch)`` (or the rows in order, for carried streams), the last partial batch dropped."""
  steps = rows // batch_size
  order = np.arange(rows) if in_order else np.random.default_rng([seed, epoch]).permutation(rows)
  return order[: steps * batch_size].reshape(steps, batch_size)


def evaluate_split(
  evaluate: Callable,
  state: Any,
  split: Any,
  *,
  carry: Sequence[str],
  streams: int,
  chunk: int | None,
) -> dict[str, Any]:
  """Metrics of a whole split: window by window from zeroed ``carry`` collections when there
  are any (:func:`evaluate_streams`, ``streams`` rows per window), else ``chunk`` examples at a
  time (:func:`evaluate_in_chunks`)."""
  if carry:
    return evaluate_streams(
      evaluate, state, split.inputs, split.targets, streams=streams, carry=carry, chunk=chunk
    )
  return evaluate_in_chunks(evaluate, state, split.inputs, split.targets, chunk)


def num_outputs(model: nn.Module, state: TrainState, example: Any, kwargs: Any) -> int:
  """The model's outputs per example: an Alrao head's K, or a plain output layer's last axis."""
  try:
    return head_outputs(state.params)
  except ValueError:
    variables = {"params": state.params, **state.model_state}
    call = functools.partial(model.apply, variables, *model_args(example), **dict(kwargs or {}))
    return int(jax.eval_shape(call).shape[-1])


def _model_name(model: Any) -> str:
  return f"{type(model).__module__}.{type(model).__qualname__}"


def _rate_arrays(opt_state: Any) -> list[np.ndarray] | None:
  """The Alrao optimizer's sampled rates, on the host; None for another optimizer."""
  try:
    rates = rates_of(opt_state)
  except ValueError:
    return None
  return [np.asarray(leaf) for leaf in jax.tree.leaves(rates)]


def check_resumed(
  directory: Any,
  meta: Mapping[str, Any],
  model: Any,
  fresh: list[np.ndarray] | None,
  restored: list[np.ndarray] | None,
) -> None:
  """Raises a `ValueError` when a checkpoint was written by another run than the one resuming:
  another model class, or (the shapes being equal) other rates, which an optimizer with
  another interval or key samples. ``fresh`` and ``restored`` are the optimizers' rates
  (:func:`_rate_arrays`)."""
  saved = meta.get("model")  # absent from checkpoints of earlier versions
  if saved is not None and saved != _model_name(model):
    raise ValueError(
      f"the checkpoint in {directory} was written by a run of {saved}, not of "
      f"{_model_name(model)}; resume with the model that wrote it, or pass another "
      "checkpoint_dir."
    )
  if fresh is None or restored is None:
    return
  if any(not np.array_equal(a, b) for a, b in zip(fresh, restored, strict=True)):
    raise ValueError(
      f"the checkpoint in {directory} holds other learning rates than this optimizer "
      "samples (another lr_min, lr_max or key, or another model); resume with the "
      "settings that wrote it, or pass another checkpoint_dir."
    )


def check_eval_model(eval_model: nn.Module, state: TrainState, example: Any, kwargs: Any) -> None:
  """Raises a `ValueError` when ``eval_model`` cannot evaluate the trained variables (traced
  once, abstractly, before any training): another architecture's shapes would otherwise fail
  inside the first evaluation, in Flax's words."""
  variables = {"params": state.params, **state.model_state}
  call = functools.partial(
    eval_model.apply, variables, *model_args(example), mutable=True, **dict(kwargs or {})
  )
  try:
    jax.eval_shape(call)
  except Exception as err:  # Flax raises many types for missing or misshapen variables
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    raise ValueError(
      f"eval_model cannot evaluate the trained model's variables ({type(err).__name__}: "
      f"{first}); pass the training module with other settings (e.g. deterministic=True), "
      "whose parameters are named and shaped as the training model's."
    ) from err


def _check_mesh(mesh: jax.sharding.Mesh, batch_size: int) -> None:
  if DATA_AXIS not in mesh.axis_names:
    raise ValueError(f"mesh needs a {DATA_AXIS!r} axis for the batch, got {dict(mesh.shape)}.")
  if batch_size % mesh.shape[DATA_AXIS]:
    raise ValueError(
      f"batch_size {batch_size} does not divide over the mesh's {DATA_AXIS!r} axis of size "
      f"{mesh.shape[DATA_AXIS]}; use a multiple of it."
    )


def _placer(mesh: jax.sharding.Mesh | None) -> Callable[[Any], Any]:
  return (lambda batch: batch) if mesh is None else functools.partial(shard_batch, mesh=mesh)


def _sharded_evaluation(evaluate: Callable, state: TrainState, mesh: jax.sharding.Mesh):
  """Evaluates a split sharded over the data axis when its size divides, else replicated."""
  sharded = shard_eval_step(evaluate, state, mesh)
  whole = shard_eval_step(evaluate, state, mesh, data_axis=None)

  def evaluate_split(state, inputs, targets):
    if rows_of(inputs) % mesh.shape[DATA_AXIS] == 0:
      return sharded(state, *shard_batch((inputs, targets), mesh))
    return whole(state, *replicate((inputs, targets), mesh))

  return evaluate_split


def fit(
  model: nn.Module | nnx.Module,
  optimizer: optax.GradientTransformation | nnx.Optimizer,
  splits: Any,
  *,
  epochs: int,
  seed: int = 0,
  batch_size: int = 32,
  averaging: ModelAveraging | None = None,
  likelihood: Likelihood = categorical_log_likelihood,
  train_kwargs: Mapping[str, Any] | None = None,
  eval_kwargs: Mapping[str, Any] | None = None,
  checkpoint_dir: str | os.PathLike | None = None,
  resume: bool = False,
  on_epoch: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None,
  eval_params: Callable[[TrainState], Any] | None = None,
  patience: int | None = None,
  rng_streams: Sequence[str] = ("dropout",),
  mesh: jax.sharding.Mesh | None = None,
  eval_batch_size: int | None = 1024,
  initial_state: TrainState | None = None,
  carry: Sequence[str] = (),
  eval_model: nn.Module | None = None,
) -> FitResult:
  """Trains a linen model with early stopping on the validation loss.

  Each epoch shuffles the training split with a seed of its own, ``(seed, epoch)`` (the last
  partial batch is dropped so that one compiled step serves every batch; carried streams
  keep their order, see ``carry``), and evaluates the validation and test splits whole.
  Training stops early after ``patience`` epochs without a better validation loss, and at
  once when the training loss is not finite (plain models cannot recover from it; an Alrao
  mixture stays finite while one copy is usable). Why it ended is in the result's
  ``stopped`` and in the last epoch's record (``"stopped"``); when no epoch had a finite
  validation loss, a `RuntimeWarning` says so and the result's ``state`` is the initial one.
  With ``checkpoint_dir``, a checkpoint is written after every epoch; ``resume=True``
  continues from it, and the result equals that of a run that was never interrupted: a run
  that had stopped early (patience, divergence) is not trained further, so re-running a
  script with ``resume=True`` gives the same answer every time.

  An NNX model is trained in place (with ``nnx.Optimizer(model, optimizer, wrt=nnx.Param)``
  unless an ``nnx.Optimizer`` is given): the result's ``state`` and ``last_state`` are then
  averaging states, the model (and optimizer) end with the best epoch's variables, and RNG
  streams passed at call time (``train_kwargs={'rngs': nnx.Rngs(dropout=0)}``) are carried and
  checkpointed with them, so that a resumed run equals the whole run. ``mesh``, ``carry``,
  ``initial_state``, ``eval_params``, ``eval_model`` and ``rng_streams`` are linen's.

  Args:
    model: a linen or NNX module ending with an Alrao head, or with a plain output layer
      (logits or means: one copy), so that a baseline and Alrao train in the same loop.
    optimizer: any optax transformation, e.g. :func:`alrao_jax.alrao_sgd` or ``optax.sgd``
      (or, for an NNX model, an ``nnx.Optimizer`` built on it).
    splits: an :class:`alrao_jax.Splits` (or ``(train, valid, test)`` pairs); inputs are
      arrays, or tuples of arrays (passed as positional arguments, e.g. ``(ids, lengths)``)
      or dicts of arrays (one argument), examples on axis 0.
    epochs: number of epochs, >= 1.
    seed: seed of the parameters and of the shuffles (the rates come from the optimizer's key).
    batch_size: examples per step.
    averaging: :func:`alrao_jax.switch_averaging` (default) or :func:`alrao_jax.bayes_averaging`.
    likelihood: the per-copy log-likelihood.
    train_kwargs: keyword arguments of the model call in training, e.g. ``{'train': True}``.
    eval_kwargs: keyword arguments of the model call in evaluation.
    checkpoint_dir: folder for an Orbax checkpoint (see :mod:`alrao_jax.checkpoint`).
    resume: continue from the checkpoint in ``checkpoint_dir``.
    on_epoch: called after each epoch (and its checkpoint) with the epoch's record and the
      history so far.
    eval_params: the parameters to evaluate, from the state; see :func:`make_eval_step`.
    patience: stop after this many epochs without a better validation loss (the paper
      uses 20); ``None`` runs every epoch.
    rng_streams: the RNG streams the model draws from in training (see
      :func:`create_train_state`).
    mesh: train on several devices (see :mod:`alrao_jax.sharding`): each batch sharded over
      the mesh's ``data`` axis, the head's copies over its ``copies`` axis, the state created
      in its shards; the validation and test splits are sharded when their sizes divide
      over ``data``, else replicated. The result equals one device's to float rounding.
      On several processes, every process calls ``fit`` with the same arguments and data.
    eval_batch_size: the validation and test splits are evaluated this many examples at a
      time (see :func:`evaluate_in_chunks`), so that evaluation memory does not grow with
      the split; ``None`` evaluates each split at once.
    initial_state: start from this state (a warm start, e.g. the ``state`` of an earlier
      ``fit`` with its optimizer state changed) instead of a fresh one; the epochs, the
      shuffles and the history start again from epoch 1.
    carry: variable collections that carry the model's state from batch to batch, e.g.
      ``('carry',)`` for an RNN trained by truncated BPTT on streams (the bundled
      ``CharLSTM(carry=True)`` on ``load_ptb_char``'s splits). Every split then holds
      ``batch_size`` streams, window-major: rows
      ``[i * batch_size, (i + 1) * batch_size)`` are window ``i`` of every stream. Training
      takes the windows in order (no shuffle); the collections are zeroed at the start of
      every epoch and of every split's evaluation, which runs the windows in order too,
      ``eval_batch_size // batch_size`` windows (at least one) per call.
    eval_model: the module that evaluates, when it differs from the training one (e.g. a
      config with ``deterministic=True``); it must take the same parameters.

  Returns:
    A :class:`FitResult`.

  Raises:
    ValueError: bad arguments, or (categorical likelihood) labels outside ``[0, K)`` in a
      split, checked once on the host before training, as are empty splits, inputs and
      targets of different lengths and non-finite inputs or targets (see
      :func:`alrao_jax.splits.as_splits`); with ``carry``, a split whose rows
      are not a multiple of ``batch_size``, or a collection the model does not hold;
      without it, a model that holds a ``carry`` collection.
  """
  epochs = check_int(epochs, "epochs", minimum=1)
  seed = check_int(seed, "seed", minimum=0)
  batch_size = check_int(batch_size, "batch_size", minimum=1)
  if patience is not None:
    patience = check_int(patience, "patience", minimum=1)
  if resume and checkpoint_dir is None:
    raise ValueError("resume=True needs the checkpoint_dir to resume from.")
  if resume and initial_state is not None:
    raise ValueError(
      "resume=True continues the checkpoint; pass initial_state or resume, not both."
    )
  check_eval_batch_size(eval_batch_size)
  splits, rows = checked_splits(splits, batch_size)
  train, valid, test = splits
  averaging = averaging or switch_averaging()
  if isinstance(model, nnx.Module):
    unsupported = {
      "mesh": mesh,
      "initial_state": initial_state,
      "eval_params": eval_params,
      "eval_model": eval_model,
      "carry": tuple(carry) or None,
      "rng_streams": None if tuple(rng_streams) == ("dropout",) else rng_streams,
    }
    given = [name for name, value in unsupported.items() if value is not None]
    if given:
      raise ValueError(
        f"{given} apply to linen models; an NNX model holds its variables and RNG streams "
        "(start from the model as it is; pass rngs at call time with train_kwargs)."
      )
    modes = _modes(model)  # the steps set train() and eval(): the caller's loop keeps its own
    try:
      return _fit_nnx(
        model,
        optimizer,
        splits,
        epochs=epochs,
        seed=seed,
        batch_size=batch_size,
        averaging=averaging,
        likelihood=likelihood,
        train_kwargs=train_kwargs,
        eval_kwargs=eval_kwargs,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        on_epoch=on_epoch,
        patience=patience,
        eval_batch_size=eval_batch_size,
      )
    finally:
      _restore_modes(modes)
  carry = check_streams(carry, splits, batch_size)
  if mesh is not None:
    _check_mesh(mesh, batch_size)
  create = (
    create_train_state if mesh is None else functools.partial(create_sharded_train_state, mesh=mesh)
  )

  def fresh(create: Callable = create) -> TrainState:
    return create(
      model,
      optimizer,
      jax.random.key(seed),
      *model_args(take(train.inputs, slice(0, batch_size))),
      averaging=averaging,
      rng_streams=rng_streams,
      **dict(eval_kwargs or {}),
    )

  if initial_state is None:
    state = fresh()
  else:  # a fresh state's shapes alone say whether the given one fits
    if not isinstance(initial_state, TrainState):
      raise TypeError(f"initial_state must be a TrainState, got {type(initial_state).__name__}.")
    def shapes(tree: Any) -> Any:
      return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)

    given, want = initial_state, jax.eval_shape(lambda: fresh(create_train_state))
    if jax.tree.structure(given) != jax.tree.structure(want) or shapes(given) != shapes(want):
      raise ValueError(
        "initial_state does not fit this model and optimizer (its tree, shapes or dtypes "
        "differ from a fresh state's, e.g. another head width); pass a state of the same "
        "model, with optimizer.init's state."
      )
    state = initial_state if mesh is None else shard_train_state(initial_state, mesh)
  check_carried(state.model_state, carry)
  if eval_model is not None:
    check_eval_model(eval_model, state, take(train.inputs, slice(0, 1)), eval_kwargs)
  if likelihood is categorical_log_likelihood:
    num_classes = num_outputs(
      model if eval_model is None else eval_model,
      state,
      take(train.inputs, slice(0, 1)),
      eval_kwargs,
    )
    check_split_labels(splits, num_classes)
  step = make_train_step(
    model,
    optimizer,
    averaging=averaging,
    likelihood=likelihood,
    train_kwargs=train_kwargs,
    rng_streams=rng_streams,
  )
  evaluate = make_eval_step(
    model if eval_model is None else eval_model,
    averaging=averaging,
    likelihood=likelihood,
    eval_kwargs=eval_kwargs,
    eval_params=eval_params,
    carry=carry,
  )
  place = _placer(mesh)
  if mesh is not None:
    step = shard_train_step(step, state, mesh)
    evaluate = (
      shard_eval_step(evaluate, state, mesh, windows=True)
      if carry
      else _sharded_evaluation(evaluate, state, mesh)
    )
  # The step donates its state: until an epoch is kept, the best state is a copy of the first.
  history, best, best_state, best_epoch, done = [], float("inf"), None, 0, 0
  stopped = None
  if resume:
    saved = restore_checkpoint(checkpoint_dir, state)
    check_resumed(
      checkpoint_dir,
      saved.meta,
      model,
      _rate_arrays(state.opt_state),
      _rate_arrays(saved.state.opt_state),
    )
    state, best_state, done = saved.state, saved.best_state, saved.epoch
    history, best, best_epoch = saved.meta["history"], saved.meta["best"], saved.meta["best_epoch"]
    if history:  # a run that stopped early stays stopped: re-running it gives the same answer
      stopped = stop_reason(history[-1], best_epoch, patience)
  if best_state is None:
    best_state = jax.tree.map(jnp.copy, state)
  for epoch in range(done + 1, epochs + 1):
    if stopped is not None:
      break
    state = zero_collections(state, carry)
    losses = []
    for idx in epoch_batches(rows, batch_size, seed=seed, epoch=epoch, in_order=bool(carry)):
      state, metrics = step(state, *place((take(train.inputs, idx), train.targets[idx])))
      losses.append(metrics["loss"])
    record = _epoch_record(epoch, losses, averaging.posterior(state.averaging_state))
    for prefix, split in (("valid", valid), ("test", test)):
      metrics = evaluate_split(
        evaluate, state, split, carry=carry, streams=batch_size, chunk=eval_batch_size
      )
      record.update({f"{prefix}_{k}": v for k, v in metrics.items()})
    if np.isfinite(record["valid_loss"]) and record["valid_loss"] < best:
      # The step donates its state: keep a copy, not the buffers the next step reuses.
      best, best_state, best_epoch = record["valid_loss"], jax.tree.map(jnp.copy, state), epoch
    stopped = stop_reason(record, best_epoch, patience)
    if stopped is not None:
      record["stopped"] = stopped
    history.append(record)
    if checkpoint_dir is not None:
      meta = {
        "history": history,
        "best": best,
        "best_epoch": best_epoch,
        "model": _model_name(model),
      }
      save_checkpoint(checkpoint_dir, state, best_state=best_state, epoch=epoch, meta=meta)
    if on_epoch is not None:
      on_epoch(record, history)
  return _result(best_state, state, best_epoch, history, stopped or "epochs")


def _snapshot(nodes: tuple) -> Any:
  """A copy of the NNX nodes' variables (the step donates the live ones)."""
  return jax.tree.map(jnp.copy, nnx.to_pure_dict(nnx.state(nodes)))


def _load(nodes: tuple, pure: Any) -> None:
  """Writes a :func:`_snapshot` back into the nodes' variables, in place."""
  state = nnx.state(nodes)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(nodes, state)


def nnx_outputs(model: nnx.Module, example: Any, kwargs: Mapping[str, Any] | None) -> int:
  """An NNX model's outputs per example: the head's K, or a plain output layer's last axis."""
  try:
    return head_outputs(nnx.state(model, nnx.Param))
  except ValueError:
    graphdef, state = nnx.split(model)

    def call(state: Any) -> Any:
      module = nnx.merge(graphdef, state)
      module.eval()
      return module(*model_args(example), **dict(kwargs or {}))

    return int(jax.eval_shape(call, state).shape[-1])


_MODE_ATTRIBUTES = ("deterministic", "use_running_average")  # what train() and eval() set


def _modes(model: nnx.Module) -> list[tuple[nnx.Module, str, Any]]:
  """Each submodule's train/eval attributes, as they are now."""
  return [
    (module, name, getattr(module, name))
    for _, module in nnx.iter_modules(model)
    for name in _MODE_ATTRIBUTES
    if hasattr(module, name)
  ]


def _restore_modes(modes: list[tuple[nnx.Module, str, Any]]) -> None:
  for module, name, value in modes:
    setattr(module, name, value)


def _fit_nnx(
  model: nnx.Module,
  optimizer: optax.GradientTransformation | nnx.Optimizer,
  splits: Any,
  *,
  epochs: int,
  seed: int,
  batch_size: int,
  averaging: ModelAveraging,
  likelihood: Likelihood,
  train_kwargs: Mapping[str, Any] | None,
  eval_kwargs: Mapping[str, Any] | None,
  checkpoint_dir: str | os.PathLike | None,
  resume: bool,
  on_epoch: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None,
  patience: int | None,
  eval_batch_size: int | None,
) -> FitResult:
  """:func:`fit` for an NNX model: the model and its optimizer are trained in place; the
  result's states are averaging states, and the model ends with the best epoch's variables,
  in the train/eval mode it was given in."""
  train, valid, test = splits
  if not isinstance(optimizer, nnx.Optimizer):
    optimizer = nnx.Optimizer(model, optimizer, wrt=nnx.Param)
  # the checkpoint and the best epoch hold the model, the optimizer and the RNG streams given
  # at call time (their counts), so that a resumed run draws what the whole run drew
  call_nodes = [v for v in dict(train_kwargs or {}).values() if isinstance(v, nnx.Pytree)]
  nodes = (model, optimizer, *call_nodes)
  averaging_state = averaging.init(copies_or_one(nnx.state(model, nnx.Param)))
  if likelihood is categorical_log_likelihood:
    check_split_labels(splits, nnx_outputs(model, take(train.inputs, slice(0, 1)), eval_kwargs))
  step = make_train_step(
    model, optimizer, averaging=averaging, likelihood=likelihood, train_kwargs=train_kwargs
  )
  evaluate = make_eval_step(
    model, averaging=averaging, likelihood=likelihood, eval_kwargs=eval_kwargs
  )
  rows = rows_of(train.inputs)
  history, best, best_epoch, done, stopped = [], float("inf"), 0, 0, None
  best_variables, best_averaging = _snapshot(nodes), averaging_state
  if resume:
    items, meta = restore_items(
      checkpoint_dir,
      {
        "variables": best_variables,
        "averaging": averaging_state,
        "best_variables": best_variables,
        "best_averaging": averaging_state,
      },
    )
    fresh_rates = _rate_arrays(optimizer.opt_state)
    _load(nodes, items["variables"])
    try:
      check_resumed(checkpoint_dir, meta, model, fresh_rates, _rate_arrays(optimizer.opt_state))
    except ValueError:
      _load(nodes, best_variables)  # the model and optimizer as they were given
      raise
    averaging_state, done = items["averaging"], int(meta["epoch"])
    best_variables, best_averaging = items["best_variables"], items["best_averaging"]
    history, best, best_epoch = meta["history"], meta["best"], meta["best_epoch"]
    if history:
      stopped = stop_reason(history[-1], best_epoch, patience)
  for epoch in range(done + 1, epochs + 1):
    if stopped is not None:
      break
    losses = []
    for idx in epoch_batches(rows, batch_size, seed=seed, epoch=epoch):
      averaging_state, metrics = step(averaging_state, take(train.inputs, idx), train.targets[idx])
      losses.append(metrics["loss"])
    record = _epoch_record(epoch, losses, averaging.posterior(averaging_state))
    for prefix, split in (("valid", valid), ("test", test)):
      metrics = evaluate_in_chunks(evaluate, averaging_state, *split, eval_batch_size)
      record.update({f"{prefix}_{k}": v for k, v in metrics.items()})
    if np.isfinite(record["valid_loss"]) and record["valid_loss"] < best:
      best, best_epoch = record["valid_loss"], epoch
      best_variables, best_averaging = _snapshot(nodes), averaging_state
    stopped = stop_reason(record, best_epoch, patience)
    if stopped is not None:
      record["stopped"] = stopped
    history.append(record)
    if checkpoint_dir is not None:
      save_items(
        checkpoint_dir,
        {
          "variables": _snapshot(nodes),
          "averaging": averaging_state,
          "best_variables": best_variables,
          "best_averaging": best_averaging,
        },
        {
          "epoch": epoch,
          "history": history,
          "best": best,
          "best_epoch": best_epoch,
          "model": _model_name(model),
        },
      )
    if on_epoch is not None:
      on_epoch(record, history)
  last_averaging = averaging_state
  _load(nodes, best_variables)
  return _result(best_averaging, last_averaging, best_epoch, history, stopped or "epochs")


def _result(state: Any, last: Any, best_epoch: int, history: list, stopped: str) -> FitResult:
  """The :class:`FitResult`, with a warning when no epoch had a finite validation loss."""
  if best_epoch:
    test_metrics = test_metrics_of(history[best_epoch - 1])
  else:
    test_metrics = {"loss": float("inf"), "accuracy": float("nan")}
    warnings.warn(
      f"alrao_jax.fit: no epoch had a finite validation loss ({STOP_REASONS[stopped]}); the "
      "result's state is the initial state, and its test loss inf.",
      RuntimeWarning,
      stacklevel=3,
    )
  return FitResult(state, last, best_epoch, history, test_metrics, stopped)

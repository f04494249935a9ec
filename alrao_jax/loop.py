"""The training loop: :func:`fit` trains a linen or NNX model with early stopping on
validation, checkpoints every epoch and resumes exactly.

Each kind of model is a :class:`alrao_jax.epochs.Trainer` of one run (a linen state, or an NNX
model trained in place) that :func:`alrao_jax.epochs.run_epochs` drives."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from alrao_jax.checkpoint import (
  checkpoint_meta,
  restore_checkpoint,
  restore_items,
  save_checkpoint,
  save_items,
)
from alrao_jax.checks import check_int
from alrao_jax.epochs import STOP_REASONS, Progress, run_epochs, test_metrics_of
from alrao_jax.evaluation import check_eval_batch_size, evaluate_split, zero_collections
from alrao_jax.loss import Likelihood, categorical_log_likelihood, is_categorical
from alrao_jax.nnx_types import is_nnx, nnx
from alrao_jax.retire import (
  CopyRetirement,
  check_retirement,
  checked_copies,
  retire_averaging_state,
  retire_copies,
  retire_nnx_copies,
  ruled_out,
  slice_copies,
)
from alrao_jax.run_checks import (
  check_linen_only,
  check_linen_state,
  check_nnx_labels,
  check_resumed,
  check_streams,
  checked_splits,
  model_name,
  rate_arrays,
)
from alrao_jax.sharding import (
  DATA_AXIS,
  create_sharded_train_state,
  replicate,
  shard_batch,
  shard_eval_step,
  shard_train_state,
  shard_train_step,
)
from alrao_jax.splits import Split, rows_of, take
from alrao_jax.steps import (
  TrainState,
  copies_or_one,
  copy_tree,
  create_train_state,
  make_eval_step,
  make_train_step,
  model_args,
)
from alrao_jax.switch import ModelAveraging, switch_averaging

__all__ = ["STOP_REASONS", "FitResult", "fit"]


class FitResult(NamedTuple):
  """What :func:`fit` returns."""

  state: TrainState  # at the best validation epoch
  last_state: TrainState  # after the last epoch
  best_epoch: int  # 1-based; 0 when no epoch had a finite validation loss
  history: list[dict[str, Any]]  # per epoch: train loss, validation and test metrics
  test: dict[str, float]  # test metrics at the best validation epoch
  stopped: str  # why training ended: "epochs", "patience" or "diverged" (see fit)
  initial_params: Any = None  # the parameters at step 0 (of the copies state holds), on the host
  copies: np.ndarray | None = None  # which of the head's copies state holds; None: all of them


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
  retire: CopyRetirement | None = None,
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
    retire: :func:`alrao_jax.copy_retirement` retires, after each epoch, the output copies
      the switch has ruled out (see :mod:`alrao_jax.retire`): the next steps compute only the
      live copies (one recompile). The history's ``posterior`` keeps every copy, a retired
      one at 0; the result's states hold the copies live at their epoch, which
      :func:`alrao_jax.suggest_lr` reads (an NNX model ends with the best epoch's copies);
      one device.

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
  retire = check_retirement(retire)
  if retire is not None and mesh is not None:
    raise ValueError("retire works on one device: pass mesh=None, or retire=None with a mesh.")
  splits = checked_splits(splits, batch_size)
  averaging = averaging or switch_averaging()
  shared = {
    "averaging": averaging,
    "likelihood": likelihood,
    "train_kwargs": train_kwargs,
    "eval_kwargs": eval_kwargs,
    "eval_batch_size": eval_batch_size,
  }
  modes = []  # an NNX model's train/eval modes, which its steps set, are given back
  if is_nnx(model):
    check_linen_only(
      mesh=mesh,
      initial_state=initial_state,
      eval_params=eval_params,
      eval_model=eval_model,
      carry=carry,
      rng_streams=rng_streams,
    )
    modes = _modes(model)
    carry = ()
  else:
    carry = check_streams(carry, splits, batch_size)
  try:
    if is_nnx(model):
      run = _nnx_run(model, optimizer, splits, **shared)
    else:
      run = _linen_run(
        model,
        optimizer,
        splits,
        seed=seed,
        batch_size=batch_size,
        eval_params=eval_params,
        rng_streams=rng_streams,
        mesh=mesh,
        initial_state=initial_state,
        carry=carry,
        eval_model=eval_model,
        **shared,
      )
    start = nnx.state(model, nnx.Param) if is_nnx(model) else run.state.params
    initial_params = _host_copy(start)  # before a resumed run's checkpoint replaces it
    progress = run.restore(checkpoint_dir, model, patience) if resume else Progress.start(1)
    run_epochs(
      run,
      progress,
      splits.train,
      (("valid", splits.valid), ("test", splits.test)),
      epochs=epochs,
      batch_size=batch_size,
      seed=seed,
      in_order=bool(carry),
      patience=patience,
      retire=None if retire is None else lambda progress: run.retire(progress, retire),
      checkpoint=None
      if checkpoint_dir is None
      else lambda epoch, progress: run.save(checkpoint_dir, model, epoch, progress),
      on_epoch=None
      if on_epoch is None
      else lambda epoch, progress: on_epoch(progress.histories[0][-1], progress.histories[0]),
    )
  finally:
    _restore_modes(modes)
  best, last = run.finish()
  stopped = progress.stopped[0] or "epochs"
  result = _result(best, last, int(progress.best_epochs[0]), progress.histories[0], stopped)
  copies = run.copies.kept()
  if copies is not None and initial_params is not None:  # at step 0, of the copies state holds
    initial_params = slice_copies(initial_params, copies, len(run.copies.every))
  return result._replace(initial_params=initial_params, copies=copies)


def _host_copy(tree: Any) -> Any:
  """``tree`` on the host (None when this process does not hold all of it: several hosts)."""
  leaves = jax.tree.leaves(tree)
  if all(getattr(x, "is_fully_addressable", True) for x in leaves):
    return jax.device_get(tree)
  return None


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


class _Copies:
  """Which of the head's copies a run's state and its best state hold (all of them, until
  :func:`alrao_jax.ruled_out` retires some), in the numbering of the whole head."""

  def __init__(self, num_copies: int):
    self.every = np.arange(num_copies)
    self.live, self.best = self.every, self.every

  def full(self, posterior: Any) -> np.ndarray:
    """A posterior over the live copies as one over every copy (a retired one at 0)."""
    found = np.zeros((1, len(self.every)))
    found[0, self.live] = np.asarray(posterior)
    return found

  def retire(self, progress: Progress, retirement: CopyRetirement) -> np.ndarray | None:
    """The positions, among the live copies, of those that stay; None when none retires."""
    if progress.stopped[0] is not None:
      return None
    out = ruled_out([r["posterior"] for r in progress.histories[0]], self.live, retirement)
    if not len(out):
      return None
    stay = np.flatnonzero(~np.isin(self.live, out))
    self.live = self.live[stay]
    return stay

  def meta(self) -> dict[str, Any]:
    """What a checkpoint's meta holds of them (nothing while every copy is live)."""
    if len(self.live) == len(self.every) and len(self.best) == len(self.every):
      return {}
    return {"live_copies": {"state": self.live.tolist(), "best_state": self.best.tolist()}}

  def restore(self, meta: dict[str, Any], directory: Any) -> None:
    """The copies a checkpoint's state and best state hold, from its meta."""
    every = range(len(self.every))
    found = meta.get("live_copies", {"state": every, "best_state": every})
    try:
      live = {
        name: checked_copies(list(found[name]), len(self.every)) for name in ("state", "best_state")
      }
    except (KeyError, TypeError, ValueError) as err:
      raise ValueError(
        f"corrupt checkpoint in {directory}: its live_copies are not copies of this model's "
        f"{len(self.every)} ({err})"
      ) from err
    self.live, self.best = live["state"], live["best_state"]

  def kept(self) -> np.ndarray | None:
    """The copies of the best state, None when it holds all of them (FitResult.copies)."""
    return None if len(self.best) == len(self.every) else self.best


class _LinenRun:
  """A linen run for the epoch loop: its state, the best epoch's, and the jitted steps."""

  runs = 1

  def __init__(self, state, step, evaluate, *, averaging, carry, streams, chunk, place):
    # The step donates its state: until an epoch is kept, the best state is a copy of the first.
    self.state, self.best_state = state, copy_tree(state)
    self._step, self._evaluate, self._place = step, evaluate, place
    self._averaging, self._carry, self._streams, self._chunk = averaging, carry, streams, chunk
    self.copies = _Copies(copies_or_one(state.params))

  def begin_epoch(self) -> None:
    self.state = zero_collections(self.state, self._carry)

  def step(self, inputs: Any, targets: Any, weights: Any = None) -> jax.Array:
    self.state, metrics = self._step(self.state, *self._place((inputs, targets, weights)))
    return metrics["loss"]

  def posteriors(self) -> np.ndarray:
    return self.copies.full(self._averaging.posterior(self.state.averaging_state))

  def evaluate(self, split: Split) -> list[dict[str, Any]]:
    kwargs = {"carry": self._carry, "streams": self._streams, "chunk": self._chunk}
    return [evaluate_split(self._evaluate, self.state, split, **kwargs)]

  def keep(self, improved: np.ndarray) -> None:
    # The step donates its state: keep a copy, not the buffers the next step reuses.
    self.best_state, self.copies.best = copy_tree(self.state), self.copies.live

  def retire(self, progress: Progress, retirement: CopyRetirement) -> None:
    """Retires the live copies that ``retirement`` rules out on the history so far."""
    stay = self.copies.retire(progress, retirement)
    if stay is not None:
      self.state = retire_copies(self.state, stay)

  def finish(self) -> tuple[TrainState, TrainState]:
    """The best epoch's state and the last one."""
    return self.best_state, self.state

  def _retired(self, copies: np.ndarray) -> TrainState:
    """The (fresh) state cut to ``copies``: a checkpoint's template."""
    every = len(copies) == len(self.copies.every)
    return self.state if every else retire_copies(self.state, copies)

  def save(self, directory: Any, model: Any, epoch: int, progress: Progress) -> None:
    meta = {**_meta(progress), "model": model_name(model), **self.copies.meta()}
    save_checkpoint(directory, self.state, best_state=self.best_state, epoch=epoch, meta=meta)

  def restore(self, directory: Any, model: Any, patience: int | None) -> Progress:
    self.copies.restore(checkpoint_meta(directory), directory)
    like, best_like = self._retired(self.copies.live), self._retired(self.copies.best)
    saved = restore_checkpoint(directory, like, best_like=best_like)
    fresh, restored = rate_arrays(like.opt_state), rate_arrays(saved.state.opt_state)
    check_resumed(directory, saved.meta, model, fresh, restored)
    self.state = saved.state
    if saved.best_state is not None:
      self.best_state = saved.best_state
    else:
      self.best_state = copy_tree(saved.state)
    meta = saved.meta
    return Progress.resumed(meta["history"], meta["best"], meta["best_epoch"], patience)


def _meta(progress: Progress) -> dict[str, Any]:
  """What a checkpoint's meta holds of one run's progress."""
  return {
    "history": progress.histories[0],
    "best": float(progress.best[0]),
    "best_epoch": int(progress.best_epochs[0]),
  }


def _linen_run(
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  splits: Any,
  *,
  seed: int,
  batch_size: int,
  averaging: ModelAveraging,
  likelihood: Likelihood,
  train_kwargs: Mapping[str, Any] | None,
  eval_kwargs: Mapping[str, Any] | None,
  eval_params: Callable[[TrainState], Any] | None,
  rng_streams: Sequence[str],
  mesh: jax.sharding.Mesh | None,
  eval_batch_size: int | None,
  initial_state: TrainState | None,
  carry: tuple[str, ...],
  eval_model: nn.Module | None,
) -> _LinenRun:
  """A linen model's run: its first state (fresh, or ``initial_state`` checked against a
  fresh one's shapes), checked, and its steps, on ``mesh`` when there is one."""
  train = splits.train
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
  else:
    _check_initial_state(initial_state, jax.eval_shape(lambda: fresh(create_train_state)))
    state = initial_state if mesh is None else shard_train_state(initial_state, mesh)
  check_linen_state(
    splits,
    state,
    model=model,
    eval_model=eval_model,
    carry=carry,
    categorical=is_categorical(likelihood),
    eval_kwargs=eval_kwargs,
  )
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
  if mesh is not None:
    step = shard_train_step(step, state, mesh)
    evaluate = (
      shard_eval_step(evaluate, state, mesh, windows=True)
      if carry
      else _sharded_evaluation(evaluate, state, mesh)
    )
  place = (lambda batch: batch) if mesh is None else functools.partial(shard_batch, mesh=mesh)
  return _LinenRun(
    state,
    step,
    evaluate,
    averaging=averaging,
    carry=carry,
    streams=batch_size,
    chunk=eval_batch_size,
    place=place,
  )


def _check_initial_state(given: Any, want: Any) -> None:
  """Raises unless ``given`` is a TrainState of the fresh state's tree, shapes and dtypes."""
  if not isinstance(given, TrainState):
    raise TypeError(f"initial_state must be a TrainState, got {type(given).__name__}.")

  def shapes(tree: Any) -> Any:
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)

  if jax.tree.structure(given) != jax.tree.structure(want) or shapes(given) != shapes(want):
    raise ValueError(
      "initial_state does not fit this model and optimizer (its tree, shapes or dtypes "
      "differ from a fresh state's, e.g. another head width); pass a state of the same "
      "model, with optimizer.init's state."
    )


def _check_mesh(mesh: jax.sharding.Mesh, batch_size: int) -> None:
  if DATA_AXIS not in mesh.axis_names:
    raise ValueError(f"mesh needs a {DATA_AXIS!r} axis for the batch, got {dict(mesh.shape)}.")
  if batch_size % mesh.shape[DATA_AXIS]:
    raise ValueError(
      f"batch_size {batch_size} does not divide over the mesh's {DATA_AXIS!r} axis of size "
      f"{mesh.shape[DATA_AXIS]}; use a multiple of it."
    )


def _sharded_evaluation(evaluate: Callable, state: TrainState, mesh: jax.sharding.Mesh):
  """Evaluates a split sharded over the data axis when its size divides, else replicated."""
  sharded = shard_eval_step(evaluate, state, mesh)
  whole = shard_eval_step(evaluate, state, mesh, data_axis=None)

  def evaluate_split(state, inputs, targets, weights=None):
    if rows_of(inputs) % mesh.shape[DATA_AXIS] == 0:
      return sharded(state, *shard_batch((inputs, targets, weights), mesh))
    return whole(state, *replicate((inputs, targets, weights), mesh))

  return evaluate_split


class _NNXRun:
  """An NNX run for the epoch loop: the model, its optimizer and the RNG streams given at call
  time (``nodes``) trained in place, their averaging state, and the best epoch's copies."""

  runs = 1

  def __init__(self, nodes, averaging_state, step, evaluate, *, averaging, chunk):
    self.nodes, self.averaging_state = nodes, averaging_state
    self._step, self._evaluate, self._averaging, self._chunk = step, evaluate, averaging, chunk
    self.best_variables, self.best_averaging = _snapshot(nodes), averaging_state
    self.copies = _Copies(copies_or_one(nnx.state(nodes[0], nnx.Param)))

  def begin_epoch(self) -> None:
    pass

  def step(self, inputs: Any, targets: Any, weights: Any = None) -> jax.Array:
    self.averaging_state, metrics = self._step(self.averaging_state, inputs, targets, weights)
    return metrics["loss"]

  def posteriors(self) -> np.ndarray:
    return self.copies.full(self._averaging.posterior(self.averaging_state))

  def evaluate(self, split: Split) -> list[dict[str, Any]]:
    found = evaluate_split(
      self._evaluate, self.averaging_state, split, carry=(), streams=1, chunk=self._chunk
    )
    return [found]

  def keep(self, improved: np.ndarray) -> None:
    self.best_variables, self.best_averaging = _snapshot(self.nodes), self.averaging_state
    self.copies.best = self.copies.live

  def retire(self, progress: Progress, retirement: CopyRetirement) -> None:
    """Retires the live copies that ``retirement`` rules out, from the model and optimizer
    variables (in place) and the averaging state."""
    stay = self.copies.retire(progress, retirement)
    if stay is not None:
      self.averaging_state = retire_nnx_copies(self.nodes, self.averaging_state, stay)

  def finish(self) -> tuple[Any, Any]:
    """The best epoch's averaging state and the last one; the nodes get the best epoch's
    variables back."""
    _load(self.nodes, self.best_variables)
    return self.best_averaging, self.averaging_state

  def _items(self, variables: Any) -> dict[str, Any]:
    return {
      "variables": variables,
      "averaging": self.averaging_state,
      "best_variables": self.best_variables,
      "best_averaging": self.best_averaging,
    }

  def save(self, directory: Any, model: Any, epoch: int, progress: Progress) -> None:
    meta = {"epoch": epoch, **_meta(progress), "model": model_name(model), **self.copies.meta()}
    save_items(directory, self._items(_snapshot(self.nodes)), meta)

  def restore(self, directory: Any, model: Any, patience: int | None) -> Progress:
    # the fresh variables (a snapshot already), cut to the copies the checkpoint holds, are
    # the template of their shapes
    given = self.best_variables  # the model and optimizer as they were given
    self.copies.restore(checkpoint_meta(directory), directory)
    every = len(self.copies.every)

    def cut(copies: np.ndarray) -> tuple[Any, Any]:
      if len(copies) == every:
        return given, self.averaging_state
      averaging = retire_averaging_state(self.averaging_state, copies)
      return slice_copies(given, copies, every), averaging

    (variables, averaging), (best_variables, best_averaging) = map(
      cut, (self.copies.live, self.copies.best)
    )
    likes = {
      "variables": variables,
      "averaging": averaging,
      "best_variables": best_variables,
      "best_averaging": best_averaging,
    }
    items, meta = restore_items(directory, likes)
    _load(self.nodes, variables)
    fresh = rate_arrays(self.nodes[1].opt_state)  # this optimizer's rates, of those copies
    _load(self.nodes, items["variables"])
    try:
      check_resumed(directory, meta, model, fresh, rate_arrays(self.nodes[1].opt_state))
    except ValueError:
      _load(self.nodes, given)
      raise
    self.averaging_state = items["averaging"]
    self.best_variables, self.best_averaging = items["best_variables"], items["best_averaging"]
    return Progress.resumed(meta["history"], meta["best"], meta["best_epoch"], patience)


def _nnx_run(
  model: nnx.Module,
  optimizer: optax.GradientTransformation | nnx.Optimizer,
  splits: Any,
  *,
  averaging: ModelAveraging,
  likelihood: Likelihood,
  train_kwargs: Mapping[str, Any] | None,
  eval_kwargs: Mapping[str, Any] | None,
  eval_batch_size: int | None,
) -> _NNXRun:
  """An NNX model's run: the model and its optimizer are trained in place, with the RNG
  streams given at call time, which the checkpoint and the best epoch hold too (their
  counts), so that a resumed run draws what the whole run drew."""
  if not is_nnx(optimizer, "Optimizer"):
    optimizer = nnx.Optimizer(model, optimizer, wrt=nnx.Param)
  call_nodes = [v for v in dict(train_kwargs or {}).values() if is_nnx(v, "Pytree")]
  nodes = (model, optimizer, *call_nodes)
  averaging_state = averaging.init(copies_or_one(nnx.state(model, nnx.Param)))
  if is_categorical(likelihood):
    check_nnx_labels(splits, model, eval_kwargs)
  step = make_train_step(
    model, optimizer, averaging=averaging, likelihood=likelihood, train_kwargs=train_kwargs
  )
  evaluate = make_eval_step(
    model, averaging=averaging, likelihood=likelihood, eval_kwargs=eval_kwargs
  )
  return _NNXRun(nodes, averaging_state, step, evaluate, averaging=averaging, chunk=eval_batch_size)


def _snapshot(nodes: tuple) -> Any:
  """A copy of the NNX nodes' variables (the step donates the live ones)."""
  return copy_tree(nnx.to_pure_dict(nnx.state(nodes)))


def _load(nodes: tuple, pure: Any) -> None:
  """Writes a :func:`_snapshot` back into the nodes' variables, in place."""
  state = nnx.state(nodes)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(nodes, state)


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

"""Jitted Alrao training and evaluation steps for Flax linen and NNX models."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from alrao_jax.checkpoint import restore_checkpoint, save_checkpoint
from alrao_jax.head import (
  CopyOutputs,
  Posterior,
  best_copy,
  copy_values,
  log_posterior_of,
  mixture_log_probs,
)
from alrao_jax.loss import (
  Likelihood,
  alrao_loss,
  categorical_log_likelihood,
  check_labels,
  has_usable_copy,
  masked_log_likelihoods,
  mixture_log_likelihood,
)
from alrao_jax.rates import COPIES_MODULE, leaf_paths
from alrao_jax.switch import ModelAveraging, switch_averaging

Metrics = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
  """Everything an Alrao run carries from step to step (linen models)."""

  step: jax.Array  # shape=(), int32
  params: Any
  model_state: Any  # the other variable collections, e.g. {'batch_stats': ...}
  opt_state: optax.OptState  # holds the per-feature rates
  averaging_state: Any  # e.g. a SwitchState
  rng: jax.Array  # PRNG key, split for dropout at every step


def _head_kernel(params: Any) -> Any:
  for path, leaf in zip(*leaf_paths(params)[:2], strict=True):
    if COPIES_MODULE in path[:-1] and path[-1] == "kernel":
      return leaf
  raise ValueError(
    "params hold no AlraoHead (no 'alrao_copies' module); end the model with "
    "alrao_jax.AlraoHead(num_outputs=...) or alrao_jax.nnx.AlraoHead(...)."
  )


def _head_outputs(params: Any) -> int:
  return int(jnp.shape(_head_kernel(params))[-1])


def num_copies_of(params: Any) -> int:
  """Number of output copies in a parameter tree (the leading axis under ``alrao_copies``).

  Raises:
    ValueError: if the tree holds no :class:`alrao_jax.AlraoHead`.
  """
  return int(jnp.shape(_head_kernel(params))[0])


def create_train_state(
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  key: jax.Array,
  *example_inputs: Any,
  averaging: ModelAveraging | None = None,
  rng_streams: Sequence[str] = ("dropout",),
  **init_kwargs: Any,
) -> TrainState:
  """Initialises a linen model, its optimizer state and the model averaging.

  Args:
    model: a linen module ending with an :class:`alrao_jax.AlraoHead`.
    optimizer: e.g. :func:`alrao_jax.alrao_sgd`.
    key: PRNG key for the parameters and dropout.
    *example_inputs: inputs for ``model.init``.
    averaging: :func:`alrao_jax.switch_averaging` (default) or :func:`alrao_jax.bayes_averaging`.
    rng_streams: the RNG streams the model draws from besides ``params`` (each gets a key
      at init and a fresh one at every step), e.g. ``("dropout", "noise")``.
    **init_kwargs: keyword arguments for ``model.init`` (e.g. ``train=False``).

  Returns:
    A :class:`TrainState` at step 0.
  """
  averaging = averaging or switch_averaging()
  streams = _check_streams(rng_streams)
  params_key, init_key, rng = jax.random.split(key, 3)
  variables = dict(
    model.init(
      {"params": params_key, **_stream_keys(init_key, streams)}, *example_inputs, **init_kwargs
    )
  )
  params = variables.pop("params")
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    model_state=variables,
    # Own buffers: some optimizers keep the params themselves (Prodigy keeps its start), and a
    # donated state may not hold one buffer twice.
    opt_state=jax.tree.map(jnp.copy, optimizer.init(params)),
    averaging_state=averaging.init(num_copies_of(params)),
    rng=rng,
  )


def _check_streams(rng_streams: Sequence[str]) -> tuple[str, ...]:
  if isinstance(rng_streams, str) or not all(isinstance(n, str) for n in rng_streams):
    raise TypeError(f"rng_streams must be a sequence of stream names, got {rng_streams!r}.")
  if "params" in rng_streams:
    raise ValueError("rng_streams names the streams used in a step; 'params' is only for init.")
  return tuple(rng_streams)


def _stream_keys(key: jax.Array, streams: tuple[str, ...]) -> dict[str, jax.Array]:
  return dict(zip(streams, jax.random.split(key, len(streams)), strict=True)) if streams else {}


def averaging_weights(averaging: ModelAveraging, averaging_state: Any) -> Posterior:
  """What the copies are weighed with: the state itself when it keeps a log posterior
  (no weight underflows to 0), else ``averaging.posterior(state)``."""
  if hasattr(averaging_state, "log_posterior"):
    return averaging_state
  return averaging.posterior(averaging_state)


def _loss_and_grads(
  apply: Callable, params: Any, targets: jax.Array, posterior: jax.Array, likelihood: Likelihood
):
  def loss_fn(params):
    outputs, extra = apply(params)
    loss, aux = alrao_loss(outputs, targets, posterior, likelihood=likelihood)
    return loss, (aux, extra)

  return jax.value_and_grad(loss_fn, has_aux=True)(params)


def make_train_step(
  model: nn.Module | nnx.Module,
  optimizer: optax.GradientTransformation | nnx.Optimizer,
  *,
  averaging: ModelAveraging | None = None,
  likelihood: Likelihood = categorical_log_likelihood,
  train_kwargs: Mapping[str, Any] | None = None,
  donate: bool = True,
  rng_streams: Sequence[str] = ("dropout",),
) -> Callable:
  """Builds the jitted Alrao step: forward, one backward, optax update, averaging update.

  For a linen ``model``, returns ``step(state, inputs, targets) -> (state, metrics)`` on a
  :class:`TrainState`; non-param collections (BatchNorm's ``batch_stats``) are updated and
  a fresh key per RNG stream (``rng_streams``) is split from ``state.rng`` at every step.

  For an NNX ``model`` (with an ``nnx.Optimizer`` built on it), returns
  ``step(averaging_state, inputs, targets) -> (averaging_state, metrics)``; the model and
  optimizer are updated in place, the model in ``train()`` mode. The graph of the model and
  optimizer is split once, here (see :func:`nnx_pure_call`), not at every call: build the
  step again after changing the model's structure.

  The optimizer's ``update`` receives ``value=`` the mixture loss, as
  ``optax.contrib.reduce_on_plateau`` and other ``GradientTransformationExtraArgs`` expect.

  The copies are weighted with the posterior from *before* the batch, and the averaging
  is updated with the copies' log-likelihoods of that batch (prequential).

  Args:
    model: a linen or NNX module ending with an Alrao head.
    optimizer: an optax transformation (linen) or an ``nnx.Optimizer`` (NNX).
    averaging: :func:`alrao_jax.switch_averaging` (default) or :func:`alrao_jax.bayes_averaging`.
    likelihood: :func:`alrao_jax.categorical_log_likelihood` (default) or
      ``alrao_jax.gaussian_log_likelihood(sigma=...)``.
    train_kwargs: keyword arguments for the model call, e.g. ``{'train': True}`` (linen).
    donate: donate the linen ``state`` to the step, so that its buffers are reused for the
      new state (pass ``False`` to keep using the old state after the call).
    rng_streams: linen: the RNG streams the model draws from in training (see
      :func:`create_train_state`).

  Returns:
    The jitted step. ``metrics`` holds ``loss`` (mixture NLL), ``copy_nll`` (N,) and
    ``posterior`` (N,) after the update.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, alrao_jax
    >>> model = nn.Sequential([nn.Dense(16), nn.relu, alrao_jax.AlraoHead(3, num_copies=4)])
    >>> tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(1))
    >>> x, y = jnp.ones((8, 5)), jnp.zeros((8,), jnp.int32)
    >>> state = alrao_jax.create_train_state(model, tx, jax.random.key(0), x)
    >>> step = alrao_jax.make_train_step(model, tx)
    >>> state, metrics = step(state, x, y)
    >>> metrics['posterior'].shape
    (4,)

  References:
    Blier, Wolinski & Ollivier, `Learning with Random Learning Rates
    <https://arxiv.org/abs/1810.01322>`_, 2018 (Algorithm 1).
  """
  averaging = averaging or switch_averaging()
  kwargs = dict(train_kwargs or {})
  if isinstance(model, nnx.Module):
    if not isinstance(optimizer, nnx.Optimizer):
      raise TypeError("an NNX model needs an nnx.Optimizer(model, tx, wrt=nnx.Param).")
    return _nnx_train_step(model, optimizer, averaging, likelihood, kwargs)
  if not isinstance(model, nn.Module):
    raise TypeError(f"model must be a flax linen or nnx Module, got {type(model).__name__}.")
  streams = _check_streams(rng_streams)
  tx = optax.with_extra_args_support(optimizer)

  @functools.partial(jax.jit, donate_argnums=(0,) if donate else ())
  def step(state: TrainState, inputs: Any, targets: jax.Array) -> tuple[TrainState, Metrics]:
    rng, step_key = jax.random.split(state.rng)
    rngs = _stream_keys(step_key, streams)
    mutable = list(state.model_state)

    def apply(params):
      variables = {"params": params, **state.model_state}
      if not mutable:
        return model.apply(variables, inputs, rngs=rngs, **kwargs), {}
      return model.apply(variables, inputs, rngs=rngs, mutable=mutable, **kwargs)

    weights = averaging_weights(averaging, state.averaging_state)
    (_, (aux, model_state)), grads = _loss_and_grads(
      apply, state.params, targets, weights, likelihood
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=aux.mixture_nll)
    averaging_state = averaging.update(state.averaging_state, aux.log_likelihoods)
    new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      model_state=model_state,
      opt_state=opt_state,
      averaging_state=averaging_state,
      rng=rng,
    )
    return new_state, _train_metrics(aux, averaging.posterior(averaging_state))

  return step


def _train_metrics(aux: Any, posterior: jax.Array) -> Metrics:
  return {"loss": aux.mixture_nll, "copy_nll": aux.copy_nll, "posterior": posterior}


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def nnx_pure_call(nodes: tuple, fn: Callable, *, donate: bool = True) -> Callable:
  """``fn(*nodes, *args)`` as one pure ``jax.jit`` program; the nodes' variables updated in place.

  The graph of ``nodes`` is split once, here; each call reads the current values of their
  variables, runs the compiled program (the values donated) and writes the new values back
  into the same variables. No graph traversal per call: an NNX step costs what a linen step
  costs. The nodes' structure and static attributes (``train()``/``eval()`` mode) are those
  at this call; build it again after changing them.

  Args:
    nodes: the NNX graph nodes, e.g. ``(model, optimizer)``.
    fn: a function of the nodes and the other arguments; it may update the nodes.
    donate: donate the variables' old values to the call.

  Returns:
    ``call(*args) -> fn's result``.
  """
  graphdef, state = nnx.split(nodes)
  variables = jax.tree.leaves(state, is_leaf=_is_variable)
  treedef = jax.tree.structure(state)

  @functools.partial(jax.jit, donate_argnums=(0,) if donate else ())
  def pure(values, *args):
    merged = nnx.merge(graphdef, jax.tree.unflatten(treedef, jax.tree.leaves(values)))
    out = fn(*merged, *args)
    new = jax.tree.leaves(nnx.state(merged), is_leaf=_is_variable)
    return [v.get_raw_value() for v in new], out

  def call(*args):
    values, out = pure([v.get_raw_value() for v in variables], *args)
    for variable, value in zip(variables, values, strict=True):
      variable.set_raw_value(value)
    return out

  return call


def _nnx_train_step(model, optimizer, averaging, likelihood, kwargs):
  extra_args = isinstance(optimizer.tx, optax.GradientTransformationExtraArgs)

  def train(model, optimizer, averaging_state, inputs, targets):
    weights = averaging_weights(averaging, averaging_state)

    def loss_fn(model):
      return alrao_loss(model(inputs, **kwargs), targets, weights, likelihood=likelihood)

    (_, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads, **({"value": aux.mixture_nll} if extra_args else {}))
    averaging_state = averaging.update(averaging_state, aux.log_likelihoods)
    return averaging_state, _train_metrics(aux, averaging.posterior(averaging_state))

  model.train()  # the step keeps this mode, whatever the model is set to later
  return nnx_pure_call((model, optimizer), train)


def evaluation_metrics(
  outputs: CopyOutputs | jax.Array,
  targets: jax.Array,
  posterior: Posterior,
  *,
  likelihood: Likelihood = categorical_log_likelihood,
) -> Metrics:
  """Test metrics of the mixture and of the best copy.

  Args:
    outputs: copy outputs ``(N, *batch, K)`` or :class:`CopyOutputs`.
    targets: labels or regression targets.
    posterior: averaging weights ``(N,)`` or the averaging state.
    likelihood: the per-copy log-likelihood used in training.

  Returns:
    ``loss`` (mixture NLL) and ``best_copy_loss``; with the categorical likelihood also
    ``accuracy`` and ``best_copy_accuracy``. Diverged copies are left out; when no copy
    (or not the best one) is usable, its loss is ``inf`` and its accuracy ``nan``.
  """
  values = copy_values(outputs)
  masked, ll, ok = masked_log_likelihoods(values, targets, likelihood)
  _, mixed = mixture_log_likelihood(ll, ok, posterior)
  best = jnp.argmax(log_posterior_of(posterior))
  any_usable = has_usable_copy(ok, posterior)
  metrics = {
    "loss": jnp.where(any_usable, -jnp.mean(mixed), jnp.inf),
    "best_copy_loss": jnp.where(ok[best], -jnp.mean(ll[best]), jnp.inf),
  }
  if likelihood is categorical_log_likelihood:
    mixture_hits = jnp.argmax(mixture_log_probs(masked, posterior), -1) == targets
    copy_hits = jnp.argmax(best_copy(values, posterior), -1) == targets
    metrics["accuracy"] = jnp.where(any_usable, jnp.mean(mixture_hits), jnp.nan)
    metrics["best_copy_accuracy"] = jnp.where(ok[best], jnp.mean(copy_hits), jnp.nan)
  return metrics


def make_eval_step(
  model: nn.Module | nnx.Module,
  *,
  averaging: ModelAveraging | None = None,
  likelihood: Likelihood = categorical_log_likelihood,
  eval_kwargs: Mapping[str, Any] | None = None,
  eval_params: Callable[[TrainState], Any] | None = None,
) -> Callable:
  """Builds a jitted evaluation step (see :func:`evaluation_metrics`).

  For a linen ``model``: ``evaluate(state, inputs, targets) -> metrics``; for an NNX
  ``model``: ``evaluate(averaging_state, inputs, targets) -> metrics``, in ``eval()`` mode
  (the model is left in ``eval()`` mode; a train step built with :func:`make_train_step`
  keeps its own train-mode view of the same variables).

  Args:
    model: a linen or NNX module ending with an Alrao head.
    averaging: the averaging used in training (for its ``posterior``).
    likelihood: the per-copy log-likelihood used in training.
    eval_kwargs: keyword arguments for the model call, e.g. ``{'train': False}``.
    eval_params: linen only: the parameters to evaluate, from the state (default
      ``state.params``); e.g. ``optax.contrib.schedule_free_eval_params`` of the state.

  Returns:
    The jitted evaluation function.
  """
  averaging = averaging or switch_averaging()
  kwargs = dict(eval_kwargs or {})
  if isinstance(model, nnx.Module):

    def evaluate_nnx(model, averaging_state, inputs, targets):
      weights = averaging_weights(averaging, averaging_state)
      return evaluation_metrics(model(inputs, **kwargs), targets, weights, likelihood=likelihood)

    model.eval()  # the evaluation keeps eval mode; a train step keeps its train mode
    return nnx_pure_call((model,), evaluate_nnx, donate=False)

  @jax.jit
  def evaluate(state: TrainState, inputs: Any, targets: jax.Array) -> Metrics:
    params = state.params if eval_params is None else eval_params(state)
    outputs = model.apply({"params": params, **state.model_state}, inputs, **kwargs)
    weights = averaging_weights(averaging, state.averaging_state)
    return evaluation_metrics(outputs, targets, weights, likelihood=likelihood)

  return evaluate


class FitResult(NamedTuple):
  """What :func:`fit` returns."""

  state: TrainState  # at the best validation epoch
  last_state: TrainState  # after the last epoch
  best_epoch: int  # 1-based; 0 when no epoch had a finite validation loss
  history: list[dict[str, Any]]  # per epoch: train loss, validation and test metrics
  test: dict[str, float]  # test metrics at the best validation epoch


def _as_floats(metrics: Mapping[str, jax.Array]) -> dict[str, Any]:
  return {k: float(v) if jnp.ndim(v) == 0 else [float(x) for x in v] for k, v in metrics.items()}


def fit(
  model: nn.Module,
  optimizer: optax.GradientTransformation,
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
) -> FitResult:
  """Trains a linen model with early stopping on the validation loss.

  Each epoch shuffles the training split with a seed of its own, ``(seed, epoch)`` (the last
  partial batch is dropped so that one compiled step serves every batch), and evaluates the
  validation and test splits whole. Training stops early after ``patience`` epochs without a
  better validation loss, and at once when the training loss is not finite (plain models
  cannot recover from it; an Alrao mixture stays finite while one copy is usable). With
  ``checkpoint_dir``, a checkpoint is written after
  every epoch; ``resume=True`` continues from it, and the result equals that of a run that
  was never interrupted.

  Args:
    model: a linen module ending with an Alrao head.
    optimizer: any optax transformation, e.g. :func:`alrao_jax.alrao_sgd` or ``optax.sgd``.
    splits: an :class:`alrao_jax.data.Splits`.
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

  Returns:
    A :class:`FitResult`.

  Raises:
    ValueError: bad arguments, or (categorical likelihood) labels outside ``[0, K)`` in a
      split, checked once on the host before training.
  """
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {epochs}.")
  if patience is not None and patience < 1:
    raise ValueError(f"patience must be >= 1 or None, got {patience}.")
  if resume and checkpoint_dir is None:
    raise ValueError("resume=True needs the checkpoint_dir to resume from.")
  train, valid, test = splits
  if batch_size < 1 or batch_size > len(train.inputs):
    raise ValueError(f"batch_size must be in [1, {len(train.inputs)}], got {batch_size}.")
  averaging = averaging or switch_averaging()
  state = create_train_state(
    model,
    optimizer,
    jax.random.key(seed),
    train.inputs[:batch_size],
    averaging=averaging,
    rng_streams=rng_streams,
    **dict(eval_kwargs or {}),
  )
  if likelihood is categorical_log_likelihood:
    num_classes = _head_outputs(state.params)
    for name, split in zip(("train", "valid", "test"), splits, strict=True):
      check_labels(split.targets, num_classes, name=f"splits.{name}.targets")
  step = make_train_step(
    model,
    optimizer,
    averaging=averaging,
    likelihood=likelihood,
    train_kwargs=train_kwargs,
    rng_streams=rng_streams,
  )
  evaluate = make_eval_step(
    model,
    averaging=averaging,
    likelihood=likelihood,
    eval_kwargs=eval_kwargs,
    eval_params=eval_params,
  )
  steps = len(train.inputs) // batch_size
  history, best, best_state, best_epoch, done = [], float("inf"), state, 0, 0
  if resume:
    saved = restore_checkpoint(checkpoint_dir, state)
    state, best_state, done = saved.state, saved.best_state, saved.epoch
    history, best, best_epoch = saved.meta["history"], saved.meta["best"], saved.meta["best_epoch"]
  for epoch in range(done + 1, epochs + 1):
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(train.inputs))[: steps * batch_size].reshape(steps, batch_size)
    losses = []
    for idx in order:
      state, metrics = step(state, train.inputs[idx], train.targets[idx])
      losses.append(metrics["loss"])
    record = {
      "epoch": epoch,
      "train_loss": float(jnp.mean(jnp.stack(losses))),
      "posterior": [float(p) for p in averaging.posterior(state.averaging_state)],
    }
    for prefix, split in (("valid", valid), ("test", test)):
      metrics = _as_floats(evaluate(state, split.inputs, split.targets))
      record.update({f"{prefix}_{k}": v for k, v in metrics.items()})
    history.append(record)
    if np.isfinite(record["valid_loss"]) and record["valid_loss"] < best:
      # The step donates its state: keep a copy, not the buffers the next step reuses.
      best, best_state, best_epoch = record["valid_loss"], jax.tree.map(jnp.copy, state), epoch
    if checkpoint_dir is not None:
      meta = {"history": history, "best": best, "best_epoch": best_epoch}
      save_checkpoint(checkpoint_dir, state, best_state=best_state, epoch=epoch, meta=meta)
    if on_epoch is not None:
      on_epoch(record, history)
    stalled = patience is not None and epoch - best_epoch >= patience
    if not np.isfinite(record["train_loss"]) or stalled:
      break
  test_metrics = (
    {k[len("test_") :]: v for k, v in history[best_epoch - 1].items() if k.startswith("test_")}
    if best_epoch
    else {"loss": float("inf"), "accuracy": float("nan")}
  )
  return FitResult(best_state, state, best_epoch, history, test_metrics)

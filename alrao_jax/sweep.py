"""Several runs of one model, one per learning rate (or any injected hyperparameter), trained
as one jitted program.

The members of a sweep share the model, its initial parameters and the batches; each has its
own parameters, optimizer state and model state from there on, stacked on a leading member
axis, and its hyperparameter is a traced value of its optimizer state
(``optax.inject_hyperparams``): one compilation serves every value. A member equals a plain
:func:`alrao_jax.fit` run at its value.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alrao_jax.checks import check_bool, check_int
from alrao_jax.epochs import Progress, run_epochs, test_metrics_of
from alrao_jax.evaluation import check_eval_batch_size, evaluate_split, zero_collections
from alrao_jax.head import as_copy_outputs
from alrao_jax.loss import Likelihood, alrao_loss, categorical_log_likelihood, is_categorical
from alrao_jax.lr_find import takes_learning_rate
from alrao_jax.nnx_types import is_nnx, nnx
from alrao_jax.run_checks import (
  check_linen_only,
  check_linen_state,
  check_nnx_labels,
  check_streams,
  checked_splits,
)
from alrao_jax.splits import Split, take
from alrao_jax.steps import (
  averaging_weights,
  check_averaging_state,
  copies_or_one,
  copy_tree,
  create_train_state,
  evaluation_metrics,
  make_eval_step,
  make_train_step,
  model_args,
  node_kwargs,
  train_metrics,
  update_averaging,
)
from alrao_jax.switch import ModelAveraging, switch_averaging

MEMBERS_AXIS = "members"  # the mesh axis a sweep's members are sharded over


class SweepResult(NamedTuple):
  """What :func:`sweep` returns; member ``i`` ran at ``values[i]``."""

  hyperparam: str  # the swept hyperparameter, e.g. "learning_rate"
  values: np.ndarray  # (M,) its values, one per member
  histories: list[list[dict[str, Any]]]  # per member, per epoch: as fit's history
  best_epochs: np.ndarray  # (M,) each member's best validation epoch, 1-based; 0: none finite
  valid_losses: np.ndarray  # (M,) each member's best validation loss (inf: none finite)
  test: list[dict[str, float]]  # per member: test metrics at its best epoch ({}: not evaluated)
  stopped: list[str]  # per member: "epochs", "patience" or "diverged" (see fit)
  best_index: int  # the member of lowest validation loss; -1 when none had a finite one
  best_value: float  # its value (nan when none)
  states: Any  # every member's state at its best epoch, stacked on a leading axis
  start_valid_loss: float  # the validation loss of the members' common start, before training

  def state(self, index: int) -> Any:
    """Member ``index``'s state at its best epoch (linen: a :class:`alrao_jax.TrainState`)."""
    return _member(self.states, index)


def _member(states: Any, index: int) -> Any:
  """Member ``index`` of stacked states, on any mesh the members were sharded over (a mesh
  of Explicit axes refuses to index a sharded axis: the stack is replicated first)."""

  def take(x: Any) -> Any:
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding) and not sharding.is_fully_replicated:
      x = jax.device_put(x, NamedSharding(sharding.mesh, P()))
    return x[index]

  return jax.tree.map(take, states)


def _check_values(values: Any, hyperparam: str) -> np.ndarray:
  array = np.asarray(values, np.float64)
  if array.ndim != 1 or array.size < 1 or not np.isfinite(array).all():
    raise ValueError(
      f"values must be a non-empty 1-D sequence of finite {hyperparam} values, got {values!r}."
    )
  if hyperparam == "learning_rate" and (array <= 0).any():
    raise ValueError(f"values must be learning rates > 0, got {array.tolist()}.")
  return array


def _injected(
  optimizer: Callable[..., optax.GradientTransformation], hyperparam: str, first: float
) -> optax.GradientTransformation:
  """The factory's transformation with ``hyperparam`` injected (a traced value of its state)."""
  if not callable(optimizer) or isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(
      "optimizer must be a factory hyperparameter -> GradientTransformation, e.g. optax.sgd "
      "or functools.partial(optax.adam, b2=0.99), not a transformation: the sweep injects "
      f"{hyperparam!r} into it (optax.inject_hyperparams)."
    )
  factory = takes_learning_rate(optimizer) if hyperparam == "learning_rate" else optimizer
  try:
    parameters = inspect.signature(factory).parameters
  except (TypeError, ValueError):
    parameters = None
  if parameters is not None and hyperparam not in parameters:
    raise TypeError(
      f"optimizer takes no argument named {hyperparam!r} (it takes {list(parameters)}); "
      "pass hyperparam= one of them."
    )
  return optax.inject_hyperparams(factory)(**{hyperparam: first})


def _with_values(states: Any, hyperparam: str, values: np.ndarray) -> Any:
  """The stacked states with member ``i``'s hyperparameter set to ``values[i]``."""
  opt_state = states.opt_state
  hyperparams = dict(opt_state.hyperparams)
  dtype = jnp.result_type(hyperparams[hyperparam])
  with np.errstate(over="ignore"):  # an overflow is named below
    stored = np.asarray(values, dtype)
  lost = ((values != 0) & (stored == 0)) | (np.isfinite(values) & ~np.isfinite(stored))
  if lost.any():
    raise ValueError(
      f"values {values[lost].tolist()} are outside the range of {dtype}, in which the "
      f"optimizer stores {hyperparam}: they would train at {stored[lost].tolist()}; pass "
      f"values within [{np.finfo(dtype).tiny:.3g}, {np.finfo(dtype).max:.3g}] in magnitude."
    )
  hyperparams[hyperparam] = jnp.asarray(stored)
  opt_state = opt_state._replace(hyperparams=hyperparams)
  if isinstance(states, _NNXMember):
    return states._replace(opt_state=opt_state)
  return states.replace(opt_state=opt_state)


def _stack(tree: Any, count: int) -> Any:
  return jax.tree.map(lambda x: jnp.stack([x] * count), tree)


def _select(keep: jax.Array, new: Any, old: Any) -> Any:
  """Member-wise ``new if keep else old`` over stacked trees."""

  def pick(n: jax.Array, o: jax.Array) -> jax.Array:
    if jnp.issubdtype(n.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(pick(jax.random.key_data(n), jax.random.key_data(o)))
    return jnp.where(keep.reshape(keep.shape + (1,) * (n.ndim - 1)), n, o)

  return jax.tree.map(pick, new, old)


def _linen_members(
  model,
  tx,
  splits,
  *,
  seed,
  batch_size,
  averaging,
  likelihood,
  train_kwargs,
  eval_kwargs,
  rng_streams,
  eval_model,
  carry,
):
  """(state, train step, eval step) of a linen model, checked: the state fit starts from."""
  if not isinstance(model, nn.Module):
    raise TypeError(f"model must be a flax linen or nnx Module, got {type(model).__name__}.")
  state = create_train_state(
    model,
    tx,
    jax.random.key(seed),
    *model_args(take(splits.train.inputs, slice(0, batch_size))),
    averaging=averaging,
    rng_streams=rng_streams,
    **eval_kwargs,
  )
  step = make_train_step(
    model,
    tx,
    averaging=averaging,
    likelihood=likelihood,
    train_kwargs=train_kwargs,
    donate=False,
    rng_streams=rng_streams,
  )
  evaluate = make_eval_step(
    eval_model or model,
    averaging=averaging,
    likelihood=likelihood,
    eval_kwargs=eval_kwargs,
    carry=carry,
  )
  check_linen_state(
    splits,
    state,
    model=model,
    eval_model=eval_model,
    carry=carry,
    categorical=is_categorical(likelihood),
    eval_kwargs=eval_kwargs,
  )
  return state, step, evaluate


class _NNXMember(NamedTuple):
  params: Any
  rest: Any  # the model's other variables, and RNG streams given at call time
  opt_state: Any
  averaging_state: Any


def _nnx_members(
  model,
  tx,
  splits,
  *,
  averaging,
  likelihood,
  train_kwargs,
  eval_kwargs,
  eval_model,
  rng_streams,
  carry,
  seed,
  batch_size,
):
  """(state, train step, eval step) of an NNX model, as pure functions of its variables;
  ``eval_model``, ``rng_streams`` and ``carry`` are linen's and must keep their defaults."""
  del seed, batch_size  # a linen state's: the NNX model holds its variables already
  check_linen_only(eval_model=eval_model, rng_streams=rng_streams, carry=carry)
  if is_categorical(likelihood):
    check_nnx_labels(splits, model, eval_kwargs)
  nodes, call_kwargs = node_kwargs(train_kwargs)
  if any(is_nnx(v, "Pytree") for v in eval_kwargs.values()):
    raise ValueError(
      "eval_kwargs holds NNX nodes (e.g. nnx.Rngs); evaluation runs in eval() mode and needs "
      "no RNG stream: leave them out."
    )
  model.eval()
  eval_graph = nnx.graphdef((model, *nodes))
  model.train()
  graph, params, rest = nnx.split((model, *nodes), nnx.Param, ...)
  tx = optax.with_extra_args_support(tx)
  opt_state = tx.init(params)
  state = _NNXMember(params, rest, opt_state, averaging.init(copies_or_one(params)))

  def step(state: _NNXMember, inputs: Any, targets: jax.Array, weights: Any = None):
    posterior = averaging_weights(averaging, state.averaging_state)

    def loss_fn(params):
      merged = nnx.merge(graph, params, state.rest, copy=True)
      outputs = as_copy_outputs(merged[0](*model_args(inputs), **call_kwargs(merged[1:])))
      check_averaging_state(averaging, state.averaging_state, outputs)
      loss, aux = alrao_loss(
        outputs, targets, posterior, likelihood=likelihood, weights=weights
      )
      return loss, (aux, nnx.split(merged, nnx.Param, ...)[2])

    (_, (aux, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=aux.mixture_nll)
    averaging_state = update_averaging(
      averaging, state.averaging_state, aux.log_likelihoods, weights
    )
    new = _NNXMember(optax.apply_updates(state.params, updates), rest, opt_state, averaging_state)
    return new, train_metrics(aux, averaging.posterior(averaging_state))

  def evaluate(state: _NNXMember, inputs: Any, targets: jax.Array, weights: Any = None):
    merged = nnx.merge(eval_graph, state.params, state.rest)
    outputs = as_copy_outputs(merged[0](*model_args(inputs), **eval_kwargs))
    posterior = averaging_weights(averaging, state.averaging_state)
    return evaluation_metrics(
      outputs, targets, posterior, likelihood=likelihood, weights=weights
    )

  return state, step, evaluate


class _Members:
  """A sweep's members for the epoch loop: their states stacked on a leading axis, trained by
  one vmapped step and evaluated by one vmapped evaluation."""

  def __init__(self, states, step, evaluate, *, carry, streams, chunk):
    self.runs = len(jax.tree.leaves(states)[0])
    self.states, self.best_states = states, copy_tree(states)
    self._step = jax.jit(jax.vmap(step, in_axes=(0, None, None, None)), donate_argnums=0)
    self._evaluate = jax.jit(jax.vmap(evaluate, in_axes=(0, None, None, None)))
    self._carry, self._streams, self._chunk = carry, streams, chunk
    self._posteriors = None

  def begin_epoch(self) -> None:
    self.states = zero_collections(self.states, self._carry)

  def step(self, inputs: Any, targets: Any, weights: Any = None) -> jax.Array:
    self.states, metrics = self._step(self.states, inputs, targets, weights)
    self._posteriors = metrics["posterior"]
    return metrics["loss"]

  def posteriors(self) -> np.ndarray:
    return np.asarray(self._posteriors)

  def evaluate(self, split: Split) -> list[dict[str, Any]]:
    found = evaluate_split(
      self._evaluate,
      self.states,
      split,
      carry=self._carry,
      streams=self._streams,
      chunk=self._chunk,
    )
    return [{k: v[i] for k, v in found.items()} for i in range(self.runs)]

  def keep(self, improved: np.ndarray) -> None:
    self.best_states = _select(jnp.asarray(improved), self.states, self.best_states)


def _placed(tree: Any, mesh: jax.sharding.Mesh | None) -> Any:
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, P(MEMBERS_AXIS)))


def _check_mesh(mesh: jax.sharding.Mesh, count: int) -> None:
  if MEMBERS_AXIS not in mesh.axis_names:
    raise ValueError(
      f"mesh has axes {mesh.axis_names}; a sweep shards its members over an axis named "
      f"{MEMBERS_AXIS!r}, e.g. jax.make_mesh(({jax.device_count()},), ('members',))."
    )
  size = mesh.shape[MEMBERS_AXIS]
  if count % size:
    raise ValueError(
      f"{count} values do not divide over the mesh's {size} {MEMBERS_AXIS!r} devices; pass a "
      f"multiple of {size} values."
    )


def sweep(
  model: nn.Module | nnx.Module,
  optimizer: Callable[..., optax.GradientTransformation],
  splits: Any,
  *,
  values: Sequence[float],
  epochs: int,
  hyperparam: str = "learning_rate",
  seed: int = 0,
  batch_size: int = 32,
  patience: int | None = None,
  averaging: ModelAveraging | None = None,
  likelihood: Likelihood = categorical_log_likelihood,
  train_kwargs: Mapping[str, Any] | None = None,
  eval_kwargs: Mapping[str, Any] | None = None,
  eval_model: nn.Module | None = None,
  rng_streams: Sequence[str] = ("dropout",),
  carry: Sequence[str] = (),
  eval_batch_size: int | None = 1024,
  mesh: jax.sharding.Mesh | None = None,
  on_epoch: Callable[[int, list[list[dict[str, Any]]]], None] | None = None,
  evaluate_test: bool = True,
) -> SweepResult:
  """Trains one run per value of a hyperparameter, all in one jitted program.

  Each member is the run :func:`alrao_jax.fit` would make with ``optimizer(hyperparam=v)``:
  the same initial parameters (from ``seed``), the same shuffled batches, early stopping on
  its own validation loss (a member that stops, for ``patience`` or divergence, keeps its
  record and best state while the others go on; the sweep ends when every member has
  stopped). The members' states are stacked on a leading axis and trained by one vmapped
  step, the hyperparameter a traced value of the optimizer state, so the whole sweep compiles
  once; on an accelerator, small models train M members for little more than one run's time.

  Args:
    model: a linen or NNX module, with a plain output layer (or an Alrao head). An NNX model
      ends with the winning member's best variables, in ``eval()`` mode.
    optimizer: a factory ``hyperparam -> GradientTransformation``, e.g. ``optax.sgd``,
      ``optax.adam`` or ``functools.partial(optax.sgd, momentum=0.9)``.
    splits: an :class:`alrao_jax.Splits` (or ``(train, valid, test)`` pairs), as for fit.
    values: the hyperparameter's values, one member each, e.g. ``[0.01, 0.1, 1.0]``.
    epochs: the most epochs a member trains, >= 1.
    hyperparam: the optimizer's argument that the values set (default ``"learning_rate"``;
      any argument ``optax.inject_hyperparams`` can inject, e.g. ``"momentum"``).
    seed: seed of the parameters and the shuffles, shared by the members.
    batch_size: examples per step.
    patience: a member stops after this many epochs without a better validation loss.
    averaging: the averaging of an Alrao head's copies (default switch).
    likelihood: the per-example log-likelihood (default categorical).
    train_kwargs: keyword arguments of the model call in training (NNX: RNG streams given
      at call time, ``{'rngs': nnx.Rngs(dropout=0)}``, are carried per member).
    eval_kwargs: keyword arguments of the model call in evaluation.
    eval_model: linen: the module that evaluates, when it differs from the training one.
    rng_streams: linen: the RNG streams the model draws from in training.
    carry: linen: the variable collections a model carries from batch to batch, e.g.
      ``('carry',)`` for an RNN trained by truncated BPTT on streams, as for
      :func:`alrao_jax.fit`: batches in order, each member's carried state zeroed at the
      start of every epoch and of every evaluated split.
    eval_batch_size: examples per evaluation call (see :func:`alrao_jax.fit`).
    mesh: a ``jax.sharding.Mesh`` with an axis named ``"members"``: the members are sharded
      over it (their number a multiple of its size), each device training its share.
    on_epoch: called after each epoch with its number and every member's history so far.
    evaluate_test: evaluate the test split every epoch, as fit does; ``False`` skips it (no
      ``test_*`` metrics in the histories, ``SweepResult.test`` holds empty dicts), for a
      sweep read on validation only, such as :func:`alrao_jax.tune`'s race: it saves the
      test split's evaluations and their compilation.

  Returns:
    A :class:`SweepResult`.

  Raises:
    ValueError: bad values, epochs, batch size, mesh or carry; labels outside the model's
      classes.
    TypeError: an optimizer that is not a factory taking ``hyperparam``.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, optax, alrao_jax
    >>> x = jax.random.normal(jax.random.key(0), (96, 4)); y = (x[:, 0] > 0).astype(jnp.int32)
    >>> splits = alrao_jax.split_arrays(x, y, valid=32, test=32)
    >>> result = alrao_jax.sweep(nn.Dense(2), optax.sgd, splits, values=[1e-4, 1e-2, 1.0],
    ...                          epochs=3, batch_size=16)
    >>> result.best_value, len(result.histories[0])
    (1.0, 3)

  References:
    Bergstra & Bengio, `Random Search for Hyper-Parameter Optimization
    <https://jmlr.org/papers/v13/bergstra12a.html>`_, 2012 (the grid it replaces the loop of).
  """
  values_ = _check_values(values, hyperparam)
  epochs = check_int(epochs, "epochs", minimum=1)
  seed = check_int(seed, "seed", minimum=0)
  batch_size = check_int(batch_size, "batch_size", minimum=1)
  if patience is not None:
    patience = check_int(patience, "patience", minimum=1)
  check_eval_batch_size(eval_batch_size)
  check_bool(evaluate_test, "evaluate_test")
  if mesh is not None:
    _check_mesh(mesh, len(values_))
  splits = checked_splits(splits, batch_size)
  carry = check_streams(carry, splits, batch_size)
  train, valid, test = splits
  averaging = averaging or switch_averaging()
  tx = _injected(optimizer, hyperparam, float(values_[0]))
  train_kwargs, eval_kwargs = dict(train_kwargs or {}), dict(eval_kwargs or {})
  kind = _nnx_members if is_nnx(model) else _linen_members
  state, step, evaluate = kind(
    model,
    tx,
    splits,
    seed=seed,
    batch_size=batch_size,
    averaging=averaging,
    likelihood=likelihood,
    train_kwargs=train_kwargs,
    eval_kwargs=eval_kwargs,
    rng_streams=rng_streams,
    eval_model=eval_model,
    carry=carry,
  )
  states = _placed(_with_values(_stack(state, len(values_)), hyperparam, values_), mesh)
  members = _Members(states, step, evaluate, carry=carry, streams=batch_size, chunk=eval_batch_size)
  start_valid_loss = float(members.evaluate(valid)[0]["loss"])  # the members start equal
  progress = run_epochs(
    members,
    Progress.start(len(values_)),
    train,
    (("valid", valid), ("test", test)) if evaluate_test else (("valid", valid),),
    epochs=epochs,
    batch_size=batch_size,
    seed=seed,
    in_order=bool(carry),
    patience=patience,
    labels=[{hyperparam: float(v)} for v in values_],
    on_epoch=None
    if on_epoch is None
    else lambda epoch, progress: on_epoch(epoch, progress.histories),
  )
  finite = np.isfinite(progress.best)
  best_index = int(np.argmin(np.where(finite, progress.best, np.inf))) if finite.any() else -1
  if is_nnx(model):
    winner = _member(members.best_states, max(best_index, 0))
    nnx.update((model, *node_kwargs(train_kwargs)[0]), winner.params, winner.rest)
    model.eval()
  return SweepResult(
    hyperparam=hyperparam,
    values=values_,
    histories=progress.histories,
    best_epochs=progress.best_epochs,
    valid_losses=progress.best,
    test=[
      (test_metrics_of(h[e - 1]) if e else {"loss": float("inf")}) if evaluate_test else {}
      for h, e in zip(progress.histories, progress.best_epochs, strict=True)
    ],
    stopped=[reason or "epochs" for reason in progress.stopped],
    best_index=best_index,
    best_value=float(values_[best_index]) if best_index >= 0 else float("nan"),
    states=members.best_states,
    start_valid_loss=start_valid_loss,
  )

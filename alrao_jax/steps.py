"""Jitted Alrao training and evaluation steps for Flax linen and NNX models, and the linen
:class:`TrainState` they carry."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from alrao_jax.checks import check_carry, check_rng_streams
from alrao_jax.example_weights import example_shares, weighted_mean
from alrao_jax.head import (
  HEAD_OUTPUTS,
  CopyOutputs,
  DeferredCopyOutputs,
  Posterior,
  as_copy_outputs,
  copy_values,
  log_posterior_of,
  mixture_log_probs,
)
from alrao_jax.large_head import fused_evaluation_metrics
from alrao_jax.loss import (
  Likelihood,
  alrao_loss,
  categorical_log_likelihood,
  has_usable_copy,
  is_categorical,
  masked_log_likelihoods,
  mixture_log_likelihood,
)
from alrao_jax.nnx_types import is_nnx, nnx
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


@jax.jit
def copy_tree(tree: Any) -> Any:
  """A copy of every array in ``tree``, in buffers of its own, made by one program per tree
  structure: ``jax.tree.map(jnp.copy, tree)`` outside jit runs one eager program per leaf
  shape, each lowered even when the compilation cache holds it (18 for the digits CNN)."""
  return jax.tree.map(jnp.copy, tree)


def _head_kernel(params: Any) -> Any:
  for path, leaf in zip(*leaf_paths(params)[:2], strict=True):
    if COPIES_MODULE in path[:-1] and path[-1] == "kernel":
      return leaf
  raise ValueError(
    "params hold no AlraoHead (no 'alrao_copies' module); end the model with "
    "alrao_jax.AlraoHead(num_outputs=...) or alrao_jax.nnx.AlraoHead(...)."
  )


def model_args(inputs: Any) -> tuple:
  """The positional arguments of a model call: a tuple of inputs is unpacked (a two-input
  model ``model(ids, lengths)``); anything else (an array, a dict) is one argument."""
  return inputs if isinstance(inputs, tuple) else (inputs,)


def copies_or_one(params: Any) -> int:
  """The Alrao head's number of copies; 1 for a model with a plain output layer."""
  try:
    return num_copies_of(params)
  except ValueError:
    return 1


def head_outputs(params: Any) -> int:
  return int(jnp.shape(_head_kernel(params))[-1])


def num_copies_of(params: Any) -> int:
  """Number of output copies in a parameter tree (the leading axis under ``alrao_copies``).

  Raises:
    ValueError: if the tree holds no :class:`alrao_jax.AlraoHead`.
  """
  return int(jnp.shape(_head_kernel(params))[0])


def init_averaging(model: nnx.Module | Any, averaging: ModelAveraging | None = None) -> Any:
  """The model averaging's initial state for a model's Alrao head (NNX steps carry it).

  Args:
    model: an NNX module holding an Alrao head, or a parameter tree (linen ``params``).
    averaging: :func:`alrao_jax.switch_averaging` (default) or :func:`alrao_jax.bayes_averaging`.

  Returns:
    ``averaging.init(N)`` for the head's ``N`` copies.

  Example:
    >>> import alrao_jax
    >>> from flax import nnx
    >>> head = alrao_jax.nnx.AlraoHead(8, 3, num_copies=5, rngs=nnx.Rngs(0))
    >>> alrao_jax.init_averaging(head).log_posterior.shape
    (5,)
  """
  averaging = averaging or switch_averaging()
  params = nnx.state(model, nnx.Param) if is_nnx(model) else model
  return averaging.init(num_copies_of(params))


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
  streams = check_rng_streams(rng_streams)
  params_key, init_key, rng = jax.random.split(key, 3)
  variables = dict(
    model.init(
      {"params": params_key, **stream_keys(init_key, streams)}, *example_inputs, **init_kwargs
    )
  )
  params = variables.pop("params")
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    # Own buffers: some optimizers keep the params themselves (Prodigy keeps its start), a
    # model may hold one array twice (an LSTM's zero state as (c, h)), and a donated state
    # may not hold one buffer twice.
    model_state=jax.tree.map(jnp.copy, variables),
    opt_state=jax.tree.map(jnp.copy, optimizer.init(params)),
    averaging_state=averaging.init(copies_or_one(params)),
    rng=rng,
  )


def stream_keys(key: jax.Array, streams: tuple[str, ...]) -> dict[str, jax.Array]:
  """A fresh key per RNG stream, split from ``key`` (none for no streams)."""
  return dict(zip(streams, jax.random.split(key, len(streams)), strict=True)) if streams else {}


def averaging_weights(averaging: ModelAveraging, averaging_state: Any) -> Posterior:
  """What the copies are weighed with: the state itself when it keeps a log posterior
  (no weight underflows to 0), else ``averaging.posterior(state)``."""
  if hasattr(averaging_state, "log_posterior"):
    return averaging_state
  return averaging.posterior(averaging_state)


def check_averaging_state(averaging: ModelAveraging, averaging_state: Any, outputs: Any) -> None:
  """Trace-time check that ``averaging_state`` is ``averaging``'s state for the head's copies.

  Raises:
    TypeError: a state of another averaging method. ValueError: another number of copies.
  """
  if not isinstance(outputs, HEAD_OUTPUTS):
    return  # alrao_loss names this one
  num_copies = outputs.shape[0]
  want = jax.eval_shape(lambda: averaging.init(num_copies))
  if jax.tree.structure(averaging_state) != jax.tree.structure(want):
    raise TypeError(
      f"the averaging state is a {type(averaging_state).__name__}, but the step's averaging "
      f"makes a {type(want).__name__}; build the step with the averaging that made the state "
      "(averaging=...), or start from averaging.init(num_copies)."
    )
  shapes = [jnp.shape(x) for x in jax.tree.leaves(averaging_state)]
  if shapes != [x.shape for x in jax.tree.leaves(want)]:
    raise ValueError(
      f"the averaging state does not fit the head's {num_copies} copies (its arrays have "
      f"shapes {shapes}); start from alrao_jax.init_averaging(model) or "
      f"averaging.init({num_copies})."
    )


def _loss_and_grads(
  apply: Callable,
  params: Any,
  targets: jax.Array,
  averaging: ModelAveraging,
  averaging_state: Any,
  likelihood: Likelihood,
  weights: jax.Array | None,
):
  posterior = averaging_weights(averaging, averaging_state)

  def loss_fn(params):
    outputs, extra = apply(params)
    check_averaging_state(averaging, averaging_state, outputs)
    loss, aux = alrao_loss(outputs, targets, posterior, likelihood=likelihood, weights=weights)
    return loss, (aux, extra)

  return jax.value_and_grad(loss_fn, has_aux=True)(params)


def with_optional_weights(fn: Callable) -> Callable:
  """``fn(state, inputs, targets, weights)`` callable as ``(state, inputs, targets,
  weights=None)``: a jitted function with ``in_shardings``, or an NNX call that unpacks its
  arguments by position, takes every argument positionally. A jitted ``fn``'s ``lower`` is
  kept, with the same default."""

  def call(state: Any, inputs: Any, targets: Any, weights: Any = None) -> Any:
    return fn(state, inputs, targets, weights)

  if hasattr(fn, "lower"):
    call.lower = lambda state, inputs, targets, weights=None: fn.lower(
      state, inputs, targets, weights
    )
  return call


def update_averaging(
  averaging: ModelAveraging, state: Any, log_likelihoods: jax.Array, weights: jax.Array | None
) -> Any:
  """The averaging's update on a batch's ``(examples, N)`` log-likelihoods, with the
  batch's weights ``(*batch,)`` when it has them (else as a two-argument update)."""
  if weights is None:
    return averaging.update(state, log_likelihoods)
  return averaging.update(state, log_likelihoods, jnp.reshape(weights, (-1,)))


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

  For a linen ``model``, returns ``step(state, inputs, targets, weights=None) -> (state,
  metrics)`` on a :class:`TrainState`; non-param collections (BatchNorm's ``batch_stats``)
  are updated and a fresh key per RNG stream (``rng_streams``) is split from ``state.rng``
  at every step.

  For an NNX ``model`` (with an ``nnx.Optimizer`` built on it), returns
  ``step(averaging_state, inputs, targets, weights=None) -> (averaging_state, metrics)``;
  the model and
  optimizer are updated in place, the model in ``train()`` mode. The graph of the model and
  optimizer is split once, here (see :func:`nnx_pure_call`), not at every call: build the
  step again after changing the model's structure.

  The optimizer's ``update`` receives ``value=`` the mixture loss, as
  ``optax.contrib.reduce_on_plateau`` and other ``GradientTransformationExtraArgs`` expect.

  The copies are weighted with the posterior from *before* the batch, and the averaging
  is updated with the copies' log-likelihoods of that batch (prequential).

  ``weights`` (per example or per token, ``(*batch,)``, or a mask such as ``targets !=
  pad_id``) make every mean a weighted mean and leave the examples of weight 0 out of the
  loss, the gradient and the averaging's evidence (see :func:`alrao_jax.alrao_loss`).

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
  if is_nnx(model):
    if not is_nnx(optimizer, "Optimizer"):
      raise TypeError("an NNX model needs an nnx.Optimizer(model, tx, wrt=nnx.Param).")
    return _nnx_train_step(model, optimizer, averaging, likelihood, kwargs)
  if not isinstance(model, nn.Module):
    raise TypeError(f"model must be a flax linen or nnx Module, got {type(model).__name__}.")
  if is_nnx(optimizer, "Optimizer") or not hasattr(optimizer, "update"):
    raise TypeError(
      f"a linen model needs an optax transformation, got {type(optimizer).__name__}; pass the "
      "optax optimizer itself (an nnx.Optimizer is for NNX models)."
    )
  streams = check_rng_streams(rng_streams)
  tx = optax.with_extra_args_support(optimizer)

  @functools.partial(jax.jit, donate_argnums=(0,) if donate else ())
  def step(
    state: TrainState, inputs: Any, targets: jax.Array, weights: jax.Array | None = None
  ) -> tuple[TrainState, Metrics]:
    rng, step_key = jax.random.split(state.rng)
    rngs = stream_keys(step_key, streams)
    mutable = list(state.model_state)

    def apply(params):
      variables = {"params": params, **state.model_state}
      if not mutable:
        outputs = model.apply(variables, *model_args(inputs), rngs=rngs, **kwargs)
        return as_copy_outputs(outputs), {}
      outputs, updated = model.apply(
        variables, *model_args(inputs), rngs=rngs, mutable=mutable, **kwargs
      )
      return as_copy_outputs(outputs), updated

    (_, (aux, model_state)), grads = _loss_and_grads(
      apply, state.params, targets, averaging, state.averaging_state, likelihood, weights
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=aux.mixture_nll)
    averaging_state = update_averaging(
      averaging, state.averaging_state, aux.log_likelihoods, weights
    )
    new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      model_state=model_state,
      opt_state=opt_state,
      averaging_state=averaging_state,
      rng=rng,
    )
    return new_state, train_metrics(aux, averaging.posterior(averaging_state))

  return step


def train_metrics(aux: Any, posterior: jax.Array) -> Metrics:
  return {"loss": aux.mixture_nll, "copy_nll": aux.copy_nll, "posterior": posterior}


def _is_variable(x: Any) -> bool:
  return is_nnx(x, "Variable")


def _mesh_placement(value: Any) -> jax.sharding.NamedSharding | None:
  """A value's sharding over a mesh of several devices, else None."""
  sharding = getattr(value, "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh.size > 1:
    return sharding
  return None


def _keep(value: Any, placement: jax.sharding.NamedSharding | None) -> Any:
  return value if placement is None else jax.lax.with_sharding_constraint(value, placement)


def nnx_pure_call(nodes: tuple, fn: Callable, *, donate: bool = True) -> Callable:
  """``fn(*nodes, *args)`` as one pure ``jax.jit`` program; the nodes' variables updated in place.

  The graph of ``nodes`` is split once, here; each call reads the current values of their
  variables, runs the compiled program (the values donated) and writes the new values back
  into the same variables. No graph traversal per call: an NNX step costs what a linen step
  costs. The nodes' structure and static attributes (``train()``/``eval()`` mode) are those
  at this call; build it again after changing them. Variables placed on a mesh (see
  :func:`alrao_jax.sharding.shard_nnx`) keep their shardings across calls.

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
  placements = [_mesh_placement(v.get_raw_value()) for v in variables]

  @functools.partial(jax.jit, donate_argnums=(0,) if donate else ())
  def pure(values, *args):
    merged = nnx.merge(graphdef, jax.tree.unflatten(treedef, jax.tree.leaves(values)))
    out = fn(*merged, *args)
    new = jax.tree.leaves(nnx.state(merged), is_leaf=_is_variable)
    return [_keep(v.get_raw_value(), p) for v, p in zip(new, placements, strict=True)], out

  def call(*args):
    values, out = pure([v.get_raw_value() for v in variables], *args)
    for variable, value in zip(variables, values, strict=True):
      variable.set_raw_value(value)
    return out

  return call


def node_kwargs(kwargs: Mapping[str, Any]) -> tuple[tuple, Callable[[tuple], dict[str, Any]]]:
  """Splits a model call's keyword arguments into NNX graph nodes (``rngs=nnx.Rngs(...)``,
  which the jitted step must carry in and out, as it does the model) and plain values.

  Returns:
    ``(nodes, call_kwargs)``: the nodes, and ``call_kwargs(nodes)`` the keyword arguments
    with the nodes given (those the step received) in their places.
  """
  names = tuple(name for name, value in kwargs.items() if is_nnx(value, "Pytree"))
  plain = {name: value for name, value in kwargs.items() if name not in names}

  def call_kwargs(nodes: tuple) -> dict[str, Any]:
    return {**plain, **dict(zip(names, nodes, strict=True))}

  return tuple(kwargs[name] for name in names), call_kwargs


def _nnx_train_step(model, optimizer, averaging, likelihood, kwargs):
  extra_args = isinstance(optimizer.tx, optax.GradientTransformationExtraArgs)
  nodes, call_kwargs = node_kwargs(kwargs)

  def train(model, optimizer, *rest):
    nodes, (averaging_state, inputs, targets, weights) = rest[:-4], rest[-4:]
    posterior = averaging_weights(averaging, averaging_state)

    def loss_fn(model, *nodes):  # the nodes enter the gradient's trace as arguments
      outputs = as_copy_outputs(model(*model_args(inputs), **call_kwargs(nodes)))
      check_averaging_state(averaging, averaging_state, outputs)
      return alrao_loss(outputs, targets, posterior, likelihood=likelihood, weights=weights)

    (_, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, *nodes)
    optimizer.update(model, grads, **({"value": aux.mixture_nll} if extra_args else {}))
    averaging_state = update_averaging(averaging, averaging_state, aux.log_likelihoods, weights)
    return averaging_state, train_metrics(aux, averaging.posterior(averaging_state))

  model.train()  # the step keeps this mode, whatever the model is set to later
  return with_optional_weights(nnx_pure_call((model, optimizer, *nodes), train))


def evaluation_metrics(
  outputs: CopyOutputs | jax.Array,
  targets: jax.Array,
  posterior: Posterior,
  *,
  likelihood: Likelihood = categorical_log_likelihood,
  weights: jax.Array | None = None,
) -> Metrics:
  """Test metrics of the mixture and of the best copy.

  Args:
    outputs: copy outputs ``(N, *batch, K)`` or :class:`CopyOutputs`.
    targets: labels or regression targets.
    posterior: averaging weights ``(N,)`` or the averaging state.
    likelihood: the per-copy log-likelihood used in training.
    weights: per-example (per-token) weights ``(*batch,)`` or a mask: every metric is the
      weighted mean, an example of weight 0 (a pad) left out (see :func:`alrao_jax.alrao_loss`).

  Returns:
    ``loss`` (mixture NLL) and ``best_copy_loss``; with the categorical likelihood also
    ``accuracy`` and ``best_copy_accuracy``. Diverged copies are left out of both: the best
    copy is the usable one of largest posterior weight (what ``predict(best=True)`` takes);
    when no copy is usable, the losses are ``inf`` and the accuracies ``nan``. A large
    head's deferred outputs (``AlraoHead(copies_at_once=c)``) are evaluated ``c`` copies at
    a time (:func:`alrao_jax.large_head.fused_evaluation_metrics`).
  """
  if is_categorical(likelihood):
    likelihood = categorical_log_likelihood  # a smoothed score trains; the NLL is reported
  if isinstance(outputs, DeferredCopyOutputs) and likelihood is categorical_log_likelihood:
    return fused_evaluation_metrics(outputs, targets, posterior, weights=weights)
  values = copy_values(outputs)
  shares = example_shares(weights, values.shape[1:-1])
  _, ll, ok = masked_log_likelihoods(values, targets, likelihood, shares=shares)
  _, mixed = mixture_log_likelihood(ll, ok, posterior)
  # the best copy among the usable ones, as predict(best=True) skips a diverged copy
  log_posterior = jnp.where(ok, log_posterior_of(posterior), -jnp.inf)
  best = jnp.argmax(log_posterior)
  any_usable = has_usable_copy(ok, posterior)
  metrics = {
    "loss": jnp.where(any_usable, -weighted_mean(mixed, shares), jnp.inf),
    "best_copy_loss": jnp.where(any_usable, -weighted_mean(ll[best], shares), jnp.inf),
  }
  if likelihood is categorical_log_likelihood:
    mixture_hits = jnp.argmax(mixture_log_probs(values, posterior), -1) == targets
    copy_hits = jnp.argmax(values[best], -1) == targets
    mixture_accuracy = weighted_mean(mixture_hits.reshape(-1), shares)
    copy_accuracy = weighted_mean(copy_hits.reshape(-1), shares)
    metrics["accuracy"] = jnp.where(any_usable, mixture_accuracy, jnp.nan)
    metrics["best_copy_accuracy"] = jnp.where(any_usable, copy_accuracy, jnp.nan)
  return metrics


def make_eval_step(
  model: nn.Module | nnx.Module,
  *,
  averaging: ModelAveraging | None = None,
  likelihood: Likelihood = categorical_log_likelihood,
  eval_kwargs: Mapping[str, Any] | None = None,
  eval_params: Callable[[TrainState], Any] | None = None,
  carry: Sequence[str] = (),
) -> Callable:
  """Builds a jitted evaluation step (see :func:`evaluation_metrics`).

  For a linen ``model``: ``evaluate(state, inputs, targets, weights=None) -> metrics``; for
  an NNX ``model``: ``evaluate(averaging_state, inputs, targets, weights=None) -> metrics``,
  in ``eval()`` mode
  (the model is left in ``eval()`` mode; a train step built with :func:`make_train_step`
  keeps its own train-mode view of the same variables).

  With ``carry`` (linen), the model keeps a state from one batch to the next in those
  variable collections (an RNN's hidden state across truncated-BPTT windows): ``inputs``
  and ``targets`` then hold consecutive batches on a leading axis, ``(windows, batch,
  ...)``, which the step scans in order from the state's collections, and it returns
  ``(state, metrics)``: the state with the collections after the last window, the metrics
  over all windows (windows have equal sizes, so their means average to the whole's; with
  ``weights``, laid out as the targets, each window's means count by its total weight).

  Args:
    model: a linen or NNX module ending with an Alrao head.
    averaging: the averaging used in training (for its ``posterior``).
    likelihood: the per-copy log-likelihood used in training.
    eval_kwargs: keyword arguments for the model call, e.g. ``{'train': False}``.
    eval_params: linen only: the parameters to evaluate, from the state (default
      ``state.params``); e.g. ``optax.contrib.schedule_free_eval_params`` of the state.
    carry: linen only: the variable collections carried from batch to batch, e.g.
      ``('carry',)`` for :class:`alrao_jax.experiments.models.CharLSTM`.

  Returns:
    The jitted evaluation function.

  Raises:
    ValueError: ``carry`` names no collection of the state (at the first call), or is
      given with an NNX model.
  """
  averaging = averaging or switch_averaging()
  kwargs = dict(eval_kwargs or {})
  carry = check_carry(carry)
  if is_nnx(model):
    if carry:
      raise ValueError(
        "carry= threads linen variable collections; an NNX model keeps its state in its own "
        "variables: leave carry out."
      )

    nodes, call_kwargs = node_kwargs(kwargs)

    def evaluate_nnx(model, *rest):
      nodes, (averaging_state, inputs, targets, weights) = rest[:-4], rest[-4:]
      posterior = averaging_weights(averaging, averaging_state)
      outputs = as_copy_outputs(model(*model_args(inputs), **call_kwargs(nodes)))
      return evaluation_metrics(
        outputs, targets, posterior, likelihood=likelihood, weights=weights
      )

    model.eval()  # the evaluation keeps eval mode; a train step keeps its train mode
    return with_optional_weights(nnx_pure_call((model, *nodes), evaluate_nnx, donate=False))

  @jax.jit
  def evaluate(
    state: TrainState, inputs: Any, targets: jax.Array, weights: jax.Array | None = None
  ) -> Metrics:
    params = state.params if eval_params is None else eval_params(state)
    outputs = model.apply({"params": params, **state.model_state}, *model_args(inputs), **kwargs)
    outputs = as_copy_outputs(outputs)
    posterior = averaging_weights(averaging, state.averaging_state)
    return evaluation_metrics(outputs, targets, posterior, likelihood=likelihood, weights=weights)

  @jax.jit
  def evaluate_windows(
    state: TrainState, inputs: Any, targets: jax.Array, weights: jax.Array | None = None
  ) -> tuple[TrainState, Metrics]:
    check_carry_in(state.model_state, carry)
    params = state.params if eval_params is None else eval_params(state)
    posterior = averaging_weights(averaging, state.averaging_state)

    def window(model_state, batch):
      window_inputs, window_targets, window_weights = batch
      variables = {"params": params, **model_state}
      outputs, carried = model.apply(
        variables, *model_args(window_inputs), mutable=list(carry), **kwargs
      )
      outputs = as_copy_outputs(outputs)
      metrics = evaluation_metrics(
        outputs, window_targets, posterior, likelihood=likelihood, weights=window_weights
      )
      return {**model_state, **carried}, metrics

    model_state, metrics = jax.lax.scan(window, state.model_state, (inputs, targets, weights))
    # each window's means count by its total weight (all alike without weights)
    totals = None if weights is None else jnp.sum(jnp.reshape(weights, (len(weights), -1)), 1)
    shares = example_shares(totals, () if totals is None else totals.shape)
    mean = functools.partial(weighted_mean, shares=shares, axis=0)
    return state.replace(model_state=model_state), jax.tree.map(mean, metrics)

  return evaluate_windows if carry else evaluate


def check_carry_in(model_state: Mapping[str, Any], carry: Sequence[str]) -> None:
  """Raises a ValueError when ``carry`` names a collection the model does not have."""
  missing = [name for name in carry if name not in model_state]
  if missing:
    raise ValueError(
      f"carry names {missing}, which the model's variables do not hold (it has "
      f"{sorted(model_state)}); name the collections the model carries from batch to batch."
    )

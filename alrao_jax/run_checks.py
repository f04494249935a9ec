"""The checks that :func:`alrao_jax.fit` and :func:`alrao_jax.sweep` make of a run before it
trains: splits, labels, carried streams, an evaluation model, and a checkpoint to resume."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from alrao_jax.checks import check_carry, check_labels
from alrao_jax.nnx_types import nnx
from alrao_jax.splits import Splits, as_splits, rows_of, take
from alrao_jax.steps import TrainState, check_carry_in, head_outputs, model_args
from alrao_jax.transform import rates_of


def check_split_labels(splits: Any, num_classes: int) -> None:
  """Every split's labels are class indices in ``[0, num_classes)`` (checked on the host),
  those of weight 0 (pads) excepted."""
  for name, split in zip(splits._fields, splits, strict=True):
    labels, weights = np.asarray(split.targets), getattr(split, "weights", None)
    if weights is not None:
      weights = np.asarray(weights).reshape(weights.shape + (1,) * (labels.ndim - weights.ndim))
      labels = labels[np.broadcast_to(weights, labels.shape) > 0]
    check_labels(labels, num_classes, name=f"splits.{name}.targets")


def checked_splits(splits: Any, batch_size: int) -> Splits:
  """``splits`` as :class:`alrao_jax.Splits` (checked, see :func:`alrao_jax.splits.as_splits`),
  whose training rows a batch may not exceed.

  Raises:
    ValueError: bad splits, or ``batch_size`` above the training rows.
  """
  splits = as_splits(splits)
  rows = rows_of(splits.train.inputs)
  if batch_size > rows:
    raise ValueError(f"batch_size must be in [1, {rows}], got {batch_size}.")
  return splits


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
  # An Alrao head applies the copies its parameters hold (fewer once some are retired), so an
  # eval_model built with more copies would evaluate without complaint: its own parameters
  # must be shaped as the trained ones.
  own = _initial_shapes(eval_model, example, kwargs)
  if own is not None and own != _shapes(state.params):
    raise ValueError(
      "eval_model cannot evaluate the trained model's variables (its own parameters are "
      "shaped otherwise, e.g. another num_copies); pass the training module with other "
      "settings (e.g. deterministic=True), whose parameters are named and shaped as the "
      "training model's."
    )


def _initial_shapes(model: nn.Module, example: Any, kwargs: Any) -> Any:
  """The shapes of ``model``'s own parameters at init (None when it cannot be initialised
  here, e.g. it draws from an RNG stream not given: the apply check above stands alone)."""
  key = jax.random.key(0)
  init = functools.partial(
    model.init, {"params": key, "dropout": key}, *model_args(example), **dict(kwargs or {})
  )
  try:
    return _shapes(jax.eval_shape(init)["params"])
  except Exception:  # whatever the model raises, the apply check already passed
    return None


def _shapes(tree: Any) -> list[tuple[str, tuple[int, ...]]]:
  """Each leaf's path and shape, whatever mapping type holds them."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return sorted((jax.tree_util.keystr(path), tuple(np.shape(leaf))) for path, leaf in flat)


def num_outputs(model: nn.Module, state: TrainState, example: Any, kwargs: Any) -> int:
  """The model's outputs per example: an Alrao head's K, or a plain output layer's last axis."""
  try:
    return head_outputs(state.params)
  except ValueError:
    variables = {"params": state.params, **state.model_state}
    call = functools.partial(model.apply, variables, *model_args(example), **dict(kwargs or {}))
    return int(jax.eval_shape(call).shape[-1])


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


def model_name(model: Any) -> str:
  return f"{type(model).__module__}.{type(model).__qualname__}"


def rate_arrays(opt_state: Any) -> list[np.ndarray] | None:
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
  (:func:`rate_arrays`)."""
  saved = meta.get("model")  # absent from checkpoints of earlier versions
  if saved is not None and saved != model_name(model):
    raise ValueError(
      f"the checkpoint in {directory} was written by a run of {saved}, not of "
      f"{model_name(model)}; resume with the model that wrote it, or pass another "
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


def check_linen_only(**arguments: Any) -> None:
  """Raises a `ValueError` naming the linen-only arguments given with an NNX model: each of
  ``arguments`` is None when it is not given (``rng_streams``: its default ``("dropout",)``;
  ``carry``: empty)."""
  defaults = {"rng_streams": ("dropout",), "carry": ()}
  given = [
    name
    for name, value in arguments.items()
    if value is not None and (name not in defaults or tuple(value) != defaults[name])
  ]
  if given:
    raise ValueError(
      f"{', '.join(given)} apply to linen models; an NNX model holds its variables and RNG "
      "streams (start from the model as it is; pass rngs at call time with train_kwargs)."
    )


def check_linen_state(
  splits: Splits,
  state: TrainState,
  *,
  model: nn.Module,
  eval_model: nn.Module | None,
  carry: Sequence[str],
  categorical: bool,
  eval_kwargs: Mapping[str, Any] | None,
) -> None:
  """The checks of a linen run's first state: the carried collections
  (:func:`check_carried`), the evaluation model (:func:`check_eval_model`), and with a
  categorical likelihood every split's labels against the evaluated model's outputs."""
  check_carried(state.model_state, carry)
  example = take(splits.train.inputs, slice(0, 1))
  if eval_model is not None:
    check_eval_model(eval_model, state, example, eval_kwargs)
  if categorical:
    evaluating = model if eval_model is None else eval_model
    check_split_labels(splits, num_outputs(evaluating, state, example, eval_kwargs))


def check_nnx_labels(splits: Splits, model: nnx.Module, eval_kwargs: Any) -> None:
  """Every split's labels against an NNX model's outputs (a categorical likelihood's check)."""
  example = take(splits.train.inputs, slice(0, 1))
  check_split_labels(splits, nnx_outputs(model, example, eval_kwargs))

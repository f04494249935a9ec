"""Evaluating a whole split: in chunks of examples, or window by window for carried streams;
what :func:`alrao_jax.fit` and :func:`alrao_jax.sweep` report each epoch."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alrao_jax.steps import TrainState


def _as_floats(metrics: Mapping[str, jax.Array]) -> dict[str, Any]:
  return {k: float(v) if jnp.ndim(v) == 0 else [float(x) for x in v] for k, v in metrics.items()}


def check_eval_batch_size(chunk: Any) -> None:
  if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
    raise ValueError(f"eval_batch_size must be an int >= 1 or None, got {chunk!r}.")


def evaluate_in_chunks(
  evaluate: Callable,
  state: Any,
  inputs: Any,
  targets: Any,
  chunk: int | None,
  weights: Any = None,
) -> dict[str, float]:
  """Metrics of a whole split, evaluated ``chunk`` examples at a time (all at once for None):
  each metric is a mean over examples, so the chunks' means weighted by their sizes (by their
  total weights, with ``weights``) give the split's. Memory then grows with ``chunk``, not
  with the split; at most two shapes compile (the full chunks and the last one). A copy is
  left out of the chunks where its outputs are not finite.

  Args:
    evaluate: ``evaluate(state, inputs, targets, weights) -> metrics`` (see
      :func:`alrao_jax.make_eval_step`).
    state: its first argument.
    inputs: the split's inputs, examples on the leading axis (a pytree of arrays).
    targets: its targets.
    chunk: examples per evaluation call, >= 1, or None.
    weights: the split's per-example weights, laid out as ``targets``' rows, or None.

  Returns:
    Each metric as a float (a list of floats for a metric with an axis, e.g. one value per
    member of a :func:`alrao_jax.sweep`).
  """
  rows = len(jax.tree.leaves(inputs)[0])
  check_eval_batch_size(chunk)
  chunk = rows if chunk is None else chunk
  totals: dict[str, np.ndarray] = {}
  whole = rows if weights is None else float(np.sum(weights))
  for start in range(0, rows, chunk):
    part = slice(start, min(start + chunk, rows))
    part_weights = None if weights is None else weights[part]
    found = evaluate(
      state, jax.tree.map(operator.itemgetter(part), inputs), targets[part], part_weights
    )
    size = part.stop - part.start if weights is None else float(np.sum(part_weights))
    share = size / whole
    if share == 0:
      continue  # a chunk of padding only: its metrics are 0, and count for nothing
    for name, value in found.items():
      totals[name] = totals.get(name, 0.0) + share * np.asarray(value, np.float64)
  return _as_floats(totals)


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
  weights: Any = None,
) -> dict[str, float]:
  """Metrics of a split of carried streams: its windows in order, the ``carry``
  collections starting from zeros and passed from window to window.

  Args:
    evaluate: a carried evaluation, ``evaluate(state, windows_in, windows_out, weights) ->
      (state, metrics)`` (see :func:`alrao_jax.make_eval_step` with ``carry``).
    state: the state to evaluate; it is not changed.
    inputs: the split's inputs, window-major rows: rows ``[i * streams, (i + 1) * streams)``
      are window ``i`` of every stream.
    targets: its targets, laid out alike.
    streams: the number of streams (rows per window).
    carry: the collections carried from window to window.
    chunk: rows per call, rounded down to whole windows (at least one); ``None``: the
      whole split in one call.
    weights: the targets' weights, laid out alike, or None.

  Returns:
    Each metric as a float, over the whole split.
  """
  rows = len(jax.tree.leaves(inputs)[0])
  check_eval_batch_size(chunk)
  current = [zero_collections(state, carry)]

  def evaluate_windows(_, *parts):
    windows = jax.tree.map(lambda x: x.reshape(-1, streams, *x.shape[1:]), parts)
    current[0], metrics = evaluate(current[0], *windows)
    return metrics

  per_call = streams * max(1, (rows if chunk is None else chunk) // streams)
  return evaluate_in_chunks(evaluate_windows, state, inputs, targets, per_call, weights)


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
  weights = getattr(split, "weights", None)
  if carry:
    return evaluate_streams(
      evaluate,
      state,
      split.inputs,
      split.targets,
      streams=streams,
      carry=carry,
      chunk=chunk,
      weights=weights,
    )
  return evaluate_in_chunks(evaluate, state, split.inputs, split.targets, chunk, weights)

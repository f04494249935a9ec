"""Orbax checkpoints of an Alrao run: parameters, optimizer state (rates included), switch
state, step and RNG, plus the epoch and history needed to resume exactly."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import orbax.checkpoint as ocp

if TYPE_CHECKING:
  from alrao_jax.train import TrainState

META = "meta.json"


class Checkpoint(NamedTuple):
  """What :func:`restore_checkpoint` returns."""

  state: TrainState  # the state after ``epoch``
  best_state: TrainState  # the state at the best validation epoch so far
  epoch: int
  meta: dict[str, Any]  # JSON-serialisable extras saved with it (history, best loss...)


def _raw(state: TrainState) -> TrainState:
  """Typed PRNG keys as raw key data: what Orbax stores."""
  return state.replace(rng=jax.random.key_data(state.rng))


def _typed(raw: TrainState, like: TrainState) -> TrainState:
  impl = jax.random.key_impl(like.rng)
  return raw.replace(rng=jax.random.wrap_key_data(raw.rng, impl=impl))


def _signature(tree: Any) -> set[tuple[tuple[int, ...], str]]:
  """The (shape, dtype) of every array leaf, whatever order the tree is flattened in."""
  return {
    (tuple(leaf.shape), str(leaf.dtype)) for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape")
  }


def save_checkpoint(
  directory: str | os.PathLike,
  state: TrainState,
  *,
  best_state: TrainState,
  epoch: int,
  meta: dict[str, Any],
) -> None:
  """Writes a checkpoint, replacing any previous one in ``directory``; returns when written.

  Args:
    directory: the checkpoint folder.
    state: the current :class:`alrao_jax.TrainState`.
    best_state: the state kept by early stopping.
    epoch: the last finished epoch.
    meta: JSON-serialisable extras (e.g. the history).
  """
  folder = pathlib.Path(directory).resolve()
  staging = folder.with_name(folder.name + ".tmp")
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir(parents=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(staging / "state", _raw(state))
    checkpointer.save(staging / "best_state", _raw(best_state))
  (staging / META).write_text(json.dumps({"epoch": epoch, **meta}))
  shutil.rmtree(folder, ignore_errors=True)
  staging.rename(folder)


def restore_checkpoint(directory: str | os.PathLike, like: TrainState) -> Checkpoint:
  """Reads a checkpoint written by :func:`save_checkpoint`.

  Args:
    directory: the checkpoint folder.
    like: a state of the same model and optimizer (e.g. a freshly created one): it gives
      the structure, shapes and dtypes.

  Returns:
    A :class:`Checkpoint`.

  Raises:
    FileNotFoundError: no checkpoint there. ValueError: it is corrupt or belongs to
      another model or optimizer.
  """
  folder = pathlib.Path(directory).resolve()
  if not (folder / META).is_file():
    raise FileNotFoundError(f"no checkpoint in {folder} (missing {META}).")
  try:
    meta = json.loads((folder / META).read_text())
    epoch = int(meta.pop("epoch"))
  except (ValueError, KeyError, TypeError) as err:
    raise ValueError(f"corrupt checkpoint in {folder}: {META} is unreadable ({err}).") from err
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _raw(like))
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      stored = checkpointer.metadata(folder / "state")
      stored = getattr(stored, "item_metadata", stored)
      stored = getattr(stored, "tree", stored)
      missing = _signature(target) - _signature(stored)
      if missing:  # checked first: a failed Orbax restore leaves work pending behind it
        raise ValueError(f"the stored arrays lack {sorted(missing)[:3]} (shape, dtype)")
      state = checkpointer.restore(folder / "state", target)
      best = checkpointer.restore(folder / "best_state", target)
  except Exception as err:  # Orbax raises many types for missing, corrupt or mismatched trees
    raise ValueError(
      f"checkpoint in {folder} does not fit this model and optimizer, or is corrupt: {err}"
    ) from err
  return Checkpoint(_typed(state, like), _typed(best, like), epoch, meta)

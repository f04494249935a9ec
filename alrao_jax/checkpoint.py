"""Orbax checkpoints of an Alrao run: parameters, optimizer state (rates included), switch
state, step and RNG, plus the epoch and history needed to resume exactly; for linen
:class:`alrao_jax.TrainState` runs and for NNX runs (model, optimizer, averaging state).

Sharded states are written shard by shard, by every process of a multi-process run (all
call the same function; one moves the folders), and restored in the shardings of the
``like`` state given, on any number of devices and processes."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

if TYPE_CHECKING:
  from alrao_jax.steps import TrainState

META = "meta.json"


class Checkpoint(NamedTuple):
  """What :func:`restore_checkpoint` returns."""

  state: TrainState  # the state after ``epoch``
  best_state: TrainState  # the state at the best validation epoch so far
  epoch: int
  meta: dict[str, Any]  # JSON-serialisable extras saved with it (history, best loss...)


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _raw(tree: Any) -> Any:
  """Typed PRNG keys as raw key data: what Orbax stores."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _typed(raw: Any, like: Any) -> Any:
  def typed(r, template):
    if not _is_key(template):
      return r
    return jax.random.wrap_key_data(r, impl=jax.random.key_impl(template))

  return jax.tree.map(typed, raw, like)


def _signature(tree: Any) -> set[tuple[tuple[int, ...], str]]:
  """The (shape, dtype) of every array leaf, whatever order the tree is flattened in."""
  return {
    (tuple(leaf.shape), str(leaf.dtype)) for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape")
  }


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
  """Ctrl-C (SIGINT) during the block is raised after it, so that a checkpoint is never left
  half written (main thread only; elsewhere signals do not arrive)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if received:
    raise KeyboardInterrupt


VERSION_PREFIX = "alrao_checkpoint_"  # the folders this module writes: <prefix><n>
MARKER = "ALRAO_CHECKPOINT"  # written first into each of them: only those are ever removed
POINTER = "_alrao_checkpoint"  # the key of meta.json naming the complete version


def _versions(folder: pathlib.Path) -> dict[int, pathlib.Path]:
  """The version folders this module wrote in ``folder`` (complete or not), by number."""
  found = {}
  for child in folder.iterdir() if folder.is_dir() else ():
    suffix = child.name[len(VERSION_PREFIX) :]
    if child.name.startswith(VERSION_PREFIX) and suffix.isdigit() and (child / MARKER).is_file():
      found[int(suffix)] = child
  return found


def _replace_file(path: pathlib.Path, text: str) -> None:
  """Writes ``text`` to ``path`` atomically: a new file beside it, flushed, then renamed."""
  staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with open(staging, "w") as file:
    file.write(text)
    file.flush()
    os.fsync(file.fileno())
  os.replace(staging, path)


def save_items(directory: str | os.PathLike, items: dict[str, Any], meta: dict[str, Any]) -> None:
  """Writes ``items`` (named pytrees) and ``meta`` (JSON extras) as a new version of the
  checkpoint in ``directory``; :func:`restore_items` reads them back.

  Only what this module writes is touched: a new version folder ``alrao_checkpoint_<n>``
  (marked by a ``ALRAO_CHECKPOINT`` file), then ``meta.json``, replaced atomically, which
  names it. Until that replace the previous version is the checkpoint; after it, the new one.
  Older version folders (and any left by a save that failed or was killed) are removed last.
  Other files and folders in ``directory`` are left as they are.
  """
  folder = pathlib.Path(directory).resolve()
  if folder.exists() and not folder.is_dir():
    raise ValueError(f"checkpoint directory {folder} is a file; pass a folder path.")
  _check_alive(items)
  primary = jax.process_index() == 0  # several processes: one writes files, all write shards
  with _interrupts_deferred():
    number = 0
    if primary:
      folder.mkdir(parents=True, exist_ok=True)
      number = max(_versions(folder), default=0) + 1
      (folder / f"{VERSION_PREFIX}{number}").mkdir()
      (folder / f"{VERSION_PREFIX}{number}" / MARKER).write_text(
        "written by alrao_jax.checkpoint; removed by its next save\n"
      )
    version = folder / f"{VERSION_PREFIX}{_from_primary(number)}"
    _sync("alrao_jax_checkpoint_staged")
    with ocp.StandardCheckpointer() as checkpointer:
      for name, tree in items.items():
        checkpointer.save(version / name, _raw(tree))
    _sync("alrao_jax_checkpoint_saved")
    if primary:
      _replace_file(folder / META, json.dumps({**meta, POINTER: version.name}))
      for stale in _versions(folder).values():
        if stale != version:
          shutil.rmtree(stale, ignore_errors=True)
    _sync("alrao_jax_checkpoint_done")


def _check_alive(items: dict[str, Any]) -> None:
  """Raises a `ValueError` if an array to save was deleted (donated to a jitted step): Orbax
  would fail after starting threads that keep the process alive for minutes."""
  flat = jax.tree_util.tree_flatten_with_path(items)[0]
  deleted = [
    jax.tree_util.keystr(path)
    for path, leaf in flat
    if isinstance(leaf, jax.Array) and leaf.is_deleted()
  ]
  if deleted:
    raise ValueError(
      f"cannot save a checkpoint: {len(deleted)} of its arrays were deleted, e.g. "
      f"{deleted[0]}; a jitted step that donates its state deletes the state it was given. "
      "Save the state the step returned."
    )


def _from_primary(number: int) -> int:
  """Process 0's ``number`` (the new version's), as every process sees it."""
  if jax.process_count() == 1:
    return number
  return int(multihost_utils.broadcast_one_to_all(jax.numpy.asarray(number, jax.numpy.int32)))


def _sync(name: str) -> None:
  """Waits for every process of a multi-process run (nothing to wait for in one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _meta_and_version(folder: pathlib.Path) -> tuple[dict[str, Any], pathlib.Path]:
  """``meta.json`` without the version pointer, and the version folder it names (the folder
  itself in the layout before versions), read once.

  Raises:
    FileNotFoundError: no checkpoint there. ValueError: its metadata is corrupt.
  """
  if not (folder / META).is_file():
    raise FileNotFoundError(f"no checkpoint in {folder} (missing {META}).")
  try:
    meta = json.loads((folder / META).read_text())
    if not isinstance(meta, dict):
      raise TypeError("not a JSON object")
  except (ValueError, TypeError) as err:
    raise ValueError(f"corrupt checkpoint in {folder}: {META} is unreadable ({err}).") from err
  name = meta.pop(POINTER, None)
  if name is None:
    return meta, folder
  if not (isinstance(name, str) and name.startswith(VERSION_PREFIX) and (folder / name).is_dir()):
    raise ValueError(f"corrupt checkpoint in {folder}: {META} names a missing version {name!r}.")
  return meta, folder / name


def checkpoint_meta(directory: str | os.PathLike) -> dict[str, Any]:
  """The JSON extras of a checkpoint (``epoch`` included), read without its arrays: a quick
  check that ``directory`` holds a readable checkpoint before a model is built.

  Raises:
    FileNotFoundError: no checkpoint there. ValueError: its metadata is corrupt.
  """
  return _meta_and_version(pathlib.Path(directory).resolve())[0]


def restore_items(
  directory: str | os.PathLike, likes: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads what :func:`save_items` wrote, with the structure, shapes and dtypes of ``likes``.

  Raises:
    FileNotFoundError: no checkpoint there. ValueError: it is corrupt or does not fit.
  """
  meta, folder = _meta_and_version(pathlib.Path(directory).resolve())
  restored = {}
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      for name, like in likes.items():
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _raw(like))
        stored = checkpointer.metadata(folder / name)
        stored = getattr(stored, "item_metadata", stored)
        stored = getattr(stored, "tree", stored)
        missing = _signature(target) - _signature(stored)
        if missing:  # checked first: a failed Orbax restore leaves work pending behind it
          raise ValueError(f"the stored arrays lack {sorted(missing)[:3]} (shape, dtype)")
        restored[name] = _typed(checkpointer.restore(folder / name, target), like)
  except Exception as err:  # Orbax raises many types for missing, corrupt or mismatched trees
    raise ValueError(
      f"checkpoint in {folder} does not fit this model and optimizer, or is corrupt: {err}"
    ) from err
  return restored, meta


def save_checkpoint(
  directory: str | os.PathLike,
  state: TrainState,
  *,
  best_state: TrainState | None = None,
  epoch: int = 0,
  meta: dict[str, Any] | None = None,
) -> None:
  """Writes a checkpoint of a linen run, replacing any previous one in ``directory``.

  The write is atomic: the previous checkpoint stays readable until the new one is complete,
  a save that fails or is killed half-way leaves it as it was, and nothing in ``directory``
  but the checkpoint's own ``meta.json`` and ``alrao_checkpoint_<n>`` folders is touched.

  Args:
    directory: the checkpoint folder.
    state: the current :class:`alrao_jax.TrainState`.
    best_state: the state kept by early stopping (default: ``state``).
    epoch: the last finished epoch.
    meta: JSON-serialisable extras (e.g. the history).

  Example:
    >>> import tempfile, jax, jax.numpy as jnp, flax.linen as nn, alrao_jax
    >>> from alrao_jax.checkpoint import save_checkpoint, restore_checkpoint
    >>> model = nn.Sequential([nn.Dense(4), alrao_jax.AlraoHead(3, num_copies=2)])
    >>> tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0))
    >>> state = alrao_jax.create_train_state(model, tx, jax.random.key(1), jnp.ones((1, 2)))
    >>> folder = tempfile.mkdtemp() + "/run"
    >>> save_checkpoint(folder, state, epoch=1, meta={"note": "hi"})
    >>> restore_checkpoint(folder, state).meta
    {'note': 'hi'}
  """
  meta = {"epoch": epoch, **(meta or {})}
  best_state = state if best_state is None else best_state
  save_items(directory, {"state": state, "best_state": best_state}, meta)


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
  restored, meta = restore_items(directory, {"state": like, "best_state": like})
  try:
    epoch = int(meta.pop("epoch"))
  except (KeyError, TypeError, ValueError) as err:
    raise ValueError(f"corrupt checkpoint in {directory}: {META} has no epoch ({err}).") from err
  return Checkpoint(restored["state"], restored["best_state"], epoch, meta)


def save_nnx_checkpoint(
  directory: str | os.PathLike,
  model: nnx.Module,
  optimizer: nnx.Optimizer,
  averaging_state: Any,
  *,
  meta: dict[str, Any] | None = None,
) -> None:
  """Writes a checkpoint of an NNX run: every variable of the model and optimizer (the
  parameters, BatchNorm statistics, RNG state, the optimizer state with the rates) and the
  averaging state.

  Args:
    directory: the checkpoint folder; its previous checkpoint is replaced atomically, as by
      :func:`save_checkpoint`, and nothing else in it is touched.
    model: the NNX model.
    optimizer: its ``nnx.Optimizer``.
    averaging_state: e.g. the :class:`alrao_jax.SwitchState` of the run.
    meta: JSON-serialisable extras (e.g. the epoch and history).
  """
  variables = nnx.to_pure_dict(nnx.state((model, optimizer)))
  save_items(directory, {"variables": variables, "averaging": averaging_state}, dict(meta or {}))


def restore_nnx_checkpoint(
  directory: str | os.PathLike, model: nnx.Module, optimizer: nnx.Optimizer, averaging_state: Any
) -> tuple[Any, dict[str, Any]]:
  """Reads a checkpoint written by :func:`save_nnx_checkpoint` into ``model`` and ``optimizer``.

  Args:
    directory: the checkpoint folder.
    model: a model of the same architecture; its variables are replaced in place.
    optimizer: its optimizer, built with the same transformation; replaced in place.
    averaging_state: an averaging state of the same kind and size (e.g. ``switch_init(N)``).

  Returns:
    ``(averaging_state, meta)`` as saved.

  Raises:
    FileNotFoundError: no checkpoint there. ValueError: it is corrupt or belongs to
      another model or optimizer.
  """
  state = nnx.state((model, optimizer))
  like = {"variables": nnx.to_pure_dict(state), "averaging": averaging_state}
  restored, meta = restore_items(directory, like)
  nnx.replace_by_pure_dict(state, restored["variables"])
  nnx.update((model, optimizer), state)
  return restored["averaging"], meta

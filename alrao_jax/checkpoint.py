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
import tempfile
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
from jax.experimental import multihost_utils

from alrao_jax import strict_json
from alrao_jax.nnx_types import nnx
from alrao_jax.strict_json import with_nulls

if TYPE_CHECKING:
  from alrao_jax.steps import TrainState


class Checkpoint(NamedTuple):
  """What :func:`restore_checkpoint` returns."""

  state: TrainState  # the state after ``epoch``
  best_state: TrainState  # the state at the best validation epoch so far
  epoch: int
  meta: dict[str, Any]  # JSON-serialisable extras saved with it (history, best loss...)


def orbax_checkpoint() -> Any:
  """``orbax.checkpoint``, imported on first use: most of a second that a run pays at its
  first save (the command line imports it beside the first compilation, in a thread)."""
  import orbax.checkpoint as ocp

  return ocp


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
MARKER = "ALRAO_CHECKPOINT"  # written into each of them before it gets its name, holding:
MARKER_TEXT = "written by alrao_jax.checkpoint; removed by its next save\n"
POINTER = "alrao_checkpoint.json"  # names the complete version and holds the saved extras
FORMAT = "alrao_jax.checkpoint"  # the pointer's "format" (a file of that name without it: not ours)
STAGING_PREFIX = ".alrao_checkpoint_staging_"  # a version being written or removed
LEGACY_META = "meta.json"  # the pointer of checkpoints written by earlier versions (read only)
LEGACY_POINTER = "_alrao_checkpoint"  # its key naming the version


def _numbered(name: str) -> int | None:
  """``n`` for a name ``alrao_checkpoint_<n>``, else None."""
  suffix = name[len(VERSION_PREFIX) :]
  return int(suffix) if name.startswith(VERSION_PREFIX) and suffix.isdigit() else None


def _ours(path: pathlib.Path) -> bool:
  """Whether ``path`` is something this module wrote: a folder that holds the marker, or an
  entry under the staging prefix, which is reserved (a save or removal killed half-way)."""
  if path.name.startswith(STAGING_PREFIX):
    return True
  return path.is_dir() and not path.is_symlink() and _marked(path)


def _marked(path: pathlib.Path) -> bool:
  """Whether the folder holds this module's marker (its name and its text)."""
  marker = path / MARKER
  try:
    return marker.is_file() and marker.stat().st_size < 256 and marker.read_text() == MARKER_TEXT
  except (OSError, UnicodeDecodeError):
    return False


def _next_number(folder: pathlib.Path) -> int:
  """One more than every ``alrao_checkpoint_<n>`` in ``folder``, ours or not: a save steps
  over a user's entry of that name (or one left unmarked) instead of colliding with it."""
  numbers = (_numbered(child.name) for child in folder.iterdir())
  return max((n for n in numbers if n is not None), default=0) + 1


def _remove(path: pathlib.Path) -> None:
  """Removes a folder this module wrote: renamed to a staging name first (one atomic step),
  then emptied with its marker last, so that a removal killed half-way leaves a folder that
  the next save still knows as its own and removes."""
  if not path.is_dir() or path.is_symlink():
    path.unlink(missing_ok=True)
    return
  if not path.name.startswith(STAGING_PREFIX):
    trash = path.with_name(f"{STAGING_PREFIX}{path.name}.{os.getpid()}.removing")
    os.replace(path, trash)
    path = trash
  for child in path.iterdir():
    if child.name != MARKER:
      if child.is_dir() and not child.is_symlink():
        shutil.rmtree(child, ignore_errors=True)
      else:
        child.unlink(missing_ok=True)
  (path / MARKER).unlink(missing_ok=True)
  with contextlib.suppress(OSError):
    path.rmdir()


def _pointer(folder: pathlib.Path) -> dict[str, Any] | None:
  """The pointer file's content, None when there is none.

  Raises:
    ValueError: a file of that name that this module did not write, or a corrupt one.
  """
  path = folder / POINTER
  if not path.exists():
    return None
  try:
    pointer = json.loads(path.read_text())
  except (OSError, ValueError) as err:
    raise ValueError(f"corrupt checkpoint in {folder}: {POINTER} is unreadable ({err}).") from err
  if not (isinstance(pointer, dict) and pointer.get("format") == FORMAT):
    raise ValueError(
      f"{path} was not written by alrao_jax.checkpoint, which keeps its pointer under that "
      "name; move or rename that file, or give the checkpoint another folder."
    )
  return pointer


def _replace_file(path: pathlib.Path, text: str) -> None:
  """Writes ``text`` to ``path`` atomically: a new file beside it, flushed, then renamed."""
  staging = path.with_name(f"{STAGING_PREFIX}{path.name}.{os.getpid()}.tmp")
  with open(staging, "w") as file:
    file.write(text)
    file.flush()
    os.fsync(file.fileno())
  os.replace(staging, path)


def _stage_version(folder: pathlib.Path) -> pathlib.Path:
  """A new, marked, empty version folder ``alrao_checkpoint_<n>``: made under a staging name
  and marked before it is renamed, so that no unmarked folder ever takes a version's name."""
  staging = pathlib.Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
  (staging / MARKER).write_text(MARKER_TEXT)
  while True:
    version = folder / f"{VERSION_PREFIX}{_next_number(folder)}"
    try:
      staging.rename(version)  # refuses a name taken meanwhile (a non-empty folder or a file)
    except OSError:
      if not version.exists():
        raise
    else:
      return version


def save_items(directory: str | os.PathLike, items: dict[str, Any], meta: dict[str, Any]) -> None:
  """Writes ``items`` (named pytrees) and ``meta`` (JSON extras) as a new version of the
  checkpoint in ``directory``; :func:`restore_items` reads them back.

  Only what this module writes is touched: a new version folder ``alrao_checkpoint_<n>``
  (marked by a ``ALRAO_CHECKPOINT`` file; its number steps over every entry of that name),
  then ``alrao_checkpoint.json``, replaced atomically, which names it and holds ``meta``.
  Until that replace the previous version is the checkpoint; after it, the new one. Older
  version folders (and any left by a save that failed or was killed) are removed last. Other
  files and folders in ``directory`` (a ``meta.json`` of the user's included) are left as they
  are; a file named ``alrao_checkpoint.json`` that this module did not write is refused.

  Raises:
    ValueError: ``directory`` is a file, holds an ``alrao_checkpoint.json`` of someone else's,
      or an array of ``items`` was deleted; or ``meta`` is not strict JSON.
  """
  folder = pathlib.Path(directory).resolve()
  if folder.exists() and not folder.is_dir():
    raise ValueError(f"checkpoint directory {folder} is a file; pass a folder path.")
  _check_alive(items)
  _pointer_text("", meta)  # refuses meta that JSON cannot write before anything is written
  primary = jax.process_index() == 0  # several processes: one writes files, all write shards
  with _interrupts_deferred():
    number = 0
    if primary:
      folder.mkdir(parents=True, exist_ok=True)
      _pointer(folder)  # refuses someone else's file before anything is written
      number = _numbered(_stage_version(folder).name)
    version = folder / f"{VERSION_PREFIX}{_from_primary(number)}"
    _sync("alrao_jax_checkpoint_staged")
    with orbax_checkpoint().StandardCheckpointer() as checkpointer:
      for name, tree in items.items():
        checkpointer.save(version / name, _raw(tree))
    _sync("alrao_jax_checkpoint_saved")
    if primary:
      _replace_file(folder / POINTER, _pointer_text(version.name, meta))
      for child in list(folder.iterdir()):
        stale = _numbered(child.name) is not None or child.name.startswith(STAGING_PREFIX)
        if stale and child != version and _ours(child):
          _remove(child)
    _sync("alrao_jax_checkpoint_done")


def _pointer_text(version: str, meta: dict[str, Any]) -> str:
  """The pointer file: strict JSON, with the places of ``meta``'s non-finite floats (which it
  holds as null) so that :func:`_meta_of` gives back exactly what was saved."""
  found: list = []
  clean = with_nulls(meta, found)
  pointer = {"format": FORMAT, "version": version, "meta": clean, "non_finite": found}
  return strict_json.dumps(pointer, what="the checkpoint's meta")


def _meta_of(pointer: dict[str, Any]) -> dict[str, Any]:
  """The saved ``meta``, its non-finite floats put back."""
  meta = pointer["meta"]
  for path, text in pointer.get("non_finite", []):
    *parents, last = path
    node = meta
    for key in parents:
      node = node[key]
    node[last] = float(text)
  return meta


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
  """The saved extras and the version folder the pointer names (the folder itself in the
  layout before versions), read once. Checkpoints written before the pointer had a file of its
  own (``meta.json`` with a ``_alrao_checkpoint`` key) are read too.

  Raises:
    FileNotFoundError: no checkpoint there. ValueError: its metadata is corrupt.
  """
  pointer = _pointer(folder)
  if pointer is None:
    return _legacy_meta_and_version(folder)
  try:
    meta, name = _meta_of(pointer), pointer.get("version")
    if not isinstance(meta, dict):
      raise TypeError("its meta is not an object")
  except (KeyError, IndexError, TypeError, ValueError) as err:
    raise ValueError(f"corrupt checkpoint in {folder}: {POINTER} is unreadable ({err}).") from err
  if not (isinstance(name, str) and _numbered(name) is not None and _ours(folder / name)):
    raise ValueError(f"corrupt checkpoint in {folder}: {POINTER} names a missing version {name!r}.")
  return meta, folder / name


def _legacy_meta_and_version(folder: pathlib.Path) -> tuple[dict[str, Any], pathlib.Path]:
  if not (folder / LEGACY_META).is_file():
    raise FileNotFoundError(f"no checkpoint in {folder} (missing {POINTER}).")
  try:
    meta = json.loads((folder / LEGACY_META).read_text())
    if not isinstance(meta, dict):
      raise TypeError("not a JSON object")
  except (ValueError, TypeError) as err:
    raise ValueError(
      f"corrupt checkpoint in {folder}: {LEGACY_META} is unreadable ({err})."
    ) from err
  name = meta.pop(LEGACY_POINTER, None)
  if name is None:
    if not (folder / "state").is_dir() and not (folder / "variables").is_dir():
      raise FileNotFoundError(f"no checkpoint in {folder} (missing {POINTER}).")
    return meta, folder
  if not (isinstance(name, str) and name.startswith(VERSION_PREFIX) and (folder / name).is_dir()):
    raise ValueError(
      f"corrupt checkpoint in {folder}: {LEGACY_META} names a missing version {name!r}."
    )
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
    ocp = orbax_checkpoint()
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
  but the checkpoint's own ``alrao_checkpoint.json`` and ``alrao_checkpoint_<n>`` folders is
  touched (see :func:`save_items`).

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


def restore_checkpoint(
  directory: str | os.PathLike, like: TrainState, *, best_like: TrainState | None = None
) -> Checkpoint:
  """Reads a checkpoint written by :func:`save_checkpoint`.

  Args:
    directory: the checkpoint folder.
    like: a state of the same model and optimizer (e.g. a freshly created one): it gives
      the structure, shapes and dtypes.
    best_like: the same for the best state, when its shapes differ from ``like``'s (a run
      that retired copies after its best epoch: :func:`alrao_jax.retire_copies`); default
      ``like``.

  Returns:
    A :class:`Checkpoint`.

  Raises:
    FileNotFoundError: no checkpoint there. ValueError: it is corrupt or belongs to
      another model or optimizer.
  """
  best_like = like if best_like is None else best_like
  restored, meta = restore_items(directory, {"state": like, "best_state": best_like})
  try:
    epoch = int(meta.pop("epoch"))
  except (KeyError, TypeError, ValueError) as err:
    raise ValueError(f"corrupt checkpoint in {directory}: its meta has no epoch ({err}).") from err
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

"""JAX's set-up for a command: the persistent compilation cache, simulated CPU devices, and
the mesh of ``--mesh``."""

from __future__ import annotations

import argparse
import os
from typing import Any

import jax

from alrao_jax import sharding
from alrao_jax.experiments.cli.errors import UsageError
from alrao_jax.experiments.tasks import Task


def mesh_axes(text: str) -> dict[str, int]:
  """``data=4,copies=2`` -> ``{"data": 4, "copies": 2}``."""
  axes = {}
  for part in text.split(","):
    name, _, size = part.partition("=")
    if not name.strip() or not size.strip().lstrip("-").isdigit():
      raise UsageError(f"--mesh takes NAME=SIZE,... such as data=4,copies=2; got {text!r}")
    if name.strip() in axes:
      raise UsageError(f"--mesh names the axis {name.strip()!r} twice")
    axes[name.strip()] = int(size)
  if sharding.DATA_AXIS not in axes:
    raise UsageError(f"--mesh needs a data axis for the batch, e.g. data=4,copies=2; got {text!r}")
  return axes


def use_devices(count: int | None) -> None:
  """Simulates ``count`` CPU devices; JAX must not have started yet."""
  if count is None:
    return
  if count < 1:
    raise UsageError(f"--devices must be >= 1, got {count}")
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as err:  # JAX has started: its device count is fixed
    raise UsageError(
      "--devices must be set before JAX starts; run alrao-jax in a new process"
    ) from err
  jax.config.update("jax_platforms", "cpu")


def mesh_of(args: argparse.Namespace, settings: dict[str, Any], task: Task):
  """The mesh of ``--mesh``, checked against the batch and the copies before any model is
  built; None without ``--mesh``."""
  if args.mesh is None:
    if args.devices is not None:
      raise UsageError("--devices simulates devices for --mesh; pass --mesh too, e.g. data=8")
    return None
  axes = mesh_axes(args.mesh)
  try:
    mesh = sharding.make_mesh(axes)
  except (ValueError, TypeError) as err:
    raise UsageError(f"--mesh {args.mesh}: {err}") from err
  if task.batch_size % mesh.shape[sharding.DATA_AXIS]:
    raise UsageError(
      f"--batch-size {task.batch_size} does not divide over --mesh data="
      f"{mesh.shape[sharding.DATA_AXIS]}; use a multiple of it"
    )
  parts = mesh.shape.get(sharding.COPIES_AXIS, 1)
  copies = settings["copies"] or 1
  if copies % parts:
    raise UsageError(f"--copies {copies} does not divide over --mesh copies={parts}")
  return mesh


def use_compilation_cache() -> None:
  """JAX's persistent compilation cache, on by default for the command line: a run starts
  with what the previous runs compiled (a 5-epoch digits run: about half its wall time).
  ``JAX_COMPILATION_CACHE_DIR`` (or a cache set in JAX's config) is used as it is."""
  if not (os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir):
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    jax.config.update("jax_compilation_cache_dir", os.path.join(home, "alrao-jax", "xla"))
  # every program, not only those over JAX's default second of compile time: a run's many
  # small ones (state creation, evaluation) add up to most of its start-up
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

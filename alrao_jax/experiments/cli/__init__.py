"""The alrao-jax command: train, tune, lr-find, screen and sweep, on a bundled task or your arrays.

Every input is checked before any model is built; bad input (an unknown task or optimizer,
missing or malformed data, options that do not apply, bounds out of order, a corrupt or
mismatched run) gives one line on stderr and exit code 2. Ctrl-C stops with one line and
exit code 130, leaving a run that ``train --resume`` continues.

One module per command (:mod:`~alrao_jax.experiments.cli.train`, ``tune``, ``lr_find``,
``screen``, ``sweep``), each imported when its command runs; beside them the parser (free of
JAX: ``--help`` answers at once), the shared options, JAX's set-up (``devices``), the
reporter, Ctrl-C and the errors.
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence

from alrao_jax.experiments.cli.errors import RunDivergedError, RunInterruptedError, UsageError
from alrao_jax.experiments.cli.parser import build_parser

COMMANDS = {  # command -> its module, which runs it with run(args)
  "train": "train",
  "tune": "tune",
  "lr-find": "lr_find",
  "screen": "screen",
  "sweep": "sweep",
}


def command_line() -> int:
  """The ``alrao-jax`` console script (and ``python -m alrao_jax.experiments.cli``): :func:`main`
  in a process of its own, Python's garbage collector paused while the command's modules import.

  JAX, Flax and optax build a few million objects and no garbage as they import; a collection
  among them traverses them all (a quarter of a second of a short run's start, in a dozen
  collections). Once they are imported they are frozen (``gc.freeze``: never traversed
  again) and the collector resumes. :func:`main`, called in a process that goes on (a test, a
  notebook), leaves the collector as it is.
  """
  gc.disable()
  try:
    return _run(None, imported=_freeze)
  finally:
    gc.enable()


def _freeze() -> None:
  gc.freeze()
  gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the ``alrao-jax`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit
  code."""
  return _run(argv)


def _run(argv: Sequence[str] | None, imported: Callable[[], None] | None = None) -> int:
  """The command of ``argv``; ``imported`` is called once its modules are imported."""
  args = build_parser().parse_args(argv)
  from alrao_jax.experiments.cli import devices  # JAX starts here, once the options parse

  devices.use_compilation_cache()
  if args.command == "screen" and args.epochs is None:
    args.epochs = 5
  try:
    if args.command == "train":
      devices.use_devices(args.devices)  # before anything starts JAX
    command = importlib.import_module(f"{__name__}.{COMMANDS[args.command]}")
    if imported is not None:
      imported()
    command.run(args)
  except (UsageError, OSError, ValueError, TypeError) as err:
    print(f"alrao-jax: error: {err}".splitlines()[0], file=sys.stderr)
    return 2
  except RunDivergedError as err:
    print(f"alrao-jax: {err}", file=sys.stderr)
    return 2
  except RunInterruptedError as err:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run is saved: a second Ctrl-C may not
    print(f"alrao-jax: {err}", file=sys.stderr)  # break the clean exit
    return 130
  except KeyboardInterrupt:
    print("alrao-jax: interrupted", file=sys.stderr)
    return 130
  except Exception as err:  # no check foresaw it: still one line, unless asked for the trace
    if os.environ.get("ALRAO_JAX_TRACEBACK"):
      raise
    message = f"alrao-jax: error: {type(err).__name__}: {err}".splitlines()[0]
    print(f"{message} (ALRAO_JAX_TRACEBACK=1 shows where)", file=sys.stderr)
    return 2
  return 0

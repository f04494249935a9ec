"""The header of every benchmark's results: the command that made them (rebuilt from the
options given), the machine, its processor and vector units, and the date.

The benchmarks import it as ``from header import ...`` (each puts its own folder on the path).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import re
import sys
from collections.abc import Callable
from typing import Any

import jax
import optax


def command_line(script: str, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
  """The command that reproduces a run: ``python benchmarks/<script>`` and every option whose
  value differs from its default, in the parser's order (``--quick`` for a flag that is set).

  Args:
    script: the benchmark's file name, e.g. ``"tune.py"``.
    parser: its parser.
    args: the parsed options.

  Returns:
    e.g. ``"python benchmarks/tune.py --quick --name tune_amd"``.
  """
  parts = [f"python benchmarks/{script}"]
  for action in parser._actions:  # argparse keeps no public list of its options
    if not action.option_strings or action.dest == "help":
      continue
    value = getattr(args, action.dest, action.default)
    if value == action.default:
      continue
    flag = max(action.option_strings, key=len)
    parts.append(flag if isinstance(action, argparse._StoreTrueAction) else f"{flag} {value}")
  return " ".join(parts)


def met(ok: bool) -> str:
  """A goal's verdict as the reports print it: ``met``, or ``**missed**`` in bold."""
  return "met" if ok else "**missed**"


def write_results(report: str, out: str, *, quick: bool) -> None:
  """Writes a full run's report to ``out`` (a ``--quick`` run writes nothing) and says so."""
  if not quick:
    pathlib.Path(out).write_text(report)
    print(f"wrote {out}", file=sys.stderr)


def write_report_and_json(
  text: str, results: object, path: pathlib.Path, minutes: float, *, quick: bool = False
) -> str:
  """Writes a full run's report to ``path`` (``.md``) and its results beside it (``.json``,
  strict JSON), and says so; a ``quick`` run's are not written. Returns ``text``."""
  from alrao_jax import strict_json

  if quick:
    return text
  path.with_suffix(".md").write_text(text)
  path.with_suffix(".json").write_text(strict_json.dumps(results, indent=1))
  print(f"wrote {path.with_suffix('.md')} in {minutes:.1f} min")
  return text


def rerendered_header(path: pathlib.Path, until: str, command: str) -> list[str]:
  """The header of the report ``path`` (its lines before the first that starts with ``until``,
  an earlier "Re-rendered" line dropped) and a line that says it is rendered again by
  ``command`` today: for a report printed again from its .json by newer code."""
  lines = path.read_text().splitlines()
  header = lines[: next(i for i, line in enumerate(lines) if line.startswith(until))]
  header = "\n".join(header).split("\n\nRe-rendered")[0].rstrip().split("\n")
  return [*header, "", f"Re-rendered from the .json by `{command}` on {datetime.date.today()}.", ""]


def rerender(
  path: pathlib.Path,
  render: Callable[[Any, list[str]], str],
  command: str,
  *,
  until: str = "## ",
) -> str:
  """A finished run's report printed again by this code: ``render(records, header)`` on the
  records of ``path`` (its .json, every ``null`` as NaN) under the header of its .md (the lines
  before the first that starts with ``until``, with a line that says ``command`` rendered it
  again today); writes the .md and prints it.

  Returns:
    the report's text.
  """
  records = nan_for_null(json.loads(path.read_text()))
  text = render(records, rerendered_header(path.with_suffix(".md"), until, command))
  path.with_suffix(".md").write_text(text)
  print(text)
  return text


def nan_for_null(value: Any) -> Any:
  """``value`` read from strict JSON with every ``null`` (a NaN or an infinity written) as NaN."""
  if isinstance(value, dict):
    return {k: nan_for_null(v) for k, v in value.items()}
  if isinstance(value, list):
    return [nan_for_null(v) for v in value]
  return math.nan if value is None else value


def ran_on(minutes: float) -> str:
  """How long a benchmark ran, and where: "3.5 min on 1 cpu device(s), Intel(R) Xeon(R)
  Processor (x86_64, AVX-512), jax 0.10.2; 2026-12-02" (the header line of the results that
  report a run's minutes; the processor and its vector units, since training on it rounds its
  own way). A run held to fewer cores than the machine has (``taskset``) says how many."""
  return (
    f"{minutes:.1f} min on {jax.local_device_count()} {jax.default_backend()} device(s)"
    f"{held_to()}, "
    f"{processor()} ({platform.machine()}{vector_units()}), jax {jax.__version__}; "
    f"{datetime.date.today()}"
  )


def held_to() -> str:
  """ " (held to 1 of 2 cores)" where the run may use fewer cores than the machine has
  (``taskset``): its timings are those of that many cores; "" otherwise."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return f" (held to {cores} of {os.cpu_count()} cores)" if cores != os.cpu_count() else ""


def vector_units() -> str:
  """ ", AVX-512" or ", AVX2" where /proc/cpuinfo says so: two processors of one name that
  differ there compile other code, and training rounds apart on them."""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next(line for line in f if line.startswith("flags")).split()
  except (OSError, StopIteration):
    return ""
  return ", AVX-512" if "avx512f" in flags else ", AVX2" if "avx2" in flags else ""


def results_name(value: str) -> str:
  """The ``type`` of a benchmark's ``--name`` option: the results' file name (letters, digits,
  '_' or '-'; no folder), e.g. ``tune_amd`` for a second processor's run beside the first."""
  if not re.fullmatch(r"[\w-]+", value):
    raise argparse.ArgumentTypeError(
      f"must be letters, digits, '_' or '-' (a file name), got {value!r}"
    )
  return value


def processor() -> str:
  """The CPU's model name (from /proc/cpuinfo where there is one)."""
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def machine() -> str:
  cpu = processor()
  return (
    f"{jax.devices()[0].platform.upper()} ({jax.devices()[0].device_kind}); {cpu}; "
    f"{os.cpu_count()} cores visible{held_to()}; Python {platform.python_version()}, "
    f"jax {jax.__version__}, optax {optax.__version__}"
  )

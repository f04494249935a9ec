"""Time to a result on the command line: start-up (imports, compilation, state creation)
against training time, with JAX's persistent compilation cache cold and warm; optionally
against an earlier version of the package, side by side.

Usage:
  python benchmarks/startup.py                          # writes benchmarks/results/startup.md
  python benchmarks/startup.py --quick                  # one round, 2 and 10 epochs, no file
  python benchmarks/startup.py --baseline ../old-clone  # beside a checkout of another version

Each row runs ``alrao-jax train`` (Alrao-SGD on digits, the CLI's defaults) in a fresh
process: ``cold``, with an empty compilation cache; ``warm``, with the cache the cold run
filled; ``warm, 5x epochs``, the same for five times the epochs. Training time is what E
epochs cost, ``(warm(5E) - warm(E)) / 4``; a run's fixed cost is its wall time less that;
``imports``, a process that imports what ``train`` imports; ``--help``, the command's help.
With ``--baseline DIR``, every row also runs the package in DIR (``PYTHONPATH=DIR``), in the
same round. The kinds and versions interleave round by round; medians over rounds.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from header import command_line, machine

RESULTS = pathlib.Path(__file__).parent / "results" / "startup.md"
ROWS = ("cold", "warm", "warm, 5x epochs", "imports", "--help")
LABELS = {
  "imports": "imports alone (what `train` imports)",
  "--help": "`alrao-jax --help`",
}


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _timed(command: list[str], env: dict[str, str], cwd: pathlib.Path) -> float:
  start = time.perf_counter()
  subprocess.run(command, check=True, capture_output=True, env=env, cwd=cwd)
  return time.perf_counter() - start


def _round(root: pathlib.Path, epochs: int, package: str | None) -> dict[str, float]:
  """One round of every row for the package in the folder ``package`` (None: this one), run
  from that folder (``python -m`` and ``-c`` put it first on the path) with its own cache."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env["JAX_COMPILATION_CACHE_DIR"] = str(root / "cache")
  env.pop("PYTHONPATH", None)
  cwd = ROOT if package is None else pathlib.Path(package).resolve()
  train = [sys.executable, "-m", "alrao_jax.experiments.cli", "train", "--no-progress"]
  imports = "import alrao_jax.experiments.cli; import alrao_jax.loop, alrao_jax.checkpoint"
  check = f"import alrao_jax; assert alrao_jax.__file__.startswith({str(cwd)!r})"
  subprocess.run([sys.executable, "-c", check], check=True, env=env, cwd=cwd)
  return {
    "cold": _timed([*train, "--epochs", str(epochs), "--out", str(root / "cold")], env, cwd),
    "warm": _timed([*train, "--epochs", str(epochs), "--out", str(root / "warm")], env, cwd),
    "warm, 5x epochs": _timed(
      [*train, "--epochs", str(5 * epochs), "--out", str(root / "x5")], env, cwd
    ),
    "imports": _timed([sys.executable, "-c", imports], env, cwd),
    "--help": _timed([sys.executable, "-m", "alrao_jax.experiments.cli", "--help"], env, cwd),
  }


def _version(folder: str) -> str:
  """The package in ``folder``, with its commit when it is a git checkout."""
  found = subprocess.run(
    ["git", "-C", folder, "log", "-1", "--format=%h (%cs)"], capture_output=True, text=True
  )
  commit = f", commit {found.stdout.strip()}" if found.returncode == 0 else ""
  return f"the package in `{folder}`{commit}"


def _summary(times: dict[str, list[float]]) -> tuple[dict[str, float], float, float]:
  """Medians, the training time of a warm run's epochs, and that run's fixed cost."""
  median = {name: statistics.median(values) for name, values in times.items()}
  training = (median["warm, 5x epochs"] - median["warm"]) / 4
  return median, training, median["warm"] - training


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="one round, 2 and 10 epochs, no file")
  parser.add_argument("--baseline", help="a checkout of another version, run beside this one")
  parser.add_argument("--rounds", type=int, default=5, help="rounds (default: 5)")
  args = parser.parse_args(argv)
  epochs, rounds = (2, 1) if args.quick else (5, args.rounds)
  versions = {"this": None} if args.baseline is None else {"this": None, "baseline": args.baseline}
  times = {v: {name: [] for name in ROWS} for v in versions}
  with tempfile.TemporaryDirectory() as folder:
    for r in range(rounds):
      for version, package in versions.items():
        found = _round(pathlib.Path(folder) / f"{version}{r}", epochs, package)
        for name, seconds in found.items():
          times[version][name].append(seconds)
  summaries = {v: _summary(times[v]) for v in versions}
  median, training, fixed = summaries["this"]
  lines = [
    "# Start-up of `alrao-jax train`",
    "",
    f"Command: `{command_line('startup.py', parser, args)}`  ",
    f"Machine: {machine()}  ",
    f"Date: {datetime.date.today()}",
    "",
    f"Alrao-SGD on digits, {epochs} epochs; training time of {epochs} epochs (warm, "
    f"{5 * epochs} epochs minus {epochs}, divided by 4): {training:.2f} s (each epoch with its "
    "evaluation and checkpoint). Wall seconds, medians of "
    f"{rounds} round(s)"
    + (f"; the baseline is {_version(args.baseline)}." if args.baseline else "."),
    "",
  ]
  if args.baseline is None:
    lines += ["| run | wall seconds (median) | per round |", "|---|---|---|"]
  else:
    lines += ["| run | this version | baseline | this / baseline | per round (this) |"]
    lines += ["|---|---|---|---|---|"]
  for name in ROWS:
    label = LABELS.get(name, name)
    per_round = ", ".join(f"{v:.1f}" for v in times["this"][name])
    if args.baseline is None:
      lines.append(f"| {label} | {median[name]:.2f} | {per_round} |")
    else:
      base = summaries["baseline"][0][name]
      lines.append(
        f"| {label} | {median[name]:.2f} | {base:.2f} | {median[name] / base:.2f} | {per_round} |"
      )
  lines += [
    "",
    f"A warm run's fixed cost (wall time less its training time): **{fixed:.1f} s** (goal: at "
    f"most 3 s), of which {median['imports']:.1f} s are the imports; the rest is creating the "
    "state, tracing the step and the evaluation and loading them from the cache, and drawing "
    "the figures once.",
  ]
  if args.baseline is not None:
    base_fixed = summaries["baseline"][2]
    lines.append(
      f"The baseline's fixed cost, measured in the same rounds: {base_fixed:.1f} s "
      f"({fixed / base_fixed:.2f}x)."
    )
  report = "\n".join(lines) + "\n"
  print(report)
  if not args.quick:
    RESULTS.write_text(report)
  return report


if __name__ == "__main__":
  main()

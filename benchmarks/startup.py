"""Time to a result on the command line: start-up (imports, compilation, state creation)
against training time, with JAX's persistent compilation cache cold and warm.

Usage:
  python benchmarks/startup.py            # writes benchmarks/results/startup.md
  python benchmarks/startup.py --quick    # one round, 2 and 10 epochs, no file

Each row runs ``alrao-jax train`` (Alrao-SGD on digits, the CLI's defaults) in a fresh
process: ``cold``, with an empty compilation cache; ``warm``, with the cache the cold run
filled; ``warm, 5x epochs``, the same for five times the epochs. Training time is what E
epochs cost, ``(warm(5E) - warm(E)) / 4``; the ratios divide a whole run's wall time by it;
``imports``, a process that only imports the command line. The kinds interleave round by
round; medians over rounds.
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


def _train(epochs: int, cache: pathlib.Path, out: pathlib.Path) -> float:
  """Wall seconds of one ``alrao-jax train`` in a new process, with its cache folder."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
  command = [sys.executable, "-m", "alrao_jax.experiments.cli", "train", "--no-progress"]
  command += ["--epochs", str(epochs), "--out", str(out)]
  start = time.perf_counter()
  subprocess.run(command, check=True, capture_output=True, env=env)
  return time.perf_counter() - start


def _imports() -> float:
  """Wall seconds of a new process that imports the command line and exits."""
  start = time.perf_counter()
  subprocess.run([sys.executable, "-c", "import alrao_jax.experiments.cli.train"], check=True)
  return time.perf_counter() - start


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="one round, 2 and 10 epochs, no file")
  args = parser.parse_args(argv)
  epochs, rounds = (2, 1) if args.quick else (5, 3)
  times: dict[str, list[float]] = {"cold": [], "warm": [], "warm, 5x epochs": [], "imports": []}
  with tempfile.TemporaryDirectory() as folder:
    root = pathlib.Path(folder)
    for r in range(rounds):
      cache = root / f"cache{r}"
      times["cold"].append(_train(epochs, cache, root / f"cold{r}"))
      times["warm"].append(_train(epochs, cache, root / f"warm{r}"))
      times["warm, 5x epochs"].append(_train(5 * epochs, cache, root / f"longer{r}"))
      times["imports"].append(_imports())
  median = {name: statistics.median(values) for name, values in times.items()}
  training = (median["warm, 5x epochs"] - median["warm"]) / 4
  lines = [
    "# Start-up of `alrao-jax train`",
    "",
    f"Command: `{command_line('startup.py', parser, args)}`  ",
    f"Machine: {machine()}  ",
    f"Date: {datetime.date.today()}",
    "",
    f"Alrao-SGD on digits, {epochs} epochs; training time of {epochs} epochs (warm, "
    f"{5 * epochs} epochs minus {epochs}, divided by 4): {training:.2f} s (each epoch with its "
    "evaluation and checkpoint).",
    "",
    "| run | wall seconds (median) | per round | wall / training time |",
    "|---|---|---|---|",
  ]
  for name, values in times.items():
    per_round = ", ".join(f"{v:.1f}" for v in values)
    ratio = median[name] / training if name != "warm, 5x epochs" else median[name] / (5 * training)
    imports = "imports alone (`import alrao_jax.experiments.cli.train`)"
    label = imports if name == "imports" else name
    lines.append(f"| {label} | {median[name]:.1f} | {per_round} | {ratio:.2f} |")
  fixed = median["warm"] - training
  lines += [
    "",
    f"A warm run's fixed cost (wall time less its training time): {fixed:.1f} s, of which "
    f"{median['imports']:.1f} s are the imports; the rest is creating the state, tracing the "
    "step and the evaluation and loading them from the cache, and drawing the figures once.",
  ]
  report = "\n".join(lines) + "\n"
  print(report)
  if not args.quick:
    RESULTS.write_text(report)
  return report


if __name__ == "__main__":
  main()

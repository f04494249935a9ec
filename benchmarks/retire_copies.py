"""What retiring the ruled-out copies saves on word-level Penn Treebank, and what it costs.

Usage:
  python benchmarks/retire_copies.py                  # writes results/retire_copies.{md,json}
  python benchmarks/retire_copies.py --quick          # smoke test: tiny subsets, no file
  python benchmarks/retire_copies.py --first-seed 1 --name retire_copies_seed1  # another seed

On ``benchmarks/real_data.py``'s budget for ``ptb-word`` (its subsets and patience; at most 6
epochs, ``--epochs``, where ``real_data.py`` now runs 10; the 2-layer LSTM of 200 units and its
10,000-word head of 6 copies over [1e-3, 100]), one process runs, per seed: the 7-rate SGD sweep
(``alrao_jax.sweep``, one vmapped program, as ``real_data.py`` times it), SGD alone at the
sweep's pick (the unit, "one plain run"), one Alrao-SGD run with every copy to the end, and the
same run with ``fit(retire=...)`` at each rule of ``RULES``: a copy whose switch posterior
stayed below the threshold at the end of that many epochs is dropped from the head (unless it is
one of the ``min_copies`` nearest the leader in rate), and the next epochs compute only the live
copies. Every wall time includes its compilations (a retirement
recompiles the step and the evaluation).
Goals (issue 36): a run with copies retired cheaper than the sweep, at no more than 2% worse
perplexity than the full head.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time
from typing import Any

import optax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from header import command_line, ran_on, results_name, write_report_and_json
from real_data import BUDGETS, QUICK, live_per_epoch, one_plain_run, subset

import alrao_jax
from alrao_jax.experiments.compare import task_method, timed_fit
from alrao_jax.experiments.methods import make_method
from alrao_jax.experiments.tasks import MODES, load_task
from alrao_jax.screen import SGD_GRID

RESULTS = pathlib.Path(__file__).parent / "results"
RULES = ((1e-3, 2, 1), (1e-2, 2, 1), (1e-2, 1, 1), (1e-2, 2, 3))  # (threshold, epochs, min_copies)
EPOCHS = 6  # at most: the budget both seeds' files were made at (real_data.py now runs 10)
FULL = "alrao-sgd, every copy"


def rule_name(threshold: float, epochs: int, min_copies: int = 1) -> str:
  kept = "" if min_copies == 1 else f", {min_copies} kept"
  return f"alrao-sgd, retired below {threshold:g} for {epochs} epoch(s){kept}"


def one_seed(task: Any, budget: Any, seed: int, log) -> list[dict[str, Any]]:
  """The sweep, SGD at its pick, and the Alrao runs with and without retirement."""
  options = {"epochs": budget.epochs, "patience": budget.patience, "seed": seed}
  start = time.perf_counter()
  swept = alrao_jax.sweep(
    task.build(1),
    optax.sgd,
    task.splits,
    values=SGD_GRID,
    batch_size=task.batch_size,
    carry=task.carry,
    **options,
    **MODES,
  )
  rows = [
    {
      "method": "7-rate sgd sweep",
      "lr": float(swept.best_value),
      "test_loss": float(swept.test[swept.best_index]["loss"]),
      "seconds": time.perf_counter() - start,
      "live": [],
    }
  ]
  log(f"seed {seed}: sweep picked {swept.best_value:g} in {rows[0]['seconds']:.0f} s")
  alrao = task_method(task, "alrao-sgd", seed=seed)
  runs = {"sgd at the sweep's pick": (make_method("sgd", lr=float(swept.best_value)), None)}
  runs[FULL] = (alrao, None)
  for threshold, epochs, min_copies in RULES:
    retire = alrao_jax.copy_retirement(threshold=threshold, epochs=epochs, min_copies=min_copies)
    runs[rule_name(threshold, epochs, min_copies)] = (alrao, retire)
  for name, (method, retire) in runs.items():
    run, result = timed_fit(task, method, retire=retire, **options)
    rows.append(
      {
        "method": name,
        "lr": method.copy_lrs[0] if len(method.copy_lrs) == 1 else None,
        "test_loss": float(run.test.get("loss", math.inf)),
        "seconds": run.seconds,
        "best_epoch": run.best_epoch,
        "epochs": len(result.history),
        "live": live_per_epoch(result.history) if len(method.copy_lrs) > 1 else [],
      }
    )
    log(f"seed {seed}: {name}: {rows[-1]['test_loss']:.4f} nats, {run.seconds:.0f} s")
  for row in rows:
    row["seed"] = seed
  return rows


def report(results: dict[str, Any], header: list[str]) -> str:
  """Per method: perplexity against the full head's, wall time in plain runs and against the
  sweep's, the live copies per epoch; then each rule against the goals."""
  rows = results["rows"]
  lines = [
    *header,
    "| method | seed | perplexity | / every copy | live copies per epoch | wall s | plain runs "
    "| / sweep |",
    "|---|---|---|---|---|---|---|---|",
  ]
  verdicts = []
  for seed in sorted({r["seed"] for r in rows}):
    by = {r["method"]: r for r in rows if r["seed"] == seed}
    unit = one_plain_run(by["sgd at the sweep's pick"], results["budget"]["epochs"])
    sweep = by["7-rate sgd sweep"]["seconds"]
    full = math.exp(by[FULL]["test_loss"])
    for name, row in by.items():
      perplexity = math.exp(row["test_loss"]) if math.isfinite(row["test_loss"]) else math.inf
      live = ", ".join(map(str, row["live"])) or "-"
      lines.append(
        f"| {name} | {seed} | {perplexity:.1f} | {perplexity / full:.3f} | {live} | "
        f"{row['seconds']:.0f} | {row['seconds'] / unit:.2f} | {row['seconds'] / sweep:.2f} |"
      )
      if name.startswith("alrao-sgd, retired"):
        cheaper, close = row["seconds"] < sweep, perplexity <= 1.02 * full
        verdicts.append(
          f"- seed {seed}, {name}: {row['seconds'] / sweep:.2f} of the sweep's wall time "
          f"({'met' if cheaper else 'NOT met'}: below 1), {perplexity / full:.3f}x the full "
          f"head's perplexity ({'met' if close else 'NOT met'}: at most 1.02)."
        )
  return "\n".join([*lines, "", "Goals (issue 36):", "", *verdicts, ""])


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny subsets, 2 epochs, no file")
  parser.add_argument("--seeds", type=int, default=None, help="default: real_data.py's budget")
  parser.add_argument("--epochs", type=int, default=None, help="at most (default: 6; --quick: 2)")
  parser.add_argument("--first-seed", type=int, default=0, help="seeds from this one (default: 0)")
  parser.add_argument(
    "--name", type=results_name, default="retire_copies", help="results file name, no suffix"
  )
  args = parser.parse_args(argv)
  budget = QUICK if args.quick else BUDGETS["ptb-word"]
  if args.seeds is not None:
    budget = budget._replace(seeds=args.seeds)
  if args.epochs is not None or not args.quick:
    budget = budget._replace(epochs=EPOCHS if args.epochs is None else args.epochs)
  task = subset(load_task("ptb-word"), budget, quick=args.quick)
  started = time.perf_counter()

  def log(message: str) -> None:
    print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)

  if not args.quick:  # untimed: the first run of a model in a process pays a one-off set-up
    small = task._replace(splits=subset(task, QUICK).splits)
    timed_fit(small, make_method("sgd"), seed=0, epochs=1)
  seeds = range(args.first_seed, args.first_seed + budget.seeds)
  rows = [row for seed in seeds for row in one_seed(task, budget, seed, log)]
  minutes = (time.perf_counter() - started) / 60
  train, valid, test = (len(s.inputs) for s in task.splits)
  header = [
    "# Retiring the ruled-out copies of ptb-word's 10,000-word head",
    "",
    f"Command: `{command_line('retire_copies.py', parser, args)}` (this file and its .json). "
    f"{ran_on(minutes)}.",
    "",
    f"Budget (`real_data.py`'s): training on the first {train} windows of 20 x 35 words, "
    f"validation on the first {valid}, test on all {test}; at most {budget.epochs} epochs, "
    f"early stopping with patience {budget.patience}; seed(s) {', '.join(map(str, seeds))}. "
    "Perplexity at "
    "each run's best validation epoch; *plain runs*: wall time over that of SGD at the sweep's "
    f"pick for the {budget.epochs} epochs (its wall time per epoch trained, times {budget.epochs}: "
    "it may stop early); "
    "every wall time includes its compilations.",
    "",
  ]
  results = {"budget": budget._asdict(), "rules": RULES, "rows": rows}
  path = RESULTS / args.name
  return write_report_and_json(report(results, header), results, path, minutes, quick=args.quick)


if __name__ == "__main__":
  print(main())

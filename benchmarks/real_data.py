"""The paper's protocol on real data: Fashion-MNIST's CNN and word-level Penn Treebank.

Usage:
  python benchmarks/real_data.py --task fashion-cnn  # results/real_data_fashion-cnn.{md,json}
  python benchmarks/real_data.py --task ptb-word     # results/real_data_ptb-word.{md,json}
  python benchmarks/real_data.py --task ptb-word --quick  # smoke test: tiny subsets, no file
  python benchmarks/real_data.py --report results/real_data_ptb-word.json  # its .md again
  python benchmarks/real_data.py --task ptb-word --first-seed 1 --name real_data_ptb-word_seed1

Per seed, every method trains the task's model on the same subset of the training split, with
early stopping on validation (``--patience``) within at most ``--epochs`` epochs, and is tested
on the publisher's whole test split at its best validation epoch (the paper's Table 1):

* tuned SGD: the paper's decade grid 1e-5 ... 10 as one program (``alrao_jax.sweep``, its
  7 members vmapped), the rate of lowest validation loss picked, then SGD at that rate alone
  (``alrao_jax.fit``): its wall time per epoch times the budget's epochs is the unit, "one
  plain run" (the run may stop early);
* Adam at its default rate and optax.contrib's learning-rate-free optimizers at theirs;
* one Alrao-SGD run (the task's interval and copies), the same run with the copies the switch
  rules out retired (``fit(retire=alrao_jax.copy_retirement())``, its defaults),
  ``suggest_lr`` read off the first run followed by
  one SGD run at the suggested rate, and ``tune`` (that Alrao run, a short race of the
  suggestion's neighbours, one SGD run at the winner), whose compute is the three together.

The budget (subset, epochs, seeds) is printed with the results: on 2 CPU cores a whole-data
run of every method is out of reach (ptb-word's full epoch is ~1,300 steps of 0.2-0.4 s).
Data: ``ALRAO_FASHION_MNIST`` / ``ALRAO_PTB_WORD`` override ``../shared/data/``.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time
import warnings
from typing import Any, NamedTuple

import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from header import (
  command_line,
  met,
  ran_on,
  rerendered_header,
  results_name,
  write_report_and_json,
)

import alrao_jax
from alrao_jax import strict_json
from alrao_jax.experiments.compare import RunResult, run_method, task_method
from alrao_jax.experiments.methods import LR_FREE, make_method
from alrao_jax.experiments.tasks import MODES, Task, load_task
from alrao_jax.experiments.tune import tune
from alrao_jax.screen import SGD_GRID
from alrao_jax.splits import Split, Splits

RESULTS = pathlib.Path(__file__).parent / "results"


class Budget(NamedTuple):
  """What one task's runs may use: the first ``train_rows`` training rows (windows of the
  streams for ptb-word), the first ``valid_rows`` validation rows, the whole test split."""

  train_rows: int
  valid_rows: int
  epochs: int
  patience: int
  seeds: int


BUDGETS = {
  "fashion-cnn": Budget(train_rows=6_400, valid_rows=2_000, epochs=10, patience=3, seeds=1),
  "ptb-word": Budget(train_rows=1_000, valid_rows=500, epochs=10, patience=2, seeds=1),
}
# Every row of the splits, more epochs and seeds: for an accelerator (benchmarks/gpu_full_size.py)
FULL = {
  "fashion-cnn": Budget(train_rows=10**9, valid_rows=10**9, epochs=20, patience=4, seeds=3),
  "ptb-word": Budget(train_rows=10**9, valid_rows=10**9, epochs=15, patience=3, seeds=3),
}
QUICK = Budget(train_rows=64, valid_rows=64, epochs=2, patience=1, seeds=1)
PEERS = ("adam", *LR_FREE)


def subset(task: Task, budget: Budget, *, quick: bool = False) -> Task:
  """``task`` on the budget's first training and validation rows (whole windows of the
  streams for a carried task), the test split whole (its first rows in quick mode)."""
  batch = task.batch_size

  def head(split: Split, rows: int) -> Split:
    rows = min(rows, len(split.inputs))
    rows = max(batch, rows // batch * batch) if task.carry else rows
    return Split(split.inputs[:rows], split.targets[:rows])

  train, valid, test = task.splits
  test = head(test, budget.valid_rows) if quick else test
  return task._replace(
    splits=Splits(head(train, budget.train_rows), head(valid, budget.valid_rows), test)
  )


def _row(
  name: str, run: RunResult, *, lr: float | None, seconds: float, epochs: int
) -> dict[str, Any]:
  """One method's result on one seed (losses in nats)."""
  return {
    "method": name,
    "lr": lr,
    "test_loss": float(run.test.get("loss", math.inf)),
    "test_accuracy": float(run.test.get("accuracy", math.nan)),
    "best_epoch": run.best_epoch,
    "epochs": epochs,
    "seconds": seconds,
  }


def live_per_epoch(history: list[dict[str, Any]]) -> list[int]:
  """The copies live at the end of each epoch (a retired copy's posterior is 0)."""
  return [int(np.count_nonzero(np.asarray(r["posterior"]) > 0)) for r in history]


def _quietly(run):
  with warnings.catch_warnings():  # a grid's diverging rates are expected: inf is recorded
    warnings.filterwarnings("ignore", "alrao_jax.fit: no epoch", RuntimeWarning)
    return run()


def one_seed(task: Task, budget: Budget, seed: int, log) -> list[dict[str, Any]]:
  """Every method on one seed; each row's wall time includes its compilations."""
  fit = {"patience": budget.patience}
  epochs = budget.epochs
  start = time.perf_counter()
  swept = _quietly(
    lambda: alrao_jax.sweep(
      task.build(1),
      optax.sgd,
      task.splits,
      values=SGD_GRID,
      epochs=epochs,
      patience=budget.patience,
      seed=seed,
      batch_size=task.batch_size,
      carry=task.carry,
      **MODES,
    )
  )
  sweep_seconds = time.perf_counter() - start
  best = float(swept.best_value)
  log(f"seed {seed}: sweep picked {best:g} in {sweep_seconds:.0f} s")
  rows = [
    {
      "method": f"sgd grid member {lr:g}",
      "lr": float(lr),
      "valid_loss": float(swept.valid_losses[i]),
      "test_loss": float(swept.test[i].get("loss", math.inf)),
      "test_accuracy": float(swept.test[i].get("accuracy", math.nan)),
      "best_epoch": int(swept.best_epochs[i]),
      "epochs": len(swept.histories[i]),
      "seconds": math.nan,
    }
    for i, lr in enumerate(swept.values)
  ]
  rows.append(
    {
      **rows[swept.best_index],
      "method": "tuned sgd (sweep)",
      "seconds": sweep_seconds,
    }
  )

  def plain(name: str, lr: float | None = None) -> RunResult:
    method = make_method(name) if lr is None else make_method(name, lr=lr)
    run = _quietly(lambda: run_method(task, method, seed=seed, epochs=epochs, **fit))
    log(
      f"seed {seed}: {name} {lr or ''}: {run.test.get('loss', math.inf):.4f}, {run.seconds:.0f} s"
    )
    return run

  sgd = plain("sgd", best)
  rows.append(
    _row("sgd at the sweep's rate", sgd, lr=best, seconds=sgd.seconds, epochs=len(sgd.history))
  )
  for name in PEERS:
    run = plain(name)
    rows.append(_row(name, run, lr=run.lr, seconds=run.seconds, epochs=len(run.history)))
  method = task_method(task, "alrao-sgd", seed=seed)
  alrao = _quietly(lambda: run_method(task, method, seed=seed, epochs=epochs, **fit))
  log(f"seed {seed}: alrao-sgd {alrao.test['loss']:.4f}, {alrao.seconds:.0f} s")
  rows.append(_row("alrao-sgd", alrao, lr=None, seconds=alrao.seconds, epochs=len(alrao.history)))
  retired = _quietly(
    lambda: run_method(
      task, method, seed=seed, epochs=epochs, retire=alrao_jax.copy_retirement(), **fit
    )
  )
  rows.append(_row(RETIRED, retired, lr=None, seconds=retired.seconds, epochs=len(retired.history)))
  last = retired.history[-1]["posterior"]  # over every copy: a retired one's weight is 0
  rows[-1]["live"] = live_per_epoch(retired.history)
  rows[-1]["kept_lrs"] = [float(lr) for lr, p in zip(method.copy_lrs, last, strict=True) if p > 0]
  log(
    f"seed {seed}: {RETIRED} {retired.test['loss']:.4f}, {retired.seconds:.0f} s; live copies "
    f"per epoch {rows[-1]['live']}, kept {rows[-1]['kept_lrs']}"
  )
  found = _quietly(lambda: tune(task, epochs=epochs, seed=seed, **fit))  # Alrao: half the epochs
  log(f"seed {seed}: tune's suggestion {found.suggestion.lr:.3g}, picked {found.lr:.3g}")
  suggested = found.sgd if found.suggestion.lr == found.lr else plain("sgd", found.suggestion.lr)
  rows.append(
    _row(
      "suggest_lr, then sgd",
      suggested,
      lr=found.suggestion.lr,
      seconds=found.alrao.seconds + suggested.seconds,
      epochs=len(suggested.history),
    )
  )
  rows.append(
    _row(
      "tune",
      found.sgd,
      lr=found.lr,
      seconds=found.alrao.seconds + found.race_seconds + found.sgd.seconds,
      epochs=len(found.sgd.history),
    )
  )
  rows[-1]["choose_seconds"] = found.alrao.seconds + found.race_seconds  # tune.py's compute
  rows[-1]["confidence"] = found.suggestion.confidence
  rows[-1]["race_rates"] = [] if found.race is None else [float(v) for v in found.race.values]
  for row in rows:
    row["seed"] = seed
  return rows


def plain_runs(rows: list[dict[str, Any]], epochs: int) -> list[dict[str, Any]]:
  """The rows with ``plain_runs``: each one's wall time over that of one plain run of the whole
  budget, SGD at its seed's sweep pick run for ``epochs`` epochs (its wall time per epoch
  trained times ``epochs``: it may have stopped early)."""
  pick = "sgd at the sweep's rate"
  unit = {r["seed"]: one_plain_run(r, epochs) for r in rows if r["method"] == pick}
  return [{**r, "plain_runs": _seconds(r) / unit[r["seed"]]} for r in rows]


def one_plain_run(row: dict[str, Any], epochs: int) -> float:
  """The wall time of a plain run of ``epochs`` epochs, from ``row``, one that may have stopped
  early: its wall time per epoch trained times ``epochs``."""
  return _seconds(row) / row["epochs"] * epochs


def cheaper_sweep(vmapped: float) -> float:
  """A 7-rate sweep's cost in plain runs: the cheaper of its one vmapped program (``vmapped``)
  and its runs one by one (a conv net's vmapped members may cost more than runs)."""
  return min(vmapped, len(SGD_GRID))


def _seconds(row: dict[str, Any]) -> float:
  """A row's wall time; NaN for a sweep's member (the .json holds NaN as null)."""
  return math.nan if row["seconds"] is None else row["seconds"]


RETIRED = "alrao-sgd, copies retired"
SUMMARY = (
  "tuned sgd (sweep)",
  "sgd at the sweep's rate",
  *PEERS,
  "alrao-sgd",
  RETIRED,
  "suggest_lr, then sgd",
  "tune",
)


def _mean(rows: list[dict[str, Any]], key: str) -> float:
  """The mean over seeds; inf when a seed's is inf (a diverged run), nan when one is unknown."""
  return float(np.mean(np.array([r[key] for r in rows], dtype=float)))


def _percent(value: float) -> str:
  return "-" if math.isnan(value) else f"{100 * value:.1f}"


def report(results: dict[str, Any], header: list[str]) -> str:
  """The task's table (mean over seeds), its SGD grid, and what it says."""
  rows, perplexity = plain_runs(results["rows"], results["epochs"]), results["task"] == "ptb-word"
  by = {name: [r for r in rows if r["method"] == name] for name in SUMMARY}
  by = {name: runs for name, runs in by.items() if runs}  # a results file from before a row
  tuned = _mean(by["tuned sgd (sweep)"], "test_loss")
  unit = "perplexity" if perplexity else "test loss (nats)"
  lines = [
    *header,
    f"| method | lr | {unit} | / tuned SGD | test accuracy (%) | best epoch / trained | "
    "wall s | plain runs |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for name, runs in by.items():
    loss = _mean(runs, "test_loss")
    shown = math.exp(loss) if perplexity and math.isfinite(loss) else loss
    rates = sorted({f"{r['lr']:.3g}" for r in runs if r["lr"] is not None})
    lines.append(
      f"| {name} | {', '.join(rates) or '-'} | {shown:.3f} | "
      f"{(shown / (math.exp(tuned) if perplexity else tuned)):.3f} | "
      f"{_percent(_mean(runs, 'test_accuracy'))} | {_mean(runs, 'best_epoch'):.1f} / "
      f"{_mean(runs, 'epochs'):.1f} | {_mean(runs, 'seconds'):.0f} | "
      f"{_mean(runs, 'plain_runs'):.2f} |"
    )
  lines += [
    "",
    "The SGD grid (one vmapped sweep per seed; mean over seeds):",
    "",
    f"| lr | valid loss (nats) | {unit} | best epoch / trained |",
    "|---|---|---|---|",
  ]
  for lr in SGD_GRID:
    runs = [r for r in rows if r["method"] == f"sgd grid member {lr:g}"]
    loss = _mean(runs, "test_loss")
    shown = math.exp(loss) if perplexity and math.isfinite(loss) else loss
    lines.append(
      f"| {lr:g} | {_mean(runs, 'valid_loss'):.4f} | {shown:.3f} | "
      f"{_mean(runs, 'best_epoch'):.1f} / {_mean(runs, 'epochs'):.1f} |"
    )
  capped = sorted(
    {r["method"] for r in rows if r["method"] in SUMMARY and r["best_epoch"] == results["epochs"]}
  )
  tuning = [r for r in rows if r["method"] == "tune"]
  lines += [
    "",
    f"Best epoch at the cap of {results['epochs']} (still improving when the budget ended): "
    + (", ".join(capped) if capped else "none")
    + ".",
    "`tune`'s race: "
    + "; ".join(
      f"seed {r['seed']}: {', '.join(f'{v:.3g}' for v in r['race_rates']) or 'no race'} "
      f"(suggestion confidence {r['confidence']})"
      for r in tuning
    )
    + ".",
    "",
    *goals(by, perplexity=perplexity),
  ]
  return "\n".join(lines)


def goals(by: dict[str, list[dict[str, Any]]], *, perplexity: bool) -> list[str]:
  """Issue 36's goals for one task, from the mean over seeds (losses in nats)."""
  loss = {name: _mean(runs, "test_loss") for name, runs in by.items()}
  cost = {name: _mean(runs, "plain_runs") for name, runs in by.items()}
  tuned, alrao, vmapped = loss["tuned sgd (sweep)"], loss["alrao-sgd"], cost["tuned sgd (sweep)"]
  sweep = cheaper_sweep(vmapped)
  peer = min(LR_FREE, key=lambda name: loss.get(name, math.inf))
  ratio = math.exp(alrao - tuned) if perplexity else alrao / tuned
  unit = "perplexity" if perplexity else "loss"
  lines = [
    "Goals (issue 36; differences of test loss in nats, mean over seeds):",
    "",
    f"- One Alrao-SGD run at most 1.10x tuned SGD's {unit}: {ratio:.3f}x ({met(ratio <= 1.10)}).",
    f"- Ahead of the best learning-rate-free peer ({peer}, {loss[peer]:.4f}): Alrao-SGD "
    f"{alrao:.4f}, {alrao - loss[peer]:+.4f} ({met(alrao < loss[peer])}).",
    f"- Cheaper than a 7-rate sweep, the cheaper of its one vmapped program ({vmapped:.2f} plain "
    f"runs) and 7 plain runs one by one: {cost['alrao-sgd']:.2f} plain runs "
    f"({met(cost['alrao-sgd'] < sweep)}).",
  ]
  ratios, shares, choosing = [], [], []
  for pick, tuned_run in zip(by["tuned sgd (sweep)"], by["tune"], strict=True):
    gap = tuned_run["test_loss"] - pick["test_loss"]
    ratios.append(math.exp(gap) if perplexity else tuned_run["test_loss"] / pick["test_loss"])
    sweep_runs = cheaper_sweep(pick["plain_runs"])
    shares.append(tuned_run["plain_runs"] / sweep_runs)
    if "choose_seconds" in tuned_run:
      choosing.append(tuned_run["choose_seconds"] / _seconds(tuned_run) * shares[-1])
  ratio, worst, share = float(np.mean(ratios)), max(ratios), float(np.mean(shares))
  chose = (
    f"; choosing the rate (the Alrao run and the race, as `benchmarks/tune.py` counts): "
    f"{100 * float(np.mean(choosing)):.0f}%"
    if len(choosing) == len(shares)
    else ""
  )
  lines.append(
    f"- `tune` (issue 38): SGD at its rate at most 1.05x the seed's sweep pick's {unit}, mean "
    f"over seeds, no seed above 1.25x, in at most 40% of the sweep's compute (the cheaper one, "
    f"as above; tune's final SGD run included): {ratio:.3f}x (worst seed {worst:.3f}x) in "
    f"{100 * share:.0f}% ({met(ratio <= 1.05 and worst <= 1.25 and share <= 0.40)}){chose}."
  )
  if RETIRED in loss:
    worse = math.exp(loss[RETIRED] - alrao) if perplexity else loss[RETIRED] / alrao
    ok = cost[RETIRED] < sweep and worse <= 1.02
    lines.append(
      f"- With copies retired, cheaper than the sweep at most 2% worse {unit} than every copy: "
      f"{cost[RETIRED]:.2f} plain runs, {worse:.3f}x ({met(ok)})."
    )
  return lines


PLAIN_RUNS = (
  "*plain runs*: wall time over that of one plain run of the whole budget, SGD at the seed's "
  "sweep pick: its wall time per epoch times the budget's epochs (it may stop early); "
  "compilation included for every method."
)
OLD_PLAIN_RUNS = (  # the unit of the reports before 2026-12-07's second session
  "*plain runs*: wall time over that of SGD at the sweep's rate on the same seed (compilation "
  "included for every method)."
)


def rerender(path: pathlib.Path, command: str) -> str:
  """The report of a finished run, from its .json, under the header of its .md: the tables
  as this code prints them (e.g. after a change of unit); ``plain_runs`` left out of the .json,
  which the report derives."""
  results = json.loads(path.read_text())
  results["rows"] = [{k: v for k, v in r.items() if k != "plain_runs"} for r in results["rows"]]
  header = rerendered_header(path.with_suffix(".md"), "| method |", command)
  header = [line.replace(OLD_PLAIN_RUNS, PLAIN_RUNS) for line in header]
  text = report(results, header)
  path.with_suffix(".md").write_text(text)
  path.write_text(strict_json.dumps(results, indent=1))
  return text


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  what = parser.add_mutually_exclusive_group(required=True)
  what.add_argument("--task", choices=sorted(BUDGETS))
  what.add_argument(
    "--report", metavar="JSON", help="a finished run's .json: its .md printed again, no training"
  )
  size = parser.add_mutually_exclusive_group()
  size.add_argument("--quick", action="store_true", help="tiny subsets, 2 epochs, no file")
  size.add_argument("--full", action="store_true", help="whole splits, more epochs and seeds")
  parser.add_argument("--seeds", type=int, default=None, help="default: the task's budget")
  parser.add_argument("--first-seed", type=int, default=0, help="seeds from this one (default: 0)")
  parser.add_argument(
    "--name", type=results_name, help="results file name (default: real_data_TASK)"
  )
  args = parser.parse_args(argv)
  if args.report is not None:
    given = [f"--{n.replace('_', '-')}" for n in ("quick", "full", "seeds", "first_seed", "name")
             if getattr(args, n) != parser.get_default(n)]
    if given:
      parser.error(f"--report prints a finished run again; drop {', '.join(given)}")
    return rerender(pathlib.Path(args.report), command_line("real_data.py", parser, args))
  budget = QUICK if args.quick else (FULL if args.full else BUDGETS)[args.task]
  if args.seeds is not None:
    budget = budget._replace(seeds=args.seeds)
  task = subset(load_task(args.task), budget, quick=args.quick)
  started = time.perf_counter()

  def log(message: str) -> None:
    print(f"[{time.perf_counter() - started:6.0f} s] {args.task} {message}", flush=True)

  if not args.quick:  # untimed: the first run of a model in a process pays a one-off set-up
    run_method(
      task._replace(splits=subset(task, QUICK).splits), make_method("sgd"), seed=0, epochs=1
    )
  seeds = range(args.first_seed, args.first_seed + budget.seeds)
  rows = [row for seed in seeds for row in one_seed(task, budget, seed, log)]
  minutes = (time.perf_counter() - started) / 60
  train, valid, test = (len(s.inputs) for s in task.splits)
  rows_word = "windows of 20 x 35 words" if task.carry else "images"
  results = {"task": args.task, "epochs": budget.epochs, "budget": budget._asdict(), "rows": rows}
  header = [
    f"# {args.task}: the paper's protocol on real data",
    "",
    f"Command: `{command_line('real_data.py', parser, args)}` (this file and its .json). "
    f"{ran_on(minutes)}.",
    "",
    f"Budget: training on the first {train} {rows_word} of the training split, validation on "
    f"the first {valid}, test on all {test}; at most {budget.epochs} epochs, early stopping "
    f"with patience {budget.patience}; seed(s) {', '.join(map(str, seeds))}, the same "
    f"initialisation and data order for every method of a seed. {PLAIN_RUNS}",
    "",
  ]
  path = RESULTS / (args.name or f"real_data_{args.task}")
  return write_report_and_json(report(results, header), results, path, minutes, quick=args.quick)


if __name__ == "__main__":
  print(main())

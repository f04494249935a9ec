"""Alrao as a learning-rate tuner, a one-run variant, and Alrao with a cosine schedule.

Usage:
  python benchmarks/tune.py           # full run, writes benchmarks/results/tune.md,
                                      # tune.json and tune_schedules.png
  python benchmarks/tune.py --name tune_amd  # the same as tune_amd.md, .json, _schedules.png
                                      # (a second processor's run beside the first)
  python benchmarks/tune.py --quick   # smoke test: tiny data, 2 epochs, 1 seed, short grid
  python benchmarks/tune.py --report benchmarks/results/tune.json  # its .md again, no training
  python benchmarks/tune.py --tasks mnist1d --replace  # mnist1d measured again into tune.json

Per bundled task and seed: the SGD grid (constant rate, and with a cosine schedule), one
Alrao-SGD run, a short race (``alrao_jax.tune.race_length``: 1 or 2 epochs) of the rates
``alrao_jax.suggest_lr`` reads off it and SGD at the rate it picks (``alrao-jax tune``), SGD at
the suggestion alone, the range test's suggestions (``lr_find``: fastai's ``valley`` and
``minimum``) each followed by one SGD run, the one-run variant (``refocus``: the body's rates
narrowed to ``[lr / 10, 10 lr]`` around the suggestion after a quarter of the epochs), and
Alrao-SGD with a cosine schedule against tuned SGD with the same schedule (the paper's open
question). Every run keeps its best validation epoch (early stopping with patience 20, as the
paper).
Data paths: ALRAO_PTB_CHAR overrides the Penn Treebank folder (default ../shared/data/ptb-char).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from header import command_line, nan_for_null, ran_on, rerender, rerendered_header, results_name
from tune_races import Reading, calibration

from alrao_jax import strict_json
from alrao_jax.experiments.compare import (
  RunResult,
  lowest_mean,
  run_method,
  select_lr,
  task_method,
  timed_fit,
)
from alrao_jax.experiments.methods import make_method, schedule_multiplier
from alrao_jax.experiments.plots import plot_bars
from alrao_jax.experiments.tasks import MODES, Task, load_task
from alrao_jax.experiments.tune import racing_optimizer, refocus, task_lr_find, tune
from alrao_jax.screen import SGD_GRID
from alrao_jax.sweep import sweep
from alrao_jax.tune import TOLERANCE

PATIENCE = 20
QUARTER = 10.0 ** np.arange(-1.0, 1.01, 0.25)  # the second sweep: around the first's pick
GOALS = {"mean": 1.05, "worst": 1.25, "share": 0.40}  # against the per-seed sweep pick


class Setting(NamedTuple):
  task: str
  epochs: int
  seeds: int


FULL = (
  Setting("digits", 40, 3),
  Setting("mnist1d", 60, 3),
  Setting("mnist1d-mlp", 60, 3),
  Setting("ptb-char", 5, 1),
)
QUICK = (Setting("digits", 2, 1),)
QUICK_ROWS = 64


def _cosine(task: Task, epochs: int):
  steps = len(task.splits.train.inputs) // task.batch_size * epochs
  return schedule_multiplier("cosine", steps)


def swept(
  task: Task, values: np.ndarray, *, seed: int, epochs: int, optimizer: str = "sgd"
) -> dict[str, Any]:
  """``optimizer`` at every rate of ``values`` in one program (``alrao_jax.sweep``): each
  rate's validation and test loss, the wall time, and the rate picked on validation."""
  start = time.perf_counter()
  result = sweep(
    task.build(1),
    racing_optimizer(make_method, optimizer, seed=seed),
    task.splits,
    values=values,
    epochs=epochs,
    seed=seed,
    batch_size=task.batch_size,
    patience=PATIENCE,
    carry=task.carry,
    **MODES,
  )
  seconds = time.perf_counter() - start
  test = [float(t.get("loss", np.inf)) if t else np.inf for t in result.test]
  pick = result.best_index
  return {
    "rates": [float(v) for v in result.values],
    "valid": [float(v) for v in result.valid_losses],
    "test": test,
    "seconds": seconds,
    "pick_lr": float(result.best_value),
    "pick_loss": test[pick] if pick >= 0 else float("inf"),
  }


def run_task(task: Task, setting: Setting, grid: tuple[float, ...], log) -> dict[str, Any]:
  """Every run of one task; returns plain numbers (losses in nats, seconds, rates)."""
  epochs, seeds = setting.epochs, range(setting.seeds)
  fit = {"patience": PATIENCE}
  cosine = _cosine(task, epochs)

  def sgd(lr: float, seed: int, schedule=None) -> RunResult:
    run = run_method(
      task, make_method("sgd", lr=lr, schedule=schedule), seed=seed, epochs=epochs, **fit
    )
    kind = "sgd + cosine" if schedule else "sgd"
    log(f"{task.name} seed {seed}: {kind} lr {lr:.3g}: {run.test['loss']:.4f}")
    return run

  sweeps = []
  for seed in seeds:
    decade = swept(task, np.asarray(grid, float), seed=seed, epochs=epochs)
    around = swept(task, decade["pick_lr"] * QUARTER, seed=seed, epochs=epochs)
    for found in (decade, around):
      log(f"{task.name} seed {seed}: sweep of {len(found['rates'])} picked {found['pick_lr']:.3g}")
    sweeps.append({"decade": decade, "quarter": around})
  with_cosine = {lr: [sgd(lr, s, cosine) for s in seeds] for lr in grid}
  rows: dict[str, list[dict[str, float]]] = {
    k: [] for k in ("tune", "lr_find", "refocus", "cosine")
  }
  for seed in seeds:
    found = tune(task, epochs=epochs, seed=seed, patience=PATIENCE)
    alrao = task_method(task, "alrao-sgd", seed=seed)
    whole = run_method(task, alrao, seed=seed, epochs=epochs, **fit)  # all the epochs
    kept = found.alrao.history[max(found.alrao.best_epoch, 1) - 1]["posterior"]
    suggestion = found.suggestion.lr
    alone = found.sgd if suggestion == found.lr else sgd(suggestion, seed)
    rows["tune"].append(
      {
        "lr": suggestion,
        "kept_lr": float(np.exp(np.dot(kept, np.log(found.suggestion.copy_lrs)))),
        "leading_lr": found.suggestion.leading_lr,
        "confidence": found.suggestion.confidence,
        "reasons": list(found.suggestion.reasons),
        "body_knee": found.suggestion.candidates.get("body", float("nan")),
        "alrao_epochs": len(found.alrao.history),
        "alrao_loss": whole.test["loss"],
        "alrao_seconds": found.alrao.seconds,
        "sgd_loss": alone.test["loss"],
        "sgd_seconds": alone.seconds,
        "tune_lr": found.lr,
        "race_best": found.race.best_value,
        "race_rates": len(found.race.values),
        "race_epochs": found.race_epochs,
        "race_seconds": found.race_seconds,
        "tune_sgd_loss": found.sgd.test["loss"],
      }
    )
    log(f"{task.name} seed {seed}: tune {rows['tune'][-1]}")
    start = time.perf_counter()
    ranged = task_lr_find(task, seed=seed, copies=1)
    find_seconds = time.perf_counter() - start
    row = {"seconds": find_seconds}
    for name in ("valley", "minimum"):
      lr = ranged.suggestions[name]
      run = sgd(lr, seed)
      row.update(
        {f"{name}_lr": lr, f"{name}_loss": run.test["loss"], f"{name}_seconds": run.seconds}
      )
    rows["lr_find"].append(row)
    run, suggestion = refocus(
      task, epochs=epochs, warmup_epochs=max(1, epochs // 4), seed=seed, **fit
    )
    rows["refocus"].append({"lr": suggestion.lr, "loss": run.test["loss"], "seconds": run.seconds})
    log(f"{task.name} seed {seed}: refocus {rows['refocus'][-1]}")
    alrao = task_method(task, "alrao-sgd", seed=seed, schedule=cosine)
    run, _ = timed_fit(task, alrao, seed=seed, epochs=epochs, **fit)
    rows["cosine"].append({"loss": run.test["loss"], "seconds": run.seconds})
    log(f"{task.name} seed {seed}: alrao cosine {rows['cosine'][-1]}")

  def grid_summary(runs: dict[float, list[RunResult]]) -> dict[str, Any]:
    best = select_lr(runs)
    return {
      "best_lr": best,
      "test_loss": {f"{lr:g}": [r.test["loss"] for r in rs] for lr, rs in runs.items()},
      "valid_loss": {f"{lr:g}": [r.valid_loss for r in rs] for lr, rs in runs.items()},
      "seconds": float(np.mean([sum(rs[i].seconds for rs in runs.values()) for i in seeds])),
      "best_loss": [r.test["loss"] for r in runs[best]],
    }

  return {
    "epochs": epochs,
    "seeds": setting.seeds,
    "loss_scale": task.loss_scale,
    "loss_unit": task.loss_unit,
    "grid": sweep_summary(sweeps, grid),
    "sweeps": sweeps,
    "sgd_run_seconds": float(np.mean([row["sgd_seconds"] for row in rows["tune"]])),
    "grid_cosine": grid_summary(with_cosine),
    **rows,
  }


def sweep_summary(sweeps: list[dict[str, Any]], grid: tuple[float, ...]) -> dict[str, Any]:
  """The decade sweeps as the grid: the rate of lowest mean validation loss over seeds (as
  ``select_lr``), every rate's losses, and the sweep's wall time (one program, mean over
  seeds)."""
  valid = {lr: [s["decade"]["valid"][i] for s in sweeps] for i, lr in enumerate(grid)}
  test = {lr: [s["decade"]["test"][i] for s in sweeps] for i, lr in enumerate(grid)}
  best = lowest_mean(valid)
  return {
    "best_lr": best,
    "test_loss": {f"{lr:g}": v for lr, v in test.items()},
    "valid_loss": {f"{lr:g}": v for lr, v in valid.items()},
    "seconds": float(np.mean([s["decade"]["seconds"] for s in sweeps])),
    "best_loss": test[best],
  }


def _mean(rows: list[dict[str, float]], key: str) -> float:
  values = np.array([r[key] for r in rows], float)
  return float(np.mean(values)) if np.isfinite(values).all() else float("inf")


def _decades(rows: list[dict[str, float]], key: str, best: float) -> str:
  return f"{np.mean([np.log10(r[key] / best) for r in rows]):+.2f}"


def _ratios(rows: list[dict[str, float]], key: str, tuned: list[float]) -> np.ndarray:
  """Per seed: the test loss of ``key``'s run over tuned SGD's with the same seed."""
  return np.array([r[key] / t for r, t in zip(rows, tuned, strict=True)], float)


PROTOCOLS = (  # (name, rate key, loss key, compute keys), rows of "tune" or "lr_find"
  ("tune (Alrao + race)", "tune", "tune_lr", "tune_sgd_loss", ("alrao_seconds", "race_seconds")),
  (
    'tune, racing only below "high"',
    "tune",
    "gated_lr",
    "gated_sgd_loss",
    ("alrao_seconds", "gated_race_seconds"),
  ),
  ("suggest_lr alone", "tune", "lr", "sgd_loss", ("alrao_seconds",)),
  ("lr_find valley alone", "lr_find", "valley_lr", "valley_loss", ("seconds",)),
)


def gated(r: dict[str, Any]) -> dict[str, Any]:
  """One task's results with each tune row's gated protocol: where ``suggest_lr`` said "high",
  the suggestion and SGD at it with no race (the race's seconds not spent), else tune's race
  and pick. Read off the same runs: the race changes neither the Alrao run nor the SGD runs."""
  rows = []
  for row in r["tune"]:
    high = row["confidence"] == "high"
    rows.append(
      {
        **row,
        "gated_lr": row["lr"] if high else row["tune_lr"],
        "gated_sgd_loss": row["sgd_loss"] if high else row["tune_sgd_loss"],
        "gated_race_seconds": 0.0 if high else row["race_seconds"],
      }
    )
  return {**r, "tune": rows}


def protocol_summary(r: dict[str, Any]) -> dict[str, dict[str, float]]:
  """Per protocol: decades from the grid's best (mean), SGD at the rate over tuned SGD (mean
  and worst seed), and the compute spent choosing the rate, in seconds and in SGD runs (the
  grid's mean run)."""
  r = gated(r)
  best, tuned = r["grid"]["best_lr"], r["grid"]["best_loss"]
  sgd_run = r["sgd_run_seconds"]
  summary = {}
  for name, table, rate, loss, compute in PROTOCOLS:
    rows = r[table]
    ratios = _ratios(rows, loss, tuned)
    seconds = float(np.mean([sum(row[k] for k in compute) for row in rows]))
    picks = {k: [s[k]["pick_loss"] for s in r["sweeps"]] for k in ("decade", "quarter")}
    against = {k: _ratios(rows, loss, v) for k, v in picks.items()}
    summary[name] = {
      "decades": float(np.mean([np.log10(row[rate] / best) for row in rows])),
      "mean": float(np.mean(ratios)),
      "worst": float(np.max(ratios)),
      "seconds": seconds,
      "runs": seconds / sgd_run,
      "sweep_mean": float(np.mean(against["decade"])),
      "sweep_worst": float(np.max(against["decade"])),
      "quarter_mean": float(np.mean(against["quarter"])),
      "quarter_worst": float(np.max(against["quarter"])),
      "share": seconds / r["grid"]["seconds"],
    }
  return summary


def yardstick_table(results: dict[str, Any]) -> list[str]:
  """Each tool against the sweep a user would have run, seed by seed (issue 38's yardstick)."""
  names = [p[0] for p in PROTOCOLS]
  rates = len(next(iter(results.values()))["grid"]["test_loss"])
  lines = [
    "## As good as the sweep you would have run?",
    "",
    f"Per seed, the sweep a user would run instead: SGD at the {rates} decade rates in one "
    "program (`alrao_jax.sweep`), the rate picked on that seed's validation loss; and a second "
    f"sweep of {len(QUARTER)} rates a quarter decade apart around that pick (1 decade each "
    "way), picked the same way. "
    "For each tool: SGD at its rate / the sweep's pick (test loss, same seed; mean over seeds "
    "and the worst seed), the same against the quarter-decade pick, and the compute that chose "
    "the rate: seconds, plain SGD runs (one full SGD run measured in the same seed's runs) and "
    "its share of the decade sweep's own wall time. Goals: mean <= "
    f"{GOALS['mean']:g}, worst <= {GOALS['worst']:g}, at most {GOALS['share']:.0%} of the "
    "sweep's wall time.",
    "",
    "| task | decade sweep: picks per seed | its wall (s, plain runs) | "
    + " | ".join(
      f"{n}: / sweep pick (mean, worst) | / quarter pick | compute (s, runs, share)" for n in names
    )
    + " |",
    "|---|---|---|" + "---|---|---|" * len(names),
  ]
  for task, r in results.items():
    summary = protocol_summary(r)
    picks = ", ".join(f"{s['decade']['pick_lr']:g}" for s in r["sweeps"])
    wall = r["grid"]["seconds"]
    cells = [
      f"{p['sweep_mean']:.3f}, {p['sweep_worst']:.3f} | {p['quarter_mean']:.3f}, "
      f"{p['quarter_worst']:.3f} | {p['seconds']:.0f}, {p['runs']:.1f}, {p['share']:.0%}"
      for p in (summary[n] for n in names)
    ]
    lines.append(
      f"| {task} | {picks} | {wall:.0f}, {wall / r['sgd_run_seconds']:.1f} | "
      + " | ".join(cells)
      + " |"
    )
  lines += [
    "",
    "Per seed: the decade sweep's pick and its test loss, the quarter-decade sweep's pick and "
    "its test loss, and each sweep's wall time.",
    "",
    "| task | seed | decade pick | test loss | wall (s) | quarter pick | test loss | wall (s) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for task, r in results.items():
    for seed, s in enumerate(r["sweeps"]):
      d, q = s["decade"], s["quarter"]
      lines.append(
        f"| {task} | {seed} | {d['pick_lr']:.3g} | {d['pick_loss']:.4f} | {d['seconds']:.0f} | "
        f"{q['pick_lr']:.3g} | {q['pick_loss']:.4f} | {q['seconds']:.0f} |"
      )
  return [*lines, ""]


def trust_table(results: dict[str, Any]) -> list[str]:
  """The three ways to pick SGD's rate, side by side, against the grid."""
  names = [p[0] for p in PROTOCOLS]
  rates = len(next(iter(results.values()))["grid"]["test_loss"])
  lines = [
    "## Which rate? `tune`, `suggest_lr` alone and `lr_find` alone against the grid",
    "",
    f"`tune`: one Alrao-SGD run of half the task's epochs (`alrao_epochs`; the per-seed "
    "table gives the epochs it trained), `suggest_lr`'s candidates (the body's: its knee), "
    "their neighbours half a decade away and a ladder that leaves no gap wider than half a "
    "decade between them "
    "(`race_ladder`, at most 10 racers) raced with plain SGD in one program "
    "(`alrao_jax.sweep`) for the Alrao run's epochs over "
    "the number of racers, 1 or 2 (`race_length`; the race's rates x epochs are in the "
    "per-seed table); "
    "the suggestion's racer is picked unless its validation loss fell less than "
    f"{1 - TOLERANCE:g} of the best racer's fall from their common start, else the best "
    'racer (`race_pick`). `tune, racing only below "high"`: the same runs read as tune '
    'would be if it raced only where `suggest_lr` did not say "high" (`tune(trust_high=True)`; '
    "there, the suggestion and SGD at it, the race's seconds not counted). `suggest_lr` "
    "alone: the same Alrao run's suggestion. `lr_find` alone: the range test's `valley` (100 "
    "steps). Each rate is then used by one full SGD run. Per task: the rate in decades from "
    "the grid's best (mean over seeds); SGD at it / tuned SGD with the same seed (test loss; "
    "mean over seeds, and the worst seed); the compute that chose the rate per seed, in "
    f"seconds and in SGD runs (the run measured beside it; the grid is the {rates}-rate "
    "sweep). The old goals: mean <= 1.05, worst <= 1.2, compute <= 3 runs.",
    "",
    "| task | grid's best lr | "
    + " | ".join(f"{n}: decades | SGD / tuned (mean, worst) | compute (s, runs)" for n in names)
    + " | grid compute (s) |",
    "|---|---|" + "---|---|---|" * len(names) + "---|",
  ]
  for task, r in results.items():
    summary = protocol_summary(r)
    cells = []
    for name in names:
      p = summary[name]
      cells.append(
        f"{p['decades']:+.2f} | {p['mean']:.3f}, {p['worst']:.3f} | "
        f"{p['seconds']:.0f}, {p['runs']:.1f}"
      )
    lines.append(
      f"| {task} | {r['grid']['best_lr']:g} | "
      + " | ".join(cells)
      + f" | {r['grid']['seconds']:.0f} |"
    )
  lines += [
    "",
    "Per seed: the epochs the Alrao run trained, the suggestion and its confidence, the "
    "body's knee (the middle of the fastest "
    "half-decade of rates whose units still moved in proportion to their rate, "
    "`alrao_jax.suggest_lr.body_knee`: the race's body candidate), the race (rates x epochs) "
    "and its best, tune's pick, and SGD at each / tuned SGD.",
    "",
    "| task | seed | Alrao run's epochs | suggest_lr | confidence | body's knee | "
    "SGD at it / tuned | race | race's best | tune's pick | SGD at it / tuned | "
    "range test valley | SGD at it / tuned |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for task, r in results.items():
    tuned = r["grid"]["best_loss"]
    for seed, (t, f) in enumerate(zip(r["tune"], r["lr_find"], strict=True)):
      race = (
        f"{t['race_rates']} x {t['race_epochs']} | {t['race_best']:.3g} | {t['tune_lr']:.3g} | "
        f"{t['tune_sgd_loss'] / tuned[seed]:.3f}"
      )
      lines.append(
        f"| {task} | {seed} | {t['alrao_epochs']} | {t['lr']:.3g} | {t['confidence']} | "
        f"{t['body_knee']:.3g} | {t['sgd_loss'] / tuned[seed]:.3f} | {race} | "
        f"{f['valley_lr']:.3g} | "
        f"{f['valley_loss'] / tuned[seed]:.3f} |"
      )
  return [*lines, ""]


def confidence_records(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
  """Per task and seed: the suggestion, its confidence, reasons and knee, and what
  :func:`tune_races.calibration` reads of it (the seed's decade and quarter-decade picks, and SGD
  at the suggestion over SGD at the decade pick)."""
  return {
    task: [
      {
        "suggestion": t["lr"],
        "confidence": t["confidence"],
        "reasons": t.get("reasons", []),  # absent from runs before the reasons were recorded
        "knee": t["body_knee"],
        "reading": Reading(
          s["decade"]["pick_lr"], s["quarter"]["pick_lr"], t["sgd_loss"] / s["decade"]["pick_loss"]
        ),
      }
      for t, s in zip(r["tune"], r["sweeps"], strict=True)
    ]
    for task, r in results.items()
  }


def report(results: dict[str, Any], header: list[str], prefix: str = "tune") -> list[str]:
  lines = [
    *header,
    *yardstick_table(results),
    *trust_table(results),
    *calibration({"bundled": confidence_records(results)}, reading=lambda r: r["reading"]),
    "## Alrao suggests the learning rate: one Alrao run, then SGD at its suggestion",
    "",
    "Test loss of each protocol divided by tuned SGD's (the grid's rate with the best mean "
    "validation loss, test loss averaged over seeds); below 1 is better than the grid. "
    "Rates in decades from the grid's best rate (mean over seeds). Compute: runs and seconds "
    "per seed, compilation included.",
    "",
    "| task | grid's best lr | Alrao's suggestion (decades) | Alrao + SGD at it / tuned SGD | "
    "compute (runs, s) | range test valley (decades) | SGD at it / tuned | range test minimum "
    "(decades) | SGD at it / tuned | compute (runs, s) | one Alrao run of all the epochs / "
    "tuned | refocused run "
    "/ tuned | compute (s) | the sweep (rates, s) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, r in results.items():
    best, tuned = r["grid"]["best_lr"], float(np.mean(r["grid"]["best_loss"]))
    t, f, o = r["tune"], r["lr_find"], r["refocus"]
    two_run_seconds = _mean(t, "alrao_seconds") + _mean(t, "sgd_seconds")
    find_seconds = _mean(f, "seconds") + _mean(f, "valley_seconds")
    lines.append(
      f"| {name} | {best:g} | {_decades(t, 'lr', best)} | {_mean(t, 'sgd_loss') / tuned:.3f} | "
      f"2, {two_run_seconds:.0f} | {_decades(f, 'valley_lr', best)} | "
      f"{_mean(f, 'valley_loss') / tuned:.3f} | {_decades(f, 'minimum_lr', best)} | "
      f"{_mean(f, 'minimum_loss') / tuned:.3f} | range test + 1, {find_seconds:.0f} | "
      f"{_mean(t, 'alrao_loss') / tuned:.3f} | {_mean(o, 'loss') / tuned:.3f} | "
      f"{_mean(o, 'seconds'):.0f} | {len(r['grid']['test_loss'])}, {r['grid']['seconds']:.0f} |"
    )
  lines += [
    "",
    "Per seed: the suggested rates (Alrao: the posterior's geometric mean of the copies' "
    "rates, averaged over the epochs up to the kept one; the same at the kept epoch alone; the "
    "leading copy there; the range test's valley and minimum) and the test losses (nats).",
    "",
    "| task | seed | Alrao suggestion | at the kept epoch alone | leading copy | SGD at the "
    "suggestion | valley | SGD at it | minimum | SGD at it | refocused around | refocused run |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, r in results.items():
    for seed, (t, f, o) in enumerate(zip(r["tune"], r["lr_find"], r["refocus"], strict=True)):
      lines.append(
        f"| {name} | {seed} | {t['lr']:.3g} | {t['kept_lr']:.3g} | {t['leading_lr']:.3g} | "
        f"{t['sgd_loss']:.4f} | "
        f"{f['valley_lr']:.3g} | {f['valley_loss']:.4f} | {f['minimum_lr']:.3g} | "
        f"{f['minimum_loss']:.4f} | {o['lr']:.3g} | {o['loss']:.4f} |"
      )
  lines += [
    "",
    "## Schedules: Alrao + cosine against tuned SGD + cosine",
    "",
    "The paper leaves open whether a schedule helps Alrao (dividing all its rates by a "
    "time-dependent constant). Both runs use the same cosine decay to 0 over the run "
    "(`--schedule cosine`); tuned SGD + cosine is the grid with the schedule, its rate chosen "
    "on validation. Test loss, mean over seeds.",
    "",
    "| task | tuned SGD | Alrao | Alrao / tuned SGD | tuned SGD + cosine (best lr) | Alrao + "
    "cosine | Alrao + cosine / tuned SGD + cosine |",
    "|---|---|---|---|---|---|---|",
  ]
  for name, r in results.items():
    scale = r["loss_scale"]
    tuned = float(np.mean(r["grid"]["best_loss"]))
    tuned_cos = float(np.mean(r["grid_cosine"]["best_loss"]))
    alrao, alrao_cos = _mean(r["tune"], "alrao_loss"), _mean(r["cosine"], "loss")
    lines.append(
      f"| {name} | {tuned * scale:.4f} | {alrao * scale:.4f} | {alrao / tuned:.3f} | "
      f"{tuned_cos * scale:.4f} ({r['grid_cosine']['best_lr']:g}) | {alrao_cos * scale:.4f} | "
      f"{alrao_cos / tuned_cos:.3f} |"
    )
  lines += ["", f"![schedules]({prefix}_schedules.png)", "", *findings(results), ""]
  return lines


def _names(tasks: list[str]) -> str:
  return ", ".join(tasks) if tasks else "none"


def findings(results: dict[str, Any]) -> list[str]:
  """What the tables show, in words computed from the same numbers."""
  ratios = {}
  for name, r in results.items():
    tuned = float(np.mean(r["grid"]["best_loss"]))
    tuned_cos = float(np.mean(r["grid_cosine"]["best_loss"]))
    ratios[name] = {
      "Alrao's suggestion": _mean(r["tune"], "sgd_loss") / tuned,
      "the range test's valley": _mean(r["lr_find"], "valley_loss") / tuned,
      "the range test's minimum": _mean(r["lr_find"], "minimum_loss") / tuned,
      "alrao": _mean(r["tune"], "alrao_loss") / tuned,
      "refocus": _mean(r["refocus"], "loss") / tuned,
      "cosine gap": _mean(r["cosine"], "loss") / tuned_cos,
    }
  tools = ("Alrao's suggestion", "the range test's valley", "the range test's minimum")
  met = [n for n, v in ratios.items() if v["Alrao's suggestion"] <= 1.05]
  lines = ["## What it shows", ""]
  for name, *_ in PROTOCOLS:
    summaries = {task: protocol_summary(r)[name] for task, r in results.items()}
    goals = [
      t
      for t, p in summaries.items()
      if p["sweep_mean"] <= GOALS["mean"]
      and p["sweep_worst"] <= GOALS["worst"]
      and p["share"] <= GOALS["share"]
    ]
    lines.append(
      f"- Against each seed's own sweep pick, {name} meets the three goals (mean <= "
      f"{GOALS['mean']:g}, worst seed <= {GOALS['worst']:g}, <= {GOALS['share']:.0%} of the "
      f"sweep's wall time) on {len(goals)} of {len(summaries)} tasks ({_names(goals)}); "
      + ", ".join(
        f"{t}: {p['sweep_mean']:.2f} (worst {p['sweep_worst']:.2f}) at {p['share']:.0%}"
        for t, p in summaries.items()
      )
      + "."
    )
  for name, *_ in PROTOCOLS:
    summaries = {task: protocol_summary(r)[name] for task, r in results.items()}
    goals = [
      t for t, p in summaries.items() if p["mean"] <= 1.05 and p["worst"] <= 1.2 and p["runs"] <= 3
    ]
    lines.append(
      f"- Against the grid's rate chosen on the seeds' mean (the old yardstick), {name} meets "
      "its three goals (mean <= 1.05, worst seed <= 1.2, <= 3 runs) on "
      f"{len(goals)} of {len(summaries)} tasks ({_names(goals)}); its worst seed is "
      + ", ".join(f"{p['worst']:.2f} on {t}" for t, p in summaries.items())
      + "."
    )
  lines.append(
    f"- Alrao + SGD at its suggestion is within 1.05 of tuned SGD on {len(met)} of "
    f"{len(ratios)} tasks ({_names(met)}); not on "
    f"{_names([n for n in ratios if n not in met])}."
  )
  for tool in tools:
    wins = [n for n, v in ratios.items() if min(tools, key=lambda t, v=v: v[t]) == tool]
    lines.append(f"- The best of the three suggestions is {tool} on {_names(wins)}.")
  helped = [n for n, v in ratios.items() if v["refocus"] < v["alrao"]]
  lines.append(
    f"- The refocused run beats one plain Alrao run on {_names(helped)}; not on "
    f"{_names([n for n in ratios if n not in helped])}."
  )
  closer = [n for n, v in ratios.items() if v["cosine gap"] < v["alrao"]]
  lines.append(
    "- With a cosine on both, Alrao's ratio to tuned SGD is lower than without on "
    f"{_names(closer)}; higher on {_names([n for n in ratios if n not in closer])}."
  )
  return lines


def plot(results: dict[str, Any], out: pathlib.Path) -> None:
  groups = list(results)
  series = {
    "tuned SGD": [np.mean(r["grid"]["best_loss"]) for r in results.values()],
    "Alrao": [_mean(r["tune"], "alrao_loss") for r in results.values()],
    "SGD at Alrao's suggestion": [_mean(r["tune"], "sgd_loss") for r in results.values()],
    "tuned SGD + cosine": [np.mean(r["grid_cosine"]["best_loss"]) for r in results.values()],
    "Alrao + cosine": [_mean(r["cosine"], "loss") for r in results.values()],
  }
  reference = np.array(series["tuned SGD"])
  plot_bars(
    {k: list(np.array(v) / reference) for k, v in series.items()},
    groups,
    out,
    title="test loss / tuned SGD's (constant rate), mean over seeds",
    ylabel="test loss / tuned SGD",
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="smoke test: tiny, fast")
  parser.add_argument("--out", default="benchmarks/results", help="folder of the results")
  parser.add_argument(
    "--name",
    default="tune",
    type=results_name,
    help="the results' name: NAME.md, NAME.json, NAME_schedules.png",
  )
  parser.add_argument(
    "--report", metavar="JSON", help="a finished run's .json: its .md printed again, no training"
  )
  parser.add_argument("--tasks", help="only these tasks, comma-separated (default: all four)")
  parser.add_argument(
    "--replace",
    action="store_true",
    help="with --tasks: measure them again into the finished NAME.json, its other tasks kept "
    "(e.g. a task whose timings ran beside other work), and render NAME.md again",
  )
  args = parser.parse_args()
  names = [s.task for s in (QUICK if args.quick else FULL)]
  chosen = None if args.tasks is None else args.tasks.split(",")
  if chosen is not None and not set(chosen) <= set(names):
    parser.error(f"--tasks takes some of {','.join(names)}, got {args.tasks}")
  if args.replace and args.tasks is None:
    parser.error("--replace measures the --tasks given again; pass --tasks too")
  if args.report is not None:  # the .md of a finished run, rendered again by this code
    path = pathlib.Path(args.report)
    rerender(
      path,
      lambda results, header: "\n".join(report(results, header, path.stem)) + "\n",
      command_line("tune.py", parser, args),
    )
    return
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  settings = QUICK if args.quick else FULL
  grid = (0.01, 0.1, 1.0) if args.quick else SGD_GRID
  start = time.perf_counter()

  def log(line: str) -> None:
    print(f"[{time.perf_counter() - start:6.0f} s] {line}", file=sys.stderr, flush=True)

  path = out / f"{args.name}.json"
  results = nan_for_null(json.loads(path.read_text())) if args.replace else {}
  for setting in settings:
    if chosen is not None and setting.task not in chosen:
      continue
    task = load_task(setting.task)
    if args.quick:
      task = task.shrink(QUICK_ROWS)
    results[setting.task] = run_task(task, setting, grid, log)
  results = {name: results[name] for name in names if name in results}  # the tasks' order
  path.write_text(strict_json.dumps(results, indent=1) + "\n")
  plot(results, out / f"{args.name}_schedules.png")
  minutes = (time.perf_counter() - start) / 60
  command = command_line("tune.py", parser, args)
  if args.replace:
    again = (
      f"Measured again alone, replacing the first run's: {', '.join(chosen)}, by "
      f"`{command}`; {ran_on(minutes)}."
    )
    header = [*rerendered_header(path.with_suffix(".md"), "## ", command)[:-3], "", again, ""]
    path.with_suffix(".md").write_text("\n".join(report(results, header, args.name)) + "\n")
    print(f"wrote {path.with_suffix('.md')}")
    return
  header = [
    "# Alrao as a learning-rate tuner, a one-run variant, and schedules",
    "",
    f"Command: `{command}` (this file, {args.name}.json and {args.name}_schedules.png). "
    f"{ran_on(minutes)}. "
    "Epochs and seeds per task: "
    + ", ".join(f"{n} {r['epochs']} epochs x {r['seeds']} seeds" for n, r in results.items())
    + f"; early stopping with patience {PATIENCE}; SGD grid "
    + ", ".join(f"{v:g}" for v in grid)
    + ".",
    "",
  ]
  (out / f"{args.name}.md").write_text("\n".join(report(results, header, args.name)) + "\n")
  print(f"wrote {out / f'{args.name}.md'}")


if __name__ == "__main__":
  main()

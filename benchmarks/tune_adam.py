"""``tune(optimizer="adam")`` scored against the Adam sweep a user would have run, and how far
Alrao-Adam's suggestion can be trusted.

Usage:
  python benchmarks/tune_adam.py          # writes benchmarks/results/tune_adam.md and .json
  python benchmarks/tune_adam.py --quick  # smoke test: tiny data, 2 epochs, 1 seed, no file
  python benchmarks/tune_adam.py --report benchmarks/results/tune_adam.json  # its .md again

Per bundled task (digits, mnist1d, mnist1d-mlp, with ``benchmarks/tune.py``'s epochs) and seed:
Adam's decade sweep (:data:`ADAM_DECADES`, 1e-6 ... 1, the 7 rates in one program,
``alrao_jax.sweep``) and its pick on that seed's validation loss, a second sweep a quarter
decade apart around the pick, then ``alrao-jax tune --optimizer adam`` (one Alrao-Adam run of
half the epochs, ``suggest_lr``, a race of Adams, Adam at the winner) and Adam at the
suggestion alone; each scored as ``benchmarks/tune.py`` scores SGD's: Adam's test loss at the
rate over that of the seed's sweep pick, and the compute that chose the rate as a share of the
sweep's wall time. Per network of ``tests/test_tune_own_model.py`` (out of sample) and seed:
one Alrao-Adam run of half the epochs and Adam's decade sweep, for the suggestion's confidence.
PTB characters is left out: its Adam sweeps alone take half an hour on 2 CPU cores.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import jax
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "tests"))
from header import command_line, met
from tune import FULL, GOALS, PATIENCE, QUARTER, swept
from tune_races import (
  OWN_EPOCHS,
  Reading,
  calibration,
  collect_and_report,
  collection_parser,
  rerender_collection,
  suggestion_record,
)

import alrao_jax
from alrao_jax.experiments.compare import run_method
from alrao_jax.experiments.methods import make_method
from alrao_jax.experiments.tasks import ADAM_INTERVAL, Task
from alrao_jax.experiments.tune import half_of, tune
from alrao_jax.suggest_lr import suggest_lr
from alrao_jax.sweep import sweep

ADAM_DECADES = 10.0 ** np.arange(-6.0, 0.5)  # 1e-6 ... 1: Alrao-Adam's default interval
RESULTS = pathlib.Path(__file__).parent / "results"
SEEDS = 3
NOISE_DECADES = 0.05  # a rate this near the sweep's pick is the pick, up to rounding


def collect_task(task: Task, epochs: int, seed: int) -> dict[str, Any]:
  """A bundled task and seed: the two sweeps, ``tune``, and Adam at the suggestion alone."""
  decade = swept(task, ADAM_DECADES, seed=seed, epochs=epochs, optimizer="adam")
  quarter = swept(task, decade["pick_lr"] * QUARTER, seed=seed, epochs=epochs, optimizer="adam")
  found = tune(task, epochs=epochs, seed=seed, optimizer="adam", patience=PATIENCE)
  alone = found.sgd
  if found.suggestion.lr != found.lr:
    adam = make_method("adam", lr=found.suggestion.lr, seed=seed)
    alone = run_method(task, adam, seed=seed, epochs=epochs, patience=PATIENCE)
  return {
    **suggestion_record(found.suggestion),
    "decade": decade,
    "quarter": quarter,
    "alrao_epochs": len(found.alrao.history),
    "alrao_seconds": found.alrao.seconds,
    "race_rates": len(found.race.values) if found.race else 0,
    "race_epochs": found.race_epochs,
    "race_seconds": found.race_seconds,
    "tune_lr": float(found.lr),
    "tune_loss": found.sgd.test["loss"],
    "alone_loss": alone.test["loss"],
    "adam_seconds": found.sgd.seconds,
  }


def collect_own(name: str, epochs: int, seed: int) -> dict[str, Any]:
  """A network of tests/test_tune_own_model.py and seed: Alrao-Adam's suggestion and Adam's
  decade sweep."""
  import test_tune_own_model as own

  network, data, kwargs = own.NETWORKS[name]
  splits = data()
  options = {"seed": seed, "batch_size": 32, **kwargs}
  tx = alrao_jax.alrao_adam(*ADAM_INTERVAL, key=jax.random.key(seed + 1))
  run = alrao_jax.fit(network(), tx, splits, epochs=half_of(epochs), **options)
  grid = sweep(
    network(plain=True), optax.adam, splits, values=ADAM_DECADES, epochs=epochs, **options
  )
  return {
    **suggestion_record(suggest_lr(run)),
    "rates": [float(v) for v in grid.values],
    "valid": [float(v) for v in grid.valid_losses],
    "pick_lr": float(grid.best_value),
  }


def summary(seeds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
  """Per tool (``tune``, the suggestion alone): Adam at its rate / the sweep's pick (mean and
  worst seed), the same against the quarter-decade pick, and its compute's share of the sweep."""
  tools = {
    "tune": ("tune_loss", ("alrao_seconds", "race_seconds")),
    "alone": ("alone_loss", ("alrao_seconds",)),
  }
  found = {}
  for tool, (loss, spent) in tools.items():
    decade = np.array([r[loss] / r["decade"]["pick_loss"] for r in seeds])
    quarter = np.array([r[loss] / r["quarter"]["pick_loss"] for r in seeds])
    compute = np.array([sum(r[k] for k in spent) for r in seeds])
    sweeps = np.array([r["decade"]["seconds"] for r in seeds])
    found[tool] = {
      "mean": float(decade.mean()),
      "worst": float(decade.max()),
      "quarter_mean": float(quarter.mean()),
      "quarter_worst": float(quarter.max()),
      "seconds": float(compute.mean()),
      "share": float(compute.mean() / sweeps.mean()),
    }
  return found


def _meets(cell: dict[str, float]) -> bool:
  return (
    cell["mean"] <= GOALS["mean"]
    and cell["worst"] <= GOALS["worst"]
    and cell["share"] <= GOALS["share"]
  )


def adam_reading(record: dict[str, Any]) -> Reading:
  """A bundled task's record (its two sweeps, Adam at the suggestion) or an own network's (its
  decade sweep's pick alone)."""
  if "decade" not in record:
    return Reading(record["pick_lr"], None, None)
  decade, quarter = record["decade"], record["quarter"]
  return Reading(decade["pick_lr"], quarter["pick_lr"], record["alone_loss"] / decade["pick_loss"])


def report(bundled: dict[str, Any], own: dict[str, Any], header: list[str]) -> str:
  lines = [
    *header,
    "## As good as the Adam sweep you would have run?",
    "",
    "Adam at each tool's rate / Adam at the rate the same seed's decade sweep picks on "
    "validation (test loss; mean over seeds, worst seed), the same against the quarter-decade "
    "sweep's pick, and the compute that chose the rate (s; its share of the decade sweep's "
    f"wall time). Goals (issue 38, as for SGD): mean <= {GOALS['mean']:g}, worst <= "
    f"{GOALS['worst']:g}, at most {GOALS['share']:.0%} of the sweep's wall time.",
    "",
    "| task | decade sweep: picks per seed | its wall (s) | tune: / sweep pick (mean, worst) | "
    "/ quarter pick | compute (s, share) | suggest_lr alone: / sweep pick | / quarter pick | "
    "compute (s, share) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for task, seeds in bundled.items():
    found = summary(seeds)
    cells = [
      f"{c['mean']:.3f}, {c['worst']:.3f} | {c['quarter_mean']:.3f}, {c['quarter_worst']:.3f} | "
      f"{c['seconds']:.0f}, {c['share']:.0%}"
      for c in found.values()
    ]
    picks = ", ".join(f"{r['decade']['pick_lr']:g}" for r in seeds)
    wall = np.mean([r["decade"]["seconds"] for r in seeds])
    lines.append(f"| {task} | {picks} | {wall:.0f} | " + " | ".join(cells) + " |")
  lines += [
    "",
    "Per seed: the Alrao-Adam run's epochs, the suggestion, its confidence and the body's knee, "
    "the quarter sweep's pick, the race (rates x epochs), tune's pick, and Adam at each / Adam "
    "at the decade sweep's pick.",
    "",
    "| task | seed | Alrao run's epochs | suggest_lr | confidence | body's knee | decade pick | "
    "quarter pick | Adam at the suggestion / pick | race | tune's pick | Adam at it / pick |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for task, seeds in bundled.items():
    for seed, r in enumerate(seeds):
      pick = r["decade"]["pick_loss"]
      knee = r["knee"] if r["knee"] is not None else float("nan")
      lines.append(
        f"| {task} | {seed} | {r['alrao_epochs']} | {r['suggestion']:.3g} | {r['confidence']} | "
        f"{knee:.3g} | {r['decade']['pick_lr']:.3g} | {r['quarter']['pick_lr']:.3g} | "
        f"{r['alone_loss'] / pick:.3f} | {r['race_rates']} x {r['race_epochs']} | "
        f"{r['tune_lr']:.3g} | {r['tune_loss'] / pick:.3f} |"
      )
  lines += [""]
  lines += calibration({"bundled": bundled, "own": own}, reading=adam_reading)
  lines += ["## What it shows", ""]
  tools = (("tune", "tune(optimizer='adam')"), ("alone", "Alrao-Adam's suggestion alone"))
  for tool, name in tools:
    cells = {task: summary(seeds)[tool] for task, seeds in bundled.items()}
    good = [task for task, c in cells.items() if _meets(c)]
    lines.append(
      f"- {name} meets the three goals on {len(good)} of {len(cells)} tasks "
      f"({', '.join(good) or 'none'}): "
      + ", ".join(
        f"{t}: {c['mean']:.2f} (worst {c['worst']:.2f}) at {c['share']:.0%}"
        for t, c in cells.items()
      )
      + f"; {met(len(good) == len(cells))} on every task."
    )
  same = [
    (task, seed, r["tune_loss"] / r["decade"]["pick_loss"])
    for task, seeds in bundled.items()
    for seed, r in enumerate(seeds)
    if abs(np.log10(r["tune_lr"] / r["decade"]["pick_lr"])) < NOISE_DECADES
  ]
  if same:
    lines.append(
      f"- The noise: where tune's rate lay within {NOISE_DECADES:g} decades of the sweep's "
      "pick (nearly the same rate, trained alone rather than in the sweep's program), Adam's "
      "test loss over the sweep member's was "
      + ", ".join(f"{ratio:.2f} ({task} {seed})" for task, seed, ratio in same)
      + "."
    )
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
  parser = collection_parser(__doc__, "tune_adam")
  args = parser.parse_args(argv)
  if args.report is not None:
    return rerender_collection(
      pathlib.Path(args.report), report, command_line("tune_adam.py", parser, args)
    )
  import test_tune_own_model as own

  settings = {s.task: s.epochs for s in FULL if s.task != "ptb-char"}
  seeds = SEEDS
  own_epochs, networks = OWN_EPOCHS, sorted(own.NETWORKS)
  if args.quick:
    settings, seeds, own_epochs, networks = {"digits": 2}, 1, 2, ["regression"]
  return collect_and_report(
    report,
    settings=settings,
    networks=networks,
    seeds=seeds,
    own_epochs=own_epochs,
    task_run=collect_task,
    own_run=collect_own,
    title="# tune for Adam: against the Adam sweep you would have run",
    command=command_line("tune_adam.py", parser, args),
    name=args.name,
    more=(
      "Alrao-Adam's interval [1e-6, 1], Adam's decade sweep 1e-6 ... 1 (7 rates). "
      "PTB characters is left out (its Adam sweeps alone: half an hour)."
    ),
    quick=args.quick,
  )


if __name__ == "__main__":
  main()

"""Short races favour fast rates: which race stops it, on the bundled tasks and on networks that
tune was not designed on.

Usage:
  python benchmarks/tune_races.py          # writes benchmarks/results/tune_races.md and .json
  python benchmarks/tune_races.py --quick  # smoke test: tiny data, 2 epochs, 1 seed, no file
  python benchmarks/tune_races.py --report benchmarks/results/tune_races.json  # its .md again

Per bundled task (digits, mnist1d, mnist1d-mlp, with ``benchmarks/tune_rules.py``'s epochs) and per
network of ``tests/test_tune_own_model.py`` (a ReLU MLP, a GRU classifier, a scanned Transformer, a
regression MLP: out of sample), and per seed: one Alrao-SGD run of half the epochs (``tune``'s) and
its suggestion (:func:`alrao_jax.suggest_lr`), then the same racers (:func:`alrao_jax.race_ladder`)
raced four ways: 2 epochs at a constant rate (``tune``'s race), 2 epochs with the rate annealed to
0 over the last one, a quarter of the run at a constant rate, a quarter annealed. Each race gives
two rules, the rate :func:`alrao_jax.race_pick` takes (the suggestion unless the race clearly beat
it) and the race's best; a fifth rule keeps the suggestion when its confidence is "high" and takes
``tune``'s pick otherwise. Every rule is scored as ``benchmarks/tune.py`` scores ``tune``: SGD's
test loss at its rate over that of the rate the same seed's 7-rate decade sweep picks on
validation. The bundled tasks' SGD is a quarter-decade grid (a rate between two grid rates is
interpolated); the own networks' SGD runs at every rule's rate itself, in one sweep with a quarter-
decade grid. Last, every seed's suggestion against its decade sweep's pick, by the confidence
``suggest_lr`` gave it.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "tests"))
from header import (
  command_line,
  met,
  ran_on,
  rerender,
  results_name,
  write_report_and_json,
)
from tune_rules import FINE, PATIENCE, SETTINGS, sgd_at

import alrao_jax
from alrao_jax.experiments.compare import timed_fit
from alrao_jax.experiments.methods import make_method
from alrao_jax.experiments.tasks import MODES, load_task
from alrao_jax.experiments.tune import half_of, racing_optimizer
from alrao_jax.suggest_lr import AGREE_DECADES, suggest_lr
from alrao_jax.sweep import sweep
from alrao_jax.tune import RACE_EPOCHS, race_suggestion

SEEDS = 3
OWN_EPOCHS = 16  # the own networks' runs (tests/test_tune_own_model.py trains 6)
OWN_GRID = 10.0 ** np.arange(-3.0, 1.26, 0.25)  # 1e-3 ... 17.8
DECADES = 10.0 ** np.arange(-5.0, 1.5)  # the 7-rate sweep, 1e-5 ... 10
RACES = {  # name: (epochs of the race given the run's, annealed)
  "2 epochs": (lambda epochs: RACE_EPOCHS, False),
  "2 epochs, annealed": (lambda epochs: RACE_EPOCHS, True),
  "a quarter of the run": (lambda epochs: max(RACE_EPOCHS, epochs // 4), False),
  "a quarter of the run, annealed": (lambda epochs: max(RACE_EPOCHS, epochs // 4), True),
}
GOALS = {"mean": 1.05, "worst": 1.25}  # issue 38's, against the per-seed sweep pick
RESULTS = pathlib.Path(__file__).parent / "results"


def _race_record(raced: Any) -> dict[str, Any]:
  return {
    "pick": float(raced.lr),
    "best": float(raced.race.best_value),
    "epochs": int(raced.epochs),
    "seconds": float(raced.seconds),
  }


def _races(model: Any, optimizer: Any, splits: Any, suggestion: Any, epochs: int, **kw: Any):
  """Each of :data:`RACES` of the suggestion's racers, as plain numbers."""
  found = {}
  for name, (length, anneal) in RACES.items():
    raced = race_suggestion(
      model,
      optimizer,
      splits,
      suggestion,
      epochs=epochs,
      race_epochs=length(epochs),
      anneal=anneal,
      fallback=suggestion.lr,
      **kw,
    )
    found[name] = _race_record(raced)
  return found


def collect_task(task: Any, epochs: int, seed: int, rates: np.ndarray) -> dict[str, Any]:
  """A bundled task and seed: the suggestion, the four races, and SGD's grid."""
  low, high = task.interval("alrao-sgd")
  alrao = make_method("alrao-sgd", seed=seed, lr_min=low, lr_max=high, copies=task.copies)
  _, result = timed_fit(task, alrao, seed=seed, epochs=half_of(epochs), patience=PATIENCE)
  suggestion = suggest_lr(result)  # its start and its posteriors up to the kept epoch
  races = _races(
    task.build(1),
    racing_optimizer(make_method, "sgd", seed=seed),
    task.splits,
    suggestion,
    epochs,
    seed=seed,
    batch_size=task.batch_size,
    carry=task.carry,
    **MODES,
  )
  grid = sweep(
    task.build(1),
    optax.sgd,
    task.splits,
    values=np.union1d(rates, DECADES),
    epochs=epochs,
    seed=seed,
    batch_size=task.batch_size,
    patience=PATIENCE,
    **MODES,
  )
  return _record(suggestion, races, grid)


def suggestion_record(suggestion: Any) -> dict[str, Any]:
  """A suggestion as plain numbers: its rate, confidence, reasons and the body's knee."""
  return {
    "suggestion": float(suggestion.lr),
    "confidence": suggestion.confidence,
    "reasons": list(suggestion.reasons),
    "knee": suggestion.candidates.get("body"),
  }


def _record(suggestion: Any, races: dict[str, Any], grid: Any) -> dict[str, Any]:
  return {
    **suggestion_record(suggestion),
    "races": races,
    "rates": [float(v) for v in grid.values],
    "test": [float(t["loss"]) for t in grid.test],
    "valid": [float(v) for v in grid.valid_losses],
  }


def collect_own(name: str, epochs: int, seed: int) -> dict[str, Any]:
  """A network of tests/test_tune_own_model.py and seed: the same, SGD run at every rate."""
  import test_tune_own_model as own

  network, data, kwargs = own.NETWORKS[name]
  splits = data()
  options = {"seed": seed, "batch_size": 32, **kwargs}
  tx = alrao_jax.alrao_sgd(1e-4, 10.0, key=jax.random.key(seed + 1))
  suggestion = suggest_lr(alrao_jax.fit(network(), tx, splits, epochs=half_of(epochs), **options))
  races = _races(network(plain=True), optax.sgd, splits, suggestion, epochs, **options)
  picked = [suggestion.lr] + [r[k] for r in races.values() for k in ("pick", "best")]
  values = np.union1d(np.union1d(OWN_GRID, DECADES), np.asarray(picked))
  grid = sweep(network(plain=True), optax.sgd, splits, values=values, epochs=epochs, **options)
  return _record(suggestion, races, grid)


def seed_pick(record: dict[str, Any]) -> int:
  """The index in the record's grid of the rate its 7-rate decade sweep picks on validation."""
  logs = np.log10(record["rates"])
  decades = [int(np.argmin(np.abs(logs - d))) for d in np.log10(DECADES)]
  valid = np.asarray(record["valid"])[decades]
  return decades[int(np.argmin(np.where(np.isfinite(valid), valid, np.inf)))]


def _gate(record: dict[str, Any]) -> float:
  if record["confidence"] == "high":
    return record["suggestion"]
  return record["races"]["2 epochs"]["pick"]


RULES: dict[str, Callable[[dict[str, Any]], float]] = {
  "suggest_lr alone": lambda r: r["suggestion"],
  **{
    f"{name}: race_pick{' (tune today)' if name == '2 epochs' else ''}": (
      lambda r, name=name: r["races"][name]["pick"]
    )
    for name in RACES
  },
  **{f"{name}: the race's best": (lambda r, name=name: r["races"][name]["best"]) for name in RACES},
  "the suggestion if its confidence is high, else tune's pick": _gate,
}


def score(records: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
  """Per rule and task: SGD at the rule's rate / SGD at the seed's sweep pick (mean and worst
  seed), the mean distance in decades from the pick, and each race's mean cost."""
  table: dict[str, dict[str, dict[str, float]]] = {}
  for name, rule in RULES.items():
    table[name] = {}
    for task, seeds in records.items():
      picks = [seed_pick(r) for r in seeds]
      ratios = [sgd_at(r, rule(r)) / r["test"][i] for r, i in zip(seeds, picks, strict=True)]
      table[name][task] = {
        "mean": float(np.mean(ratios)),
        "worst": float(np.max(ratios)),
        "decades": float(
          np.mean([np.log10(rule(r) / r["rates"][i]) for r, i in zip(seeds, picks, strict=True)])
        ),
      }
  return table


def _meets(cell: dict[str, float]) -> bool:
  return cell["mean"] <= GOALS["mean"] and cell["worst"] <= GOALS["worst"]


def _table(records: dict[str, list[dict[str, Any]]]) -> list[str]:
  tasks = list(records)
  lines = ["| rule | " + " | ".join(tasks) + " | met on |", "|---|" + "---|" * (len(tasks) + 1)]
  for name, cells in score(records).items():
    row = [
      f"{c['mean']:.2f}, {c['worst']:.2f} ({c['decades']:+.2f}){' *' if _meets(c) else ''}"
      for c in cells.values()
    ]
    met = sum(_meets(c) for c in cells.values())
    lines.append(f"| {name} | " + " | ".join(row) + f" | {met} of {len(tasks)} |")
  lines += ["", "Each race's mean wall time (s, compilation included):", ""]
  lines += ["| race | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
  for name in RACES:
    cells = [
      f"{np.mean([r['races'][name]['seconds'] for r in seeds]):.1f} "
      f"({seeds[0]['races'][name]['epochs']} ep.)"
      for seeds in records.values()
    ]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


REASONS = {  # a word of each of suggest_lr's reasons: what it says
  "barely moved": "the leading copy did not learn",
  "diverged": "the leading copy diverged",
  "interval's": "the leading copy at the interval's edge",
  "spread": "the posterior spread",
  "disagree": "the body's knee over half a decade away",
  "decades from the suggestion": "the body's knee over 3 decades away",
  "still moving": "the switch still moving",
}


class Reading(NamedTuple):
  """What a seed's record says of its suggestion: the decade sweep's pick, a finer grid's pick
  (None without one) and the plain optimizer's test loss at the suggestion over that at the
  decade pick (None when not measured)."""

  pick: float
  fine: float | None
  ratio: float | None


def grid_reading(record: dict[str, Any]) -> Reading:
  """A record of this benchmark: its grid holds the decades and a quarter-decade grid."""
  decade = seed_pick(record)
  valid = np.asarray(record["valid"], float)
  best = int(np.argmin(np.where(np.isfinite(valid), valid, np.inf)))
  ratio = sgd_at(record, record["suggestion"]) / record["test"][decade]
  return Reading(record["rates"][decade], record["rates"][best], ratio)


def _measured(values: list[Any], cell: Callable[[list[Any]], str]) -> str:
  """``cell`` of the values measured ("-" for none), with their count when some were not."""
  known = [v for v in values if v is not None]
  if not known:
    return "-"
  return cell(known) + ("" if len(known) == len(values) else f" (of {len(known)})")


class Judged(NamedTuple):
  """One seed's suggestion against its picks (see :func:`calibration`)."""

  name: str  # "task seed"
  off: float  # decades from the decade sweep's pick
  near: bool | None  # within half a decade of the finer grid's pick (None: no finer grid)
  ratio: float | None  # see Reading.ratio
  knee: float | None


def calibration(
  groups: dict[str, dict[str, list[dict[str, Any]]]],
  reading: Callable[[dict[str, Any]], Reading] = grid_reading,
) -> list[str]:
  """Per confidence level: the seeds that got it, how many of their suggestions lay within half
  a decade of the seed's decade sweep pick (issue 38's goal for "high": all of them) and of a
  finer grid's pick, and the plain optimizer's test loss at the suggestions over the pick's."""
  lines = [
    "## Is suggest_lr's confidence right?",
    "",
    "Every seed above, by the confidence `suggest_lr` gave its suggestion: "
    "how many suggestions lay within half a decade of the rate the seed's 7-rate decade sweep "
    "picks, and of the rate a finer grid (a quarter decade apart) picks; the plain optimizer at "
    "the suggestion / at the decade pick (test loss; mean, worst seed); the seeds further than "
    "half a decade from the decade pick (decades from it; the body's knee, the middle of "
    '`body_knee`\'s bin). Goal (issue 38): every "high" within half a decade of the pick.',
    "",
    "| confidence | seeds | within half a decade of the pick | of the finer pick | "
    "at the suggestion / at the pick | further off: seed (decades from the pick; knee) |",
    "|---|---|---|---|---|---|",
  ]
  levels: dict[str, list[Judged]] = {"high": [], "medium": [], "low": []}
  for records in groups.values():
    for task, seeds in records.items():
      for seed, r in enumerate(seeds):
        pick, fine, ratio = reading(r)
        near = None if fine is None else abs(np.log10(r["suggestion"] / fine)) <= AGREE_DECADES
        off = float(np.log10(r["suggestion"] / pick))
        levels[r["confidence"]].append(Judged(f"{task} {seed}", off, near, ratio, r.get("knee")))
  for level, found in levels.items():
    far = [j for j in found if abs(j.off) > AGREE_DECADES]
    listed = ", ".join(f"{j.name} ({j.off:+.2f}; {j.knee or float('nan'):.3g})" for j in far)
    fine_cell = _measured([j.near for j in found], lambda known: f"{sum(known)}")
    ratio_cell = _measured(
      [j.ratio for j in found], lambda known: f"{np.mean(known):.2f}, {max(known):.2f}"
    )
    lines.append(
      f"| {level} | {len(found)} | {len(found) - len(far)} | {fine_cell} | {ratio_cell} | "
      f"{listed or '-'} |"
    )
  high = levels["high"]
  wrong = sum(abs(j.off) > AGREE_DECADES for j in high)
  lines += [
    "",
    f'- "high" was within half a decade of the seed\'s decade sweep pick on '
    f"{len(high) - wrong} of {len(high)} seeds: the goal is {met(wrong == 0)}.",
  ]
  near = [j.near for j in high if j.near is not None]
  ratios = [j.ratio for j in high if j.ratio is not None]
  if near:
    lines.append(
      f'- Against the finer grid\'s pick, "high" was within half a decade on {sum(near)} of '
      f"{len(near)} seeds that had one."
    )
  if ratios:
    lines.append(
      f'- The optimizer at a "high" suggestion was at worst {max(ratios):.2f}x the decade '
      f"pick's test loss ({len(ratios)} seeds measured)."
    )
  reasons = {kind: 0 for kind in REASONS.values()}
  for records in groups.values():
    for seeds in records.values():
      for r in seeds:
        for reason in r["reasons"]:
          kind = next((v for k, v in REASONS.items() if k in reason), reason)
          reasons[kind] = reasons.get(kind, 0) + 1
  reasons = {k: n for k, n in reasons.items() if n}
  if reasons:
    lines.append(
      "- The reasons given, by how many seeds gave them: "
      + "; ".join(f"{k} ({n})" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
      + "."
    )
  return [*lines, ""]


def report(bundled: dict[str, Any], own: dict[str, Any], header: list[str]) -> str:
  intro = (
    "SGD at the rule's rate / SGD at the rate the same seed's 7-rate decade sweep picks on "
    "validation (test loss; mean over seeds, worst seed) and the rate's mean distance from "
    f"that pick, in decades. Goals (issue 38): mean <= {GOALS['mean']}, worst <= "
    f"{GOALS['worst']}; a cell that meets both is marked *."
  )
  lines = [*header, "## The bundled tasks", "", intro, "", *_table(bundled)]
  lines += ["", "## Out of sample: the networks of tests/test_tune_own_model.py", "", intro, ""]
  lines += [*_table(own), "", "## Both together", ""]
  lines.append(
    "Per rule, over the bundled tasks and the own networks: the cells that meet both goals, "
    "the mean of the cells' means and the worst seed of all."
  )
  lines += [
    "",
    "| rule | met, bundled | met, own | mean of means | worst seed |",
    "|---|---|---|---|---|",
  ]
  inside, outside = score(bundled), score(own)
  for name in RULES:
    cells = [*inside[name].values(), *outside[name].values()]
    lines.append(
      f"| {name} | {sum(map(_meets, inside[name].values()))} of {len(inside[name])} | "
      f"{sum(map(_meets, outside[name].values()))} of {len(outside[name])} | "
      f"{np.mean([c['mean'] for c in cells]):.2f} | {max(c['worst'] for c in cells):.2f} |"
    )
  lines += ["", *calibration({"bundled": bundled, "own": own})]
  return "\n".join(lines) + "\n"


Records = dict[str, list[dict[str, Any]]]


def collect_and_report(
  report: Callable[[Records, Records, list[str]], str],
  *,
  settings: dict[str, int],
  networks: list[str],
  seeds: int,
  own_epochs: int,
  task_run: Callable[[Any, int, int], dict[str, Any]],
  own_run: Callable[[str, int, int], dict[str, Any]],
  title: str,
  command: str,
  name: str,
  more: str,
  quick: bool,
) -> str:
  """``task_run(task, epochs, seed)`` per bundled task of ``settings`` (name: epochs; shrunk to
  64 rows with ``quick``) and seed, then ``own_run(network, own_epochs, seed)`` per network and
  seed, each logged with the time so far; then ``report(bundled, own, header)`` under a header
  that gives the command, where it ran, the epochs of each task and network, the seeds and
  ``more``; printed, and written (with the records as JSON) as results/``name``.md unless
  ``quick``. Returns the report."""
  start = time.perf_counter()

  def logged(name: str, seed: int, record: dict[str, Any]) -> dict[str, Any]:
    print(f"[{time.perf_counter() - start:5.0f} s] {name} seed {seed}", file=sys.stderr)
    return record

  bundled = {}
  for task_name, epochs in settings.items():
    task = load_task(task_name)
    task = task.shrink(64) if quick else task
    bundled[task_name] = [logged(task_name, s, task_run(task, epochs, s)) for s in range(seeds)]
  own = {n: [logged(n, s, own_run(n, own_epochs, s)) for s in range(seeds)] for n in networks}
  minutes = (time.perf_counter() - start) / 60
  epochs = ", ".join(f"{n} {e}" for n, e in settings.items())
  header = [
    title,
    "",
    f"Command: `{command}` (this file and {name}.json). {ran_on(minutes)}. Bundled tasks' "
    f"epochs: {epochs} (early stopping, patience {PATIENCE}); own networks: {own_epochs} "
    f"epochs; {seeds} seeds. {more}",
    "",
  ]
  text = report(bundled, own, header)
  print(text)
  payload = {"bundled": bundled, "own": own}
  return write_report_and_json(text, payload, RESULTS / name, minutes, quick=quick)


def rerender_collection(
  path: pathlib.Path, report: Callable[[Records, Records, list[str]], str], command: str
) -> str:
  """A finished collection's report (its bundled tasks and own networks) printed again from its
  .json (``path``) by ``report``, under the header of its .md, which it replaces."""
  return rerender(path, lambda r, header: report(r["bundled"], r["own"], header), command)


def collection_parser(doc: str, name: str) -> argparse.ArgumentParser:
  """The options of a benchmark that runs the bundled tasks and the own networks: ``--quick``,
  ``--name`` (default ``name``) and ``--report JSON`` (a finished run's .md printed again from
  its .json, no training)."""
  parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny data, 2 epochs, 1 seed, no file")
  parser.add_argument(
    "--name", default=name, type=results_name, help="the results' name: NAME.md, NAME.json"
  )
  parser.add_argument(
    "--report", metavar="JSON", help="a finished run's .json: its .md printed again, no training"
  )
  return parser


def main(argv: list[str] | None = None) -> str:
  parser = collection_parser(__doc__, "tune_races")
  args = parser.parse_args(argv)
  if args.report is not None:
    return rerender_collection(
      pathlib.Path(args.report), report, command_line("tune_races.py", parser, args)
    )
  import test_tune_own_model as own

  settings, seeds = ({"digits": 2}, 1) if args.quick else (SETTINGS, SEEDS)
  own_epochs, networks = (2, ["regression"]) if args.quick else (OWN_EPOCHS, sorted(own.NETWORKS))
  rates = FINE[4:9] if args.quick else FINE
  return collect_and_report(
    report,
    settings=settings,
    networks=networks,
    seeds=seeds,
    own_epochs=own_epochs,
    task_run=lambda task, epochs, seed: collect_task(task, epochs, seed, rates),
    own_run=collect_own,
    title="# Which race stops a short race from favouring fast rates",
    command=command_line("tune_races.py", parser, args),
    name=args.name,
    more=(
      "Each seed races the same racers four ways, after one Alrao-SGD run of half the epochs "
      "(`tune`'s run)."
    ),
    quick=args.quick,
  )


if __name__ == "__main__":
  main()

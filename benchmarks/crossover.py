"""Where Alrao pays: one Alrao run against a 7-rate SGD sweep over a ladder of widths.

Usage:
  python benchmarks/crossover.py            # writes benchmarks/results/crossover.{md,png}
  python benchmarks/crossover.py --quick    # seconds: two small widths, no file

The same network at every width: ``fashion-mlp``'s ReLU MLP (2 hidden layers of ``width``
units) on Fashion-MNIST, its first ``--rows`` training images (validation and test: the
task's own, ``--eval-rows`` of each), ``--epochs`` epochs, batch 32. At each width, one after
the other: one Alrao-SGD run (``alrao_jax.fit``, the task's interval and 10 copies), the
paper's 7-rate SGD grid as one vmapped program (``alrao_jax.sweep``), and the same 7 rates as
7 runs one by one. Each is scored by its test loss at its best validation epoch (the sweep
and the runs: at the rate chosen on validation). Wall time: each one's whole run, compiles
included. Memory: XLA's account of each one's compiled train step (arguments + outputs -
donated + temporaries, ``memory_analysis()``): the sweep's holds its 7 members.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import alrao_jax
from alrao_jax.experiments.models import MLP
from alrao_jax.experiments.tasks import load_task
from alrao_jax.screen import SGD_GRID
from alrao_jax.splits import Split, Splits

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from header import command_line, ran_on, results_name

RESULTS = pathlib.Path(__file__).parent / "results" / "crossover"
GOAL = 1.10  # "within 10% of its answer"


def _step_bytes(model, tx, x, y, members: int = 0) -> int:
  """Bytes of one compiled train step (``members`` > 0: the sweep's vmapped step)."""
  state = alrao_jax.create_train_state(model, tx, jax.random.key(0), x)
  step = alrao_jax.make_train_step(model, tx)
  if members:
    state = jax.tree.map(lambda a: jnp.stack([a] * members), state)
    step = jax.jit(jax.vmap(step, in_axes=(0, None, None)), donate_argnums=0)
  m = step.lower(state, x, y).compile().memory_analysis()
  return (
    m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
  )


def _subset(splits: Splits, rows: int, eval_rows: int) -> Splits:
  def head(split: Split, n: int) -> Split:
    return Split(split.inputs[:n], split.targets[:n])

  return Splits(
    head(splits.train, rows), head(splits.valid, eval_rows), head(splits.test, eval_rows)
  )


def _timed(run):
  start = time.perf_counter()
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "alrao_jax.fit: no epoch", RuntimeWarning)
    result = run()
  return result, time.perf_counter() - start


def _best_of(results) -> tuple[float, float]:
  """(test loss, rate) of the run with the best validation loss."""
  valid = [min((r["valid_loss"] for r in x.history), default=np.inf) for x in results]
  valid = np.where(np.isfinite(valid), valid, np.inf)
  best = int(np.argmin(valid))
  return float(results[best].test["loss"]), float(SGD_GRID[best])


def one_width(width: int, splits: Splits, *, epochs: int, lr: tuple[float, float]) -> dict:
  alrao_model = MLP(num_copies=10, width=width, depth=2, activation="relu")
  plain = MLP(num_copies=None, width=width, depth=2, activation="relu")
  common = {"epochs": epochs, "batch_size": 32}
  alrao, alrao_s = _timed(
    lambda: alrao_jax.fit(
      alrao_model, alrao_jax.alrao_sgd(*lr, key=jax.random.key(1)), splits, **common
    )
  )
  swept, sweep_s = _timed(
    lambda: alrao_jax.sweep(plain, optax.sgd, splits, values=SGD_GRID, **common)
  )
  runs, runs_s = _timed(
    lambda: [alrao_jax.fit(plain, optax.sgd(rate), splits, **common) for rate in SGD_GRID]
  )
  runs_loss, runs_lr = _best_of(runs)
  x, y = splits.train.inputs[:32], splits.train.targets[:32]
  return {
    "width": width,
    "seconds": {"alrao": alrao_s, "sweep": sweep_s, "runs": runs_s},
    "bytes": {
      "alrao": _step_bytes(alrao_model, alrao_jax.alrao_sgd(*lr, key=jax.random.key(1)), x, y),
      "sweep": _step_bytes(plain, optax.sgd(0.1), x, y, members=len(SGD_GRID)),
      "runs": _step_bytes(plain, optax.sgd(0.1), x, y),
    },
    "test": {
      "alrao": float(alrao.test["loss"]),
      "sweep": float(swept.test[swept.best_index]["loss"]),
      "runs": runs_loss,
    },
    "lr": {"sweep": float(swept.best_value), "runs": runs_lr},
  }


def _width_axis(ax, widths: list[int]) -> None:
  ax.set(xscale="log", xlabel="width (units per hidden layer)")
  ax.set_xticks(widths, [str(w) for w in widths])
  ax.minorticks_off()


def _figure(rows: list[dict], path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  widths = [r["width"] for r in rows]
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  names = {"alrao": "one Alrao run", "sweep": "7-rate sweep, one program", "runs": "7 runs"}
  for key, label in names.items():
    left.plot(widths, [r["seconds"][key] for r in rows], "o-", label=label)
  left.set(yscale="log", ylabel="wall seconds, whole run", title="Cost")
  _width_axis(left, widths)
  left.legend()
  right.plot(
    widths,
    [r["test"]["alrao"] / r["test"]["sweep"] for r in rows],
    "o-",
    label="Alrao / the sweep's pick",
  )
  right.axhline(GOAL, color="grey", linestyle="--", label=f"{GOAL:.2f} (goal)")
  right.axhline(1.0, color="black", linewidth=0.5)
  right.set(ylabel="test loss ratio", title="Quality: Alrao's test loss over tuned SGD's")
  _width_axis(right, widths)
  right.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def report(rows: list[dict], header: str) -> str:
  lines = [
    header,
    "| width | Alrao (s) | sweep (s) | 7 runs (s) | sweep / Alrao | 7 runs / Alrao | "
    "Alrao step (MiB) | "
    "sweep step (MiB) | plain step (MiB) | Alrao test loss | tuned SGD test loss (sweep; lr) "
    "| 7 runs' pick | Alrao / tuned | cheaper and within 10% |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    s, b, t = r["seconds"], r["bytes"], r["test"]
    ratio = t["alrao"] / t["sweep"]
    pays = s["alrao"] < s["sweep"] and ratio <= GOAL
    lines.append(
      f"| {r['width']} | {s['alrao']:.1f} | {s['sweep']:.1f} | {s['runs']:.1f} | "
      f"{s['sweep'] / s['alrao']:.2f} | {s['runs'] / s['alrao']:.2f} | "
      f"{b['alrao'] / 2**20:.1f} | {b['sweep'] / 2**20:.1f} | "
      f"{b['runs'] / 2**20:.1f} | {t['alrao']:.4f} | {t['sweep']:.4f} ({r['lr']['sweep']:.0e}) "
      f"| {t['runs']:.4f} ({r['lr']['runs']:.0e}) | {ratio:.2f} | {'yes' if pays else 'no'} |"
    )
  first = next(
    (
      r["width"]
      for i, r in enumerate(rows)
      if all(
        q["seconds"]["alrao"] < q["seconds"]["sweep"]
        and q["test"]["alrao"] / q["test"]["sweep"] <= GOAL
        for q in rows[i:]
      )
    ),
    None,
  )
  lines.append(
    "\n"
    + (
      f"From width {first} on, one Alrao run is both cheaper than the sweep and within "
      f"{GOAL - 1:.0%} of its test loss."
      if first is not None
      else "At no width of this ladder is one Alrao run both cheaper than the sweep and "
      f"within {GOAL - 1:.0%} of its test loss at every wider width."
    )
  )
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="two small widths, no file")
  parser.add_argument("--widths", default="128,256,512,1024,2048", help="(default: 128..2048)")
  parser.add_argument("--epochs", type=int, default=4, help="epochs per run (default: 4)")
  parser.add_argument("--rows", type=int, default=12_800, help="training images (default: 12800)")
  parser.add_argument("--eval-rows", type=int, default=5_000, help="validation and test images")
  parser.add_argument(
    "--name", type=results_name, default=RESULTS.name, help="results file name, no suffix"
  )
  args = parser.parse_args(argv)
  quick = args.quick
  task = load_task("fashion-mlp", quick=quick)
  widths = [16, 32] if quick else [int(w) for w in args.widths.split(",")]
  epochs = 1 if quick else args.epochs
  splits = task.splits if quick else _subset(task.splits, args.rows, args.eval_rows)
  start = time.perf_counter()
  rows = []
  for width in widths:
    rows.append(one_width(width, splits, epochs=epochs, lr=(task.lr_min, task.lr_max)))
    print(report(rows, ""), flush=True)
  header = (
    f"# Where Alrao pays: width against a 7-rate sweep\n\n"
    f"Command: `{command_line('crossover.py', parser, args)}`  \n"
    f"Ran: {ran_on((time.perf_counter() - start) / 60)}\n\n"
    f"fashion-mlp's ReLU MLP (2 hidden layers) at each width; {len(splits.train.targets):,} "
    f"training images, {len(splits.valid.targets):,} validation, {len(splits.test.targets):,} "
    f"test; {epochs} epochs, batch 32, one seed; SGD rates {', '.join(f'{v:g}' for v in SGD_GRID)}"
    f"; Alrao-SGD on [{task.lr_min:g}, {task.lr_max:g}] with 10 copies. Wall seconds: the whole "
    "run, compiles included, the three run one after the other at each width. Step memory: "
    "XLA's account of one compiled train step. Test loss at the best validation epoch; tuned "
    "SGD: the rate the sweep picks on validation (and the 7 runs' pick, the same up to "
    "rounding).\n"
  )
  text = report(rows, header)
  if not quick:
    out = RESULTS.with_name(args.name)
    out.with_suffix(".md").write_text(text + f"\n![crossover]({out.name}.png)\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    _figure(rows, out.with_suffix(".png"))
  print(text)
  return text


if __name__ == "__main__":
  main()

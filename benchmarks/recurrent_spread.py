"""How far one Alrao run of a recurrent classifier moves when its start moves by a rounding
error, and what damps it.

Usage:
  python benchmarks/recurrent_spread.py          # writes benchmarks/results/recurrent_spread.md
  python benchmarks/recurrent_spread.py --quick  # smoke test: 3 epochs, 1 seed, 2 runs, no file

Two recurrent classifiers: the GRU classifier of ``tests/test_tune_own_model.py`` (16 units, a
5-copy Alrao head, 8 steps of 3 features) and a GRU of 32 units reading MNIST-1D as a sequence
of 40 values (a 10-copy head). Per network and seed: one run from its initial parameters and
four more from the same parameters each multiplied by ``1 + 1e-7 * N(0, 1)`` (a flip of the
last bit of about half of them), each kept at its best validation epoch. Six optimizers:
Alrao-SGD over [1e-4, 10] (the GRU cell's units sampled like every other feature), the same
with the GRU cell's interval one decade lower, [1e-4, 1] (``optax.partition``; the head and its
copies keep [1e-4, 10]), each of those two after ``optax.clip_by_global_norm(1)``, and SGD,
plain and after the same clipping, each at the rate its own decade sweep (1e-4 ... 10,
``alrao_jax.sweep``) picks on the seed's validation loss.
The spread is the largest test loss of a seed's five runs over its smallest, less 1.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "tests"))
from header import command_line, ran_on, write_results

import alrao_jax
from alrao_jax.experiments.data import load_mnist1d

EPOCHS = 40
MNIST1D_EPOCHS = 30
SEEDS = 3
RUNS = 5  # the start itself and four perturbations of it
NOISE = 1e-7
DECADES = 10.0 ** np.arange(-4.0, 1.5)
RESULTS = pathlib.Path(__file__).parent / "results"
CELL_MAX = 1.0  # the GRU cell's top rate in the damped run, a decade below the head's
CLIP = 1.0  # the global norm the clipped runs' gradients are cut to
SGD = "SGD at the sweep's pick"
CLIPPED_SGD = f"SGD, clipped at {CLIP:g}, at its sweep's pick"


def perturbed(params: Any, run: int) -> Any:
  """``params`` with every entry times ``1 + NOISE * N(0, 1)`` (run 0: unchanged)."""
  if run == 0:
    return params
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1000 + run), len(leaves))
  moved = [
    x * (1 + NOISE * jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys, strict=True)
  ]
  return jax.tree.unflatten(tree, moved)


class MNIST1DGRU(nn.Module):
  """MNIST-1D read as a sequence of 40 values by a GRU of 32 units, then the output."""

  plain: bool = False

  @nn.compact
  def __call__(self, x):
    h = nn.RNN(nn.GRUCell(32))(x)[:, -1]
    return nn.Dense(10)(h) if self.plain else alrao_jax.AlraoHead(10, num_copies=10)(h)


def networks() -> dict[str, tuple[Callable[..., nn.Module], Any, int]]:
  """name: (model given ``plain``, splits, epochs)."""
  import test_tune_own_model as own

  return {
    "GRU classifier (tests)": (own.GRUClassifier, own._sequences(), EPOCHS),
    "GRU on MNIST-1D": (MNIST1DGRU, load_mnist1d(), MNIST1D_EPOCHS),
  }


def clipped_sgd(learning_rate: float) -> optax.GradientTransformation:
  """SGD after clipping the gradient's global norm to ``CLIP``."""
  return optax.chain(optax.clip_by_global_norm(CLIP), optax.sgd(learning_rate))


def optimizers(seed: int, rates: dict[str, float]) -> dict[str, optax.GradientTransformation]:
  """The optimizers compared, given the sweeps' picks (``rates``, by optimizer name)."""

  def cell(params: Any) -> dict[str, str]:
    return {name: "cell" if name.startswith("GRUCell") else "rest" for name in params}

  damped = optax.partition(
    {
      "cell": alrao_jax.alrao_sgd(1e-4, CELL_MAX, key=jax.random.key(seed + 1)),
      "rest": alrao_jax.alrao_sgd(1e-4, 10.0, key=jax.random.key(seed + 2)),
    },
    cell,
  )
  alrao = alrao_jax.alrao_sgd(1e-4, 10.0, key=jax.random.key(seed + 1))
  return {
    "Alrao-SGD [1e-4, 10]": alrao,
    f"Alrao-SGD, the GRU cell at [1e-4, {CELL_MAX:g}]": damped,
    f"Alrao-SGD [1e-4, 10], clipped at {CLIP:g}": optax.chain(
      optax.clip_by_global_norm(CLIP), alrao
    ),
    f"Alrao-SGD, the GRU cell at [1e-4, {CELL_MAX:g}], clipped at {CLIP:g}": optax.chain(
      optax.clip_by_global_norm(CLIP), damped
    ),
    SGD: optax.sgd(rates[SGD]),
    CLIPPED_SGD: clipped_sgd(rates[CLIPPED_SGD]),
  }


def collect(
  build: Callable[..., nn.Module], splits: Any, seed: int, epochs: int, runs: int
) -> dict[str, Any]:
  """One network and seed: the sweep's pick, and each optimizer's test loss over the perturbed
  starts."""
  options = {"epochs": epochs, "seed": seed, "batch_size": 32}
  rates = {
    name: float(
      alrao_jax.sweep(
        build(plain=True), factory, splits, values=DECADES, evaluate_test=False, **options
      ).best_value
    )
    for name, factory in ((SGD, optax.sgd), (CLIPPED_SGD, clipped_sgd))
  }
  found: dict[str, Any] = {"rates": rates, "runs": {}}
  for name, tx in optimizers(seed, rates).items():
    model = build(plain=name in rates)
    start = alrao_jax.create_train_state(model, tx, jax.random.key(seed), splits.train.inputs[:32])
    losses = []
    for run in range(runs):
      state = jax.tree.map(jnp.copy, start)  # fit donates its initial state's buffers
      state = state.replace(params=perturbed(state.params, run))
      result = alrao_jax.fit(model, tx, splits, initial_state=state, **options)
      losses.append(float(result.test["loss"]))  # at its best validation epoch
    found["runs"][name] = losses
  return found


def report(records: dict[str, list[dict[str, Any]]], header: list[str]) -> str:
  lines = [*header, "Goals (issue 38, item 6): spread at most 10%, mean at most 1.5x tuned SGD."]
  for network, seeds in records.items():
    names = list(seeds[0]["runs"])
    lines += [
      "",
      f"## {network}",
      "",
      "| optimizer | seed | test losses (start, then 4 perturbed) "
      "| spread | mean / SGD at its pick | mean / clipped SGD at its pick |",
      "|---|---|---|---|---|---|",
    ]
    for name in names:
      for seed, record in enumerate(seeds):
        losses = np.asarray(record["runs"][name])
        sgd, clipped = (np.mean(record["runs"][n]) for n in (SGD, CLIPPED_SGD))
        label = f"{name} ({record['rates'][name]:g})" if name in record["rates"] else name
        lines.append(
          f"| {label} | {seed} | {', '.join(f'{v:.3f}' for v in losses)} | "
          f"{losses.max() / losses.min() - 1:.0%} | {losses.mean() / sgd:.2f} | "
          f"{losses.mean() / clipped:.2f} |"
        )
    lines.append("")
    for name in names:
      spreads = [np.max(r["runs"][name]) / np.min(r["runs"][name]) - 1 for r in seeds]
      ratio = {
        reference: [np.mean(r["runs"][name]) / np.mean(r["runs"][reference]) for r in seeds]
        for reference in (SGD, CLIPPED_SGD)
      }
      lines.append(
        f"- {name}: spread {min(spreads):.0%} to {max(spreads):.0%} over the seeds; mean test "
        f"loss {np.mean(ratio[SGD]):.2f}x SGD at its pick (worst seed {max(ratio[SGD]):.2f}x), "
        f"{np.mean(ratio[CLIPPED_SGD]):.2f}x clipped SGD at its pick (worst seed "
        f"{max(ratio[CLIPPED_SGD]):.2f}x)."
      )
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="3 epochs, 1 seed, 2 runs, no file")
  args = parser.parse_args(argv)
  epochs, seeds, runs = (3, 1, 2) if args.quick else (None, SEEDS, RUNS)
  start = time.perf_counter()
  records: dict[str, list[dict[str, Any]]] = {}
  for network, (build, splits, default_epochs) in networks().items():
    records[network] = []
    for seed in range(seeds):
      records[network].append(collect(build, splits, seed, epochs or default_epochs, runs))
      print(f"[{time.perf_counter() - start:5.0f} s] {network}, seed {seed}", file=sys.stderr)
  header = [
    "# One Alrao run of a GRU classifier under rounding-size perturbations of its start",
    "",
    f"Command: `{command_line('recurrent_spread.py', parser, args)}`. "
    f"{ran_on((time.perf_counter() - start) / 60)}. Epochs: "
    f"{epochs or f'{EPOCHS} (tests), {MNIST1D_EPOCHS} (MNIST-1D)'}, batch 32, each run kept at "
    f"its best validation epoch; {runs} runs per seed and optimizer.",
    "",
  ]
  text = report(records, header)
  print(text)
  write_results(text, str(RESULTS / "recurrent_spread.md"), quick=args.quick)
  return text


if __name__ == "__main__":
  main()

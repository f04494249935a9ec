"""Per-step time of the Alrao NNX step, next to the Alrao linen step and a plain NNX step.

Usage:
  python benchmarks/nnx_step.py           # writes benchmarks/results/nnx_step.md
  python benchmarks/nnx_step.py --quick   # seconds, for CI: fewer steps, no file

One tiny model (64 inputs, Dense 64, ReLU, 10 classes, batch 32), built three ways: linen
with an Alrao head (10 copies), NNX with an Alrao head, and NNX with a plain Linear output
trained by ``optax.sgd`` through ``nnx.cached_partial`` (Flax's fast path). The variants run
interleaved, round by round; each round's median per-step time is kept, and the table gives
the median over rounds with the range of the rounds.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import statistics
import sys
from collections.abc import Callable

import flax.linen as nn
import jax
import optax
from flax import nnx

import alrao_jax
from alrao_jax.steps import nnx_pure_call

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from header import command_line, machine
from speed import time_rounds

BATCH, WIDTH, CLASSES, COPIES = 32, 64, 10, 10
DEFAULT_OUT = "benchmarks/results/nnx_step.md"


class LinenNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    return alrao_jax.AlraoHead(CLASSES, num_copies=COPIES)(nn.relu(nn.Dense(WIDTH)(x)))


class NNXNet(nnx.Module):
  def __init__(self, alrao: bool, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
    self.out = (
      alrao_jax.nnx.AlraoHead(WIDTH, CLASSES, num_copies=COPIES, rngs=rngs)
      if alrao
      else nnx.Linear(WIDTH, CLASSES, rngs=rngs)
    )

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def _plain_train(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
  """A plain NNX step: cross-entropy of a Linear output, one backward, the optax update."""

  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


def _alrao_nnx(model: nnx.Module, x: jax.Array, y: jax.Array) -> Callable[[], object]:
  """One call = one Alrao NNX step of ``model`` (Alrao-SGD over [1e-5, 10])."""
  key = jax.random.key(0)
  optimizer = nnx.Optimizer(model, alrao_jax.alrao_sgd(1e-5, 10.0, key=key), wrt=nnx.Param)
  step = alrao_jax.make_train_step(model, optimizer)
  averaging = [alrao_jax.init_averaging(model)]

  def run():
    averaging[0], metrics = step(averaging[0], x, y)
    return metrics["loss"]

  return run


def variants(x: jax.Array, y: jax.Array) -> dict[str, Callable[[], object]]:
  """One call = one training step, for each variant."""
  key = jax.random.key(0)
  linen_model = LinenNet()
  tx = alrao_jax.alrao_sgd(1e-5, 10.0, key=key)
  box = [alrao_jax.create_train_state(linen_model, tx, key, x)]
  linen_step = alrao_jax.make_train_step(linen_model, tx)

  def linen():
    box[0], metrics = linen_step(box[0], x, y)
    return metrics["loss"]

  plain_model = NNXNet(False, nnx.Rngs(0))
  plain_optimizer = nnx.Optimizer(plain_model, optax.sgd(0.01), wrt=nnx.Param)
  plain = nnx.cached_partial(nnx.jit(_plain_train), plain_model, plain_optimizer)
  return {
    "Alrao NNX": _alrao_nnx(NNXNet(True, nnx.Rngs(0)), x, y),
    "Alrao linen": linen,
    "plain NNX (cached_partial)": lambda: plain(x, y),
  }


class NNXMLP(nnx.Module):
  """speed.py's MLP 40-256-256-10 (tanh) in NNX."""

  def __init__(self, copies: int | None, rngs: nnx.Rngs):
    self.hidden = nnx.List([nnx.Linear(40, 256, rngs=rngs), nnx.Linear(256, 256, rngs=rngs)])
    self.out = _output(256, copies, rngs)

  def __call__(self, x):
    for layer in self.hidden:
      x = nnx.tanh(layer(x))
    return self.out(x)


class NNXDigitsCNN(nnx.Module):
  """speed.py's digits CNN (conv16-BN-conv32-BN-dense64) in NNX."""

  def __init__(self, copies: int | None, rngs: nnx.Rngs):
    self.convs = nnx.List([nnx.Conv(1, 16, (3, 3), rngs=rngs), nnx.Conv(16, 32, (3, 3), rngs=rngs)])
    self.norms = nnx.List([nnx.BatchNorm(16, rngs=rngs), nnx.BatchNorm(32, rngs=rngs)])
    self.dense = nnx.Linear(2 * 2 * 32, 64, rngs=rngs)
    self.out = _output(64, copies, rngs)

  def __call__(self, x):
    for conv, norm in zip(self.convs, self.norms, strict=True):
      x = nn.max_pool(nnx.relu(norm(conv(x))), (2, 2), strides=(2, 2))
    return self.out(nnx.relu(self.dense(x.reshape(x.shape[0], -1))))


def _output(features: int, copies: int | None, rngs: nnx.Rngs) -> nnx.Module:
  if copies is None:
    return nnx.Linear(features, CLASSES, rngs=rngs)
  return alrao_jax.nnx.AlraoHead(features, CLASSES, num_copies=copies, rngs=rngs)


def model_variants(build, x: jax.Array, y: jax.Array) -> dict[str, Callable[[], object]]:
  """The Alrao NNX step and a plain NNX step (optax.sgd, Linear output) on one model; both run
  through the same pure call (``alrao_jax.steps.nnx_pure_call``), so the ratio is Alrao's."""
  plain_model = build(None, nnx.Rngs(0))
  plain_model.train()
  plain_optimizer = nnx.Optimizer(plain_model, optax.sgd(0.01), wrt=nnx.Param)
  plain = nnx_pure_call((plain_model, plain_optimizer), _plain_train)
  return {"alrao": _alrao_nnx(build(COPIES, nnx.Rngs(0)), x, y), "plain": lambda: plain(x, y)}


def model_rows(quick: bool, rounds: int, steps: int) -> list[str]:
  key = jax.random.key(3)
  labels = jax.random.randint(key, (BATCH,), 0, CLASSES)
  models = [("MLP 40-256-256-10", NNXMLP, jax.random.normal(key, (BATCH, 40)))]
  if not quick:
    models.append(
      ("digits CNN (width 16)", NNXDigitsCNN, jax.random.uniform(key, (BATCH, 8, 8, 1)))
    )
  rows = [
    "| model (NNX) | plain NNX (ms) | Alrao NNX (ms) | "
    "Alrao / plain (per round: median [min - max]) |",
    "|---|---|---|---|",
  ]
  for name, build, x in models:
    found = time_rounds(model_variants(build, x, labels), rounds=rounds, per_round=steps, warmup=5)
    ratios = [a / p for a, p in zip(found["alrao"], found["plain"], strict=True)]
    rows.append(
      f"| {name} | {1e3 * statistics.median(found['plain']):.3f} | "
      f"{1e3 * statistics.median(found['alrao']):.3f} | "
      f"{statistics.median(ratios):.3f} [{min(ratios):.3f} - {max(ratios):.3f}] |"
    )
  return rows


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="CI smoke run: few steps, no file")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=300, help="timed steps per round")
  parser.add_argument("--out", default=DEFAULT_OUT, help=f"(default: {DEFAULT_OUT})")
  args = parser.parse_args(argv)
  rounds, steps = (2, 20) if args.quick else (args.rounds, args.steps)
  command = command_line("nnx_step.py", parser, args)
  x = jax.random.normal(jax.random.key(1), (BATCH, WIDTH))
  y = jax.random.randint(jax.random.key(2), (BATCH,), 0, CLASSES)
  medians = time_rounds(variants(x, y), rounds=rounds, per_round=steps, warmup=5)
  nnx_ms = [1e3 * t for t in medians["Alrao NNX"]]
  lines = [
    "# NNX step time",
    "",
    f"Command: `{command}` ({datetime.date.today()}; {machine()}).",
    f"{rounds} interleaved rounds x {steps} timed steps; per round the median step time; "
    "below the median over rounds [min - max of the rounds].",
    "",
    "| variant | ms per step | Alrao NNX / this (per round: median [min - max]) |",
    "|---|---|---|",
  ]
  for name, values in medians.items():
    ms = [1e3 * t for t in values]
    ratios = [a / b for a, b in zip(nnx_ms, ms, strict=True)]
    lines.append(
      f"| {name} | {statistics.median(ms):.3f} [{min(ms):.3f} - {max(ms):.3f}] | "
      f"{statistics.median(ratios):.2f} [{min(ratios):.2f} - {max(ratios):.2f}] |"
    )
  lines += [
    "",
    "The benchmark models of `speed.py` in NNX, 10 copies, against a plain NNX step (Linear "
    "output, optax.sgd) run through the same pure call; compare with the FLOP limits in "
    "`speed.md` (the same arithmetic):",
    "",
    *model_rows(args.quick, rounds, steps),
  ]
  report = "\n".join(lines) + "\n"
  print(report)
  if not args.quick:
    pathlib.Path(args.out).write_text(report)
  return report


if __name__ == "__main__":
  main()

"""The command line's parser, free of JAX: ``alrao-jax --help`` and a bad flag's error answer
without starting it."""

from __future__ import annotations

import argparse

import alrao_jax
from alrao_jax.defaults import SGD_GRID, TOLERANCE
from alrao_jax.experiments.names import (
  LAYER_SCHEDULES,
  METHODS,
  MODEL_KINDS,
  PLAIN,
  SCHEDULES,
  TASKS,
)

DESCRIPTION = (
  "The alrao-jax command: train, tune, lr-find, screen and sweep, on a bundled task or your arrays."
)

DEFAULT_GRID = ",".join(f"{v:g}" for v in SGD_GRID)  # the paper's seven rates, as --grid


class _Parser(argparse.ArgumentParser):
  def error(self, message: str) -> None:  # one line, exit 2
    self.exit(2, f"{self.prog}: error: {message}\n")


def _data_options(sub: argparse.ArgumentParser, *, models: bool) -> None:
  sub.add_argument("--task", choices=TASKS, help="a bundled task (default: digits)")
  sub.add_argument(
    "--data",
    help="an .npz file of your arrays (x, y; optional x_valid, y_valid, x_test, y_test and "
    "per-example weights w, w_valid, w_test), "
    "or the data folder of cifar10 (required), ptb-char (default: ../shared/data/ptb-char), "
    "fashion-mlp, fashion-cnn or ptb-word (looked for first, then in $ALRAO_FASHION_MNIST or "
    "$ALRAO_PTB_WORD, ../shared/data, Debian's folder, the download cache, the publisher)",
  )
  if models:
    sub.add_argument(
      "--model", choices=tuple(MODEL_KINDS), help="for --data FILE.npz (default: mlp)"
    )
    sub.add_argument("--width", type=int, help="units (mlp) or channels (cnn) (default: 256 / 16)")
    sub.add_argument("--depth", type=int, help="hidden layers of the mlp (default: 2)")
  sub.add_argument(
    "--batch-size", type=int, help="examples per step (default: 32; ptb-char, ptb-word 20)"
  )
  sub.add_argument("--seed", type=int, help="seed of parameters, rates and shuffles (default: 0)")
  sub.add_argument(
    "--quick",
    action="store_true",
    default=None,
    help="a smoke size: the first 256 rows of each split, the model unchanged",
  )


def _alrao_options(sub: argparse.ArgumentParser) -> None:
  sub.add_argument(
    "--lr-min",
    type=float,
    help="Alrao's smallest rate (default: the task's, 1e-5 for alrao-sgd, 1e-6 for alrao-adam)",
  )
  sub.add_argument(
    "--lr-max",
    type=float,
    help="Alrao's largest rate (default: 10 for alrao-sgd, 1 for alrao-adam)",
  )
  sub.add_argument(
    "--copies", type=int, help="Alrao's output copies (default: 10; ptb-char, ptb-word 6)"
  )


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="alrao-jax", description=DESCRIPTION)
  parser.add_argument("--version", action="version", version=f"alrao-jax {alrao_jax.__version__}")
  commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  train = commands.add_parser(
    "train",
    help="train with one optimizer; writes metrics, plots and a resumable checkpoint",
    description="Train a bundled task or your arrays with one optimizer.",
  )
  finder = commands.add_parser(
    "lr-find",
    help="learning-rate range test; suggests Alrao's interval",
    description="Run the learning-rate range test on the model (training mode) and suggest "
    "rates and an interval for Alrao.",
  )
  screener = commands.add_parser(
    "screen",
    help="rank model configurations with one Alrao run each",
    description="Train each configuration once with Alrao-SGD and rank them by validation loss. "
    "The last line is JSON.",
  )
  tuner = commands.add_parser(
    "tune",
    help="one Alrao run, a short race of the rates it points to, then SGD (or Adam) at the pick",
    description="Train with Alrao-SGD (Alrao-Adam), read candidate rates for plain SGD (Adam) "
    "off the run (alrao_jax.suggest_lr), race them for --race-epochs epochs in one program "
    "(alrao_jax.sweep), keep the suggestion unless the race clearly beat it, and train SGD "
    "(Adam) at the rate picked. The last line is JSON.",
  )
  _data_options(train, models=True)
  _data_options(tuner, models=True)
  _data_options(finder, models=True)
  _data_options(screener, models=False)
  train.add_argument("--no-progress", action="store_true", help="no progress bar")
  tuner.add_argument("--no-progress", action="store_true", help="no progress bars (one per run)")
  finder.add_argument(
    "--no-progress", action="store_true", help="accepted for scripts; the ramp shows no bar"
  )
  screener.add_argument("--no-progress", action="store_true", help="no progress bars (one per run)")
  train.add_argument("--optimizer", choices=METHODS, help="(default: alrao-sgd)")
  train.add_argument(
    "--lr", type=float, help="rate of the other optimizers (default: sgd 0.1, adam 1e-3, others 1)"
  )
  _alrao_options(train)
  train.add_argument("--momentum", type=float, help="momentum of sgd and alrao-sgd (default: none)")
  train.add_argument(
    "--weight-decay", type=float, help="L2 on the kernels, added to the gradient (default: 0)"
  )
  train.add_argument("--clip", type=float, help="clip the gradient's global norm (default: none)")
  train.add_argument(
    "--schedule",
    choices=SCHEDULES,
    help="multiplier of every update over the run (default: constant)",
  )
  train.add_argument(
    "--layer-schedule",
    choices=LAYER_SCHEDULES,
    help="multiplier of each layer's rates from its depth and the step: discriminative "
    "(fastai, /2.6 per layer below the output), smith (early layers fast then slow, late "
    "layers slow then fast) or smith-reverse (default: uniform)",
  )
  train.add_argument(
    "--retire-below",
    type=float,
    help="retire the output copies whose posterior weight stays below this (e.g. 1e-2) for "
    "--retire-after epochs: later steps compute only the live copies (default: keep all)",
  )
  train.add_argument(
    "--retire-after", type=int, help="epochs under --retire-below before a copy goes (default: 2)"
  )
  train.add_argument(
    "--retire-keep",
    type=int,
    help="copies that always stay with --retire-below: the leader and its nearest neighbours "
    "in rate (default: 1, the leader)",
  )
  train.add_argument("--epochs", type=int, help="(default: 10; with --resume: the new total)")
  train.add_argument("--out", default="runs/alrao", help="folder of the run (default: runs/alrao)")
  train.add_argument(
    "--resume", action="store_true", help="continue the run in --out with its saved settings"
  )
  train.add_argument(
    "--mesh",
    help="train on several devices: mesh axes NAME=SIZE, data (the batch) and copies (the "
    "head's copies), e.g. data=4,copies=2 (default: one device)",
  )
  train.add_argument(
    "--devices", type=int, help="simulate this many CPU devices for --mesh (default: the real ones)"
  )
  _alrao_options(tuner)
  tuner.add_argument(
    "--optimizer",
    choices=("sgd", "adam"),
    help="the optimizer whose rate is tuned: Alrao-SGD suggests SGD's, Alrao-Adam Adam's "
    "(default: sgd)",
  )
  tuner.add_argument("--momentum", type=float, help="momentum of both runs (default: none)")
  tuner.add_argument("--weight-decay", type=float, help="L2 on the kernels (default: 0)")
  tuner.add_argument("--clip", type=float, help="clip the gradient's global norm (default: none)")
  tuner.add_argument("--schedule", choices=SCHEDULES, help="of both runs (default: constant)")
  tuner.add_argument(
    "--layer-schedule", choices=LAYER_SCHEDULES, help="of both runs (default: uniform)"
  )
  tuner.add_argument("--epochs", type=int, help="of the final run (default: 10)")
  tuner.add_argument(
    "--alrao-epochs",
    type=int,
    help="of the Alrao run (default: half of --epochs, rounded up: the switch settles early)",
  )
  tuner.add_argument(
    "--race-epochs",
    type=int,
    help="epochs of the race of the candidate rates; 0: no race, SGD at the suggestion "
    "(default: --alrao-epochs over the number of racers, 1 or 2)",
  )
  tuner.add_argument(
    "--trust-high",
    action="store_true",
    help="no race when the suggestion's confidence is high: SGD at the suggestion",
  )
  tuner.add_argument(
    "--tolerance",
    type=float,
    default=TOLERANCE,
    help="the suggestion's racer is picked when its validation loss fell at least 1 - "
    f"TOLERANCE of the best racer's fall; 0: the race's best (default: {TOLERANCE})",
  )
  tuner.add_argument(
    "--out", default="runs/tune", help="folder of tune.json and suggestion.txt (default: runs/tune)"
  )
  tuner.add_argument(
    "--verify", action="store_true", help="also run the SGD grid and place the tuned rate in it"
  )
  tuner.add_argument("--grid", help=f"SGD rates for --verify (default: {DEFAULT_GRID})")
  finder.add_argument("--optimizer", choices=PLAIN, help="(default: sgd)")
  finder.add_argument("--start-lr", type=float, help="(default: 1e-7)")
  finder.add_argument("--end-lr", type=float, help="(default: 10)")
  finder.add_argument("--steps", type=int, help="steps of the ramp, >= 3 (default: 100)")
  finder.add_argument(
    "--out", default="runs/lr-find", help="folder of lr_find.png (default: runs/lr-find)"
  )
  screener.add_argument("--configs", help="JSON or TOML file: name -> {model, width, depth}")
  _alrao_options(screener)
  screener.add_argument("--epochs", type=int, help="(default: 5)")
  screener.add_argument("--verify", action="store_true", help="also run the SGD grid per model")
  screener.add_argument("--grid", help=f"SGD rates for --verify (default: {DEFAULT_GRID})")
  screener.add_argument(
    "--out", default="runs/screen", help="folder of screen.json (default: runs/screen)"
  )
  sweeper = commands.add_parser(
    "sweep",
    help="plain SGD or Adam at a grid of rates, trained as one program",
    description="Train the model with plain SGD (or Adam) at every rate of a grid, all rates "
    "in one vmapped program (alrao_jax.sweep), each stopped on its own validation loss. The "
    "last line is JSON.",
  )
  _data_options(sweeper, models=True)
  sweeper.add_argument("--no-progress", action="store_true", help="no progress bar")
  sweeper.add_argument("--optimizer", choices=("sgd", "adam"), help="(default: sgd)")
  sweeper.add_argument("--grid", help=f"comma-separated rates (default: {DEFAULT_GRID})")
  sweeper.add_argument("--epochs", type=int, help="the most epochs of each rate (default: 10)")
  sweeper.add_argument(
    "--patience",
    type=int,
    help="stop a rate after this many epochs without a better validation loss (default: none)",
  )
  sweeper.add_argument(
    "--out", default="runs/sweep", help="folder of sweep.json (default: runs/sweep)"
  )
  return parser

"""The ``alrao-jax`` command: ``train``, ``lr-find`` and ``screen`` on bundled tasks.

Bad input (unknown task or optimizer, missing or malformed data, learning-rate bounds out of
order, a corrupt or mismatched checkpoint) gives one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax

from alrao_jax.compare import SGD_GRID
from alrao_jax.lr_find import lr_find
from alrao_jax.methods import METHODS, Method, make_method
from alrao_jax.plots import plot_history, plot_lr_find
from alrao_jax.rates import check_bounds
from alrao_jax.screen import BUILTIN_DIGITS, load_configs, screen
from alrao_jax.tasks import MODES, TASKS, Task, load_task
from alrao_jax.train import FitResult, create_train_state, fit


class UsageError(Exception):
  """Bad input: reported on one line, exit code 2."""


def _task(args: argparse.Namespace) -> Task:
  if args.task == "cifar10" and args.data is None:
    raise UsageError("--task cifar10 needs --data PATH to the cifar-10-batches-py folder")
  return load_task(args.task, data=args.data, batch_size=args.batch_size)


def _method(args: argparse.Namespace, task: Task) -> Method:
  if args.optimizer.startswith("alrao-"):
    lr_min = task.lr_min if args.lr_min is None else args.lr_min
    lr_max = task.lr_max if args.lr_max is None else args.lr_max
    check_bounds(lr_min, lr_max, names=("--lr-min", "--lr-max"))
    copies = task.copies if args.copies is None else args.copies
    if copies < 1:
      raise UsageError(f"--copies must be >= 1, got {copies}")
    return make_method(args.optimizer, lr_min=lr_min, lr_max=lr_max, copies=copies, seed=args.seed)
  if args.lr_min is not None or args.lr_max is not None or args.copies is not None:
    raise UsageError(
      f"--lr-min, --lr-max and --copies apply to alrao-* optimizers, not {args.optimizer}; use --lr"
    )
  if args.lr is not None and not args.lr > 0:
    raise UsageError(f"--lr must be > 0, got {args.lr}")
  return make_method(args.optimizer, lr=args.lr)


class _Reporter:
  """Per epoch: a JSON line, the progress bar, and the PNG plots."""

  def __init__(self, out: pathlib.Path, epochs: int, show: bool, copy_lrs: list[float]):
    self.out, self.epochs, self.show, self.copy_lrs = out, epochs, show, copy_lrs
    self.bar = None

  def __call__(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
    if self.bar is None:  # drawn once training runs, so that an early error stays one line
      from tqdm import tqdm

      self.bar = tqdm(
        total=self.epochs,
        initial=record["epoch"] - 1,
        disable=not self.show,
        unit="epoch",
        file=sys.stderr,
      )
    with (self.out / "metrics.jsonl").open("a") as f:
      f.write(json.dumps(record) + "\n")
    leader = int(np.argmax(record["posterior"]))
    self.bar.set_postfix(
      loss=f"{record['train_loss']:.3f}",
      acc=f"{record.get('valid_accuracy', float('nan')):.3f}",
      copy=leader,
    )
    self.bar.update(1)
    plot_history(history, self.out, self.copy_lrs)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def _train(args: argparse.Namespace) -> FitResult:
  task = _task(args)
  method = _method(args, task)
  out = pathlib.Path(args.out)
  if not args.resume and (out / "metrics.jsonl").exists():
    raise UsageError(f"{out} holds a run already; pass --resume or another --out")
  out.mkdir(parents=True, exist_ok=True)
  reporter = _Reporter(out, args.epochs, not args.no_progress, method.copy_lrs)
  try:
    result = fit(
      task.build(len(method.copy_lrs)),
      method.optimizer,
      task.splits,
      epochs=args.epochs,
      seed=args.seed,
      batch_size=task.batch_size,
      **MODES,
      checkpoint_dir=out / "checkpoint",
      resume=args.resume,
      on_epoch=reporter,
      eval_params=method.eval_params,
    )
  finally:
    reporter.close()
  summary = {"best_epoch": result.best_epoch, **{f"test_{k}": v for k, v in result.test.items()}}
  print(json.dumps(summary))
  return result


def _screen(args: argparse.Namespace) -> None:
  if args.configs is None and args.task != "digits":
    raise UsageError("built-in configurations exist for --task digits only; pass --configs FILE")
  configs = load_configs(args.configs) if args.configs else BUILTIN_DIGITS
  task = _task(args)
  try:
    grid = [float(v) for v in args.grid.split(",")]
  except ValueError as err:
    raise UsageError(f"--grid must be comma-separated numbers, got {args.grid!r}") from err
  result = screen(
    configs,
    task.splits,
    epochs=args.epochs,
    lr_min=task.lr_min,
    lr_max=task.lr_max,
    num_copies=task.copies,
    seed=args.seed,
    verify=args.verify,
    sgd_grid=grid,
    fit_kwargs={"batch_size": task.batch_size, **MODES},
  )
  header = "rank | configuration | Alrao valid loss | Alrao test accuracy"
  print(header + (" | tuned SGD valid loss | best lr" if args.verify else ""))
  for rank, row in enumerate(result.rows, 1):
    line = (
      f"{rank} | {row['name']} | {row['alrao_valid_loss']:.4f} | {row['alrao_test_accuracy']:.3f}"
    )
    if args.verify:
      line += f" | {row['sgd_valid_loss']:.4f} | {row['sgd_best_lr']:g}"
    print(line)
  c = result.compute
  print(f"Alrao ranking: {c['alrao_runs']} runs, {c['alrao_seconds']:.1f} s")
  if args.verify:
    print(
      f"tuned SGD ranking: {c['sgd_runs']} runs, {c['sgd_seconds']:.1f} s; "
      f"Kendall tau between the rankings: {result.kendall_tau:.3f}"
    )


def _lr_find(args: argparse.Namespace) -> None:
  task = _task(args)
  model = task.build(1)
  train = task.splits.train
  batch = task.batch_size
  state = create_train_state(
    model, optax.sgd(0.1), jax.random.key(args.seed), train.inputs[:batch], train=False
  )

  def loss_fn(params, batch):
    outputs = model.apply({"params": params, **state.model_state}, batch[0], train=False)
    return optax.softmax_cross_entropy_with_integer_labels(outputs.own[0], batch[1]).mean()

  rng = np.random.default_rng(args.seed)
  epochs = -(-args.steps * batch // len(train.inputs))  # enough shuffled passes
  order = np.concatenate([rng.permutation(len(train.inputs)) for _ in range(epochs)])
  rows = order[: args.steps * batch].reshape(args.steps, batch)
  batches = [(train.inputs[i], train.targets[i]) for i in rows]
  result = lr_find(
    loss_fn, state.params, batches, start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.steps
  )
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  plot_lr_find(result, out / "lr_find.png")
  print(
    json.dumps(
      {
        "suggestions": result.suggestions,
        "steps": len(result.learning_rates),
        "plot": str(out / "lr_find.png"),
      }
    )
  )


class _Parser(argparse.ArgumentParser):
  def error(self, message: str) -> None:  # one line, exit 2
    self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="alrao-jax", description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  train = commands.add_parser("train", help="train a bundled task with one optimizer")
  finder = commands.add_parser("lr-find", help="learning-rate range test with SGD")
  screener = commands.add_parser("screen", help="rank model configurations with Alrao")
  for sub in (train, finder, screener):
    sub.add_argument("--task", choices=TASKS, default="digits")
    sub.add_argument("--data", help="data folder (cifar10; ptb-char defaults to ../shared)")
    sub.add_argument("--batch-size", type=int, help="default 32 (20 streams for ptb-char)")
    sub.add_argument("--seed", type=int, default=0)
  train.add_argument("--optimizer", choices=METHODS, default="alrao-sgd")
  train.add_argument("--lr", type=float, help="learning rate of the non-Alrao optimizers")
  train.add_argument("--lr-min", type=float, help="Alrao's smallest rate (task default)")
  train.add_argument("--lr-max", type=float, help="Alrao's largest rate (task default)")
  train.add_argument("--copies", type=int, help="Alrao's output copies (task default)")
  train.add_argument("--epochs", type=int, default=10)
  train.add_argument("--out", default="runs/alrao", help="folder for metrics, plots, checkpoint")
  train.add_argument("--resume", action="store_true", help="continue the run in --out")
  train.add_argument("--no-progress", action="store_true", help="no progress bar")
  finder.add_argument("--start-lr", type=float, default=1e-6)
  finder.add_argument("--end-lr", type=float, default=10.0)
  finder.add_argument("--steps", type=int, default=100)
  finder.add_argument("--out", default="runs/lr-find", help="folder for lr_find.png")
  screener.add_argument("--configs", help="JSON or TOML file: name -> configuration")
  screener.add_argument("--epochs", type=int, default=5)
  screener.add_argument("--verify", action="store_true", help="also run the SGD grid per model")
  screener.add_argument(
    "--grid",
    default=",".join(f"{v:g}" for v in SGD_GRID),
    help="SGD learning rates for --verify, comma-separated",
  )
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the ``alrao-jax`` console script; returns the exit code."""
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    if getattr(args, "epochs", 1) < 1 or (args.batch_size is not None and args.batch_size < 1):
      raise UsageError("--epochs and --batch-size must be >= 1")
    {"train": _train, "lr-find": _lr_find, "screen": _screen}[args.command](args)
  except (UsageError, FileNotFoundError, ValueError) as err:
    print(f"alrao-jax: error: {err}".splitlines()[0], file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""``alrao-jax screen``: rank model configurations with one Alrao run each."""

from __future__ import annotations

import argparse

from alrao_jax import strict_json
from alrao_jax.experiments.cli.errors import UsageError
from alrao_jax.experiments.cli.options import (
  check_data_options,
  check_given_alrao_options,
  load,
  parse_grid,
  refuse_to_overwrite,
  resolve,
  rounded,
  run_folder,
)
from alrao_jax.experiments.cli.report import RunBars
from alrao_jax.experiments.tasks import BUILTIN_CONFIGS, MODES, load_configs, model_builder
from alrao_jax.screen import screen


def run(args: argparse.Namespace) -> None:
  s = resolve(
    args, ("task", "data", "batch_size", "seed", "lr_min", "lr_max", "copies", "epochs", "quick")
  )
  s.update({"model": None, "width": None, "depth": None})
  check_data_options(s)
  check_given_alrao_options(s)
  grid = parse_grid(args.grid)
  arrays = s["data"] is not None and str(s["data"]).endswith(".npz")
  if args.configs is None and not (arrays or s["task"] == "digits"):
    raise UsageError("built-in configurations suit digits or --data FILE.npz; pass --configs FILE")
  configs = load_configs(args.configs) if args.configs else BUILTIN_CONFIGS
  out = run_folder(args)
  task = load(s)
  models = {name: model_builder(c, num_classes=task.num_classes) for name, c in configs.items()}
  refuse_to_overwrite(out, ("screen.json",), "a screen")
  names = [
    run
    for name in configs
    for run in (name, *(f"{name}, sgd at lr {lr:g}" for lr in (grid if args.verify else ())))
  ]
  bars = RunBars(not args.no_progress, s["epochs"], tuple(names))
  result = screen(
    models,
    task.splits,
    epochs=s["epochs"],
    lr_min=task.lr_min if s["lr_min"] is None else s["lr_min"],
    lr_max=task.lr_max if s["lr_max"] is None else s["lr_max"],
    num_copies=task.copies if s["copies"] is None else s["copies"],
    seed=s["seed"],
    verify=args.verify,
    sgd_grid=grid,
    fit_kwargs={"batch_size": task.batch_size, "on_epoch": bars.fit_epoch, **MODES},
  )
  bars.close()
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
  summary = rounded(
    {
      "rows": [{"rank": rank, **row} for rank, row in enumerate(result.rows, 1)],
      "compute": c,
      "kendall_tau": result.kendall_tau if args.verify else None,
    }
  )
  out.mkdir(parents=True, exist_ok=True)
  (out / "screen.json").write_text(strict_json.dumps(summary, indent=1) + "\n")
  print(strict_json.dumps(summary))

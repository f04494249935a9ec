"""An output-heavy Alrao head on several devices: per-device memory and step time by layout.

Usage:
  python benchmarks/scale.py            # writes benchmarks/results/scale.md
  python benchmarks/scale.py --quick    # seconds: a small head, two layouts, no file

A word-level-sized head (10,000 classes, d = 256, 10 copies) after one Dense layer, batch 128,
Alrao-SGD, on 8 simulated CPU devices (``jax_num_cpu_devices``). Per-device memory is XLA's
own account of the compiled step (``compiled.memory_analysis()``); step times are medians,
the layouts interleaved round by round (``speed.interleaved``). Simulated devices share the
host's cores, so the times show the cost of the collectives, not the speed-up of real devices.
"""

from __future__ import annotations

import argparse
import datetime
import math
import pathlib
import sys

import jax

if __name__ == "__main__":
  jax.config.update("jax_num_cpu_devices", 8)  # before any JAX operation

import flax.linen as nn

import alrao_jax
from alrao_jax import sharding

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from header import command_line, machine
from speed import interleaved

RESULTS = pathlib.Path(__file__).parent / "results" / "scale.md"
OUTPUTS_AXIS = "classes"


class WordHead(nn.Module):
  """Dense(d) then an Alrao head over a vocabulary."""

  classes: int
  width: int
  copies: int
  copies_at_once: int | None = None

  @nn.compact
  def __call__(self, x):
    return alrao_jax.AlraoHead(
      self.classes, num_copies=self.copies, copies_at_once=self.copies_at_once
    )(nn.relu(nn.Dense(self.width)(x)))


def _layouts(copies: int, quick: bool) -> list[tuple[str, dict[str, int] | None, int]]:
  """(name, mesh axes or None for one device without a mesh, copies)."""
  if quick:
    return [
      ("1 device", None, copies),
      ("copies=2, classes=4", {"data": 1, "copies": 2, OUTPUTS_AXIS: 4}, copies),
    ]
  return [
    ("1 device", None, copies),
    ("data=8 (head replicated)", {"data": 8, "copies": 1, OUTPUTS_AXIS: 1}, copies),
    ("data=4, copies=2", {"data": 4, "copies": 2, OUTPUTS_AXIS: 1}, copies),
    ("copies=2", {"data": 1, "copies": 2, OUTPUTS_AXIS: 1}, copies),
    ("copies=2, classes=2", {"data": 1, "copies": 2, OUTPUTS_AXIS: 2}, copies),
    ("copies=2, classes=4", {"data": 1, "copies": 2, OUTPUTS_AXIS: 4}, copies),
    ("copies=8 (8 copies)", {"data": 1, "copies": 8, OUTPUTS_AXIS: 1}, 8),
    ("copies=8 (8 copies), copies_at_once=8", {"data": 1, "copies": 8, OUTPUTS_AXIS: 1}, 8),
    ("1 device (8 copies)", None, 8),
    ("1 device (8 copies), copies_at_once=1", None, 8),
  ]


def _setup(name, axes, copies, classes, width, batch, copies_at_once=None):
  model = WordHead(classes, width, copies, copies_at_once)
  tx = alrao_jax.alrao_sgd(1e-5, 10.0, key=jax.random.key(1))
  key = jax.random.key(0)
  x = jax.random.normal(key, (batch, width))
  y = jax.random.randint(key, (batch,), 0, classes)
  step = alrao_jax.make_train_step(model, tx)
  if axes is None:
    state = alrao_jax.create_train_state(model, tx, key, x)
    devices = 1
  else:
    devices = math.prod(axes.values())
    mesh = sharding.make_mesh(axes, devices=jax.devices()[:devices])
    state = sharding.create_sharded_train_state(
      model, tx, key, x, mesh=mesh, outputs_axis=OUTPUTS_AXIS
    )
    step = sharding.shard_train_step(step, state, mesh)
    x, y = sharding.shard_batch((x, y), mesh)
  compiled = step.lower(state, x, y).compile()
  memory = compiled.memory_analysis()
  head = copies * width * classes // devices  # elements of this device's share of the kernel
  gathers = [c for c in sharding.collectives(compiled) if c.op == "all-gather"]
  gathered_head = any(math.prod(shape) >= head for c in gathers for shape in c.shapes)
  box = [state]

  def run():
    box[0], metrics = compiled(box[0], x, y)
    return metrics["loss"]

  row = {
    "name": name,
    "copies": copies,
    "one_device": axes is None,
    "devices": devices,
    "arguments": memory.argument_size_in_bytes,
    "temporaries": memory.temp_size_in_bytes,
    "total": memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
    + memory.temp_size_in_bytes,
    "gathers_head": gathered_head,
  }
  return row, run


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="a small head, two layouts, no file")
  args = parser.parse_args(argv)
  classes, width, copies, batch = (500, 64, 10, 32) if args.quick else (10_000, 256, 10, 128)
  rounds, per_round = (2, 3) if args.quick else (3, 20)
  rows, runs = [], {}
  for name, axes, n in _layouts(copies, args.quick):
    at_once = int(name.rsplit("copies_at_once=", 1)[1]) if "copies_at_once=" in name else None
    row, run = _setup(name, axes, n, classes, width, batch, at_once)
    rows.append(row)
    runs[name] = run
  times = interleaved(runs, rounds=rounds, per_round=per_round)
  reference = {  # one device, every copy's outputs at once
    row["copies"]: row["total"]
    for row in rows
    if row["one_device"] and "copies_at_once" not in row["name"]
  }
  lines = [
    f"# Scale: an output-heavy head on several devices ({datetime.date.today()})",
    "",
    f"Command: `{command_line('scale.py', parser, args)}`  ",
    f"Machine: {machine()}; {len(jax.devices())} simulated CPU devices.",
    "",
    f"Head: {classes:,} classes, d = {width}, after Dense({width}); batch {batch}; Alrao-SGD. "
    "Memory per device from `compiled.memory_analysis()` (arguments: parameters, optimizer "
    "state with the rates, switch state, batch; total = arguments + outputs - donated + "
    "temporaries). Step time: median of "
    f"{rounds} x {per_round} steps, layouts interleaved. `copies_at_once=c`: the head's "
    "copies applied c at a time inside the loss (`alrao_jax.large_head`); on the mesh, one "
    "copy per device.",
    "",
    "| layout | devices | copies | arguments / device (MB) | temporaries / device (MB) | "
    "total / device (MB) | vs 1 device | all-gathers the head | step (ms) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    lines.append(
      f"| {row['name']} | {row['devices']} | {row['copies']} | {row['arguments'] / 1e6:.1f} | "
      f"{row['temporaries'] / 1e6:.1f} | {row['total'] / 1e6:.1f} | "
      f"{row['total'] / reference[row['copies']]:.2f} | "
      f"{'yes' if row['gathers_head'] else 'no'} | {times[row['name']] * 1e3:.1f} |"
    )
  report = "\n".join(lines) + "\n"
  if not args.quick:
    RESULTS.write_text(report)
  print(report)
  return report


if __name__ == "__main__":
  main()

"""GPU smoke test: an Alrao run on the accelerator equals the same run on the CPU, and a run
placed on a mesh of every local accelerator equals the one-device run.

Usage (on a machine with a GPU or TPU; exits 1 on a mismatch):
  python benchmarks/gpu_smoke.py

Both comparisons use float32 matmuls at full precision (``jax.default_matmul_precision``)
and XLA's deterministic GPU kernels (``--xla_gpu_deterministic_ops``), with rates in
[1e-4, 0.1], so that the tolerance is float rounding, neither TF32's nor what a large rate
makes of it.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true"

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import alrao_jax
from alrao_jax import sharding, strict_json

STEPS = 20
TOLERANCE = 1e-4


def _data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(STEPS, 64, 8, 8, 1)).astype(np.float32)
  return x, np.argmax(x[:, :, 0, :4, 0], axis=-1).astype(np.int32)


def _model():
  return nn.Sequential(
    [
      nn.Conv(16, (3, 3)),
      nn.relu,
      lambda h: h.reshape(h.shape[0], -1),
      nn.Dense(64),
      nn.relu,
      alrao_jax.AlraoHead(4, num_copies=8),
    ]
  )


def _run(device: jax.Device) -> alrao_jax.TrainState:
  x, y = _data()
  model, tx = _model(), alrao_jax.alrao_sgd(1e-4, 0.1, key=jax.random.key(1), momentum=0.9)
  with jax.default_device(device):
    state = alrao_jax.create_train_state(model, tx, jax.random.key(0), jnp.asarray(x[0]))
    step = alrao_jax.make_train_step(model, tx)
    for i in range(STEPS):
      state, _ = step(state, jnp.asarray(x[i]), jnp.asarray(y[i]))
  return jax.device_get(state)


def _difference(a, b) -> float:
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in pairs)


def main() -> int:
  accelerator = jax.devices()[0]
  report = {
    "device": f"{accelerator.platform} {accelerator.device_kind}",
    "devices": jax.device_count(),
  }
  with jax.default_matmul_precision("highest"):
    on_accelerator, on_cpu = _run(accelerator), _run(jax.devices("cpu")[0])
    report["accelerator_vs_cpu"] = _difference(on_accelerator.params, on_cpu.params)
    x, y = _data()
    splits = alrao_jax.split_arrays(x.reshape(-1, 8, 8, 1), y.reshape(-1), valid=128, test=128)
    tx = alrao_jax.alrao_sgd(1e-4, 0.1, key=jax.random.key(1))
    mesh = sharding.make_mesh({"data": -1, "copies": 1})
    one = alrao_jax.fit(_model(), tx, splits, epochs=2)
    placed = alrao_jax.fit(_model(), tx, splits, epochs=2, mesh=mesh)
    report["mesh"] = dict(mesh.shape)
    report["mesh_vs_one_device"] = _difference(one.last_state.params, placed.last_state.params)
    report["test_loss"] = placed.test["loss"]
  report["ok"] = bool(
    report["accelerator_vs_cpu"] < TOLERANCE and report["mesh_vs_one_device"] < TOLERANCE
  )
  print(strict_json.dumps(report))
  return 0 if report["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())

"""Helpers shared by several test files, the test run's compilation cache, and the early start
of the sharding runs."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

# The suite compiles hundreds of small programs and runs each a few times: XLA's CPU backend
# compiles them faster without its LLVM optimisations (test_zoo: 73 s of CPU against 113 s),
# with its older loop emitters rather than the MLIR fusion emitters, and with the plain
# scheduler (test_zoo, one process: 35 s against 66 s with the first flag alone); the runs lose
# it again only on programs far larger than a test's. Set before any backend starts, so the
# xdist workers and every subprocess a test starts inherit them.
UNOPTIMISED = "--xla_backend_optimization_level=0"
FAST_COMPILE = (
  UNOPTIMISED,
  "--xla_cpu_use_fusion_emitters=false",
  "--xla_cpu_enable_concurrency_optimized_scheduler=false",
)
for flag in FAST_COMPILE:
  if flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()

from flax import nnx  # noqa: E402 (after XLA_FLAGS)

import alrao_jax  # noqa: E402


def strict_json(text):
  """``json.loads`` as strict parsers read JSON: ``NaN`` and ``Infinity`` are refused."""

  def refuse(token):
    raise ValueError(f"not JSON: {token} (a non-finite number must be written as null)")

  return json.loads(text, parse_constant=refuse)


def fresh_python(script):
  """What ``script`` prints, as lines, run by a fresh interpreter (nothing imported yet);
  its failure fails the test with its stderr."""
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  return done.stdout.splitlines(), done.stderr


class SmallNNXNet(nnx.Module):
  """Linear, BatchNorm, ReLU, Dropout, Alrao head: the NNX model the step tests train."""

  def __init__(self, in_features, hidden, classes, copies, *, dropout, rngs):
    self.pre = nnx.Linear(in_features, hidden, rngs=rngs)
    self.bn = nnx.BatchNorm(hidden, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)
    self.head = alrao_jax.nnx.AlraoHead(hidden, classes, num_copies=copies, rngs=rngs)

  def __call__(self, x):
    return self.head(self.drop(nnx.relu(self.bn(self.pre(x)))))


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_modifyitems(session, config, items):
  """When the sharding tests are selected, their subprocesses start now, in the background.

  Under pytest-xdist every worker collects every test, so none starts them early: the worker
  that runs the sharding tests starts them then, while the other worker runs other tests.
  """
  if "PYTEST_XDIST_WORKER" in os.environ:
    return
  if any(pathlib.Path(str(item.fspath)).name == "test_sharding.py" for item in items):
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    import sharding_runs

    sharding_runs.start_early()


CACHE_SETTINGS = {  # every program, however small or quick to compile, is cached
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
  "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


def pytest_configure(config):
  """One persistent compilation cache for the whole test run: its workers and the subprocesses
  they start (the command line, the sharding runs) compile a program that an earlier test
  compiled once (most of the suite's time is XLA compiling small programs). A fresh folder per
  run, removed at its end, unless ``JAX_COMPILATION_CACHE_DIR`` names one (``make check``
  keeps ``.jax-cache/`` between runs)."""
  if "PYTEST_XDIST_WORKER" in os.environ:
    folder = os.environ["JAX_COMPILATION_CACHE_DIR"]
  else:
    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not folder:
      folder = tempfile.mkdtemp(prefix="alrao-jax-tests-xla-")
      config._alrao_cache = folder  # removed when the run ends
      os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    for name, value in CACHE_SETTINGS.items():
      os.environ.setdefault(name, value)
  import jax  # already imported (flax): the environment is read again here

  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
  )
  jax.config.update(
    "jax_persistent_cache_min_entry_size_bytes",
    int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
  )


def pytest_unconfigure(config):
  folder = getattr(config, "_alrao_cache", None)
  if folder is not None:
    shutil.rmtree(folder, ignore_errors=True)

"""Loaded by pytest before anything else: one compilation cache for the whole test run.

Many tests compile the same programs (a task's training step, built afresh by each ``fit``);
JAX's persistent compilation cache, in a temporary folder of this run, compiles each once
(about a quarter of the suite's time). Subprocesses that tests start inherit it through the
environment. A cache folder given in the environment is used as it is and kept.
"""

import os
import shutil
import tempfile

_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="alrao-jax-tests-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)

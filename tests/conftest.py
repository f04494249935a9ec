"""Helpers shared by several test files, and the early start of the sharding runs."""

import json
import os
import pathlib
import sys

import pytest
from flax import nnx

import alrao_jax


def strict_json(text):
  """``json.loads`` as strict parsers read JSON: ``NaN`` and ``Infinity`` are refused."""

  def refuse(token):
    raise ValueError(f"not JSON: {token} (a non-finite number must be written as null)")

  return json.loads(text, parse_constant=refuse)


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

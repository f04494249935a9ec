"""Helpers shared by several test files."""

from flax import nnx

import alrao_jax


class SmallNNXNet(nnx.Module):
  """Linear, BatchNorm, ReLU, Dropout, Alrao head: the NNX model the step tests train."""

  def __init__(self, in_features, hidden, classes, copies, *, dropout, rngs):
    self.pre = nnx.Linear(in_features, hidden, rngs=rngs)
    self.bn = nnx.BatchNorm(hidden, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)
    self.head = alrao_jax.nnx.AlraoHead(hidden, classes, num_copies=copies, rngs=rngs)

  def __call__(self, x):
    return self.head(self.drop(nnx.relu(self.bn(self.pre(x)))))

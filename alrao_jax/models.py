"""Small reference models used by the demo, the tests and the benchmarks."""

from __future__ import annotations

import flax.linen as nn
import jax

from alrao_jax.head import AlraoHead, CopyOutputs


class DigitsCNN(nn.Module):
  """A small BatchNorm CNN for 8x8 images, ending with an :class:`AlraoHead`.

  Attributes:
    num_classes: number of classes.
    num_copies: copies of the output layer (1 for a plain network).
    width: channels of the first convolution (the second has twice as many).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from alrao_jax.models import DigitsCNN
    >>> model = DigitsCNN(num_copies=3)
    >>> variables = model.init(jax.random.key(0), jnp.ones((2, 8, 8, 1)), train=False)
    >>> model.apply(variables, jnp.ones((2, 8, 8, 1)), train=False).own.shape
    (3, 2, 10)
  """

  num_classes: int = 10
  num_copies: int = 10
  width: int = 16

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> CopyOutputs:
    for features in (self.width, 2 * self.width):
      x = nn.Conv(features, (3, 3))(x)
      x = nn.BatchNorm(use_running_average=not train)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(4 * self.width)(x))
    return AlraoHead(self.num_classes, num_copies=self.num_copies)(x)

"""Small reference models used by the demo, the tests and the benchmarks.

Each ends with an :class:`AlraoHead` of ``num_copies`` copies, or with a plain ``nn.Dense``
returning logits when ``num_copies`` is ``None`` (the baseline for comparisons).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from alrao_jax.head import AlraoHead, CopyOutputs, DeferredCopyOutputs


def _output(
  num_outputs: int, num_copies: int | None, x: jax.Array, copies_at_once: int | None = None
) -> CopyOutputs | DeferredCopyOutputs | jax.Array:
  if num_copies is None:
    return nn.Dense(num_outputs)(x)
  return AlraoHead(num_outputs, num_copies=num_copies, copies_at_once=copies_at_once)(x)


class DigitsCNN(nn.Module):
  """A small BatchNorm CNN for 8x8 images.

  Attributes:
    num_classes: number of classes.
    num_copies: copies of the output layer, or ``None`` for a plain Dense output.
    width: channels of the first convolution (the second has twice as many).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from alrao_jax.experiments.models import DigitsCNN
    >>> model = DigitsCNN(num_copies=3)
    >>> variables = model.init(jax.random.key(0), jnp.ones((2, 8, 8, 1)), train=False)
    >>> model.apply(variables, jnp.ones((2, 8, 8, 1)), train=False).own.shape
    (3, 2, 10)
  """

  num_classes: int = 10
  num_copies: int | None = 10
  width: int = 16

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> CopyOutputs | jax.Array:
    for features in (self.width, 2 * self.width):
      x = nn.Conv(features, (3, 3))(x)
      x = nn.BatchNorm(use_running_average=not train)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(4 * self.width)(x))
    return _output(self.num_classes, self.num_copies, x)


ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu}


class MLP(nn.Module):
  """An MLP without normalisation (tanh by default).

  Attributes:
    num_classes: number of classes.
    num_copies: copies of the output layer, or ``None`` for a plain Dense output.
    width: units per hidden layer.
    depth: number of hidden layers.
    activation: ``"tanh"`` or ``"relu"``.
  """

  num_classes: int = 10
  num_copies: int | None = 10
  width: int = 256
  depth: int = 2
  activation: str = "tanh"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> CopyOutputs | jax.Array:
    del train
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}.")
    x = x.reshape(x.shape[0], -1)
    for _ in range(self.depth):
      x = ACTIVATIONS[self.activation](nn.Dense(self.width)(x))
    return _output(self.num_classes, self.num_copies, x)


class CharLSTM(nn.Module):
  """The paper's character model: embedding, stacked LSTMs with dropout, per-step output (the
  word-level task uses it too, with 10,000 words and 200 units).

  With ``carry=True`` the LSTMs' final states are kept in the ``carry`` variable collection
  (zeros at init, shape ``(streams, hidden)`` per layer) and each call starts from them:
  consecutive batches continue the same streams, as in the paper's truncated BPTT. Make the
  collection mutable to update it (``fit(carry=('carry',))`` does, in training and
  evaluation); otherwise the stored state is read and left as is.

  Attributes:
    vocab_size: number of characters.
    num_copies: copies of the output layer, or ``None`` for a plain Dense output.
    embed: embedding dimension (100 in the paper).
    hidden: LSTM units per layer (100 in the paper).
    layers: LSTM layers (2 in the paper).
    dropout: dropout rate between layers (0.2 in the paper).
    carry: carry the LSTM states from one call to the next (the paper's setup).
    copies_at_once: the head's (see :class:`alrao_jax.AlraoHead`): 1 for a word-level
      vocabulary, whose copies' logits would dominate a step's memory.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from alrao_jax.experiments.models import CharLSTM
    >>> model = CharLSTM(vocab_size=5, num_copies=2, hidden=8, carry=True)
    >>> tokens = jnp.zeros((3, 7), jnp.int32)  # 3 streams, windows of 7 characters
    >>> variables = model.init(jax.random.key(0), tokens, train=False)
    >>> out, carried = model.apply(variables, tokens, train=False, mutable=['carry'])
    >>> out.own.shape, carried['carry']['layer_0'][1].shape
    ((2, 3, 7, 5), (3, 8))
  """

  vocab_size: int = 50
  num_copies: int | None = 6
  embed: int = 100
  hidden: int = 100
  layers: int = 2
  dropout: float = 0.2
  carry: bool = False
  copies_at_once: int | None = None

  @nn.compact
  def __call__(
    self, tokens: jax.Array, train: bool
  ) -> CopyOutputs | DeferredCopyOutputs | jax.Array:
    x = nn.Embed(self.vocab_size, self.embed)(tokens)
    for layer in range(self.layers):
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      rnn = nn.RNN(nn.OptimizedLSTMCell(self.hidden))
      if not self.carry:
        x = rnn(x)
        continue
      zeros = jnp.zeros((*x.shape[:-2], self.hidden), x.dtype)
      state = self.variable("carry", f"layer_{layer}", lambda z=zeros: (z, z))
      final, x = rnn(x, initial_carry=state.value, return_carry=True)
      if self.is_mutable_collection("carry") and not self.is_initializing():
        state.value = final
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return _output(self.vocab_size, self.num_copies, x, self.copies_at_once)


class Conv1DNet(nn.Module):
  """A small 1D CNN for MNIST-1D signals ``(batch, length, 1)``.

  Attributes:
    num_classes: number of classes.
    num_copies: copies of the output layer, or ``None`` for a plain Dense output.
    width: channels of each convolution.
  """

  num_classes: int = 10
  num_copies: int | None = 10
  width: int = 32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> CopyOutputs | jax.Array:
    del train
    for _ in range(3):
      x = nn.relu(nn.Conv(self.width, (5,), strides=(2,))(x))
    return _output(self.num_classes, self.num_copies, x.reshape(x.shape[0], -1))

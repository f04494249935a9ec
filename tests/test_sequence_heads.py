"""A head applied at each step of a scan (a decoder emitting per step): `per_step=True` keeps
the copy axis where every function expects it, whatever the batch and time sizes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import alrao_jax

COPIES, SIZE, HIDDEN, VOCAB = 3, 4, 6, 5  # batch == time == SIZE: the case a layout hides


class _EmittingCell(nn.RNNCellBase):
  """A GRU cell that emits the head's outputs at each step, and its hidden state."""

  per_step: bool = True

  @nn.compact
  def __call__(self, carry, x):
    carry, h = nn.GRUCell(HIDDEN)(carry, x)
    outputs = alrao_jax.AlraoHead(VOCAB, num_copies=COPIES, per_step=self.per_step)(h)
    return carry, (h, outputs)

  def initialize_carry(self, rng, input_shape):
    return nn.GRUCell(HIDDEN, parent=None).initialize_carry(rng, input_shape)

  @property
  def num_feature_axes(self) -> int:
    return 1


class _Decoder(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    return nn.RNN(_EmittingCell())(nn.Embed(VOCAB, HIDDEN)(tokens))


class _CopiesOnly(nn.Module):
  """The decoder's copy outputs alone: what the library's step trains."""

  @nn.compact
  def __call__(self, tokens):
    return _Decoder()(tokens)[1]


def _tokens():
  return jax.random.randint(jax.random.key(1), (SIZE, SIZE), 0, VOCAB)


def _copies(params):
  return params["_EmittingCell_0"]["AlraoHead_0"]["alrao_copies"]


def test_a_per_step_head_inside_nn_rnn_equals_the_head_after_it():
  model, tokens = _Decoder(), _tokens()
  params = model.init(jax.random.key(0), tokens)["params"]
  targets = jnp.roll(tokens, -1, axis=1)

  def losses(params):
    hidden, outputs = model.apply({"params": params}, tokens)
    copies = _copies(params)
    # the oracle: the same copies applied once, after the scan, on the stacked hidden states
    after = alrao_jax.copy_outputs(hidden, copies["kernel"], copies["bias"])
    posterior = jnp.array([0.2, 0.3, 0.5])
    return (
      alrao_jax.alrao_loss(outputs, targets, posterior)[0],
      alrao_jax.alrao_loss(after, targets, posterior)[0],
      outputs,
      after,
    )

  loss, oracle, outputs, after = losses(params)
  assert outputs.own_by_example.shape == (SIZE, SIZE, COPIES, VOCAB)  # (batch, time, N, K)
  assert outputs.shape == outputs.own.shape == (COPIES, SIZE, SIZE, VOCAB)
  np.testing.assert_allclose(outputs.own, after.own, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(loss, oracle, rtol=1e-6)
  # both gradient routes reach the same parameters with the same values
  grads = jax.grad(lambda p: losses(p)[0])(params)
  oracle_grads = jax.grad(lambda p: losses(p)[1])(params)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # noqa: E731
  jax.tree.map(close, grads, oracle_grads)
  assert float(jnp.abs(grads["_EmittingCell_0"]["GRUCell_0"]["hn"]["kernel"]).sum()) > 0
  # the mixture inside the scan: one step's (batch, K)
  mixed = alrao_jax.mixture_log_probs(outputs, jnp.full((COPIES,), 1 / COPIES))
  assert mixed.shape == (SIZE, SIZE, VOCAB)
  np.testing.assert_allclose(jnp.exp(mixed).sum(-1), 1.0, rtol=1e-5)


def test_the_library_step_trains_a_per_step_head():
  model, tokens = _CopiesOnly(), _tokens()
  targets = jnp.roll(tokens, -1, axis=1)
  tx = alrao_jax.alrao_sgd(1e-2, 1.0, key=jax.random.key(1))
  state = alrao_jax.create_train_state(model, tx, jax.random.key(0), tokens)
  outputs = model.apply({"params": state.params}, tokens)
  _, expected = alrao_jax.alrao_loss(outputs, targets, state.averaging_state)
  step = alrao_jax.make_train_step(model, tx)
  new_state, metrics = step(state, tokens, targets)
  np.testing.assert_allclose(metrics["loss"], expected.mixture_nll, rtol=1e-5)
  assert int(new_state.step) == 1


def test_a_per_step_nnx_head_inside_a_scan_keeps_the_copy_axis():
  head = alrao_jax.nnx.AlraoHead(HIDDEN, VOCAB, num_copies=COPIES, per_step=True, rngs=nnx.Rngs(0))
  hidden = jax.random.normal(jax.random.key(2), (SIZE, SIZE, HIDDEN))  # (time, batch, d)

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
  def run(head, h_t):
    return head, head(h_t)

  _, outputs = run(head, hidden)
  assert isinstance(outputs, alrao_jax.StepCopyOutputs)
  assert outputs.own_by_example.shape == (SIZE, SIZE, COPIES, VOCAB)  # (time, batch, N, K)
  kernel, bias = head.alrao_copies.kernel[...], head.alrao_copies.bias[...]
  after = alrao_jax.copy_outputs(hidden, kernel, bias)
  np.testing.assert_allclose(outputs.own, after.own, rtol=1e-6, atol=1e-6)


def test_the_default_layout_stacked_by_nn_rnn_is_what_per_step_exists_for():
  inputs = jax.random.normal(jax.random.key(0), (2, 7, HIDDEN))
  model = nn.RNN(_EmittingCell(per_step=False))
  _, outputs = model.apply(model.init(jax.random.key(0), inputs), inputs)
  assert outputs.own.shape == (COPIES, 7, 2, VOCAB)  # time before batch: the trap


def test_per_step_arguments_are_checked():
  with pytest.raises(TypeError, match="per_step must be True or False"):
    alrao_jax.AlraoHead(VOCAB, per_step="yes").init(jax.random.key(0), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="copies_at_once cannot be combined"):
    alrao_jax.nnx.AlraoHead(3, VOCAB, per_step=True, copies_at_once=1, rngs=nnx.Rngs(0))


def test_a_large_head_stacked_by_a_scan_is_refused_by_name():
  head = alrao_jax.AlraoHead(VOCAB, num_copies=COPIES, copies_at_once=1)
  variables = head.init(jax.random.key(0), jnp.ones((2, HIDDEN)))
  _, stacked = jax.lax.scan(
    lambda c, z: (c, head.apply(variables, z)), None, jnp.ones((SIZE, 2, HIDDEN))
  )
  with pytest.raises(ValueError, match="stacked them, once per step"):
    alrao_jax.alrao_loss(stacked, jnp.zeros((SIZE, 2), jnp.int32), jnp.full((COPIES,), 1 / 3))


def test_step_copy_outputs_cast_and_refuse_to_be_logits():
  outputs = alrao_jax.head.by_example(
    alrao_jax.copy_outputs(jnp.ones((2, 3)), jnp.ones((COPIES, 3, VOCAB)), jnp.zeros((COPIES, 5)))
  )
  assert outputs.astype(jnp.bfloat16).dtype == jnp.bfloat16
  with pytest.raises(TypeError, match="not logits"):
    optax.softmax_cross_entropy_with_integer_labels(outputs, jnp.zeros((2,), jnp.int32))


def test_a_per_step_model_resumes_from_its_checkpoint_exactly(tmp_path):
  model, tokens = _CopiesOnly(), _tokens()
  targets = jnp.roll(tokens, -1, axis=1)
  tx = alrao_jax.alrao_sgd(1e-2, 1.0, key=jax.random.key(1))
  step = alrao_jax.make_train_step(model, tx, donate=False)
  state = alrao_jax.create_train_state(model, tx, jax.random.key(0), tokens)
  state, _ = step(state, tokens, targets)
  alrao_jax.save_checkpoint(tmp_path / "run", state)
  fresh = alrao_jax.create_train_state(model, tx, jax.random.key(5), tokens)
  restored = alrao_jax.restore_checkpoint(tmp_path / "run", fresh).state
  whole, _ = step(state, tokens, targets)
  resumed, _ = step(restored, tokens, targets)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, whole.params)
  jax.tree.map(np.testing.assert_array_equal, resumed.averaging_state, whole.averaging_state)

"""Per-example and per-token weights (padding masks): the loss, the averaging, evaluation,
and fit / sweep on a padded sequence task, against optax's masked cross-entropy."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import alrao_jax
from alrao_jax.epochs import epoch_batches
from alrao_jax.head import DeferredCopyOutputs

COPIES, BATCH, TIME, DIM, VOCAB = 4, 3, 5, 6, 7
MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
POSTERIOR = jnp.array([0.1, 0.2, 0.3, 0.4])


def _problem():
  keys = jax.random.split(jax.random.key(0), 4)
  z = jax.random.normal(keys[0], (BATCH, TIME, DIM))
  kernel = jax.random.normal(keys[1], (COPIES, DIM, VOCAB))
  bias = jax.random.normal(keys[2], (COPIES, VOCAB))
  labels = jax.random.randint(keys[3], (BATCH, TIME), 0, VOCAB)
  return z, kernel, bias, labels


def _oracle_copy_losses(z, kernel, bias, labels):
  """Each copy's masked mean cross-entropy, by optax: (N,)."""
  logits = jnp.einsum("btd,ndk->nbtk", z, kernel) + bias[:, None, None]
  ce = optax.softmax_cross_entropy_with_integer_labels(
    logits, jnp.broadcast_to(jnp.where(MASK, labels, 0), logits.shape[:-1])
  )
  return (ce * MASK).sum((1, 2)) / MASK.sum(), ce


@pytest.mark.parametrize("deferred", [False, True])
def test_masked_alrao_loss_equals_optax_masked_cross_entropy(deferred):
  z, kernel, bias, labels = _problem()
  padded = jnp.where(MASK, labels, -1)  # a pad's label out of range: never read

  def loss(kernel, bias, z):
    if deferred:
      outputs = DeferredCopyOutputs(z, kernel, bias, 2)
    else:
      outputs = alrao_jax.copy_outputs(z, kernel, bias)
    return alrao_jax.alrao_loss(outputs, padded, POSTERIOR, weights=MASK)

  (value, aux), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(kernel, bias, z)
  copy_losses, ce = _oracle_copy_losses(z, kernel, bias, labels)
  np.testing.assert_allclose(aux.copy_nll, copy_losses, rtol=1e-5)
  mixed = jax.nn.logsumexp(jnp.log(POSTERIOR)[:, None, None] - ce, axis=0)
  np.testing.assert_allclose(aux.mixture_nll, -(mixed * MASK).sum() / MASK.sum(), rtol=1e-5)
  np.testing.assert_allclose(value, aux.mixture_nll + copy_losses.sum(), rtol=1e-5)

  def oracle_copies(kernel, bias):  # each copy trained on its own masked loss
    return _oracle_copy_losses(z, kernel, bias, labels)[0].sum()

  want_kernel, want_bias = jax.grad(oracle_copies, argnums=(0, 1))(kernel, bias)
  np.testing.assert_allclose(grads[0], want_kernel, atol=1e-5)
  np.testing.assert_allclose(grads[1], want_bias, atol=1e-5)
  assert np.isfinite(grads[2]).all()
  assert float(jnp.abs(grads[2][~MASK]).max()) == 0.0  # a pad's input gets no gradient
  rows = aux.log_likelihoods.reshape(BATCH, TIME, COPIES)
  assert float(jnp.abs(rows[~MASK]).max()) == 0.0  # and is no evidence for the averaging


def test_weights_of_ones_are_the_plain_mean_and_weights_scale_examples():
  z, kernel, bias, labels = _problem()
  outputs = alrao_jax.copy_outputs(z, kernel, bias)
  plain = alrao_jax.alrao_loss(outputs, labels, POSTERIOR)
  ones = alrao_jax.alrao_loss(outputs, labels, POSTERIOR, weights=jnp.ones((BATCH, TIME)))
  np.testing.assert_allclose(ones[0], plain[0], rtol=1e-6)
  # an integer weight of 2 counts an example twice: the same as repeating it
  twice = np.ones((BATCH, TIME), np.int32)
  twice[0, 0] = 2
  weighted = alrao_jax.alrao_loss(outputs, labels, POSTERIOR, weights=twice)[1]
  per_copy = -alrao_jax.categorical_log_likelihood(outputs.own, labels).reshape(COPIES, -1)
  repeated = jnp.concatenate([per_copy, per_copy[:, :1]], axis=1).mean(axis=1)
  np.testing.assert_allclose(weighted.copy_nll, repeated, rtol=1e-5)


def test_bad_weights_are_named_at_trace_time():
  z, kernel, bias, labels = _problem()
  outputs = alrao_jax.copy_outputs(z, kernel, bias)
  with pytest.raises(ValueError, match="weights have shape"):
    alrao_jax.alrao_loss(outputs, labels, POSTERIOR, weights=jnp.ones((BATCH,)))
  with pytest.raises(ValueError, match="weights have shape"):
    alrao_jax.alrao_loss(
      DeferredCopyOutputs(z, kernel, bias, 2), labels, POSTERIOR, weights=jnp.ones((TIME,))
    )
  with pytest.raises(TypeError, match="weights must be"):
    alrao_jax.alrao_loss(outputs, labels, POSTERIOR, weights=jnp.ones((BATCH, TIME), complex))


@pytest.mark.parametrize("reduction", ["mean", "sum", "sequential"])
def test_a_masked_example_is_no_evidence_for_the_switch(reduction):
  averaging = alrao_jax.switch_averaging(reduction=reduction)
  ll = jax.random.normal(jax.random.key(3), (8, COPIES))
  mask = np.array([1, 0, 1, 1, 0, 0, 1, 1], bool)
  junk = jnp.asarray([jnp.nan, -jnp.inf, 50.0])[jnp.arange(8) % 3]
  ll = jnp.where(mask[:, None], ll, junk[:, None])  # what a pad scores is never read
  start = averaging.init(COPIES)
  masked = averaging.update(start, ll, mask)
  kept = averaging.update(start, ll[mask])
  for a, b in zip(jax.tree.leaves(masked), jax.tree.leaves(kept), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  nothing = averaging.update(start, ll, np.zeros(8, bool))
  for a, b in zip(jax.tree.leaves(nothing), jax.tree.leaves(start), strict=True):
    np.testing.assert_array_equal(a, b)


def test_masked_evaluation_equals_the_metrics_of_the_real_tokens():
  z, kernel, bias, labels = _problem()
  padded = jnp.where(MASK, labels, -1)
  real = alrao_jax.evaluation_metrics(
    alrao_jax.copy_outputs(z[MASK][None], kernel, bias), labels[MASK][None], POSTERIOR
  )
  for outputs in (alrao_jax.copy_outputs(z, kernel, bias), DeferredCopyOutputs(z, kernel, bias, 3)):
    found = alrao_jax.evaluation_metrics(outputs, padded, POSTERIOR, weights=MASK)
    assert found.keys() == real.keys()
    for name in real:
      np.testing.assert_allclose(found[name], real[name], rtol=1e-5, err_msg=name)


class _Tagger(nn.Module):
  """A token tagger: each token's label from its embedding and its left neighbour's."""

  @nn.compact
  def __call__(self, tokens):
    h = nn.Embed(VOCAB, 8)(tokens)
    h = jnp.concatenate([h, jnp.roll(h, 1, axis=1)], axis=-1)
    return alrao_jax.AlraoHead(VOCAB, num_copies=3)(nn.relu(nn.Dense(16)(h)))


def _padded_task(pad_label):
  rng = np.random.default_rng(0)
  rows = 48
  tokens = rng.integers(1, VOCAB, (rows, TIME))
  labels = (tokens + np.roll(tokens, 1, axis=1)) % VOCAB
  mask = np.arange(TIME)[None] < rng.integers(2, TIME + 1, rows)[:, None]
  tokens = np.where(mask, tokens, 0)
  labels = np.where(mask, labels, pad_label(rng, labels.shape))
  return alrao_jax.split_arrays(tokens, labels, valid=8, test=8, weights=mask), mask


def test_fit_and_sweep_never_read_a_pads_label():
  """The same padded task with the pads' labels -1 or random classes trains identically:
  a masked token counts in no loss, gradient, evidence or metric."""
  fixed, _ = _padded_task(lambda rng, shape: np.full(shape, -1))
  noisy, mask = _padded_task(lambda rng, shape: rng.integers(0, VOCAB, shape))
  tx = alrao_jax.alrao_sgd(1e-2, 1.0, key=jax.random.key(1))
  kwargs = {"epochs": 2, "batch_size": 8, "eval_batch_size": 3}  # chunks of unequal weight
  runs = [alrao_jax.fit(_Tagger(), tx, s, **kwargs) for s in (fixed, noisy)]
  for a, b in zip(runs[0].history, runs[1].history, strict=True):
    assert a.keys() == b.keys()
    for name in a:
      np.testing.assert_allclose(a[name], b[name], rtol=1e-6, err_msg=name)
  # the test metrics are those of the real tokens alone (an oracle outside fit)
  state = runs[0].state
  outputs = _Tagger().apply({"params": state.params}, fixed.test.inputs)
  real = fixed.test.weights > 0
  oracle = alrao_jax.evaluation_metrics(
    outputs.own[:, real], fixed.test.targets[real], state.averaging_state
  )
  assert runs[0].test["loss"] == pytest.approx(float(oracle["loss"]), rel=1e-5)
  assert runs[0].test["accuracy"] == pytest.approx(float(oracle["accuracy"]), rel=1e-5)
  swept = [
    alrao_jax.sweep(_Tagger(), optax.sgd, s, values=[0.1, 1.0], epochs=1, batch_size=8)
    for s in (fixed, noisy)
  ]
  np.testing.assert_allclose(swept[0].valid_losses, swept[1].valid_losses, rtol=1e-6)
  assert mask.mean() < 0.9  # the task has pads to ignore


def test_nnx_step_takes_weights_and_ignores_pads():
  class Tagger(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(VOCAB, 8, rngs=rngs)
      self.head = alrao_jax.nnx.AlraoHead(8, VOCAB, num_copies=3, rngs=rngs)

    def __call__(self, tokens):
      return self.head(self.embed(tokens))

  tokens = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, (BATCH, TIME)))
  losses = []
  for pad in (-1, 3):
    model = Tagger(nnx.Rngs(0))
    tx = alrao_jax.alrao_sgd(1e-2, 1.0, key=jax.random.key(1))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    step = alrao_jax.make_train_step(model, optimizer)
    averaging_state = alrao_jax.init_averaging(model)
    labels = jnp.where(MASK, tokens, pad)
    for _ in range(2):
      averaging_state, metrics = step(averaging_state, tokens, labels, MASK)
    losses.append((float(metrics["loss"]), np.asarray(metrics["posterior"])))
  assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-6)
  np.testing.assert_allclose(losses[0][1], losses[1][1], rtol=1e-6)


def test_split_weights_are_checked():
  x, y = np.zeros((10, 3)), np.zeros(10, int)
  good = (x[:6], y[:6])
  with pytest.raises(ValueError, match="all 0"):
    alrao_jax.fit(_Tagger(), optax.sgd(0.1), ((x, y, np.zeros(10)), good, good), epochs=1)
  with pytest.raises(ValueError, match="finite and >= 0"):
    alrao_jax.fit(_Tagger(), optax.sgd(0.1), ((x, y, -np.ones(10)), good, good), epochs=1)
  with pytest.raises(ValueError, match="follow the targets' shape"):
    alrao_jax.fit(_Tagger(), optax.sgd(0.1), ((x, y, np.ones(9)), good, good), epochs=1)


def test_a_weighted_run_resumed_from_its_checkpoint_equals_the_whole_run(tmp_path):
  splits, _ = _padded_task(lambda rng, shape: np.full(shape, -1))
  tx = alrao_jax.alrao_sgd(1e-2, 1.0, key=jax.random.key(1))
  kwargs = {"batch_size": 8}
  whole = alrao_jax.fit(_Tagger(), tx, splits, epochs=2, **kwargs)
  alrao_jax.fit(_Tagger(), tx, splits, epochs=1, checkpoint_dir=tmp_path / "run", **kwargs)
  resumed = alrao_jax.fit(
    _Tagger(), tx, splits, epochs=2, checkpoint_dir=tmp_path / "run", resume=True, **kwargs
  )
  assert resumed.history == whole.history
  # the epoch's training loss weighs each batch by its real tokens, as one masked mean would
  step = alrao_jax.make_train_step(_Tagger(), tx, donate=False)
  state = alrao_jax.create_train_state(_Tagger(), tx, jax.random.key(0), splits.train.inputs[:8])
  losses, totals = [], []
  for idx in epoch_batches(len(splits.train.targets), 8, seed=0, epoch=1):
    state, metrics = step(state, *(a[idx] for a in splits.train))
    losses.append(float(metrics["loss"]))
    totals.append(float(splits.train.weights[idx].sum()))
  want = np.dot(losses, totals) / np.sum(totals)
  assert whole.history[0]["train_loss"] == pytest.approx(want, rel=1e-6)
  chex.assert_trees_all_equal(resumed.state.params, whole.state.params)
  chex.assert_trees_all_equal(
    resumed.state.averaging_state, whole.state.averaging_state
  )

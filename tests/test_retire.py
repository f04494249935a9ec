"""Retiring the copies the switch ruled out: the rule against a brute-force count, a retired
state's step against the full state's with those copies at zero weight, and fit's retirement
resumed against the whole run."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import alrao_jax
from alrao_jax.retire import slice_copies

RNG = np.random.default_rng(0)
X = RNG.normal(size=(240, 6)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int32) + (X[:, 1] > 0.5)
SPLITS = alrao_jax.split_arrays(X, Y, valid=40, test=40)


class Net(nn.Module):
  copies: int = 4

  @nn.compact
  def __call__(self, x):
    return alrao_jax.AlraoHead(3, num_copies=self.copies)(nn.tanh(nn.Dense(8)(x)))


def _leaves(tree):
  """The arrays of ``tree``, a PRNG key as its raw data."""
  return [
    jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    for x in jax.tree.leaves(tree)
  ]


def _naive_ruled_out(posteriors, live, threshold, epochs, min_copies=1):
  """Copy by copy, epoch by epoch, as the rule reads; the kept band grown outwards from the
  leader one live copy at a time, the slower side first."""
  if len(posteriors) < epochs:
    return []
  last = posteriors[-1]
  top = live.index(max(live, key=lambda j: (last[j], -j)))
  low, high = top, top
  while high - low + 1 < min(min_copies, len(live)):
    if low > 0 and (high == len(live) - 1 or top - (low - 1) <= (high + 1) - top):
      low -= 1
    else:
      high += 1
  kept = live[low : high + 1]
  out = []
  for j in live:
    if j not in kept and all(p[j] < threshold for p in posteriors[-epochs:]):
      out.append(j)
  return out


def test_ruled_out_matches_a_copy_by_copy_count():
  rng = np.random.default_rng(1)
  for epochs, threshold, num, keep in itertools.product(
    (1, 2, 3), (0.01, 0.2, 0.6), (1, 3, 5), (1, 2, 3)
  ):
    history = rng.dirichlet(np.full(5, 0.3), size=num).tolist()
    live = sorted(rng.choice(5, size=rng.integers(1, 6), replace=False).tolist())
    rule = alrao_jax.copy_retirement(threshold=threshold, epochs=epochs, min_copies=keep)
    found = alrao_jax.ruled_out(history, live, rule).tolist()
    assert found == _naive_ruled_out(history, live, threshold, epochs, keep)
    assert len(found) <= len(live) - min(keep, len(live))  # the leader and its band stay
  rule = alrao_jax.copy_retirement(threshold=0.5, epochs=1)
  assert alrao_jax.ruled_out([[0.1, 0.1, 0.1, 0.7]], [0, 1, 2, 3], rule).tolist() == [0, 1, 2]


def test_the_averaging_state_is_renormalised_over_the_copies_kept():
  bayes = alrao_jax.BayesState(jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4])))
  kept = alrao_jax.bayes_posterior(alrao_jax.retire_averaging_state(bayes, [1, 3]))
  np.testing.assert_allclose(kept, [0.2 / 0.6, 0.4 / 0.6], rtol=1e-6)
  switch = alrao_jax.switch_init(4)
  for ll in ([-1.0, -2.0, -0.5, -3.0], [-0.2, -2.5, -0.4, -1.0]):
    switch = alrao_jax.switch_update(switch, jnp.array(ll))
  retired = alrao_jax.retire_averaging_state(switch, [0, 2])
  weights, before = np.exp(retired.log_weights), np.exp(switch.log_weights)[:, [0, 2]]
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(weights, before / before.sum(), rtol=1e-5)
  np.testing.assert_allclose(alrao_jax.switch_posterior(retired), weights.sum(axis=0), rtol=1e-5)
  assert retired.step == switch.step and retired.log_theta is switch.log_theta


def test_a_retired_state_steps_as_the_full_state_with_those_copies_at_zero_weight():
  # Momentum under the head (sliced with the copies) and the rates must follow the copies.
  tx = optax.chain(optax.trace(0.9), alrao_jax.alrao_sgd(1e-2, 1.0, key=jax.random.key(0)))
  model = Net()
  state = alrao_jax.create_train_state(model, tx, jax.random.key(1), X[:8])
  step = alrao_jax.make_train_step(model, tx)
  for i in range(2):
    state, _ = step(state, X[i * 16 : (i + 1) * 16], Y[i * 16 : (i + 1) * 16])
  keep = [1, 3]
  full_rates = np.asarray(
    alrao_jax.rates_of(state.opt_state)["AlraoHead_0"]["alrao_copies"]["kernel"]
  )
  retired = alrao_jax.retire_copies(jax.tree.map(jnp.copy, state), keep)
  # the oracle: every copy kept, the retired ones with no weight in the mixture
  zero = np.full(4, -np.inf, np.float32)
  zero[keep] = np.asarray(retired.averaging_state.log_posterior)
  full = state.replace(averaging_state=state.averaging_state._replace(log_posterior=zero))
  batch = (X[32:48], Y[32:48])
  after_retired, metrics_retired = step(retired, *batch)
  after_full, metrics_full = step(full, *batch)
  np.testing.assert_allclose(metrics_retired["loss"], metrics_full["loss"], rtol=1e-5)
  expected = slice_copies(after_full.params, keep, 4)
  for got, want in zip(_leaves(after_retired.params), _leaves(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  momenta = slice_copies(after_full.opt_state, keep, 4)
  for got, want in zip(_leaves(after_retired.opt_state), _leaves(momenta), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert alrao_jax.rates_of(after_retired.opt_state)["Dense_0"]["kernel"].shape == (1, 8)
  rates = alrao_jax.rates_of(after_retired.opt_state)["AlraoHead_0"]["alrao_copies"]["kernel"]
  np.testing.assert_array_equal(rates, full_rates[keep])
  # the same module applies the copies its parameters hold
  outputs = model.apply({"params": after_retired.params}, X[:4])
  assert outputs.own.shape == (2, 4, 3)


def test_fit_retires_the_ruled_out_copies_and_a_resumed_run_equals_the_whole_run(tmp_path):
  tx = alrao_jax.alrao_sgd(1e-5, 10.0, key=jax.random.key(0))
  rule = alrao_jax.copy_retirement(threshold=0.05, epochs=1)
  options = {"epochs": 4, "batch_size": 16, "retire": rule}
  whole = alrao_jax.fit(Net(copies=6), tx, SPLITS, **options, checkpoint_dir=tmp_path / "whole")
  posteriors = np.array([r["posterior"] for r in whole.history])
  retired = posteriors[:-1].min(axis=0) < 0.05  # retired after an epoch below the threshold
  assert 0 < retired.sum() < 6
  np.testing.assert_array_equal(posteriors[-1][retired], 0.0)  # a retired copy stays at 0
  np.testing.assert_allclose(posteriors.sum(axis=1), 1.0, rtol=1e-5)
  live = np.flatnonzero(posteriors[-1] > 0)
  head = whole.last_state.params["AlraoHead_0"]["alrao_copies"]["kernel"]
  assert head.shape[0] == len(live)
  kept = np.flatnonzero(posteriors[whole.best_epoch - 1] > 0)  # live at the kept epoch
  np.testing.assert_array_equal(whole.copies, kept)
  assert whole.state.params["AlraoHead_0"]["alrao_copies"]["kernel"].shape[0] == len(kept)
  suggestion = alrao_jax.suggest_lr(whole)
  assert suggestion.posterior.shape == (len(kept),)
  # interrupted after epoch 2 and resumed: the same run
  folder = tmp_path / "resumed"
  alrao_jax.fit(Net(copies=6), tx, SPLITS, **{**options, "epochs": 2}, checkpoint_dir=folder)
  resumed = alrao_jax.fit(Net(copies=6), tx, SPLITS, **options, checkpoint_dir=folder, resume=True)
  assert resumed.history == whole.history and resumed.best_epoch == whole.best_epoch
  for got, want in zip(_leaves(resumed.last_state), _leaves(whole.last_state), strict=True):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(
    alrao_jax.predict(Net(copies=6), resumed.state, X[:5]),
    alrao_jax.predict(Net(copies=6), whole.state, X[:5]),
  )


class NNXNet(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.dense = nnx.Linear(6, 8, rngs=rngs)
    self.head = alrao_jax.nnx.AlraoHead(8, 3, num_copies=6, rngs=rngs)

  def __call__(self, x):
    return self.head(jnp.tanh(self.dense(x)))


def test_an_nnx_model_retires_in_place_and_a_resumed_run_equals_the_whole_run(tmp_path):
  tx = alrao_jax.alrao_sgd(1e-5, 10.0, key=jax.random.key(0))
  rule = alrao_jax.copy_retirement(threshold=0.05, min_copies=2)
  options = {"epochs": 4, "batch_size": 16, "retire": rule}
  model = NNXNet(nnx.Rngs(0))
  whole = alrao_jax.fit(model, tx, SPLITS, **options, checkpoint_dir=tmp_path / "whole")
  posteriors = np.array([r["posterior"] for r in whole.history])
  assert 0 < (posteriors[-1] == 0).sum() <= 4  # some retired (two epochs below), two stay
  live = list(range(6))  # the rule replayed on the history: the copies at 0 from then on
  for epoch in range(1, len(posteriors)):
    out = _naive_ruled_out(posteriors[:epoch].tolist(), live, 0.05, rule.epochs, 2)
    live = [j for j in live if j not in out]
    np.testing.assert_array_equal(np.flatnonzero(posteriors[epoch] > 0), live)
  kept = np.flatnonzero(posteriors[whole.best_epoch - 1] > 0)
  assert model.head.alrao_copies.kernel.shape[0] == len(kept)  # the best epoch's, in place
  np.testing.assert_array_equal(whole.copies, kept)
  assert whole.initial_params["head"]["alrao_copies"]["kernel"].shape[0] == len(kept)
  folder, split = tmp_path / "split", NNXNet(nnx.Rngs(0))
  alrao_jax.fit(split, tx, SPLITS, **{**options, "epochs": 3}, checkpoint_dir=folder)
  resumed_model = NNXNet(nnx.Rngs(0))
  resumed = alrao_jax.fit(resumed_model, tx, SPLITS, **options, checkpoint_dir=folder, resume=True)
  assert resumed.history == whole.history
  for got, want in zip(_leaves(nnx.state(resumed_model)), _leaves(nnx.state(model)), strict=True):
    np.testing.assert_array_equal(got, want)


def test_retirement_refuses_what_it_cannot_do_by_name():
  with pytest.raises(ValueError, match="threshold must be in"):
    alrao_jax.copy_retirement(threshold=1.0)
  with pytest.raises(TypeError, match="threshold"):
    alrao_jax.copy_retirement(threshold=True)
  with pytest.raises(ValueError, match="epochs"):
    alrao_jax.copy_retirement(epochs=0)
  with pytest.raises(ValueError, match="min_copies"):
    alrao_jax.copy_retirement(min_copies=0)
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0))
  with pytest.raises(TypeError, match="copy_retirement"):
    alrao_jax.fit(Net(), tx, SPLITS, epochs=1, retire=(0.01, 2))
  mesh = jax.make_mesh((1,), ("data",))
  with pytest.raises(ValueError, match="one device"):
    alrao_jax.fit(Net(), tx, SPLITS, epochs=1, retire=alrao_jax.copy_retirement(), mesh=mesh)
  state = alrao_jax.create_train_state(Net(), tx, jax.random.key(1), X[:4])
  for keep in ([], [2, 1], [0, 4], [1, 1]):
    with pytest.raises(ValueError, match="keep"):
      alrao_jax.retire_copies(state, keep)
  with pytest.raises(TypeError, match="SwitchState or a BayesState"):
    alrao_jax.retire_averaging_state({"log_posterior": jnp.zeros(4)}, [0])
  with pytest.raises(ValueError, match="num_copies=4"):
    Net(copies=2).apply({"params": state.params}, X[:4])

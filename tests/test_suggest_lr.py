"""suggest_lr: the posterior's geometric mean of the copies' rates (linen and NNX), the body's
movement against a brute-force count, and named errors."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import alrao_jax
from alrao_jax.suggest_lr import body_knee, body_movement, describe
from conftest import SmallNNXNet


class Net(nn.Module):
  width: int = 16
  copies: int = 4

  @nn.compact
  def __call__(self, x):
    return alrao_jax.AlraoHead(3, num_copies=self.copies)(nn.relu(nn.Dense(self.width)(x)))


def _state(width=16, lr_min=1e-4, lr_max=1.0, copies=4):
  x = jax.random.normal(jax.random.key(0), (8, 5))
  tx = alrao_jax.alrao_sgd(lr_min, lr_max, key=jax.random.key(1))
  return alrao_jax.create_train_state(Net(width, copies), tx, jax.random.key(2), x), tx, x


def test_the_suggestion_is_the_posterior_geometric_mean_of_the_copies_rates():
  state, _, _ = _state()
  posterior = jnp.array([0.1, 0.6, 0.3, 0.0])
  averaging_state = state.averaging_state._replace(log_posterior=jnp.log(posterior))
  with pytest.warns(UserWarning, match=r"low confidence .* no initial_params"):
    suggestion = alrao_jax.suggest_lr(state.replace(averaging_state=averaging_state))
  lrs = np.geomspace(1e-4, 1.0, 4)
  np.testing.assert_allclose(suggestion.copy_lrs, lrs, rtol=1e-6)
  np.testing.assert_allclose(suggestion.posterior, posterior, atol=1e-7)
  want = np.exp(0.1 * np.log(lrs[0]) + 0.6 * np.log(lrs[1]) + 0.3 * np.log(lrs[2]))
  np.testing.assert_allclose(suggestion.lr, want, rtol=1e-6)
  assert suggestion.leading_lr == pytest.approx(lrs[1], rel=1e-6)
  assert suggestion.body == ()  # no initial parameters given
  # without the start, a frozen copy could lead the switch: never more than "low"
  assert suggestion.confidence == "low" and "no initial_params" in suggestion.reasons[0]
  text = describe(suggestion)
  assert "confidence low" in text.splitlines()[0]
  assert "1e-05: 0.00" not in text and "0.0022: 0.60" in text


def test_posteriors_along_the_run_average_the_log_rate():
  state, _, _ = _state()
  lrs = np.geomspace(1e-4, 1.0, 4)
  along = [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 2.0, 0.0]]  # unnormalised
  suggestion = alrao_jax.suggest_lr(state, posteriors=along)
  want = np.exp((np.log(lrs[1]) + 2 * np.log(lrs[2])) / 3)
  np.testing.assert_allclose(suggestion.lr, want, rtol=1e-6)
  np.testing.assert_allclose(suggestion.posterior, [0, 1 / 3, 2 / 3, 0], atol=1e-12)
  with pytest.raises(ValueError, match="posteriors must be a non-empty sequence"):
    alrao_jax.suggest_lr(state, posteriors=[[0.5, 0.5]])


def test_a_chained_optimizer_and_explicit_parts():
  x = jax.random.normal(jax.random.key(0), (8, 5))
  tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    alrao_jax.alrao_sgd(1e-3, 10.0, key=jax.random.key(1), momentum=0.9),
    optax.scale_by_schedule(optax.cosine_decay_schedule(1.0, 10)),
  )
  state = alrao_jax.create_train_state(Net(), tx, jax.random.key(2), x)
  suggestion = alrao_jax.suggest_lr(state.params, state.opt_state, state.averaging_state)
  # a uniform posterior over 4 copies from 1e-3 to 10: the interval's geometric middle
  np.testing.assert_allclose(suggestion.lr, 0.1, rtol=1e-5)


def test_nnx_model_and_optimizer():
  model = SmallNNXNet(4, 8, 3, 5, dropout=0.0, rngs=nnx.Rngs(0))
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(1))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  averaging = alrao_jax.init_averaging(model)
  n = averaging.log_posterior.shape[0]
  one_hot = jnp.log(jnp.eye(n)[n - 1] * (1 - 1e-6) + 1e-6 / n)
  suggestion = alrao_jax.suggest_lr(
    nnx.state(model, nnx.Param), optimizer.opt_state, averaging._replace(log_posterior=one_hot)
  )
  np.testing.assert_allclose(suggestion.leading_lr, 1.0, rtol=1e-6)
  assert 0.9 < suggestion.lr <= 1.0


def test_body_movement_against_a_brute_force_count():
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(6, 40))
  rates = np.geomspace(1e-4, 1.0, 40)[None, :].astype(np.float32)
  moved = w0 + rng.normal(size=w0.shape) * np.sqrt(rates)
  params = {"Dense_0": {"kernel": moved, "bias": np.zeros(40)}}
  start = {"Dense_0": {"kernel": w0, "bias": np.zeros(40)}}
  rate_tree = {"Dense_0": {"kernel": rates, "bias": rates[0]}}
  bins = body_movement(params, start, rate_tree)
  relative = np.linalg.norm(moved - w0, axis=0) / np.linalg.norm(w0, axis=0)
  log_rates = np.log10(rates[0])
  edges = np.arange(-4.0, 0.01, 0.5)  # half decades from 1e-4; 1.0 alone in the last
  counts = [np.sum((log_rates >= e - 1e-6) & (log_rates < e + 0.5 - 1e-6)) for e in edges]
  assert [b["features"] for b in bins] == [c for c in counts if c >= 3]
  for b in bins:
    low, high = np.log10(b["lr_low"]) - 1e-6, np.log10(b["lr_high"]) - 1e-6
    inside = (log_rates >= low) & (log_rates < high)
    assert inside.sum() == b["features"]
    np.testing.assert_allclose(b["movement"], np.median(relative[inside]), rtol=1e-6)
  assert bins[0]["movement"] < bins[-1]["movement"]


def test_a_trained_run_reports_the_body():
  state, tx, x = _state(width=256)
  y = jnp.arange(8) % 3
  start = jax.tree.map(jnp.copy, state.params)  # the step donates the state
  step = alrao_jax.make_train_step(Net(256), tx)
  for _ in range(20):
    state, _ = step(state, x, y)
  suggestion = alrao_jax.suggest_lr(state, initial_params=start)
  assert sum(b["features"] for b in suggestion.body) == 256  # every bin has >= 3 units
  assert suggestion.body[0]["lr_low"] <= 1e-4 and suggestion.body[-1]["lr_high"] >= 1.0
  assert suggestion.body[0]["movement"] < suggestion.body[-1]["movement"]


def _up_to_a_knee(rate):  # a movement in proportion to the rate up to 0.3
  return np.minimum(rate, 0.3)


def _moved(state, copy_moves, body_move):
  """The state's parameters moved: copy ``j``'s kernel by ``copy_moves[j]`` of its size, each
  body unit by ``body_move(rate)`` of its size."""
  rates = alrao_jax.rates_of(state.opt_state)
  noise = np.random.default_rng(0)

  def move(path, w, rate):
    w, rate = np.asarray(w), np.asarray(rate)
    step = noise.normal(size=w.shape)
    if "alrao_copies" in jax.tree_util.keystr(path):
      if w.ndim < 3:
        return w
      step /= np.linalg.norm(step, axis=(1, 2), keepdims=True)
      size = np.linalg.norm(w, axis=(1, 2), keepdims=True)
      return w + step * size * np.asarray(copy_moves)[:, None, None]
    if w.ndim < 2:
      return w
    step /= np.linalg.norm(step, axis=0, keepdims=True)
    return w + step * np.linalg.norm(w, axis=0, keepdims=True) * body_move(rate)

  return jax.tree_util.tree_map_with_path(move, state.params, rates)


def test_a_leading_copy_that_did_not_learn_is_not_followed_and_says_so():
  state, _, _ = _state(width=64)
  lrs = np.geomspace(1e-4, 1.0, 4)
  posterior = jnp.array([0.97, 0.01, 0.01, 0.01])  # the switch follows the slowest copy
  trained = state.replace(
    params=_moved(state, [1e-5, 0.3, 0.5, 0.8], _up_to_a_knee),
    averaging_state=state.averaging_state._replace(log_posterior=jnp.log(posterior)),
  )
  with pytest.warns(UserWarning, match=r"low confidence .* barely moved"):
    suggestion = alrao_jax.suggest_lr(trained, initial_params=state.params)
  np.testing.assert_allclose(suggestion.copy_movement, [1e-5, 0.3, 0.5, 0.8], rtol=1e-4)
  np.testing.assert_allclose(suggestion.candidates["posterior"], np.exp(posterior @ np.log(lrs)))
  # among the copies that learned, the posterior is even: their geometric mean
  np.testing.assert_allclose(suggestion.lr, np.exp(np.mean(np.log(lrs[1:]))), rtol=1e-5)
  assert suggestion.candidates["learned"] == suggestion.lr
  assert suggestion.confidence == "low" and suggestion.leading_lr == pytest.approx(1e-4)
  assert any("interval's lowest rate" in reason for reason in suggestion.reasons)
  assert "confidence low" in describe(suggestion)


@pytest.mark.parametrize(
  "posterior, message",
  [
    (
      [0.01, 0.01, 0.02, 0.96],
      "highest rate (1, posterior weight 0.96): the best rate may lie "
      "beyond it; widen the interval upwards, e.g. lr_max=10",
    ),
    (
      [0.9, 0.08, 0.01, 0.01],
      "lowest rate (0.0001, posterior weight 0.90): the best rate may "
      "lie beyond it; widen the interval downwards, e.g. lr_min=1e-05",
    ),
  ],
)
def test_a_leader_at_the_interval_edge_warns_which_way_to_widen(posterior, message):
  state, _, _ = _state(width=64)  # copies at 1e-4 ... 1
  trained = state.replace(
    params=_moved(state, [0.2, 0.3, 0.5, 0.8], _up_to_a_knee),
    averaging_state=state.averaging_state._replace(log_posterior=jnp.log(jnp.array(posterior))),
  )
  for given in ({}, {"initial_params": state.params}):  # the guide's call, and with the start
    with pytest.warns(UserWarning, match=re.escape(message)):
      suggestion = alrao_jax.suggest_lr(trained, **given)
    assert suggestion.confidence != "high" and message in " ".join(suggestion.reasons)


def test_a_clear_leader_that_learned_inside_the_interval_is_trusted():
  state, _, _ = _state(width=64)  # copies at 1e-4, 2.2e-3, 0.046 and 1
  posterior = jnp.array([0.01, 0.9, 0.08, 0.01])  # the suggestion: 2.8e-3
  switch = state.averaging_state._replace(log_posterior=jnp.log(posterior))
  trained = state.replace(
    params=_moved(state, [1e-3, 0.2, 0.5, 0.9], lambda rate: np.minimum(rate, 3e-3)),
    averaging_state=switch,
  )
  suggestion = alrao_jax.suggest_lr(trained, initial_params=state.params)
  assert suggestion.confidence == "high" and suggestion.reasons == ()
  assert "learned" not in suggestion.candidates
  assert suggestion.lr == suggestion.candidates["posterior"]
  assert 1e-3 < suggestion.candidates["body"] < 1e-2  # its units followed their rates to 3e-3
  # the body followed its rates up to 0.3, 1.8 decades above the copies' reading: not "high"
  apart = trained.replace(params=_moved(state, [1e-3, 0.2, 0.5, 0.9], _up_to_a_knee))
  disagree = alrao_jax.suggest_lr(apart, initial_params=state.params)
  assert disagree.confidence == "medium" and disagree.lr == suggestion.lr
  (reason,) = disagree.reasons
  assert "the body and the copies disagree" in reason and "decades above the suggestion" in reason
  # the switch still moving: the run's last posterior leads with the copy at 0.046
  moving = [[0.01, 0.97, 0.01, 0.01]] * 3 + [[0.01, 0.09, 0.89, 0.01]]
  still = alrao_jax.suggest_lr(trained, initial_params=state.params, posteriors=moving)
  assert still.confidence == "medium"
  (reason,) = still.reasons
  assert "the posterior was still moving: at the last epoch given it centred on 0.03" in reason
  steady = alrao_jax.suggest_lr(trained, initial_params=state.params, posteriors=moving[:3])
  assert steady.confidence == "high"
  wide, _, _ = _state(width=64, lr_min=1e-6)  # copies at 1e-6, 1e-4, 1e-2 and 1
  far = wide.replace(  # the leader at 1e-4 learned, but the body followed its rates up to 0.3
    params=_moved(wide, [1e-3, 0.2, 0.5, 0.9], _up_to_a_knee),
    averaging_state=trained.averaging_state,
  )
  with pytest.warns(UserWarning, match=r"decades from the suggestion"):
    doubted = alrao_jax.suggest_lr(far, initial_params=wide.params)
  assert doubted.confidence == "low" and 0.1 < doubted.candidates["body"] < 1.0


def test_fast_copies_that_blow_up_do_not_make_a_learned_leader_look_frozen():
  # the copies' movements of a real run (digits, a 2 x 256 ReLU MLP, 20 epochs, seed 2): the
  # two fastest copies moved by 25 and 120 times their size; the leader (0.022) by 0.37
  moves = [0.0152, 0.0711, 0.106, 0.218, 0.376, 0.371, 1.12, 5.35, 24.9, 120.0]
  state, _, _ = _state(width=64, lr_min=1e-5, lr_max=10.0, copies=10)
  posterior = np.full(10, 0.003)
  posterior[5] = 1 - 0.003 * 9
  trained = state.replace(  # the body followed its rates up to 0.02, near the leader
    params=_moved(state, moves, lambda rate: np.minimum(rate, 0.02)),
    averaging_state=state.averaging_state._replace(log_posterior=jnp.log(posterior)),
  )
  suggestion = alrao_jax.suggest_lr(trained, initial_params=state.params)
  assert "learned" not in suggestion.candidates and suggestion.confidence == "high"
  assert suggestion.leading_lr == pytest.approx(0.0215, rel=1e-2)


def test_a_partition_of_alrao_optimizers_is_read_as_one_rate_tree():
  from alrao_jax.suggest_lr import find_rates

  x = jax.random.normal(jax.random.key(0), (8, 5))
  parts = {
    "body": alrao_jax.alrao_sgd(1e-4, 0.1, key=jax.random.key(1)),
    "head": alrao_jax.alrao_sgd(1e-4, 1.0, key=jax.random.key(3)),
  }
  tx = optax.partition(parts, lambda p: {k: "head" if "Alrao" in k else "body" for k in p})
  state = alrao_jax.create_train_state(Net(), tx, jax.random.key(2), x)
  rates = find_rates(state.opt_state)
  body = alrao_jax.sample_rates(jax.random.key(1), {"Dense_0": state.params["Dense_0"]}, 1e-4, 0.1)
  np.testing.assert_array_equal(rates["Dense_0"]["kernel"], body["Dense_0"]["kernel"])
  np.testing.assert_allclose(
    rates["AlraoHead_0"]["alrao_copies"]["kernel"].ravel(), np.geomspace(1e-4, 1.0, 4), rtol=1e-6
  )
  with pytest.warns(UserWarning, match="interval's lowest rate"):  # a uniform posterior
    suggestion = alrao_jax.suggest_lr(state)
  np.testing.assert_allclose(suggestion.copy_lrs, np.geomspace(1e-4, 1.0, 4), rtol=1e-6)
  overlapping = optax.chain(parts["body"], parts["head"])  # two rates for every parameter
  state = alrao_jax.create_train_state(Net(), overlapping, jax.random.key(2), x)
  with pytest.raises(ValueError, match="rate the same parameters"):
    find_rates(state.opt_state)


def test_bad_input_is_named():
  state, _, x = _state()
  with pytest.raises(ValueError, match="holds no Alrao rate trees"):
    plain = alrao_jax.create_train_state(Net(), optax.sgd(0.1), jax.random.key(2), x)
    alrao_jax.suggest_lr(plain)
  with pytest.raises(TypeError, match="a TrainState alone"):
    alrao_jax.suggest_lr(state, state.opt_state)
  with pytest.raises(TypeError, match="needs a TrainState"):
    alrao_jax.suggest_lr(state.params)
  with pytest.raises(ValueError, match="over 5 copies but the head has 4"):
    alrao_jax.suggest_lr(state.params, state.opt_state, alrao_jax.switch_init(5))
  with pytest.raises(ValueError, match="initial_params must have the structure"):
    alrao_jax.suggest_lr(state, initial_params={"other": jnp.ones(2)})


def test_a_diverged_leading_copy_is_named_as_diverged_not_as_frozen():
  state, _, _ = _state(width=64)
  posterior = jnp.array([0.01, 0.01, 0.01, 0.97])  # the switch held on to the fastest copy
  moved = _moved(state, [0.2, 0.3, 0.5, 0.8], _up_to_a_knee)
  moved["AlraoHead_0"]["alrao_copies"]["kernel"][3] = np.nan  # the copy's weights blew up
  trained = state.replace(
    params=moved, averaging_state=state.averaging_state._replace(log_posterior=jnp.log(posterior))
  )
  with pytest.warns(UserWarning, match=r"low confidence .* diverged: its weights are not finite"):
    suggestion = alrao_jax.suggest_lr(trained, initial_params=state.params)
  assert not any("barely moved" in reason for reason in suggestion.reasons)
  lrs = np.geomspace(1e-4, 1.0, 4)
  np.testing.assert_allclose(suggestion.lr, np.exp(np.mean(np.log(lrs[:3]))), rtol=1e-5)


@pytest.mark.parametrize(
  "log_posterior", [jnp.full(4, jnp.nan), jnp.full(4, -jnp.inf)], ids=["nan", "no-mass"]
)
def test_a_degenerate_posterior_gets_a_low_answer_with_its_reason_not_nan(log_posterior):
  state, _, _ = _state()
  degenerate = state.replace(
    averaging_state=state.averaging_state._replace(log_posterior=log_posterior)
  )
  with pytest.warns(UserWarning, match=r"low confidence .* the posterior is degenerate"):
    suggestion = alrao_jax.suggest_lr(degenerate)
  assert suggestion.confidence == "low" and len(suggestion.reasons) == 1
  assert suggestion.lr == pytest.approx(np.sqrt(1e-4 * 1.0), rel=1e-5)  # the rates' middle
  assert "degenerate" in describe(suggestion)
  # posteriors along the run: the degenerate ones are left out, and it says so
  good = [0.1, 0.6, 0.3, 0.0]
  along = alrao_jax.suggest_lr(
    state, posteriors=[good, [np.nan] * 4, good], initial_params=jax.device_get(state.params)
  )
  np.testing.assert_allclose(along.posterior, good, atol=1e-7)
  assert any("1 of the 3 posteriors given are not finite" in r for r in along.reasons)
  assert along.confidence == "medium"


def test_fits_result_carries_its_start_and_suggest_lr_reads_everything_off_it(tmp_path):
  x = jax.random.normal(jax.random.key(0), (96, 5))
  splits = alrao_jax.split_arrays(x, (x[:, 0] > 0).astype(jnp.int32), valid=32, test=32)
  tx = alrao_jax.alrao_sgd(1e-4, 1.0, key=jax.random.key(1))
  result = alrao_jax.fit(Net(), tx, splits, epochs=3, batch_size=16, seed=2)
  start = alrao_jax.create_train_state(Net(), tx, jax.random.key(2), x[:16]).params
  jax.tree.map(np.testing.assert_array_equal, result.initial_params, start)  # fit's seed
  along = [r["posterior"] for r in result.history[: result.best_epoch]]
  by_hand = alrao_jax.suggest_lr(result.state, initial_params=start, posteriors=along)
  read = alrao_jax.suggest_lr(result)
  assert read.lr == by_hand.lr and read.confidence == by_hand.confidence
  np.testing.assert_array_equal(read.copy_movement, by_hand.copy_movement)
  assert read.body == by_hand.body and read.body  # the body's evidence: initial_params given
  # a run resumed from its checkpoint starts from the same step-0 parameters
  kw = {"epochs": 2, "batch_size": 16, "seed": 2, "checkpoint_dir": tmp_path / "run"}
  alrao_jax.fit(Net(), tx, splits, **kw)
  resumed = alrao_jax.fit(Net(), tx, splits, **{**kw, "epochs": 3}, resume=True)
  jax.tree.map(np.testing.assert_array_equal, resumed.initial_params, start)

  model = SmallNNXNet(5, 8, 2, 3, dropout=0.0, rngs=nnx.Rngs(0))
  nnx_tx = alrao_jax.alrao_sgd(1e-4, 1.0, key=jax.random.key(1))
  optimizer = nnx.Optimizer(model, nnx_tx, wrt=nnx.Param)
  nnx_result = alrao_jax.fit(model, optimizer, splits, epochs=1, batch_size=16)
  assert nnx_result.initial_params is not None
  with pytest.raises(TypeError, match="NNX run's FitResult"):
    alrao_jax.suggest_lr(nnx_result)


def test_the_body_knee_is_where_movement_stops_following_the_rate_not_the_interval_top():
  # the body of a real run (digits, the task's CNN, 40 epochs, seed 0): bins half a decade wide
  # from 1e-5 to 10, each bin's median relative movement: most at 0.56, then 1.1 at the top; per
  # unit of rate it is flat (~6) up to 0.18 and falls 2-30x above
  middles = 10.0 ** np.arange(-4.75, 1.0, 0.5)
  moves = [1.48e-4, 3.84e-4, 1.23e-3, 3.04e-3, 0.0209, 0.0328, 0.140, 0.358, 0.675, 1.60, 0.412,
           1.10]
  bins = [
    {"lr_low": m / 10**0.25, "lr_high": m * 10**0.25, "features": 8, "movement": v}
    for m, v in zip(middles, moves, strict=True)
  ]
  knee = body_knee(bins)
  assert np.sqrt(knee["lr_low"] * knee["lr_high"]) == pytest.approx(0.178, rel=1e-2)
  assert max(bins, key=lambda b: b["movement"]) is not knee  # the most moved: 0.56
  linear = [{**b, "movement": 2 * np.sqrt(b["lr_low"] * b["lr_high"])} for b in bins]
  assert body_knee(linear) is linear[-1]  # following its rates up to the top: the top

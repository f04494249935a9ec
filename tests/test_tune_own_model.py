"""tune on networks the bundled tasks do not cover (a ReLU MLP without normalisation, a GRU
classifier, a scanned Transformer, a regression MLP): SGD at the rate it picks, against a
brute-force grid of SGD runs trained by sweep in the same test (the oracle)."""

import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import alrao_jax
from alrao_jax import race_pick
from alrao_jax.experiments.data import load_digits
from alrao_jax.tune import LADDER_DECADES

GRID = 10.0 ** np.arange(-3.0, 1.5, 0.5)  # the brute force: SGD every half decade
GAUSS = alrao_jax.gaussian_log_likelihood(sigma=1.0)


def _output(features, plain, copies=5):
  return nn.Dense(features) if plain else alrao_jax.AlraoHead(features, num_copies=copies)


class ReLUMLP(nn.Module):  # two ReLU layers, no normalisation: the case of the issue
  plain: bool = False

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for _ in range(2):
      x = nn.relu(nn.Dense(64)(x))
    return _output(10, self.plain)(x)


class GRUClassifier(nn.Module):
  plain: bool = False

  @nn.compact
  def __call__(self, x):
    return _output(2, self.plain)(nn.RNN(nn.GRUCell(16))(x)[:, -1])


class Block(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=2)(h, h, mask=nn.make_causal_mask(x[..., 0]))
    return x + nn.Dense(16)(nn.gelu(nn.Dense(32)(nn.LayerNorm()(x)))), None


class ScannedTransformer(nn.Module):
  plain: bool = False

  @nn.compact
  def __call__(self, tokens):
    stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)
    x, _ = stack()(nn.Embed(8, 16)(tokens), None)
    return _output(8, self.plain)(nn.LayerNorm()(x))


class RegressionMLP(nn.Module):
  plain: bool = False

  @nn.compact
  def __call__(self, x):
    return _output(2, self.plain)(nn.tanh(nn.Dense(32)(x)))


def _digits():
  return load_digits()


def _sequences():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(320, 8, 3)).astype(np.float32)
  y = (x[:, :4, 0].sum(1) > x[:, 4:, 1].sum(1)).astype(np.int32)
  return alrao_jax.split_arrays(x, y, valid=64, test=64)


def _text():
  rng = np.random.default_rng(0)
  start = rng.integers(0, 8, size=(320, 1))
  step = rng.integers(1, 3, size=(320, 1))
  tokens = ((start + step * np.arange(9)) % 8).astype(np.int32)  # arithmetic sequences
  return alrao_jax.split_arrays(tokens[:, :-1], tokens[:, 1:], valid=64, test=64)


def _regression():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(480, 6)).astype(np.float32)
  y = np.stack([np.sin(x @ rng.normal(size=6)), x[:, 0] * x[:, 1]], 1).astype(np.float32)
  return alrao_jax.split_arrays(
    x, y + 0.1 * rng.normal(size=y.shape).astype(np.float32), valid=96, test=96
  )


NETWORKS = {
  "relu-mlp": (ReLUMLP, _digits, {}),
  "gru": (GRUClassifier, _sequences, {}),
  "scanned-transformer": (ScannedTransformer, _text, {}),
  "regression": (RegressionMLP, _regression, {"likelihood": GAUSS}),
}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_sgd_at_the_tuned_rate_is_close_to_the_grid_best(name):
  network, data, kwargs = NETWORKS[name]
  splits = data()
  epochs = 6
  tuned = alrao_jax.tune(
    network(),
    splits,
    lr_min=1e-4,
    lr_max=10.0,
    epochs=epochs,
    race_epochs=2,
    plain_model=network(plain=True),
    batch_size=32,
    **kwargs,
  )
  assert tuned.seconds["total"] >= tuned.seconds["race"] > 0
  assert len(tuned.candidates) == len(tuned.race.values) >= 3
  assert tuned.lr in tuned.candidates
  # the ladder: no stretch between the racers left untried, none far outside the interval
  logs = np.log10(tuned.candidates)
  assert np.diff(logs).max() <= LADDER_DECADES + 1e-9 and tuned.ladder.untried == (), logs
  assert logs.min() >= -4.5 - 1e-9 and logs.max() <= 1.5 + 1e-9, logs
  grid = alrao_jax.sweep(
    network(plain=True),
    optax.sgd,
    splits,
    values=[*GRID, tuned.lr],
    epochs=epochs,
    batch_size=32,
    **kwargs,
  )
  best = np.min(grid.valid_losses[:-1])
  ratio = grid.valid_losses[-1] / best
  shift = np.log10(tuned.lr) - np.log10(GRID[np.argmin(grid.valid_losses[:-1])])
  print(
    f"{name}: tuned {tuned.lr:.3g}, {shift:+.2f} decades from the grid's best, SGD there "
    f"{ratio:.3f}x the grid's best validation loss; {tuned.seconds['total']:.1f} s"
  )
  assert ratio <= 1.25, (name, tuned.lr, ratio, shift, grid.valid_losses.tolist())


def test_an_nnx_model_is_tuned_in_place_and_its_race_starts_from_its_start():
  class Net(nnx.Module):
    def __init__(self, rngs, plain=False):
      self.hidden = nnx.Linear(64, 32, rngs=rngs)
      self.out = (
        nnx.Linear(32, 10, rngs=rngs)
        if plain
        else alrao_jax.nnx.AlraoHead(32, 10, num_copies=4, rngs=rngs)
      )

    def __call__(self, x):
      return self.out(nnx.relu(self.hidden(x.reshape(x.shape[0], -1))))

  splits = _digits()
  model = Net(nnx.Rngs(0))
  start = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
  tuned = alrao_jax.tune(model, splits, lr_min=1e-4, lr_max=10.0, epochs=3, batch_size=64)
  # by default the race costs about one run: 3 epochs over >= 3 racers, 1 epoch, validation only
  assert len(tuned.race.values) >= 3 and max(len(h) for h in tuned.race.histories) == 1
  assert not any(k.startswith("test_") for h in tuned.race.histories for k in h[0])
  moved = jax.tree.leaves(
    jax.tree.map(lambda a, b: jnp.abs(a - b).max(), nnx.state(model, nnx.Param), start)
  )
  assert max(float(m) for m in moved) > 0  # the Alrao run trained the model itself
  assert tuned.suggestion.copy_movement is not None and np.isfinite(tuned.lr)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match=r"optimizer must be one of \['adam', 'sgd'\]"):
    alrao_jax.tune(ReLUMLP(), _sequences(), lr_min=1e-3, lr_max=1.0, epochs=1, optimizer="rmsprop")
  with pytest.raises(ValueError, match="race_epochs"):
    alrao_jax.tune(ReLUMLP(), _sequences(), lr_min=1e-3, lr_max=1.0, epochs=1, race_epochs=0)
  with pytest.raises(ValueError, match=r"tolerance must be in \[0, 1\]"):
    alrao_jax.tune(ReLUMLP(), _sequences(), lr_min=1e-3, lr_max=1.0, epochs=1, tolerance=1.5)


class DropoutField(nn.Module):  # dropout as a config field, as Flax's examples write it
  deterministic: bool
  plain: bool = False

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
    return _output(2, self.plain, copies=3)(nn.Dropout(0.5, deterministic=self.deterministic)(x))


def test_a_model_with_dropout_as_a_field_is_tuned_with_its_eval_model():
  splits, options = _sequences(), {"lr_min": 1e-3, "lr_max": 1.0, "epochs": 1, "batch_size": 64}
  with pytest.raises(flax.errors.InvalidRngError, match="dropout"):  # evaluated: no RNG
    alrao_jax.tune(DropoutField(False), splits, **options)
  tuned = alrao_jax.tune(DropoutField(False), splits, eval_model=DropoutField(True), **options)
  plain = {"plain_model": DropoutField(False, True), "plain_eval_model": DropoutField(True, True)}
  racing = alrao_jax.tune(
    DropoutField(False), splits, eval_model=DropoutField(True), **plain, **options
  )
  for found in (tuned, racing):
    assert np.isfinite(found.lr) and np.isfinite(found.race.valid_losses).all()
  # the Alrao run is the same whatever the race trains
  assert tuned.alrao.history == racing.alrao.history
  with pytest.raises(ValueError, match="plain_eval_model evaluates plain_model, which is not"):
    alrao_jax.tune(DropoutField(False), splits, plain_eval_model=DropoutField(True), **options)


def test_the_race_keeps_the_suggestion_unless_it_clearly_lost():
  rates = [0.01, 0.1, 1.0]
  # from 2.0: the suggestion's racer (0.1) fell 0.9, the best (1.0) fell 1.0
  assert race_pick(rates, [1.5, 1.1, 1.0], 2.0, 0.12) == 1
  assert race_pick(rates, [1.5, 1.1, 1.0], 2.0, 0.12, tolerance=0.05) == 2
  assert race_pick(rates, [1.5, 1.1, 1.0], 2.0, 0.12, tolerance=0.0) == 2
  assert race_pick(rates, [1.0, 1.0, 1.5], 2.0, 0.12, tolerance=0.0) == 1  # a tie keeps it
  assert race_pick(rates, [1.5, np.inf, 1.0], 2.0, 0.12) == 2  # it diverged
  assert race_pick(rates, [2.5, 2.2, 2.1], 2.0, 0.12) == 2  # nothing learned: the best
  assert race_pick(rates, [1.5, 1.1, 1.0], 2.0, float("nan")) == 2  # no suggestion
  assert race_pick(rates, [np.nan, np.inf, np.inf], 2.0, 0.1) == -1
  with pytest.raises(ValueError, match="one length"):
    race_pick(rates, [1.0, 2.0], 2.0, 0.1)
  for bad in ([-1.0, 0.1, 1.0], [0.0, 0.1, 1.0], [np.inf, 0.1, 1.0]):
    with pytest.raises(ValueError, match=r"learning rates > 0"):
      race_pick(bad, [1.5, 1.1, 1.0], 2.0, 0.1)


def test_the_suggestion_is_raced_as_it_is_with_its_neighbours():
  from types import SimpleNamespace

  from alrao_jax.tune import race_candidates

  # the leading copy (0.178) and the body's neighbour (0.562) fall within 0.2 decades of the
  # suggestion (0.24) and of its upper neighbour (0.759): they merge into them, not the reverse
  weighed = {"posterior": 0.24, "leading": 0.178, "body": 0.562}
  rates = race_candidates(SimpleNamespace(lr=0.24, candidates=weighed))
  np.testing.assert_allclose(rates, [0.24 / 10**0.5, 0.24, 0.24 * 10**0.5, 0.562 * 10**0.5])
  far = race_candidates(SimpleNamespace(lr=0.01, candidates={"body": 1.0}))
  # a decade between 10**-1.5 and 10**-0.5: the ladder races 0.1 too
  np.testing.assert_allclose(far, [10**-2.5, 0.01, 10**-1.5, 0.1, 10**-0.5, 1.0, 10**0.5])


def test_the_ladder_drops_a_frozen_copy_clips_to_the_interval_and_names_what_it_skips():
  from types import SimpleNamespace

  from alrao_jax.tune import race_ladder

  interval = np.array([1e-5, 10.0])
  # the ReLU MLP: the suggestion followed the copies that learned (0.01); the frozen
  # leading copy (1e-5) and the posterior it dragged (1.26e-5) are not evidence
  weighed = {"posterior": 1.26e-5, "leading": 1e-5, "learned": 0.01, "body": 5.62}
  ladder = race_ladder(SimpleNamespace(lr=0.01, candidates=weighed, copy_lrs=interval))
  logs = np.log10(ladder.rates)
  assert ladder.dropped == ("posterior", "leading") and logs.min() == pytest.approx(-2.5)
  assert np.diff(logs).max() <= 0.5 + 1e-9 and ladder.untried == ()
  assert np.abs(logs + 1).min() <= 0.25  # the grid's 0.1, which the race skipped
  # ptb-word's race went to 178 with lr_max 10: the body's 56.2 is raced at 10 ** 1.5
  high = race_ladder(SimpleNamespace(lr=0.985, candidates={"body": 56.2}, copy_lrs=interval))
  assert high.clipped == {"body": 56.2} and high.rates.max() == pytest.approx(10**1.5)
  # a budget too small for the evidence: the ladder thins and names the stretches it skipped
  wide = SimpleNamespace(lr=1e-4, candidates={"body": 5.0}, copy_lrs=interval)
  thin = race_ladder(wide, max_racers=6)
  assert len(thin.rates) == 6 and thin.untried
  for low, high in thin.untried:
    assert np.log10(high) - np.log10(low) > 0.5
  assert race_ladder(wide, max_racers=14).untried == ()  # a budget that covers it
  with pytest.raises(ValueError, match="max_racers"):
    race_ladder(wide, max_racers=0)


def test_a_race_whose_racers_all_diverge_falls_back_as_asked():
  from types import SimpleNamespace

  from alrao_jax.tune import race_suggestion

  rng = np.random.default_rng(0)
  x = rng.normal(size=(96, 4)).astype(np.float32)
  splits = alrao_jax.split_arrays(x, (x[:, 0] > 0).astype(np.int32), valid=32, test=32)

  def exploding(learning_rate):  # every update is nan: every racer diverges in its first epoch
    return optax.chain(optax.sgd(learning_rate), optax.scale(float("nan")))

  suggestion = SimpleNamespace(lr=0.1, candidates={})
  kw = {"epochs": 4, "batch_size": 16}
  raced = race_suggestion(nn.Dense(2), exploding, splits, suggestion, **kw)
  np.testing.assert_allclose(raced.candidates, [0.1 / 10**0.5, 0.1, 0.1 * 10**0.5])
  assert np.isnan(raced.lr) and raced.epochs == 1  # 4 epochs over 3 racers
  assert set(raced.race.stopped) == {"diverged"} and raced.race.best_index == -1
  assert race_suggestion(nn.Dense(2), exploding, splits, suggestion, fallback=0.1, **kw).lr == 0.1
  healthy = race_suggestion(nn.Dense(2), optax.sgd, splits, suggestion, race_epochs=2, **kw)
  assert healthy.epochs == 2 and healthy.lr in raced.candidates


def test_an_annealed_race_is_each_racer_fit_with_its_rate_falling_to_zero_over_the_last_epoch():
  from types import SimpleNamespace

  from alrao_jax.tune import annealed, race_suggestion

  rng = np.random.default_rng(0)
  x = rng.normal(size=(160, 4)).astype(np.float32)
  splits = alrao_jax.split_arrays(x, (x[:, 0] > 0).astype(np.int32), valid=32, test=32)
  kw = {"epochs": 6, "race_epochs": 2, "batch_size": 16}  # 6 steps an epoch, the last 6 anneal
  raced = race_suggestion(
    nn.Dense(2), optax.sgd, splits, SimpleNamespace(lr=0.3, candidates={}), anneal=True, **kw
  )
  np.testing.assert_allclose(raced.candidates, [0.3 / 10**0.5, 0.3, 0.3 * 10**0.5])
  for rate, history in zip(raced.candidates, raced.race.histories, strict=True):
    # the oracle: optax.sgd with its rate on optax's own schedule, 1 for 6 steps then to 0
    schedule = optax.linear_schedule(rate, 0.0, transition_steps=6, transition_begin=6)
    run = alrao_jax.fit(nn.Dense(2), optax.sgd(schedule), splits, epochs=2, batch_size=16)
    found = [r["valid_loss"] for r in history]
    np.testing.assert_allclose(found, [r["valid_loss"] for r in run.history], rtol=1e-5)
  constant = race_suggestion(
    nn.Dense(2), optax.sgd, splits, SimpleNamespace(lr=0.3, candidates={}), **kw
  )
  assert constant.race.histories[2][1]["valid_loss"] != raced.race.histories[2][1]["valid_loss"]
  with pytest.raises(ValueError, match=r"last must be at most steps \(4\)"):
    annealed(optax.sgd, steps=4, last=5)


def test_tune_anneals_its_race_when_asked():
  from alrao_jax.tune import race_suggestion

  rng = np.random.default_rng(1)
  x = rng.normal(size=(160, 4)).astype(np.float32)
  splits = alrao_jax.split_arrays(x, (x[:, 0] > 0).astype(np.int32), valid=32, test=32)
  options = {"lr_min": 1e-3, "lr_max": 1.0, "epochs": 2, "race_epochs": 2, "batch_size": 16}
  tuned = alrao_jax.tune(RegressionMLP(), splits, anneal=True, **options)
  # the oracle: the same race run by race_suggestion on the same evidence, annealed
  kw = {"epochs": 2, "race_epochs": 2, "batch_size": 16}
  raced = race_suggestion(RegressionMLP(), optax.sgd, splits, tuned.suggestion, anneal=True, **kw)
  np.testing.assert_allclose(tuned.race.valid_losses, raced.race.valid_losses, rtol=1e-6)
  constant = race_suggestion(RegressionMLP(), optax.sgd, splits, tuned.suggestion, **kw)
  assert not np.allclose(tuned.race.valid_losses, constant.race.valid_losses, rtol=1e-6)


def test_tune_trusts_a_high_suggestion_only_when_asked(monkeypatch):
  module = sys.modules["alrao_jax.tune"]  # alrao_jax.tune is also the function's name
  real = module.suggest_lr

  def suggesting(confidence):
    return lambda *args, **kwargs: real(*args, **kwargs)._replace(confidence=confidence)

  rng = np.random.default_rng(2)
  x = rng.normal(size=(160, 4)).astype(np.float32)
  splits = alrao_jax.split_arrays(x, (x[:, 0] > 0).astype(np.int32), valid=32, test=32)
  options = {"lr_min": 1e-3, "lr_max": 1.0, "epochs": 2, "race_epochs": 1, "batch_size": 16}
  monkeypatch.setattr(module, "suggest_lr", suggesting("high"))
  trusted = alrao_jax.tune(RegressionMLP(), splits, trust_high=True, **options)
  assert trusted.race is None and trusted.candidates.size == 0 and trusted.ladder is None
  assert trusted.lr == trusted.suggestion.lr and trusted.seconds["race"] == 0.0
  raced = alrao_jax.tune(RegressionMLP(), splits, **options)  # by default, "high" is raced too
  assert raced.race is not None and len(raced.candidates) >= 3
  assert raced.suggestion.lr == trusted.suggestion.lr  # the same Alrao run
  monkeypatch.setattr(module, "suggest_lr", suggesting("medium"))
  medium = alrao_jax.tune(RegressionMLP(), splits, trust_high=True, **options)
  np.testing.assert_array_equal(medium.candidates, raced.candidates)  # not trusted: raced
  with pytest.raises(TypeError, match="trust_high must be True or False"):
    alrao_jax.tune(RegressionMLP(), splits, trust_high="yes", **options)

"""The learning-rate range test on a problem whose good rates are known in closed form."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import alrao_jax
from alrao_jax.lr_find import alrao_interval

X = jax.random.normal(jax.random.key(0), (512, 8))
W = jax.random.normal(jax.random.key(1), (8,))
Y = X @ W + 0.1 * jax.random.normal(jax.random.key(2), (512,))


def mse(params, batch):
  x, y = batch
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


BATCHES = [(X[i : i + 32], Y[i : i + 32]) for i in range(0, 512, 32)]
GRID = 10.0 ** np.arange(-5, 2)


def _good_rates():
  """The oracle: plain SGD at each rate of a grid, 3 epochs of the same mini-batches; the
  rates whose final loss is within 1.5x of the best."""
  xs = jnp.stack([b[0] for b in BATCHES])
  ys = jnp.stack([b[1] for b in BATCHES])

  @jax.jit
  def final_loss(lr):
    def step(params, batch):
      grads = jax.grad(mse)(params, batch)
      return jax.tree.map(lambda p, g: p - lr * g, params, grads), None

    params = {"w": jnp.zeros(8), "b": jnp.zeros(())}
    for _ in range(3):
      params, _ = jax.lax.scan(step, params, (xs, ys))
    return mse(params, (X, Y))

  losses = np.array([float(final_loss(lr)) for lr in GRID])
  losses = np.where(np.isfinite(losses), losses, np.inf)
  return GRID[losses <= 1.5 * losses.min()]


def test_suggests_a_rate_inside_the_known_good_range_and_restores_params():
  good = _good_rates()
  assert 1 <= len(good) < len(GRID)  # the grid has bad rates: the range means something
  params = {"w": jnp.zeros(8), "b": jnp.zeros(())}
  before = jax.tree.map(np.array, params)
  result = alrao_jax.lr_find(mse, params, BATCHES, start_lr=1e-5, end_lr=100.0, num_steps=100)
  low, high = good.min() / 3, good.max() * 3  # the grid is in decades: half a decade of slack
  assert low <= result.suggestions["steep"] <= high, (good, result.suggestions)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), before)
  # It stopped on divergence, before the end of the ramp.
  assert len(result.learning_rates) < 100
  last = result.smoothed[-1]
  assert not np.isfinite(last) or last > 4 * result.smoothed[:-1].min()
  assert np.all(np.diff(np.log(result.learning_rates)) > 0)


def test_smoothing_is_a_debiased_moving_average():
  params = {"w": jnp.zeros(8), "b": jnp.zeros(())}
  result = alrao_jax.lr_find(
    mse, params, [(X, Y)], start_lr=1e-6, end_lr=1e-5, num_steps=10, beta=0.9
  )
  average, expected = 0.0, []
  for i, loss in enumerate(result.losses):
    average = 0.9 * average + 0.1 * loss
    expected.append(average / (1 - 0.9 ** (i + 1)))
  np.testing.assert_allclose(result.smoothed, expected, rtol=1e-6)
  assert len(result.losses) == 10


def test_an_iterator_that_runs_out_ends_the_test():
  params = {"w": jnp.zeros(8), "b": jnp.zeros(())}
  batches = iter([(X[:64], Y[:64])] * 5)
  result = alrao_jax.lr_find(mse, params, batches, num_steps=50)
  assert len(result.learning_rates) == 5


@pytest.mark.parametrize(
  ("kwargs", "match"),
  [
    ({"start_lr": 0.0}, "start_lr must be > 0"),
    ({"start_lr": 1.0, "end_lr": 1.0}, "end_lr"),
    ({"num_steps": 2}, "num_steps"),
    ({"beta": 1.0}, "beta"),
    ({"diverge_factor": 1.0}, "diverge"),
  ],
)
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    alrao_jax.lr_find(mse, {"w": jnp.zeros(8), "b": jnp.zeros(())}, [(X, Y)], **kwargs)


def test_suggestions_skip_the_noisy_start_of_the_ramp():
  params = {"w": jnp.zeros(8), "b": jnp.zeros(())}
  result = alrao_jax.lr_find(mse, params, BATCHES, start_lr=1e-6, end_lr=100.0, num_steps=60)
  first_kept = result.learning_rates[10]
  assert all(
    v >= first_kept * (1 - 1e-9)
    for v in (result.suggestions["steep"], result.suggestions["valley"])
  )


def _digits_batches(count):
  from alrao_jax.experiments.data import load_digits

  train = load_digits().train
  return [
    (train.inputs[32 * i : 32 * (i + 1)], train.targets[32 * i : 32 * (i + 1)])
    for i in range(count)
  ]


def _mixture_nll(outputs, targets):
  uniform = jnp.full((outputs.own.shape[0],), 1.0 / outputs.own.shape[0])
  return float(alrao_jax.alrao_loss(outputs, targets, uniform)[1].mixture_nll)


def test_an_alrao_linen_model_runs_directly_with_batchnorm_in_training_mode():
  from alrao_jax.experiments.models import DigitsCNN

  model = DigitsCNN(num_copies=3)
  batches = _digits_batches(4)
  state = alrao_jax.create_train_state(
    model,
    alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(1)),
    jax.random.key(0),
    batches[0][0],
    train=False,
  )
  before = jax.tree.map(np.asarray, (state.params, state.model_state))
  result = alrao_jax.lr_find(model, state, batches, num_steps=4, train_kwargs={"train": True})
  variables = {"params": state.params, **state.model_state}
  x, y = batches[0]
  trained = model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
  evaluated = model.apply(variables, x, train=False)
  assert result.losses[0] == pytest.approx(_mixture_nll(trained, y), rel=1e-5)
  assert abs(_mixture_nll(evaluated, y) - _mixture_nll(trained, y)) > 1e-3  # the mode matters
  after = jax.tree.map(np.asarray, (state.params, state.model_state))
  jax.tree.map(np.testing.assert_array_equal, before, after)
  assert result.notes[0].startswith("too short") and np.isnan(result.alrao_interval).all()


def _values(tree):
  def raw(x):
    return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x

  return jax.tree.map(lambda x: np.asarray(raw(x)), tree)


def test_an_nnx_model_runs_directly_in_training_mode_and_is_left_as_it_was():
  from conftest import SmallNNXNet

  model = SmallNNXNet(64, 16, 10, 2, dropout=0.0, rngs=nnx.Rngs(0))
  model.eval()
  before = _values(nnx.state(model))
  batches = [(x.reshape(32, -1), y) for x, y in _digits_batches(3)]
  result = alrao_jax.lr_find(model, None, batches, num_steps=3)
  jax.tree.map(np.testing.assert_array_equal, before, _values(nnx.state(model)))
  assert model.bn.use_running_average  # still in eval mode
  oracle = nnx.clone(model)
  oracle.train()
  trained = oracle(batches[0][0])
  assert result.losses[0] == pytest.approx(_mixture_nll(trained, batches[0][1]), rel=1e-5)
  with pytest.raises(TypeError, match="params=None"):
    alrao_jax.lr_find(model, {"params": {}}, batches)


def test_a_plain_linen_model_records_its_cross_entropy():
  model = nn.Dense(10)
  x, y = _digits_batches(1)[0]
  x = x.reshape(32, -1)
  variables = model.init(jax.random.key(0), x)
  result = alrao_jax.lr_find(model, variables, [(x, y)], num_steps=3)
  expected = optax.softmax_cross_entropy_with_integer_labels(model.apply(variables, x), y).mean()
  assert result.losses[0] == pytest.approx(float(expected), rel=1e-5)
  with pytest.raises(TypeError, match=r"TrainState .* or its variables"):
    alrao_jax.lr_find(model, variables["params"]["kernel"], [(x, y)])


def test_the_optimizer_factory_may_name_its_rate_anything():
  x = jax.random.normal(jax.random.key(0), (64, 3))
  y = x @ jnp.ones(3)

  def loss(w, batch):
    return jnp.mean((batch[0] @ w - batch[1]) ** 2)

  def run(optimizer):
    return alrao_jax.lr_find(loss, jnp.zeros(3), [(x, y)], optimizer=optimizer, num_steps=20)

  by_keyword = run(optax.sgd)
  by_position = run(lambda lr: optax.sgd(lr, momentum=None))
  np.testing.assert_array_equal(by_position.losses, by_keyword.losses)


def _noise_loss(params, batch):
  """A loss the parameters cannot change: a flat curve of noisy batch losses."""
  return jnp.mean(batch) + 0.0 * jnp.sum(params)


def test_a_flat_curve_suggests_nothing_even_when_its_first_batch_is_lowest():
  rng = np.random.default_rng(0)
  batches = [np.float32(2.0 + 0.05 * rng.normal()) * np.ones(4, np.float32) for _ in range(60)]
  batches[0] = np.full(4, 1.0, np.float32)  # a lucky first batch: the curve's lowest point
  result = alrao_jax.lr_find(_noise_loss, jnp.zeros(3), batches, start_lr=1e-7, num_steps=60)
  assert len(result.notes) == 1 and result.notes[0].startswith("flat:")
  assert all(np.isnan(v) for v in result.suggestions.values())
  assert np.isnan(result.alrao_interval).all()  # before: (1e-11, 1e-7), below the range
  # the same curve read by the public helper
  assert np.isnan(alrao_interval(result.learning_rates, result.smoothed)).all()


def test_a_curve_too_short_to_read_says_so_and_plots():
  import matplotlib

  matplotlib.use("Agg")
  params = {"w": jnp.zeros(8), "b": jnp.zeros(())}
  result = alrao_jax.lr_find(mse, params, BATCHES, start_lr=1e-4, end_lr=1.0, num_steps=10)
  assert result.notes[0].startswith("too short: 10 usable steps")
  assert np.isnan(result.alrao_interval).all()
  ax = result.plot(title="mse")
  assert "too short" in ax.get_title() and ax.get_xscale() == "log"
  good = alrao_jax.lr_find(mse, params, BATCHES, start_lr=1e-5, end_lr=100.0, num_steps=60)
  assert good.notes == () and np.isfinite(good.alrao_interval).all()
  # the interval's top is read past the noisy start, like the suggestions
  low, high = good.alrao_interval
  assert high >= good.learning_rates[10] * (1 - 1e-9) and high in good.learning_rates
  assert high == pytest.approx(1e4 * low)
  labels = [t.get_text() for t in good.plot().get_legend().get_texts()]
  assert any(label.startswith("Alrao interval") for label in labels)


def test_a_constant_shift_of_the_loss_changes_nothing():
  params = {"w": jnp.zeros(8), "b": jnp.zeros(())}
  kw = {"start_lr": 1e-5, "end_lr": 100.0, "num_steps": 80}
  plain = alrao_jax.lr_find(mse, params, BATCHES, **kw)
  shifted = alrao_jax.lr_find(lambda p, b: mse(p, b) - 5.0, params, BATCHES, **kw)
  assert plain.notes == shifted.notes == ()  # before: 'too short' after 11 steps
  step = (100.0 / 1e-5) ** (1 / 79)  # one step of the ramp: float32 rounds the two apart
  for name, lr in plain.suggestions.items():
    assert lr / step <= shifted.suggestions[name] <= lr * step, name
  np.testing.assert_allclose(shifted.alrao_interval, plain.alrao_interval, rtol=step - 1)


def test_a_gaussian_likelihood_of_small_sigma_is_read_not_stopped():
  """Its loss is negative from the start (log sigma dominates): fastai's rule, 4 times the
  best loss, stopped it after 2 steps."""
  model = nn.Dense(1, kernel_init=nn.initializers.zeros)
  variables = model.init(jax.random.key(0), X[:1])
  noise = np.random.default_rng(0).normal(size=(len(X), 1)).astype(np.float32)
  targets = 0.05 * np.asarray(Y)[:, None] / np.std(np.asarray(Y)) + 0.01 * noise
  batches = [(X[i : i + 32], targets[i : i + 32]) for i in range(0, len(X), 32)]
  likelihood = alrao_jax.gaussian_log_likelihood(sigma=0.05)
  result = alrao_jax.lr_find(
    model, variables, batches, likelihood=likelihood, start_lr=1e-6, end_lr=10.0, num_steps=80
  )
  assert result.losses[0] < 0 and np.nanmin(result.losses) < result.losses[0] - 0.3
  assert result.notes == () and len(result.losses) > 40
  assert np.isfinite(result.alrao_interval).all()
  assert np.isfinite(result.alrao_interval).all()


def test_a_loss_that_barely_moves_is_flat_though_noiseless():
  """A zero-initialised logistic regression at tiny rates: every batch starts at log 2 and
  the loss falls by a few millionths: no noise to compare with, but nothing moved."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(640, 10)).astype(np.float32)
  y = (x @ rng.normal(size=10) > 0).astype(np.float32)

  def logistic(p, batch):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(batch[0] @ p["w"] + p["b"], batch[1]))

  params = {"w": jnp.zeros(10), "b": jnp.zeros(())}
  for seed in range(5):
    order = np.random.default_rng(seed).permutation(640)
    batches = [(x[order[i : i + 32]], y[order[i : i + 32]]) for i in range(0, 640, 32)]
    result = alrao_jax.lr_find(logistic, params, batches, start_lr=1e-9, end_lr=1e-6, num_steps=60)
    assert result.notes and result.notes[0].startswith("flat:"), seed
    assert "barely moved" in result.notes[0]
    assert np.isnan(list(result.suggestions.values())).all()
  useful = alrao_jax.lr_find(logistic, params, batches, start_lr=1e-4, end_lr=100.0, num_steps=60)
  assert useful.notes == ()  # the same model over rates that train it


def test_pure_noise_curves_are_flat_whatever_the_batch_order():
  """A loss the parameters cannot change, of skewed noise (a mean of squares), over 30
  batch orders: none may get suggestions (before: 5 of 30; the largest fall of the 30 is 6.47
  standard errors of the noise, against the 6.5 that a fall must exceed)."""
  rng = np.random.default_rng(1)
  targets = rng.normal(size=3200).astype(np.float32)
  suggested = 0
  for seed in range(30):
    order = np.random.default_rng(seed).permutation(3200)
    batches = [targets[order[i : i + 32]] for i in range(0, 3200, 32)]
    result = alrao_jax.lr_find(
      lambda p, b: jnp.mean(b**2) + 0.0 * jnp.sum(p), jnp.zeros(3), batches, num_steps=100
    )
    suggested += not result.notes
  assert suggested == 0


@settings(deadline=None, max_examples=25)
@given(
  fall=st.integers(2, 60),
  noise=st.lists(st.integers(-64, 64), min_size=60, max_size=60),
  blowup=st.integers(0, 59),
  shift=st.integers(-100, 100),
)
def test_suggestions_do_not_move_under_a_constant_shift(fall, noise, blowup, shift):
  """Curves of a fall, noise and a blow-up on a grid of 1/1024 (their shifts are exact in
  float32): the shifted curve gets the same suggestions, notes and interval, bit for bit."""
  steps = np.arange(60)
  trend = np.round(1024 * fall * (1 - np.minimum(steps, 40) / 40)) / 1024
  curve = trend + np.asarray(noise) / 1024
  curve[blowup:] += np.where(steps[blowup:] > 45, 2.0 ** np.minimum(steps[blowup:] - 45, 12), 0)

  def run(offset):
    batches = [np.full(2, value + offset, np.float32) for value in curve]
    return alrao_jax.lr_find(_noise_loss, jnp.zeros(3), batches, start_lr=1e-6, num_steps=60)

  plain, shifted = run(0.0), run(float(shift))
  assert plain.notes == shifted.notes
  assert plain.suggestions == shifted.suggestions or all(
    np.isnan(list(r.suggestions.values())).all() for r in (plain, shifted)
  )
  np.testing.assert_array_equal(plain.alrao_interval, shifted.alrao_interval)
  np.testing.assert_array_equal(plain.learning_rates, shifted.learning_rates)

"""The learning-rate range test on a problem whose good rates are known in closed form."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

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

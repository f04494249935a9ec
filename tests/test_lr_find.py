"""The learning-rate range test on a problem whose good rates are known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alrao_jax

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

"""The failures a new user met on real models (issue "Real models"), one test per case."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import alrao_jax
from alrao_jax.loop import fit
from alrao_jax.splits import Split, Splits
from conftest import SmallNNXNet

KEY = jax.random.key(0)


# 2. Regression predictions never explode.


def test_mixture_mean_ignores_a_copy_that_blew_up():
  means = jnp.array([[[0.5], [0.2]], [[3e19], [-3e19]]])
  posterior = jnp.array([0.999, 0.001])
  np.testing.assert_allclose(alrao_jax.mixture_mean(means, posterior), [[0.5], [0.2]], rtol=1e-6)
  # Copies that could both have made the prediction keep their posterior weights.
  close = jnp.array([[[0.5]], [[0.7]]])
  np.testing.assert_allclose(alrao_jax.mixture_mean(close, jnp.array([0.75, 0.25])), [[0.55]])
  # Non-finite copies are left out too; all copies diverged gives NaN, not a number.
  nan = jnp.array([[[jnp.nan]], [[2.0]]])
  np.testing.assert_allclose(alrao_jax.mixture_mean(nan, jnp.array([0.9, 0.1])), [[2.0]])
  assert np.isnan(alrao_jax.mixture_mean(jnp.full((2, 1, 1), jnp.inf), jnp.array([0.5, 0.5])))


class _RegressionMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return alrao_jax.AlraoHead(2, num_copies=10)(nn.tanh(nn.Dense(16)(x)))


def test_regression_predictions_stay_sane_when_fast_copies_blow_up():
  x = jax.random.normal(jax.random.key(1), (128, 4))
  y = jnp.stack([x @ jnp.array([1.0, -2.0, 0.5, 0.0]), jnp.sin(x[:, 0])], -1)
  model = _RegressionMLP()
  likelihood = alrao_jax.gaussian_log_likelihood(sigma=1.0)
  tx = alrao_jax.alrao_sgd(1e-5, 10.0, key=jax.random.key(2))
  state = alrao_jax.create_train_state(model, tx, KEY, x)
  step = alrao_jax.make_train_step(model, tx, likelihood=likelihood)
  for i in range(40):
    state, _ = step(state, x[i % 4 * 32 :][:32], y[i % 4 * 32 :][:32])
  outputs = model.apply({"params": state.params}, x).own
  assert np.abs(np.asarray(outputs[-1])).max() > 1e6  # the lr-10 copy has blown up
  mixture = alrao_jax.predict(model, state, x, likelihood=likelihood)
  best = alrao_jax.predict(model, state, x, likelihood=likelihood, best=True)
  assert mixture.shape == best.shape == (128, 2)
  mse_mixture, mse_best = float(jnp.mean((mixture - y) ** 2)), float(jnp.mean((best - y) ** 2))
  assert mse_mixture < 1.1 * mse_best < 5.0
  naive = jnp.einsum(
    "n,nbd->bd",
    alrao_jax.switch_posterior(state.averaging_state),
    jnp.where(jnp.isfinite(outputs), outputs, 0.0),
  )
  assert float(jnp.mean((naive - y) ** 2)) > 1e3 * mse_mixture  # what the old mean returned


def test_predict_classification_mixture_and_best_copy_and_nnx():
  model = nn.Sequential([nn.Dense(8), nn.relu, alrao_jax.AlraoHead(3, num_copies=4)])
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY)
  x = jax.random.normal(KEY, (5, 2))
  state = alrao_jax.create_train_state(model, tx, KEY, x)
  outputs = model.apply({"params": state.params}, x)
  posterior = alrao_jax.switch_posterior(state.averaging_state)
  mixture = np.einsum("n,nbk->bk", posterior, jax.nn.softmax(outputs.own))
  np.testing.assert_allclose(alrao_jax.predict(model, state, x), mixture, rtol=1e-5)
  best = alrao_jax.predict(model, state, x, best=True)
  np.testing.assert_allclose(best, jax.nn.softmax(outputs.own[0]), rtol=1e-5)

  head = alrao_jax.nnx.AlraoHead(2, 3, num_copies=4, rngs=nnx.Rngs(0))
  probs = alrao_jax.predict(head, alrao_jax.switch_init(4), x)
  assert probs.shape == (5, 3)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


# 3. Bad targets are errors (shapes, at trace time) or NaN (values, inside jit); never 0.


LOGITS = jnp.zeros((2, 4, 3))  # N = 2 copies, batch 4, K = 3: uniform


def test_out_of_range_labels_give_nan_not_zero():
  metrics = alrao_jax.evaluation_metrics(LOGITS, jnp.array([0, 1, 5, -1]), jnp.array([0.5, 0.5]))
  assert np.isnan(metrics["loss"])
  good = alrao_jax.evaluation_metrics(LOGITS, jnp.array([0, 1, 2, 0]), jnp.array([0.5, 0.5]))
  np.testing.assert_allclose(good["loss"], np.log(3), rtol=1e-6)
  loss, aux = alrao_jax.alrao_loss(
    alrao_jax.CopyOutputs(LOGITS, LOGITS), jnp.array([0, 3, 1, 1]), jnp.array([0.5, 0.5])
  )
  assert np.isnan(loss) and np.isnan(aux.mixture_nll)


@pytest.mark.parametrize(
  ("outputs", "targets", "likelihood", "error", "match"),
  [
    (LOGITS, jnp.array([0.5, 1.0, 0.0, 2.0]), None, TypeError, "labels must be integer"),
    (LOGITS, jnp.zeros((4, 1), jnp.int32), None, ValueError, r"shape \(4, 1\).*y\[\.\.\., 0\]"),
    (LOGITS, jax.nn.one_hot(jnp.arange(4) % 3, 3).astype(jnp.int32), None, ValueError, "one-hot"),
    (jnp.zeros((2, 4, 1)), jnp.zeros((4,), jnp.int32), None, ValueError, "K >= 2"),
    (jnp.zeros((2, 4, 1)), jnp.zeros((4,)), "gauss", ValueError, r"y\[\.\.\., None\]"),
    (jnp.zeros((2, 4, 2)), jnp.zeros((4, 3)), "gauss", ValueError, r"shape \(4, 2\)"),
    (jnp.zeros((2, 0, 3)), jnp.zeros((0,), jnp.int32), None, ValueError, "batch is empty"),
  ],
)
def test_bad_targets_are_errors_at_trace_time(outputs, targets, likelihood, error, match):
  kw = {"likelihood": alrao_jax.gaussian_log_likelihood()} if likelihood else {}
  posterior = jnp.array([0.5, 0.5])
  with pytest.raises(error, match=match):
    alrao_jax.alrao_loss(alrao_jax.CopyOutputs(outputs, outputs), targets, posterior, **kw)
  with pytest.raises(error, match=match):
    jax.jit(lambda o, t: alrao_jax.evaluation_metrics(o, t, posterior, **kw))(outputs, targets)


class _BNNet(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    x = nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x))
    return alrao_jax.AlraoHead(3, num_copies=2)(nn.relu(x))


def test_an_empty_batch_is_refused_before_it_touches_batchnorm():
  model, tx = _BNNet(), alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY)
  x, y = jnp.ones((4, 2)), jnp.zeros((4,), jnp.int32)
  state = alrao_jax.create_train_state(model, tx, KEY, x, train=False)
  step = alrao_jax.make_train_step(model, tx, train_kwargs={"train": True})
  with pytest.raises(ValueError, match="batch is empty"):
    step(state, x[:0], y[:0])
  state, metrics = step(state, x, y)  # the state was neither consumed nor poisoned
  chex.assert_tree_all_finite(state.model_state)
  assert np.isfinite(metrics["loss"])


def test_fit_checks_label_ranges_on_the_host():
  x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
  good = np.arange(64) % 3
  model = nn.Sequential([nn.Dense(4), alrao_jax.AlraoHead(3, num_copies=2)])
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY)
  bad = Splits(Split(x, good), Split(x[:8], np.full(8, 3)), Split(x[:8], good[:8]))
  with pytest.raises(ValueError, match=r"splits\.valid\.targets must lie in \[0, 3\).*3 to 3"):
    fit(model, tx, bad, epochs=1)
  floats = Splits(Split(x, good * 0.5), Split(x[:8], good[:8]), Split(x[:8], good[:8]))
  with pytest.raises(TypeError, match=r"splits\.train\.targets must be integer"):
    fit(model, tx, floats, epochs=1)


# 4. A bf16 head keeps bf16 gradients: the optimizer state keeps its dtypes, one compile.


def test_bf16_head_keeps_its_dtypes_and_compiles_once():
  z = jnp.ones((4, 3), jnp.float32)
  kernel, bias = jnp.ones((2, 3, 5), jnp.bfloat16), jnp.zeros((2, 5), jnp.bfloat16)

  def loss(z, kernel, bias):
    out = alrao_jax.copy_outputs(z, kernel, bias)
    return jnp.sum(out.own.astype(jnp.float32)) + jnp.sum(out.shared.astype(jnp.float32))

  grads = jax.grad(loss, argnums=(0, 1, 2))(z, kernel, bias)
  assert [g.dtype for g in grads] == [jnp.float32, jnp.bfloat16, jnp.bfloat16]

  head = alrao_jax.AlraoHead(5, num_copies=2, param_dtype=jnp.bfloat16)
  model = nn.Sequential([nn.Dense(3), head])
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY, momentum=0.9)
  x, y = jnp.ones((4, 2)), jnp.zeros((4,), jnp.int32)
  state = alrao_jax.create_train_state(model, tx, KEY, x)
  dtypes = jax.tree.map(lambda a: a.dtype, state.opt_state)
  step = alrao_jax.make_train_step(model, tx)
  for _ in range(3):
    state, _ = step(state, x, y)
  assert jax.tree.map(lambda a: a.dtype, state.opt_state) == dtypes
  assert step._cache_size() == 1


# 5. Bayes averaging stays in log space: tiny weights are not 0.


def test_bayes_weights_below_float_range_still_carry_the_mixture():
  logits = jax.random.normal(KEY, (3, 4, 5)).at[0].set(jnp.nan)  # the dominant copy diverged
  labels = jnp.array([0, 1, 2, 3])
  state = alrao_jax.BayesState(jnp.array([0.0, -944.0, -950.0]))
  assert float(alrao_jax.bayes_posterior(state)[1]) == 0.0  # as probabilities: underflow
  loss, aux = alrao_jax.alrao_loss(alrao_jax.CopyOutputs(logits, logits), labels, state)
  assert np.isfinite(loss) and np.isfinite(aux.mixture_nll)
  # Renormalised over the healthy copies, copy 1 carries e^6 / (e^6 + 1) of the mixture.
  lp = jax.nn.log_softmax(logits[1:])[:, jnp.arange(4), labels]
  want = -jnp.mean(
    jax.nn.logsumexp(jnp.array([[-944.0], [-950.0]]) + 944.0 + lp - jnp.log1p(jnp.exp(-6.0)), 0)
  )
  np.testing.assert_allclose(aux.mixture_nll, want, rtol=1e-4)  # float32 ulp at 944: 6e-5
  metrics = alrao_jax.evaluation_metrics(logits, labels, state)
  np.testing.assert_allclose(metrics["loss"], want, rtol=1e-4)
  assert np.isfinite(metrics["accuracy"])


def test_bayes_train_step_survives_the_dominant_copy_diverging():
  model = nn.Sequential([nn.Dense(4), alrao_jax.AlraoHead(3, num_copies=3)])
  tx = alrao_jax.alrao_sgd(1e-3, 1e-2, key=KEY)
  averaging = alrao_jax.bayes_averaging()
  x, y = jnp.ones((4, 2)), jnp.array([0, 1, 2, 0])
  state = alrao_jax.create_train_state(model, tx, KEY, x, averaging=averaging)
  copies = state.params["layers_1"]["alrao_copies"]
  params = {
    **state.params,
    "layers_1": {"alrao_copies": {**copies, "kernel": copies["kernel"].at[0].set(jnp.inf)}},
  }
  state = state.replace(
    params=params, averaging_state=alrao_jax.BayesState(jnp.array([0.0, -944.0, -950.0]))
  )
  step = alrao_jax.make_train_step(model, tx, averaging=averaging)
  state, metrics = step(state, x, y)
  assert np.isfinite(metrics["loss"])
  assert int(jnp.argmax(state.averaging_state.log_posterior)) == 1


# 6. optax's extras: value=, inject_hyperparams, any RNG stream.


def test_reduce_on_plateau_gets_the_loss_as_value():
  model = nn.Sequential([nn.Dense(4), alrao_jax.AlraoHead(3, num_copies=2)])
  tx = optax.chain(
    alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY), optax.contrib.reduce_on_plateau(patience=2)
  )
  x, y = jnp.ones((4, 2)), jnp.array([0, 1, 2, 0])
  state = alrao_jax.create_train_state(model, tx, KEY, x)
  step = alrao_jax.make_train_step(model, tx, donate=False)
  new, metrics = step(state, x, y)
  np.testing.assert_allclose(new.opt_state[1].best_value, metrics["loss"], rtol=1e-6)


def test_inject_hyperparams_names_the_static_arguments():
  params = {"d": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}
  tx = optax.inject_hyperparams(alrao_jax.alrao_sgd)(lr_min=1e-3, lr_max=1.0, key=KEY)
  with pytest.raises(TypeError, match=r"static_args=\('lr_min', 'lr_max', 'key'\)"):
    jax.jit(tx.init)(params)


class _Noisy(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = x + jax.random.normal(self.make_rng("noise"), x.shape)
    return alrao_jax.AlraoHead(3, num_copies=2)(nn.Dense(4)(x))


def test_linen_models_can_draw_from_any_rng_stream():
  model, tx = _Noisy(), alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY)
  x, y = jnp.ones((4, 2)), jnp.array([0, 1, 2, 0])
  state = alrao_jax.create_train_state(model, tx, KEY, x, rng_streams=("noise",))
  step = alrao_jax.make_train_step(model, tx, rng_streams=("noise",), donate=False)
  first, m1 = step(state, x, y)
  _, m2 = step(first, x, y)
  assert np.isfinite(m1["loss"]) and float(m1["loss"]) != float(m2["loss"])
  with pytest.raises(TypeError, match="rng_streams must be a sequence"):
    alrao_jax.make_train_step(model, tx, rng_streams="noise")


# 7. The NNX step: cached graph, train/eval modes kept apart.


def test_nnx_train_and_eval_steps_keep_their_own_modes():
  model = SmallNNXNet(2, 8, 3, 3, dropout=0.5, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, alrao_jax.alrao_sgd(1e-2, 1.0, key=KEY), wrt=nnx.Param)
  step = alrao_jax.make_train_step(model, optimizer)
  evaluate = alrao_jax.make_eval_step(model)  # puts the model in eval mode
  x, y = jax.random.normal(KEY, (16, 2)), jnp.arange(16) % 3
  averaging_state = alrao_jax.switch_init(3)
  before = np.asarray(model.bn.mean[...])
  e1 = evaluate(averaging_state, x, y)
  assert float(e1["loss"]) == float(evaluate(averaging_state, x, y)["loss"])  # deterministic
  averaging_state, _ = step(averaging_state, x, y)
  assert not np.allclose(model.bn.mean[...], before)  # the step ran BatchNorm in train mode
  e2 = evaluate(averaging_state, x, y)
  assert float(e2["loss"]) != float(e1["loss"])  # evaluation sees the updated variables

"""Head, one-backward loss and training step, against naive per-copy computations."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
from flax import nnx

import alrao_jax
from conftest import SmallNNXNet

KEY = jax.random.key(0)
N, D, K, B = 4, 6, 5, 16
X = jax.random.normal(jax.random.key(1), (B, 3))
Y = jax.random.randint(jax.random.key(2), (B,), 0, K)
POSTERIOR = jnp.array([0.1, 0.4, 0.3, 0.2])


class Net(nn.Module):
  num_copies: int = N
  num_outputs: int = K

  @nn.compact
  def __call__(self, x):
    z = jnp.tanh(nn.Dense(D, name="pre")(x))
    return alrao_jax.AlraoHead(self.num_outputs, num_copies=self.num_copies, name="head")(z)


NET = Net()
PARAMS = NET.init(KEY, X)["params"]


def _pre(pre_params, x):
  return jnp.tanh(x @ pre_params["kernel"] + pre_params["bias"])


def _copy_log_probs(z, kernel, bias, j):
  return jax.nn.log_softmax(z @ kernel[j] + bias[j])


def test_one_backward_equals_naive_per_copy_gradients():
  def alrao(params):
    return alrao_jax.alrao_loss(NET.apply({"params": params}, X), Y, POSTERIOR)[0]

  grads = jax.grad(alrao)(PARAMS)
  copies = PARAMS["head"]["alrao_copies"]

  def mixture_loss(pre_params):  # (a) naive mixture, looping over copies
    z = _pre(pre_params, X)
    probs = sum(
      POSTERIOR[j] * jnp.exp(_copy_log_probs(z, copies["kernel"], copies["bias"], j))
      for j in range(N)
    )
    return -jnp.mean(jnp.log(probs[jnp.arange(B), Y]))

  chex.assert_trees_all_close(grads["pre"], jax.grad(mixture_loss)(PARAMS["pre"]), atol=1e-5)
  z = _pre(PARAMS["pre"], X)  # (b) each copy alone, on the pre-classifier output as a constant
  for j in range(N):

    def own_loss(kernel_j, bias_j, j=j):
      kernel = copies["kernel"].at[j].set(kernel_j)
      bias = copies["bias"].at[j].set(bias_j)
      return -jnp.mean(_copy_log_probs(z, kernel, bias, j)[jnp.arange(B), Y])

    gk, gb = jax.grad(own_loss, argnums=(0, 1))(copies["kernel"][j], copies["bias"][j])
    chex.assert_trees_all_close(grads["head"]["alrao_copies"]["kernel"][j], gk, atol=1e-5)
    chex.assert_trees_all_close(grads["head"]["alrao_copies"]["bias"][j], gb, atol=1e-5)


def test_loss_values_and_switch_log_likelihoods():
  outputs = NET.apply({"params": PARAMS}, X)
  loss, aux = alrao_jax.alrao_loss(outputs, Y, POSTERIOR)
  lp = jax.nn.log_softmax(outputs.own)[:, jnp.arange(B), Y]  # (N, B)
  np.testing.assert_allclose(aux.copy_nll, -lp.mean(1), rtol=1e-5)
  mix = -jnp.mean(jnp.log(jnp.einsum("n,nb->b", POSTERIOR, jnp.exp(lp))))
  np.testing.assert_allclose(aux.mixture_nll, mix, rtol=1e-5)
  np.testing.assert_allclose(loss, mix + (-lp.mean(1)).sum(), rtol=1e-5)
  np.testing.assert_allclose(aux.log_likelihoods, lp.T, rtol=1e-5)
  np.testing.assert_allclose(
    jnp.exp(alrao_jax.mixture_log_probs(outputs, POSTERIOR))[jnp.arange(B), Y],
    jnp.einsum("n,nb->b", POSTERIOR, jnp.exp(lp)),
    rtol=1e-5,
  )
  np.testing.assert_array_equal(alrao_jax.best_copy(outputs, POSTERIOR), outputs.own[1])


@pytest.mark.parametrize(
  ("leaf", "bad"), [("kernel", jnp.inf), ("kernel", jnp.nan), ("bias", jnp.inf), ("bias", -jnp.inf)]
)
def test_a_diverged_copy_poisons_nothing(leaf, bad):
  params = jax.tree.map(lambda p: p, PARAMS)
  value = params["head"]["alrao_copies"][leaf]
  params["head"]["alrao_copies"][leaf] = value.at[2].set(bad)

  def loss_fn(params):
    return alrao_jax.alrao_loss(NET.apply({"params": params}, X), Y, POSTERIOR)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  assert np.isfinite(loss) and np.isfinite(aux.mixture_nll)
  assert aux.copy_nll[2] == np.inf and np.isfinite(np.delete(aux.copy_nll, 2)).all()
  chex.assert_tree_all_finite(grads["pre"])
  others = np.delete(np.asarray(grads["head"]["alrao_copies"]["kernel"]), 2, axis=0)
  assert np.isfinite(others).all()
  state = alrao_jax.switch_init(N)
  t = int(state.step)
  state = alrao_jax.switch_averaging(reduction="mean").update(state, aux.log_likelihoods)
  post = alrao_jax.switch_posterior(state)
  chex.assert_tree_all_finite(post)
  assert post[2] <= 1.0 / ((t + 1) * N) * (1 + 1e-5)
  assert np.isfinite(alrao_jax.mixture_log_probs(NET.apply({"params": params}, X), post)).all()


def test_nnx_head_gives_the_same_outputs_and_routing_as_linen():
  head = alrao_jax.nnx.AlraoHead(D, K, num_copies=N, rngs=nnx.Rngs(0))
  copies = PARAMS["head"]["alrao_copies"]
  head.alrao_copies.kernel[...] = copies["kernel"]
  head.alrao_copies.bias[...] = copies["bias"]
  z = _pre(PARAMS["pre"], X)
  got = head(z)
  want = alrao_jax.copy_outputs(z, copies["kernel"], copies["bias"])
  chex.assert_trees_all_close(got, want, atol=1e-6)
  rates = alrao_jax.sample_rates(KEY, nnx.state(head, nnx.Param), 1e-3, 1.0)
  np.testing.assert_allclose(
    rates["alrao_copies"]["kernel"][...].ravel(), alrao_jax.copy_rates(N, 1e-3, 1.0)
  )


def test_one_copy_and_equal_bounds_is_plain_sgd():
  net1 = Net(num_copies=1)
  tx = alrao_jax.alrao_sgd(0.3, 0.3, key=KEY)
  state = alrao_jax.create_train_state(net1, tx, KEY, X)
  step = alrao_jax.make_train_step(net1, tx)

  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(K, name="out")(jnp.tanh(nn.Dense(D, name="pre")(x)))

  copies = state.params["head"]["alrao_copies"]
  plain = jax.tree.map(  # copies: the Alrao step donates its state
    jnp.copy,
    {"pre": state.params["pre"], "out": {"kernel": copies["kernel"][0], "bias": copies["bias"][0]}},
  )
  sgd = optax.sgd(0.3)
  opt_state = sgd.init(plain)

  @jax.jit
  def plain_step(params, opt_state):
    def loss(p):
      logits = Plain().apply({"params": p}, X)
      return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()

    updates, opt_state = sgd.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(3):
    state, _ = step(state, X, Y)
    plain, opt_state = plain_step(plain, opt_state)
  copies = state.params["head"]["alrao_copies"]
  chex.assert_trees_all_close(state.params["pre"], plain["pre"], atol=1e-6)
  chex.assert_trees_all_close(
    (copies["kernel"][0], copies["bias"][0]),
    (plain["out"]["kernel"], plain["out"]["bias"]),
    atol=1e-6,
  )


class BNDropNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(8)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
    return alrao_jax.AlraoHead(K, num_copies=3)(x)


def test_train_step_traces_once_updates_batch_stats_and_has_no_host_callbacks():
  model = BNDropNet()
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY, momentum=0.9)
  state = alrao_jax.create_train_state(model, tx, KEY, X, train=False)
  traces = []

  def counting_likelihood(logits, labels):  # runs only while the step is being traced
    traces.append(1)
    return alrao_jax.categorical_log_likelihood(logits, labels)

  step = alrao_jax.make_train_step(
    model, tx, train_kwargs={"train": True}, likelihood=counting_likelihood
  )
  stats0 = jax.tree.map(np.asarray, state.model_state["batch_stats"])
  losses = []
  for _ in range(5):
    state, metrics = step(state, X, Y)
    losses.append(float(metrics["loss"]))
  assert len(traces) == 2  # one trace (the shared and own routes call it once each)
  jaxpr = str(jax.make_jaxpr(step)(state, X, Y))
  assert "callback" not in jaxpr and "debug" not in jaxpr
  assert int(state.step) == 5 and int(state.averaging_state.step) == 6
  assert not np.allclose(
    state.model_state["batch_stats"]["BatchNorm_0"]["mean"], stats0["BatchNorm_0"]["mean"]
  )
  np.testing.assert_allclose(float(metrics["posterior"].sum()), 1.0, atol=1e-6)
  evaluate = alrao_jax.make_eval_step(model, eval_kwargs={"train": False})
  metrics = evaluate(state, X, Y)
  assert set(metrics) == {"loss", "best_copy_loss", "accuracy", "best_copy_accuracy"}
  assert np.isfinite(metrics["loss"]) and 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_dropout_key_changes_every_step():
  model = BNDropNet()
  tx = optax.sgd(0.0)  # no parameter change: only dropout (and batch stats) vary
  state = alrao_jax.create_train_state(model, tx, KEY, X, train=False)
  step = alrao_jax.make_train_step(model, tx, train_kwargs={"train": True}, donate=False)
  _, m1 = step(state, X, Y)
  state2 = state.replace(rng=jax.random.split(state.rng)[0])
  _, m2 = step(state2, X, Y)
  assert not np.allclose(m1["copy_nll"], m2["copy_nll"])
  _, m3 = step(state, X, Y)  # not donated: the same state gives the same dropout masks
  np.testing.assert_array_equal(m1["copy_nll"], m3["copy_nll"])


def test_the_step_donates_its_state():
  model = Net()
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=KEY, momentum=0.9)
  state = alrao_jax.create_train_state(model, tx, KEY, X)
  step = alrao_jax.make_train_step(model, tx)
  new_state, _ = step(state, X, Y)
  assert state.params["pre"]["kernel"].is_deleted()
  assert not new_state.params["pre"]["kernel"].is_deleted()


def test_nnx_train_step_learns():
  model = SmallNNXNet(3, D, K, N, dropout=0.2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, alrao_jax.alrao_sgd(1e-2, 1.0, key=KEY), wrt=nnx.Param)
  step = alrao_jax.make_train_step(model, optimizer)
  evaluate = alrao_jax.make_eval_step(model)
  averaging_state = alrao_jax.switch_init(N)
  first = float(evaluate(averaging_state, X, Y)["loss"])
  for _ in range(30):
    averaging_state, metrics = step(averaging_state, X, Y)
  last = evaluate(averaging_state, X, Y)
  assert float(last["loss"]) < 0.7 * first
  assert np.isfinite(np.asarray(metrics["copy_nll"])).any()
  assert int(averaging_state.step) == 31


def test_gaussian_mixture_nll_matches_scipy():
  means = jax.random.normal(KEY, (3, 7, 2))
  targets = jax.random.normal(jax.random.key(5), (7, 2))
  post = jnp.array([0.2, 0.5, 0.3])
  sigma = 0.7
  metrics = alrao_jax.evaluation_metrics(
    means, targets, post, likelihood=alrao_jax.gaussian_log_likelihood(sigma=sigma)
  )
  per_example = np.array(
    [
      sum(
        float(post[j])
        * scipy.stats.multivariate_normal(np.asarray(means[j, i]), sigma**2 * np.eye(2)).pdf(
          targets[i]
        )
        for j in range(3)
      )
      for i in range(7)
    ]
  )
  np.testing.assert_allclose(metrics["loss"], -np.log(per_example).mean(), rtol=1e-5)
  np.testing.assert_allclose(
    alrao_jax.mixture_mean(means, post), np.einsum("n,nbd->bd", post, means), atol=1e-6
  )


class LinearRegressor(nn.Module):
  @nn.compact
  def __call__(self, x):
    return alrao_jax.AlraoHead(2, num_copies=7)(x)


def test_regression_posterior_concentrates_on_a_workable_copy():
  # Linear regression on whitened inputs: the Hessian is about I, so SGD learns within 200
  # steps for lr in [0.1, 1], crawls below, and diverges for lr >= 2.
  x = jax.random.normal(KEY, (256, 4))
  w = jax.random.normal(jax.random.key(9), (4, 2))
  y = x @ w + 0.1 * jax.random.normal(jax.random.key(8), (256, 2))
  model = LinearRegressor()
  lr_min, lr_max = 1e-4, 1e2
  tx = alrao_jax.alrao_sgd(lr_min, lr_max, key=KEY)
  likelihood = alrao_jax.gaussian_log_likelihood(sigma=1.0)
  state = alrao_jax.create_train_state(model, tx, KEY, x)
  step = alrao_jax.make_train_step(model, tx, likelihood=likelihood)
  for _ in range(200):
    state, metrics = step(state, x, y)
  post = np.asarray(metrics["posterior"])
  rates = np.asarray(alrao_jax.copy_rates(7, lr_min, lr_max))
  workable = (rates >= 0.05) & (rates <= 1.5)
  assert post[workable].sum() > 0.98 and workable[post.argmax()]
  assert np.isinf(np.asarray(metrics["copy_nll"])[rates > 2]).all()  # the fast ones diverged
  evaluate = alrao_jax.make_eval_step(model, likelihood=likelihood)
  noise_floor = -float(likelihood(jnp.zeros((1, 1, 2)), jnp.zeros((1, 2)))[0, 0])
  assert float(evaluate(state, x, y)["loss"]) < noise_floor + 0.05


@pytest.mark.parametrize(
  ("outputs", "per_copy"),
  [
    (5, False),  # copies among the output columns
    (alrao_jax.head.BATCHED_MIN_OUTPUTS + 3, False),  # batched over the copies
    (alrao_jax.head.BATCHED_MIN_OUTPUTS + 3, True),  # dz one copy at a time (huge CPU heads)
  ],
)
@pytest.mark.parametrize("batch_shape", [(7,), (3, 4)])
def test_copy_outputs_matches_autodiff_in_every_layout(outputs, per_copy, batch_shape, monkeypatch):
  if per_copy:
    monkeypatch.setattr(alrao_jax.head, "PER_COPY_MIN_BYTES", 0)
  z = jax.random.normal(KEY, (*batch_shape, D))
  kernel = jax.random.normal(jax.random.key(3), (N, D, outputs))
  bias = jax.random.normal(jax.random.key(4), (N, outputs))
  c_shared, c_own = jax.random.normal(jax.random.key(5), (2, N, *batch_shape, outputs))

  def reference(z, kernel, bias):
    out = jnp.stack([z @ kernel[j] + bias[j] for j in range(N)])
    return jnp.sum(out * c_shared), jnp.sum(out * c_own)

  def routed(z, kernel, bias):
    out = alrao_jax.copy_outputs(z, kernel, bias)
    return jnp.sum(out.shared * c_shared) + jnp.sum(out.own * c_own)

  dz_ref = jax.grad(lambda z: reference(z, kernel, bias)[0])(z)
  dk_ref, db_ref = jax.grad(lambda k, b: reference(z, k, b)[1], argnums=(0, 1))(kernel, bias)
  dz, dk, db = jax.grad(routed, argnums=(0, 1, 2))(z, kernel, bias)
  chex.assert_trees_all_close((dz, dk, db), (dz_ref, dk_ref, db_ref), rtol=1e-5, atol=1e-5)
  value = alrao_jax.copy_outputs(z, kernel, bias).own
  chex.assert_trees_all_close(
    value, jnp.stack([z @ kernel[j] + bias[j] for j in range(N)]), rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize(
  "optimizer",
  [
    optax.contrib.prodigy(),
    optax.contrib.dadapt_adamw(),
    optax.contrib.dog(),
    optax.contrib.cocob(),
    optax.contrib.mechanize(optax.sgd(0.1)),
    optax.contrib.schedule_free_sgd(),
  ],
  ids=["prodigy", "dadapt_adamw", "dog", "cocob", "mechanize", "schedule_free_sgd"],
)
def test_the_donating_step_works_with_optimizers_that_keep_params(optimizer):
  state = alrao_jax.create_train_state(NET, optimizer, KEY, X)
  step = alrao_jax.make_train_step(NET, optimizer)
  for _ in range(2):
    state, metrics = step(state, X, Y)
  assert np.isfinite(float(metrics["loss"]))


def test_evaluation_of_diverged_copies_is_never_a_good_score():
  logits = jnp.stack([jnp.full((4, 3), jnp.nan), jnp.zeros((4, 3))])  # copy 0 diverged
  labels = jnp.array([0, 1, 2, 0])
  both = alrao_jax.evaluation_metrics(logits, labels, jnp.array([0.9, 0.1]))
  assert both["loss"] == pytest.approx(np.log(3), rel=1e-6)  # copy 1 alone, renormalised
  # the best copy is the usable one of largest weight, as predict(best=True) takes it (the
  # diverged copy 0 was scored: inf and nan, though the prediction came from copy 1)
  assert both["best_copy_loss"] == pytest.approx(np.log(3), rel=1e-6)
  predicted = jnp.argmax(alrao_jax.best_copy(logits, jnp.array([0.9, 0.1])), -1)
  assert both["best_copy_accuracy"] == pytest.approx(float(jnp.mean(predicted == labels)))
  dead = alrao_jax.evaluation_metrics(logits[:1], labels, jnp.ones(1))
  assert dead["loss"] == np.inf and dead["best_copy_loss"] == np.inf  # was 0: looked perfect
  assert np.isnan(dead["accuracy"]) and np.isnan(dead["best_copy_accuracy"])


@pytest.mark.parametrize(
  ("outputs", "examples", "per_copy"),
  [
    (5, 7, False),  # small head: its kernel zeroed
    (alrao_jax.head.BATCHED_MIN_OUTPUTS + 3, 40, False),  # batched, more examples than classes
    (alrao_jax.head.BATCHED_MIN_OUTPUTS + 3, 7, False),  # large head: dz dropped per copy
    (alrao_jax.head.BATCHED_MIN_OUTPUTS + 3, 7, True),  # the same, one matmul per copy
  ],
)
@pytest.mark.parametrize("bad", [jnp.inf, jnp.nan])
def test_copy_outputs_drops_a_diverged_copy_from_dz_in_every_regime(
  outputs, examples, per_copy, bad, monkeypatch
):
  if per_copy:
    monkeypatch.setattr(alrao_jax.head, "PER_COPY_MIN_BYTES", 0)
  z = jax.random.normal(KEY, (examples, D))
  kernel = jax.random.normal(jax.random.key(3), (N, D, outputs)).at[2, 0, 1].set(bad)
  bias = jax.random.normal(jax.random.key(4), (N, outputs))
  c_shared = jax.random.normal(jax.random.key(5), (N, examples, outputs)).at[2].set(0.0)

  def routed(z):
    return jnp.sum(alrao_jax.copy_outputs(z, kernel, bias).shared * c_shared)

  keep = np.arange(N) != 2
  expected = jnp.einsum("nek,ndk->ed", c_shared[keep], kernel[keep])
  np.testing.assert_allclose(jax.grad(routed)(z), expected, rtol=1e-5, atol=1e-5)


def test_evaluation_in_chunks_equals_the_whole_split():
  from alrao_jax.evaluation import evaluate_in_chunks

  model = nn.Sequential([nn.Dense(8), nn.relu, alrao_jax.AlraoHead(3, num_copies=4)])
  x = jax.random.normal(KEY, (50, 5))
  y = jax.random.randint(jax.random.key(9), (50,), 0, 3)
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(1))
  state = alrao_jax.create_train_state(model, tx, jax.random.key(0), x)
  state, _ = alrao_jax.make_train_step(model, tx)(state, x, y)
  evaluate = alrao_jax.make_eval_step(model)
  whole = evaluate_in_chunks(evaluate, state, x, y, None)
  assert whole == {k: float(v) for k, v in evaluate(state, x, y).items()}
  chunked = evaluate_in_chunks(evaluate, state, x, y, 16)  # 16, 16, 16 and 2 examples
  assert chunked.keys() == whole.keys()
  for name in whole:
    assert chunked[name] == pytest.approx(whole[name], rel=1e-6), name
  with pytest.raises(ValueError, match="eval_batch_size must be an int >= 1"):
    evaluate_in_chunks(evaluate, state, x, y, 0)


def test_mismatched_steps_states_and_outputs_are_named():
  with pytest.raises(TypeError, match="outputs must be the CopyOutputs of an Alrao head"):
    alrao_jax.alrao_loss(jnp.zeros((2, 4, 3)), jnp.zeros(4, int), jnp.ones(2) / 2)
  with pytest.raises(ValueError, match="the head has 2 copies"):
    outputs = alrao_jax.copy_outputs(jnp.ones((4, 3)), jnp.ones((2, 3, 5)), jnp.zeros((2, 5)))
    alrao_jax.alrao_loss(outputs, jnp.zeros(4, int), jnp.ones(3) / 3)
  model = SmallNNXNet(4, 8, 3, 3, dropout=0.1, rngs=nnx.Rngs(0))
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  step = alrao_jax.make_train_step(model, optimizer)
  x, y = jnp.ones((8, 4)), jnp.arange(8) % 3
  with pytest.raises(ValueError, match="does not fit the head's 3 copies"):
    step(alrao_jax.switch_init(5), x, y)
  with pytest.raises(TypeError, match="is a BayesState, but the step's averaging makes a Switch"):
    step(alrao_jax.bayes_init(3), x, y)
  assert np.isfinite(step(alrao_jax.switch_init(3), x, y)[1]["loss"])  # nothing was donated
  linen = nn.Sequential([nn.Dense(4), alrao_jax.AlraoHead(3, num_copies=3)])
  with pytest.raises(TypeError, match="a linen model needs an optax transformation"):
    alrao_jax.make_train_step(linen, optimizer)


def test_the_heads_outputs_name_the_fix_where_logits_would_go():
  outputs = alrao_jax.copy_outputs(jnp.ones((4, 3)), jnp.ones((2, 3, 5)), jnp.zeros((2, 5)))
  cast = outputs.astype(jnp.bfloat16)  # a Transformer's final logits.astype(...)
  assert isinstance(cast, alrao_jax.CopyOutputs) and cast.own.dtype == jnp.bfloat16
  assert outputs.shape == (2, 4, 5) and outputs.dtype == jnp.float32
  for misuse in (
    lambda: jnp.argmax(outputs, -1),
    lambda: jnp.asarray(outputs, jnp.float32),
    lambda: optax.softmax_cross_entropy_with_integer_labels(outputs, jnp.zeros(4, int)),
  ):
    with pytest.raises(TypeError, match=r"not logits.*alrao_loss.*mixture_log_probs"):
      misuse()
  log_probs = alrao_jax.mixture_log_probs(outputs, jnp.ones(2) / 2)  # the one-line way
  assert log_probs.shape == (4, 5) and jnp.argmax(log_probs, -1).shape == (4,)


def test_rates_of_reads_the_rates_inside_any_combinator():
  params = {"kernel": jnp.ones((2, 3))}
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0), momentum=0.9)
  want = alrao_jax.sample_rates(jax.random.key(0), params, 1e-3, 1.0)
  for wrapped in (tx, optax.chain(optax.clip(1.0), tx), optax.MultiSteps(tx, 2)):
    chex.assert_trees_all_equal(alrao_jax.rates_of(wrapped.init(params)), want)
  with pytest.raises(ValueError, match="holds 0 rate trees"):
    alrao_jax.rates_of(optax.sgd(0.1).init(params))

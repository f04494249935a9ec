"""Programs as users write them: two-input models, a plain output layer in the same loop,
a separate evaluation module; the plain layer's step equals optax's own."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import alrao_jax

RNG = np.random.default_rng(0)
IDS = RNG.integers(0, 20, size=(320, 7)).astype(np.int32)
LENGTHS = RNG.integers(1, 8, size=320).astype(np.int32)
Y = ((IDS[:, 0] > 9).astype(np.int32) + (LENGTHS > 4)).astype(np.int32)


class TwoInput(nn.Module):
  """A bag of embeddings over the first ``lengths`` tokens: model(ids, lengths)."""

  copies: int | None = 4
  deterministic: bool = False

  @nn.compact
  def __call__(self, ids, lengths):
    embedded = nn.Embed(20, 8)(ids)
    mask = (jnp.arange(ids.shape[1]) < lengths[:, None])[..., None]
    x = jnp.concatenate(
      [(embedded * mask).sum(1) / lengths[:, None], embedded[:, 0], lengths[:, None] / 7.0], -1
    )
    x = nn.Dropout(0.1, deterministic=self.deterministic)(nn.relu(nn.Dense(32)(x)))
    if self.copies is None:
      return nn.Dense(3)(x)
    return alrao_jax.AlraoHead(3, num_copies=self.copies)(x)


def test_two_inputs_a_plain_baseline_and_an_eval_module_share_fit():
  splits = alrao_jax.split_arrays((IDS, LENGTHS), Y, valid=40, test=40)
  assert isinstance(splits.train.inputs, tuple) and len(splits.train.inputs[1]) == 240
  tx = alrao_jax.alrao_sgd(1e-3, 3.0, key=jax.random.key(0))
  for copies, optimizer in ((4, tx), (None, optax.sgd(1.0))):
    evaluation = TwoInput(copies=copies, deterministic=True)  # a module of its own
    result = alrao_jax.fit(
      TwoInput(copies=copies), optimizer, splits, epochs=10, eval_model=evaluation
    )
    assert result.test["accuracy"] > 0.7, result.test
    probs = alrao_jax.predict(evaluation, result.state, splits.test.inputs)
    assert probs.shape == (40, 3)
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)
  # another architecture as eval_model is named before training (was a raw Flax shape error)
  kwargs = {"epochs": 1, "eval_model": TwoInput(copies=6, deterministic=True)}
  message = r"eval_model cannot evaluate the trained model's variables \("
  with pytest.raises(ValueError, match=message):
    alrao_jax.fit(TwoInput(copies=4), tx, splits, **kwargs)
  with pytest.raises(ValueError, match=message):
    alrao_jax.sweep(TwoInput(copies=4), optax.sgd, splits, values=[1.0], **kwargs)


def test_a_plain_output_layer_steps_as_optax_does():
  """One copy of a plain layer: the step's gradient is the cross-entropy's (an oracle)."""
  model = TwoInput(copies=None, deterministic=True)
  tx = optax.sgd(0.5)
  state = alrao_jax.create_train_state(model, tx, jax.random.key(1), IDS[:32], LENGTHS[:32])
  step = alrao_jax.make_train_step(model, tx, donate=False)
  new, metrics = step(state, (IDS[:32], LENGTHS[:32]), Y[:32])

  def loss(params):
    logits = model.apply({"params": params}, IDS[:32], LENGTHS[:32])
    return optax.softmax_cross_entropy_with_integer_labels(logits, Y[:32]).mean()

  value, grads = jax.value_and_grad(loss)(state.params)
  want = optax.apply_updates(state.params, tx.update(grads, tx.init(state.params))[0])
  np.testing.assert_allclose(metrics["loss"], value, rtol=1e-6)
  for got, expected in zip(jax.tree.leaves(new.params), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_an_nnx_model_that_takes_rngs_at_call_time_trains():
  """As Flax's NNX MNIST example: Dropout without rngs of its own, rngs passed at call time."""
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, *, rngs):
      self.dense, self.drop = nnx.Linear(6, 16, rngs=rngs), nnx.Dropout(0.5)
      self.head = alrao_jax.nnx.AlraoHead(16, 3, num_copies=3, rngs=rngs)

    def __call__(self, x, rngs=None):
      return self.head(self.drop(nnx.relu(self.dense(x)), rngs=rngs))

  model = Net(rngs=nnx.Rngs(0))
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  rngs = nnx.Rngs(dropout=1)
  step = alrao_jax.make_train_step(model, optimizer, train_kwargs={"rngs": rngs})
  x = jax.random.normal(jax.random.key(0), (32, 6))
  y = (x[:, 0] > 0).astype(jnp.int32)
  averaging = alrao_jax.switch_init(3)
  for _ in range(30):
    averaging, _ = step(averaging, x, y)
  assert int(rngs.dropout.count[...]) == 30  # a fresh dropout mask at every step
  assert alrao_jax.make_eval_step(model)(averaging, x, y)["accuracy"] > 0.7


def test_fit_trains_an_nnx_model_resumes_it_exactly_and_leaves_the_best_epoch(tmp_path):
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, copies, *, rngs):
      self.dense, self.bn = nnx.Linear(7, 16, rngs=rngs), nnx.BatchNorm(16, rngs=rngs)
      self.drop = nnx.Dropout(0.2)
      if copies is None:
        self.head = nnx.Linear(16, 3, rngs=rngs)
      else:
        self.head = alrao_jax.nnx.AlraoHead(16, 3, num_copies=copies, rngs=rngs)

    def __call__(self, ids, lengths, rngs=None):  # two inputs, rngs at call time
      x = jnp.concatenate([ids / 20.0, lengths[:, None] / 7.0], -1)
      return self.head(self.drop(nnx.relu(self.bn(self.dense(x))), rngs=rngs))

  splits = alrao_jax.split_arrays((IDS[:, :6], LENGTHS), Y, valid=40, test=40)

  def run(epochs, copies=3, **kwargs):
    model = Net(copies, rngs=nnx.Rngs(0))
    tx = alrao_jax.alrao_sgd(1e-3, 3.0, key=jax.random.key(0)) if copies else optax.sgd(0.3)
    rngs = {"rngs": nnx.Rngs(dropout=1)}
    return model, alrao_jax.fit(model, tx, splits, epochs=epochs, train_kwargs=rngs, **kwargs)

  model, whole = run(3)
  # the model is given back in the mode it came in (train, as built): dropout on, BatchNorm
  # updating its statistics for the user's next loop (before: left in eval())
  assert model.drop.deterministic is False and model.bn.use_running_average is False
  run(1, checkpoint_dir=tmp_path)
  resumed_model, resumed = run(3, checkpoint_dir=tmp_path, resume=True)
  other = Net(3, rngs=nnx.Rngs(0))  # resumed with another interval: refused, model untouched
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(other)))
  with pytest.raises(ValueError, match="holds other learning rates than this optimizer"):
    alrao_jax.fit(
      other,
      alrao_jax.alrao_sgd(1e-2, 3.0, key=jax.random.key(0)),
      splits,
      epochs=3,
      train_kwargs={"rngs": nnx.Rngs(dropout=1)},
      checkpoint_dir=tmp_path,
      resume=True,
    )
  after = nnx.to_pure_dict(nnx.state(other))
  jax.tree.map(np.testing.assert_array_equal, before, after)
  assert resumed.history == whole.history and resumed.stopped == whole.stopped == "epochs"
  params = [jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (resumed_model, model)]
  for a, b in zip(*params, strict=True):
    np.testing.assert_array_equal(a, b)
  # the model ends with the best epoch's variables: evaluating it gives that epoch's test loss
  evaluate = alrao_jax.make_eval_step(model)
  test = evaluate(whole.state, splits.test.inputs, splits.test.targets)
  np.testing.assert_allclose(test["loss"], whole.test["loss"], rtol=1e-5)
  plain_model, plain = run(3, copies=None)
  assert plain.best_epoch >= 1 and plain.test["loss"] < np.log(3)  # below chance
  assert alrao_jax.predict(plain_model, plain.state, splits.test.inputs).shape == (40, 3)


# Models written as Flax's examples write them, each trained through fit, through the
# README's own-step recipe (alrao_loss plus the switch) and predicting.
class LM(nn.Module):
  """An lm1b-style decoder: a config flag for dropout, and logits cast to float32 at the end."""

  vocab: int = 12
  deterministic: bool = False

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab, 16)(tokens)
    h = nn.LayerNorm()(x)
    mask = nn.make_causal_mask(tokens)
    x = x + nn.MultiHeadDotProductAttention(
      num_heads=2, deterministic=self.deterministic, dropout_rate=0.1
    )(h, h, mask=mask)
    x = x + nn.Dense(16)(nn.gelu(nn.Dense(32)(nn.LayerNorm()(x))))
    logits = alrao_jax.AlraoHead(self.vocab, num_copies=3)(nn.LayerNorm()(x))
    return logits.astype(jnp.float32)  # what lm1b does to its logits


class BiLSTM(nn.Module):
  """SST-2 style: (ids, lengths), a bidirectional LSTM, attention pooling over valid tokens."""

  @nn.compact
  def __call__(self, ids, lengths):
    x = nn.Embed(20, 8)(ids)
    forward = nn.RNN(nn.OptimizedLSTMCell(8))(x, seq_lengths=lengths)
    backward = nn.RNN(nn.OptimizedLSTMCell(8), reverse=True, keep_order=True)(
      x, seq_lengths=lengths
    )
    h = jnp.concatenate([forward, backward], -1)
    valid = jnp.arange(ids.shape[1])[None] < lengths[:, None]
    scores = jnp.where(valid, nn.Dense(1)(jnp.tanh(h))[..., 0], -1e9)
    pooled = jnp.einsum("bt,btd->bd", jax.nn.softmax(scores, -1), h)
    return alrao_jax.AlraoHead(3, num_copies=3)(pooled)


def _own_step(model, variables, inputs, targets, **kwargs):
  """Two steps of the README recipe: alrao_loss, optax, the switch; returns the losses."""
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0))
  params, opt_state = variables["params"], tx.init(variables["params"])
  switch, averaging = alrao_jax.switch_init(3), alrao_jax.switch_averaging()

  @jax.jit
  def step(params, opt_state, switch, key):
    def loss_fn(params):
      outputs = model.apply({"params": params}, *inputs, rngs={"dropout": key}, **kwargs)
      return alrao_jax.alrao_loss(outputs, targets, switch)

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    switch = averaging.update(switch, aux.log_likelihoods)
    return optax.apply_updates(params, updates), opt_state, switch, aux.mixture_nll

  losses = []
  for i in range(2):
    params, opt_state, switch, loss = step(params, opt_state, switch, jax.random.key(i))
    losses.append(float(loss))
  return losses


def test_an_lm1b_style_decoder_that_casts_its_logits():
  tokens = jnp.asarray(RNG.integers(0, 12, size=(96, 9)), jnp.int32)
  inputs, targets = np.asarray(tokens[:, :-1]), np.asarray(tokens[:, 1:])  # (B, T) labels
  splits = alrao_jax.split_arrays(inputs, targets, valid=16, test=16)
  result = alrao_jax.fit(
    LM(),
    alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0)),
    splits,
    epochs=2,
    batch_size=16,
    eval_model=LM(deterministic=True),
  )
  assert result.best_epoch >= 1 and np.isfinite(result.test["loss"])
  probs = alrao_jax.predict(LM(deterministic=True), result.state, splits.test.inputs)
  assert probs.shape == (16, 8, 12)
  variables = LM().init(jax.random.key(1), inputs[:8])
  losses = _own_step(LM(), variables, (inputs[:8],), targets[:8])
  assert all(np.isfinite(losses))


def test_a_two_input_bilstm_classifier():
  splits = alrao_jax.split_arrays((IDS, LENGTHS), Y, valid=40, test=40)
  result = alrao_jax.fit(
    BiLSTM(), alrao_jax.alrao_sgd(1e-3, 3.0, key=jax.random.key(0)), splits, epochs=3
  )
  assert result.best_epoch >= 1 and result.test["loss"] < np.log(3)  # below chance
  assert alrao_jax.predict(BiLSTM(), result.state, splits.test.inputs).shape == (40, 3)
  variables = BiLSTM().init(jax.random.key(1), IDS[:8], LENGTHS[:8])
  assert all(np.isfinite(_own_step(BiLSTM(), variables, (IDS[:8], LENGTHS[:8]), Y[:8])))


class ResNet(nn.Module):
  """Residual conv blocks with BatchNorm and dropout, both driven by one ``deterministic``
  flag passed at call time, as Flax's ImageNet example drives ``train``."""

  @nn.compact
  def __call__(self, x, deterministic: bool):
    x = nn.Conv(8, (3, 3))(x)
    for _ in range(2):
      h = nn.BatchNorm(use_running_average=deterministic)(nn.Conv(8, (3, 3), use_bias=False)(x))
      x = nn.relu(x + nn.Dropout(0.1, deterministic=deterministic)(nn.relu(h)))
    return alrao_jax.AlraoHead(3, num_copies=4)(jnp.mean(x, axis=(1, 2)))


def test_a_resnet_with_batch_stats_and_a_deterministic_flag_fits_steps_and_predicts():
  rng = np.random.default_rng(1)
  images = rng.normal(size=(160, 8, 8, 3)).astype(np.float32)
  labels = (images[..., 0].mean((1, 2)) > 0).astype(np.int32) + (images[..., 1].mean((1, 2)) > 0)
  splits = alrao_jax.split_arrays(images, labels, valid=32, test=32)
  tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(1))
  result = alrao_jax.fit(
    ResNet(),
    tx,
    splits,
    epochs=2,
    batch_size=16,
    train_kwargs={"deterministic": False},
    eval_kwargs={"deterministic": True},
  )
  stats = result.state.model_state["batch_stats"]
  assert any(float(jnp.abs(v).max()) > 0 for v in jax.tree.leaves(stats))  # BatchNorm learned
  probs = alrao_jax.predict(ResNet(), result.state, images[:5], deterministic=True)
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)
  assert probs.shape == (5, 3)
  # the README's own step, with a flax TrainState subclass carrying batch_stats and the switch
  from flax.training import train_state

  class State(train_state.TrainState):
    batch_stats: dict
    switch: alrao_jax.SwitchState

  variables = ResNet().init(jax.random.key(0), images[:1], deterministic=True)
  state = State.create(
    apply_fn=ResNet().apply,
    params=variables["params"],
    tx=tx,
    batch_stats=variables["batch_stats"],
    switch=alrao_jax.switch_init(4),
  )
  switch = alrao_jax.switch_averaging()

  @jax.jit
  def step(state, x, y, key):
    def loss_fn(params):
      outputs, new = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats},
        x,
        deterministic=False,
        mutable=["batch_stats"],
        rngs={"dropout": key},
      )
      loss, aux = alrao_jax.alrao_loss(outputs, y, state.switch)
      return loss, (aux, new["batch_stats"])

    (_, (aux, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=stats)
    return state.replace(switch=switch.update(state.switch, aux.log_likelihoods)), aux.mixture_nll

  losses = []
  for i in range(20):
    state, loss = step(state, images[:64], labels[:64], jax.random.key(i))
    losses.append(float(loss))
  assert np.isfinite(losses).all() and np.mean(losses[-5:]) < np.mean(losses[:5])


def test_a_two_input_model_is_swept_as_fit_trains_it_and_tuned():
  splits = alrao_jax.split_arrays((IDS, LENGTHS), Y, valid=40, test=40)
  evaluation = TwoInput(copies=None, deterministic=True)
  kwargs = {"epochs": 3, "eval_model": evaluation, "seed": 2}
  swept = alrao_jax.sweep(TwoInput(copies=None), optax.sgd, splits, values=[0.3, 1.0], **kwargs)
  alone = alrao_jax.fit(TwoInput(copies=None), optax.sgd(1.0), splits, **kwargs)
  for got, want in zip(swept.histories[1], alone.history, strict=True):
    for key in ("train_loss", "valid_loss", "test_loss"):
      np.testing.assert_allclose(got[key], want[key], rtol=2e-4, atol=1e-6, err_msg=key)
  tuned = alrao_jax.tune(
    TwoInput(deterministic=True),
    splits,
    lr_min=1e-3,
    lr_max=10.0,
    epochs=4,
    plain_model=TwoInput(copies=None, deterministic=True),
  )
  assert tuned.lr in tuned.candidates and np.isfinite(tuned.race.start_valid_loss)
  assert np.isfinite(tuned.race.valid_losses).any() and np.isfinite(tuned.suggestion.lr)

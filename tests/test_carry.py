"""Carried streams (truncated BPTT, the paper's PTB setup): the LSTM state passes from window to
window in training and evaluation, against the same LSTM run over the whole streams at once."""

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import nnx

import alrao_jax
from alrao_jax.evaluation import evaluate_streams
from alrao_jax.experiments.data import _sequences
from alrao_jax.experiments.models import CharLSTM
from alrao_jax.splits import Split, Splits

VOCAB, STREAMS, BPTT = 7, 4, 6
MODES = {"train_kwargs": {"train": True}, "eval_kwargs": {"train": False}}


def _model(carry=True):
  return CharLSTM(vocab_size=VOCAB, num_copies=2, embed=4, hidden=8, dropout=0.0, carry=carry)


def _splits(windows=(5, 3, 2)):
  """Window-major splits of STREAMS streams, cut like load_ptb_char's."""
  rng = np.random.default_rng(0)
  parts = [
    _sequences(rng.integers(0, VOCAB, w * STREAMS * BPTT + 1).astype(np.int32), STREAMS, BPTT)
    for w in windows
  ]
  return Splits(*parts)


def _streams(split):
  """Window-major rows back to whole streams: (windows * streams, T) -> (streams, windows * T)."""
  rows = split.reshape(-1, STREAMS, BPTT).transpose(1, 0, 2)
  return rows.reshape(STREAMS, -1)


def _whole_stream_nll(state, split):
  """The oracle: the plain LSTM (no carry) over each whole stream at once, mixture NLL."""
  plain = _model(carry=False)
  outputs = plain.apply({"params": state.params}, _streams(split.inputs), train=False)
  weights = alrao_jax.steps.averaging_weights(alrao_jax.switch_averaging(), state.averaging_state)
  metrics = alrao_jax.evaluation_metrics(outputs, _streams(split.targets), weights)
  return {k: float(v) for k, v in metrics.items()}


def _final_states(params, split):
  """The oracle's final (c, h) of each LSTM layer after each whole stream (flax's RNN)."""
  x = params["Embed_0"]["embedding"][_streams(split.inputs)]
  finals = []
  for layer in range(2):
    rnn = nn.RNN(nn.OptimizedLSTMCell(8), return_carry=True)
    final, x = rnn.apply({"params": {"cell": params[f"OptimizedLSTMCell_{layer}"]}}, x)
    finals.append(final)
  return finals


@pytest.fixture(scope="module")
def trained():
  """Two epochs of Alrao-SGD on carried streams."""
  tx = alrao_jax.alrao_sgd(1e-2, 1.0, key=jax.random.key(1))
  return alrao_jax.fit(
    _model(), tx, _splits(), epochs=2, batch_size=STREAMS, carry=("carry",), **MODES
  )


def test_carried_evaluation_equals_the_whole_streams_at_once(trained):
  state, splits = trained.last_state, _splits()
  evaluate = alrao_jax.make_eval_step(_model(), carry=("carry",), eval_kwargs={"train": False})
  for chunk in (None, 2 * STREAMS + 1):  # the whole split; two windows, then the last one
    found = evaluate_streams(
      evaluate, state, *splits.valid, streams=STREAMS, carry=("carry",), chunk=chunk
    )
    expected = _whole_stream_nll(state, splits.valid)
    for name in expected:
      assert found[name] == pytest.approx(expected[name], rel=2e-5, abs=1e-6), (chunk, name)
  # fit evaluated the test split the same way, from zeros (not from the valid split's end)
  expected = _whole_stream_nll(state, splits.test)
  assert trained.history[-1]["test_loss"] == pytest.approx(expected["loss"], rel=2e-5)


def test_training_takes_the_windows_in_order_and_restarts_the_streams_every_epoch():
  """With a zero rate the params stay put, so the carry after the second epoch is the LSTM's
  final state over the whole training streams only if the windows ran in order and the state
  was zeroed at the epoch's start (else it would have started from the first epoch's end)."""
  splits = _splits()
  kw = {"batch_size": STREAMS, "carry": ("carry",), **MODES}
  result = alrao_jax.fit(_model(), optax.sgd(0.0), splits, epochs=2, **kw)
  carried = result.last_state.model_state["carry"]
  for layer, (c, h) in enumerate(_final_states(result.last_state.params, splits.train)):
    np.testing.assert_allclose(carried[f"layer_{layer}"][0], c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carried[f"layer_{layer}"][1], h, rtol=1e-5, atol=1e-6)


def test_bad_carry_arguments_are_named():
  splits = _splits()
  tx = optax.sgd(0.1)
  kw = {"epochs": 1, "batch_size": STREAMS, **MODES}
  with pytest.raises(ValueError, match=r"splits.valid has 10 rows, not a multiple"):
    bad = splits._replace(valid=Split(splits.valid.inputs[:10], splits.valid.targets[:10]))
    alrao_jax.fit(_model(), tx, bad, carry=("carry",), **kw)
  with pytest.raises(ValueError, match=r"carry names \['hidden'\].*it has \['carry'\]"):
    alrao_jax.fit(_model(), tx, splits, carry=("hidden",), **kw)
  with pytest.raises(TypeError, match="carry must be a sequence of collection names"):
    alrao_jax.fit(_model(), tx, splits, carry="carry", **kw)
  with pytest.raises(ValueError, match=r"pass carry=\('carry',\)"):
    alrao_jax.fit(_model(), tx, splits, **kw)
  with pytest.raises(ValueError, match="NNX model keeps its state"):
    net = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
    alrao_jax.make_eval_step(net, carry=("carry",))


def test_the_ptb_task_carries_its_streams_and_shrinks_to_whole_windows():
  from alrao_jax.experiments.tasks import load_task

  task = load_task("ptb-char")
  assert task.carry == ("carry",) and task.build(6).carry
  assert all(len(s.inputs) % task.batch_size == 0 for s in task.splits)
  shrunk = task.shrink(64)  # 3 windows of 20 streams
  assert [len(s.inputs) for s in shrunk.splits] == [60, 60, 60]
  assert len(task.shrink(7).splits.train.inputs) == task.batch_size  # at least one window


@pytest.mark.filterwarnings("ignore:alrao_jax.suggest_lr:UserWarning")  # 1 epoch: low confidence
def test_a_model_on_streams_is_tuned_and_raced_on_its_streams():
  result = alrao_jax.tune(
    _model(),
    _splits(),
    lr_min=1e-2,
    lr_max=1.0,
    epochs=1,
    race_epochs=1,
    batch_size=STREAMS,
    carry=("carry",),
    train_kwargs=MODES["train_kwargs"],
    eval_kwargs=MODES["eval_kwargs"],
  )
  assert np.isfinite(result.alrao.history[-1]["test_loss"]) and result.lr in result.candidates
  race = result.race
  assert np.isfinite(race.start_valid_loss) and np.isfinite(race.valid_losses).any()
  carried = race.state(int(np.nanargmin(race.valid_losses))).model_state["carry"]["layer_1"][1]
  assert carried.shape[0] == STREAMS and carried.any()  # each racer carried its own streams


def test_a_sweep_member_on_carried_streams_is_the_fit_run_at_its_rate():
  """Each member keeps its own LSTM state, zeroed every epoch, windows in order: member 1 is
  the plain fit at its rate (history, and the carry its best state ends with)."""
  splits, rates = _splits(), [0.05, 0.5]
  kw = {"epochs": 2, "batch_size": STREAMS, "carry": ("carry",), **MODES}
  result = alrao_jax.sweep(_model(), optax.sgd, splits, values=rates, **kw)
  alone = alrao_jax.fit(_model(), optax.sgd(rates[1]), splits, **kw)
  for swept, fitted in zip(result.histories[1], alone.history, strict=True):
    for key in ("train_loss", "valid_loss", "test_loss"):
      assert swept[key] == pytest.approx(fitted[key], rel=2e-4), key
  best = result.state(1).model_state["carry"]
  for got, want in zip(
    jax.tree.leaves(best), jax.tree.leaves(alone.state.model_state["carry"]), strict=True
  ):
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
  assert result.histories[0][-1]["valid_loss"] != result.histories[1][-1]["valid_loss"]
  with pytest.raises(ValueError, match=r"pass carry=\('carry',\)"):
    alrao_jax.sweep(_model(), optax.sgd, splits, values=rates, **{**kw, "carry": ()})
  with pytest.raises(ValueError, match="carry apply to linen models"):
    net = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
    alrao_jax.sweep(net, optax.sgd, splits, values=rates, **kw)

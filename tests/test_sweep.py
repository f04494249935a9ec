"""sweep: M runs in one program, each equal to the plain fit run at its value (the oracle)."""

import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import nnx

import alrao_jax

RNG = np.random.default_rng(0)
X = RNG.normal(size=(200, 6)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int32) + (X[:, 1] > 0.5)
SPLITS = alrao_jax.split_arrays(X, Y, valid=40, test=40)


class Net(nn.Module):  # BatchNorm and dropout: model state and an RNG stream per member
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train)(nn.relu(nn.Dense(16)(x)))
    return nn.Dense(3)(nn.Dropout(0.2, deterministic=not train)(x))


class NNXNet(nnx.Module):  # dropout drawn from RNG streams given at call time
  def __init__(self, rngs):
    self.dense, self.drop = nnx.Linear(6, 16, rngs=rngs), nnx.Dropout(0.3)
    self.out = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x, rngs=None):
    return self.out(self.drop(nnx.relu(self.dense(x)), rngs=rngs))


def _same_history(swept, alone, rtol=2e-4):
  assert len(swept) == len(alone)
  for a, b in zip(swept, alone, strict=True):
    for key in ("train_loss", "valid_loss", "valid_accuracy", "test_loss"):
      np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=1e-6, err_msg=key)
    assert a.get("stopped") == b.get("stopped")


def test_each_member_is_the_fit_run_at_its_rate_and_a_diverged_member_stops_alone():
  values = [0.03, 0.3, 1e6]
  kwargs = {"epochs": 4, "batch_size": 20, "patience": 2, "seed": 3}
  calls = {"train": {"train": True}, "eval": {"train": False}}
  result = alrao_jax.sweep(
    Net(),
    optax.sgd,
    SPLITS,
    values=values,
    train_kwargs=calls["train"],
    eval_kwargs=calls["eval"],
    **kwargs,
  )
  assert result.hyperparam == "learning_rate" and result.values.tolist() == values
  for i in (1,):  # the rate the optimizer was not built with
    alone = alrao_jax.fit(
      Net(),
      optax.sgd(values[i]),
      SPLITS,
      train_kwargs=calls["train"],
      eval_kwargs=calls["eval"],
      **kwargs,
    )
    _same_history(result.histories[i], alone.history)
    assert result.best_epochs[i] == alone.best_epoch and result.stopped[i] == alone.stopped
    np.testing.assert_allclose(result.test[i]["loss"], alone.test["loss"], rtol=2e-4)
    best = result.state(i)
    for got, want in zip(
      jax.tree.leaves(best.params), jax.tree.leaves(alone.state.params), strict=True
    ):
      np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
  # 1e6 diverges in its first epoch: it stops there, the others go on
  assert result.stopped[2] == "diverged" and len(result.histories[2]) == 1
  assert result.best_epochs[2] == 0 and np.isinf(result.valid_losses[2])
  assert result.best_index == int(np.argmin(result.valid_losses[:2]))
  assert result.best_value == values[result.best_index]
  # the members' common start, evaluated before training (the race's yardstick in tune)
  start = alrao_jax.create_train_state(
    Net(), optax.sgd(0.03), jax.random.key(3), X[:20], train=False
  )
  want = alrao_jax.make_eval_step(Net(), eval_kwargs=calls["eval"])(start, *SPLITS.valid)
  assert result.start_valid_loss == pytest.approx(float(want["loss"]), rel=1e-5)


def test_an_nnx_sweep_with_call_time_rngs_equals_fit_and_leaves_the_winner_in_the_model():
  values = [0.05, 0.5]
  kwargs = {"epochs": 3, "batch_size": 20}
  model = NNXNet(nnx.Rngs(0))
  result = alrao_jax.sweep(
    model, optax.sgd, SPLITS, values=values, train_kwargs={"rngs": nnx.Rngs(dropout=7)}, **kwargs
  )
  for i, lr in enumerate(values):
    alone_model = NNXNet(nnx.Rngs(0))
    alone = alrao_jax.fit(
      alone_model, optax.sgd(lr), SPLITS, train_kwargs={"rngs": nnx.Rngs(dropout=7)}, **kwargs
    )
    _same_history(result.histories[i], alone.history)
    if i == result.best_index:  # the model holds the winner's best variables, as fit leaves it
      for got, want in zip(
        jax.tree.leaves(nnx.state(model, nnx.Param)),
        jax.tree.leaves(nnx.state(alone_model, nnx.Param)),
        strict=True,
      ):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def test_any_injected_hyperparameter_is_swept_with_one_compile():
  momenta = [0.0, 0.5, 0.9]
  optimizer = functools.partial(optax.sgd, 0.1)
  result = alrao_jax.sweep(
    nn.Dense(3), optimizer, SPLITS, values=momenta, hyperparam="momentum", epochs=2, batch_size=40
  )
  assert [h[0]["momentum"] for h in result.histories] == momenta
  alone = alrao_jax.fit(nn.Dense(3), optax.sgd(0.1, momentum=0.9), SPLITS, epochs=2, batch_size=40)
  _same_history(result.histories[2], alone.history)


def test_a_sweep_read_on_validation_only_skips_the_test_split_and_trains_the_same():
  kwargs = {"values": [0.1, 1.0], "epochs": 2, "batch_size": 40}
  full = alrao_jax.sweep(nn.Dense(3), optax.sgd, SPLITS, **kwargs)
  valid_only = alrao_jax.sweep(nn.Dense(3), optax.sgd, SPLITS, evaluate_test=False, **kwargs)
  assert valid_only.test == [{}, {}] and all("loss" in t for t in full.test)
  for a, b in zip(valid_only.histories, full.histories, strict=True):
    assert [r["valid_loss"] for r in a] == [r["valid_loss"] for r in b]
    assert not any(k.startswith("test_") for r in a for k in r)
  assert valid_only.best_epochs.tolist() == full.best_epochs.tolist()


def test_a_sweep_compiles_its_step_once_for_every_value(monkeypatch):
  compiled = []
  original = jax.jit

  def counting_jit(fn, *args, **kwargs):
    jitted = original(fn, *args, **kwargs)
    compiled.append(jitted)
    return jitted

  monkeypatch.setattr(jax, "jit", counting_jit)
  alrao_jax.sweep(nn.Dense(3), optax.adam, SPLITS, values=[1e-3, 1e-2, 1e-1, 1.0], epochs=2)
  monkeypatch.undo()
  sizes = [j._cache_size() for j in compiled if hasattr(j, "_cache_size")]
  assert sizes and max(sizes) == 1, sizes


@pytest.mark.parametrize(
  ("kwargs", "error", "match"),
  [
    ({"values": []}, ValueError, r"values must be a non-empty 1-D"),
    ({"values": [0.1, -1.0]}, ValueError, r"learning rates > 0"),
    ({"values": [0.1], "optimizer": optax.sgd(0.1)}, TypeError, r"a factory .* not a trans"),
    ({"values": [0.1], "hyperparam": "beta"}, TypeError, r"no argument named 'beta'"),
    ({"values": [0.1], "epochs": 0}, ValueError, r"epochs"),
    ({"values": [0.1], "batch_size": 500}, ValueError, r"batch_size must be in \[1, 120\]"),
    ({"values": [0.1], "evaluate_test": "no"}, TypeError, r"evaluate_test must be True or"),
    ({"values": [1e-50, 0.1]}, ValueError, r"values \[1e-50\] are outside .* train at \[0.0\]"),
    ({"values": [0.1, 1e39]}, ValueError, r"values \[1e\+39\] are outside .* at \[inf\]"),
  ],
)
def test_bad_arguments_are_named(kwargs, error, match):
  arguments = {"optimizer": optax.sgd, "epochs": 1, **kwargs}
  optimizer = arguments.pop("optimizer")
  with pytest.raises(error, match=match):
    alrao_jax.sweep(nn.Dense(3), optimizer, SPLITS, **arguments)


def test_a_mesh_without_a_members_axis_is_refused():
  mesh = jax.make_mesh((1,), ("data",))
  with pytest.raises(ValueError, match=r"an axis named 'members'"):
    alrao_jax.sweep(nn.Dense(3), optax.sgd, SPLITS, values=[0.1], epochs=1, mesh=mesh)


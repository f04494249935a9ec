"""The tuning protocol's pieces: fit's warm start, the body's rates replaced with the copies'
kept, the refocused one-run variant end to end on a small task, and the race's optimizer."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import alrao_jax
from alrao_jax.experiments.methods import make_method, schedule_multiplier
from alrao_jax.experiments.models import MLP
from alrao_jax.experiments.tasks import load_task
from alrao_jax.experiments.tune import racing_optimizer, refocus, replace_body_rates
from alrao_jax.rates import leaf_paths
from alrao_jax.suggest_lr import find_rates


def _splits():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(160, 6)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  return alrao_jax.split_arrays(x, y, valid=32, test=32)


def test_a_warm_start_from_the_state_fit_would_create_equals_a_fresh_fit():
  splits = _splits()
  model, tx = (
    MLP(num_classes=2, num_copies=3, width=8),
    alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(1)),
  )
  fresh = alrao_jax.fit(model, tx, splits, epochs=2, train_kwargs={"train": True})
  start = alrao_jax.create_train_state(
    model, tx, jax.random.key(0), splits.train.inputs[:32], train=False
  )
  warm = alrao_jax.fit(
    model, tx, splits, epochs=2, train_kwargs={"train": True}, initial_state=start
  )
  chex.assert_trees_all_equal(warm.last_state.params, fresh.last_state.params)
  assert warm.history == fresh.history
  with pytest.raises(TypeError, match="initial_state must be a TrainState"):
    alrao_jax.fit(model, tx, splits, epochs=1, initial_state={"params": 1})
  with pytest.raises(ValueError, match="does not fit this model and optimizer"):
    alrao_jax.fit(model, optax.sgd(0.1), splits, epochs=1, initial_state=start)
  with pytest.raises(ValueError, match="pass initial_state or resume, not both"):
    alrao_jax.fit(model, tx, splits, epochs=1, initial_state=start, resume=True, checkpoint_dir="x")


def test_replacing_the_body_rates_keeps_the_copies_rates():
  model = MLP(num_classes=2, num_copies=3, width=8)
  tx = optax.chain(optax.clip(1.0), alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(1)))
  state = alrao_jax.create_train_state(model, tx, jax.random.key(0), jnp.ones((4, 6)), train=False)
  narrow = alrao_jax.sample_rates(jax.random.key(5), state.params, 0.05, 0.5)
  replaced = find_rates(replace_body_rates(state.opt_state, narrow))
  old = find_rates(state.opt_state)
  for path, got, was, new in zip(
    *leaf_paths(replaced)[:2], leaf_paths(old)[1], leaf_paths(narrow)[1], strict=True
  ):
    want = was if "alrao_copies" in path else new
    np.testing.assert_array_equal(got, want)
  body = [r for p, r in zip(*leaf_paths(replaced)[:2], strict=True) if "alrao_copies" not in p]
  assert all(float(r.min()) >= 0.05 and float(r.max()) <= 0.5 for r in body)


def test_refocus_runs_both_phases_as_one_history():
  task = load_task("digits").shrink(96)
  run, suggestion = refocus(task, epochs=3, warmup_epochs=1, seed=0)
  assert [r["epoch"] for r in run.history] == [1, 2, 3]
  assert run.method == "alrao-sgd refocused" and 1 <= run.best_epoch <= 3
  assert run.test == {
    k[len("test_") :]: v
    for k, v in run.history[run.best_epoch - 1].items()
    if k.startswith("test_")
  }
  assert task.lr_min <= suggestion.lr <= task.lr_max
  with pytest.raises(ValueError, match="warmup_epochs must be in"):
    refocus(task, epochs=3, warmup_epochs=3)


@pytest.mark.parametrize(
  "options",
  [
    dict(name="sgd", momentum=0.9, weight_decay=1e-2, clip=0.5),
    dict(name="adam", weight_decay=1e-2, clip=0.5),
  ],
)
def test_the_race_optimizer_at_a_rate_equals_the_method_built_at_that_rate(options):
  name = options.pop("name")
  schedule = schedule_multiplier("cosine", 10)

  def make(method, **kw):
    return make_method(method, schedule=schedule, **options, **kw)

  race = optax.inject_hyperparams(racing_optimizer(make, name))(learning_rate=0.3)
  plain = make(name, lr=0.3).optimizer
  params = {"w": {"kernel": jnp.ones((3, 2))}, "b": jnp.arange(2.0)}
  states = [race.init(params), plain.init(params)]
  for i in range(3):
    grads = jax.tree.map(lambda p, i=i: jnp.sin(p + i) * 4.0, params)
    (a, states[0]), (b, states[1]) = (
      tx.update(grads, s, params) for tx, s in zip((race, plain), states, strict=True)
    )
    chex.assert_trees_all_close(a, b, rtol=1e-6, atol=1e-7)
    params = optax.apply_updates(params, b)

"""The comparison protocol: tasks and methods by name, the SGD grid, seeds, early stopping."""

import jax
import numpy as np
import optax
import pytest

from alrao_jax.experiments.compare import (
  RunResult,
  alrao_ablations,
  compare,
  run_method,
  select_lr,
  summarize,
)
from alrao_jax.experiments.methods import LR_FREE, METHODS, make_method
from alrao_jax.experiments.models import MLP
from alrao_jax.experiments.tasks import MODES, TASKS, load_task
from alrao_jax.loop import fit
from alrao_jax.splits import Split, Splits


@pytest.fixture(scope="module")
def tiny():
  """Digits cut to 96 / 64 / 64 rows: a few steps per epoch."""
  task = load_task("digits")
  rows = zip(task.splits, (96, 64, 64), strict=True)
  cut = Splits(*(Split(s.inputs[:n], s.targets[:n]) for s, n in rows))
  return task._replace(splits=cut)


def test_run_method_is_fit_with_the_tasks_settings(tiny):
  run = run_method(tiny, make_method("sgd", lr=0.1), seed=3, epochs=2)
  direct = fit(tiny.build(1), optax.sgd(0.1), tiny.splits, epochs=2, seed=3, **MODES)
  assert run.test == direct.test and run.best_epoch == direct.best_epoch
  assert run.valid_loss == direct.history[direct.best_epoch - 1]["valid_loss"]
  assert run.lr == 0.1 and run.seconds > 0


def test_compare_picks_sgd_on_validation_and_reuses_the_grid_runs(tiny):
  seen = []
  result = compare(
    tiny,
    epochs=2,
    seeds=(0, 1),
    grid=(1e-4, 0.1, 30.0),
    grid_seeds=1,
    methods=("alrao-sgd", "cocob"),
    on_run=seen.append,
  )
  assert {lr: [r.seed for r in runs] for lr, runs in result.grid.items()} == {
    1e-4: [0],
    0.1: [0],
    30.0: [0],
  }
  valid = {lr: runs[0].valid_loss for lr, runs in result.grid.items()}
  assert result.best_lr == min(valid, key=valid.get) == 0.1  # 1e-4 barely moves, 30 is too big
  sgd = result.runs["sgd"]
  assert sgd[0] is result.grid[0.1][0] and sgd[1].seed == 1 and sgd[1].lr == 0.1
  assert [r.seed for r in result.runs["alrao-sgd"]] == [0, 1]
  assert result.runs["alrao-sgd"][0].lr is None and result.runs["cocob"][0].lr == 1.0
  assert len(seen) == 3 + 1 + 2 + 2  # grid, the other sgd seed, two methods x two seeds
  # Same seed, same data order and initialisation: seed 1's SGD run is reproducible.
  again = run_method(tiny, make_method("sgd", lr=0.1), seed=1, epochs=2)
  assert again.test == sgd[1].test


def test_a_diverged_plain_run_stops_at_once(tiny):
  run = run_method(tiny, make_method("sgd", lr=1e4), seed=0, epochs=5)
  assert len(run.history) < 5 and not np.isfinite(run.history[-1]["train_loss"])
  assert summarize([run])["diverged"] == (0 if np.isfinite(run.test["loss"]) else 1)


def test_patience_stops_after_epochs_without_improvement(tiny):
  frozen = fit(MLP(num_copies=1), optax.sgd(0.0), tiny.splits, epochs=6, patience=2, **MODES)
  assert frozen.best_epoch == 1 and len(frozen.history) == 3  # epochs 2 and 3 are no better
  learning = fit(MLP(num_copies=1), optax.sgd(0.1), tiny.splits, epochs=4, patience=2, **MODES)
  assert len(learning.history) == 4
  with pytest.raises(ValueError, match="patience"):
    run_method(tiny, make_method("sgd"), seed=0, epochs=1, patience=0)


def test_ablations_isolate_the_body_and_the_head(tiny):
  found = alrao_ablations(tiny, lr=0.1, seed=0, epochs=1)
  assert list(found) == ["body only", "head only", "interval [0.01, 1]"]
  assert len(found["body only"].history[0]["posterior"]) == 1
  assert len(found["head only"].history[0]["posterior"]) == tiny.copies
  # Every rate fixed at 0.1 but the copies': with one copy at 0.1 it is plain SGD at 0.1.
  head = alrao_ablations(tiny._replace(copies=1, lr_min=0.1, lr_max=0.1), lr=0.1, seed=0, epochs=1)
  sgd = run_method(tiny, make_method("sgd", lr=0.1), seed=0, epochs=1)
  np.testing.assert_allclose(head["head only"].test["loss"], sgd.test["loss"], rtol=1e-5)
  np.testing.assert_allclose(head["body only"].test["loss"], sgd.test["loss"], rtol=1e-5)


def test_select_lr_ignores_diverged_rates_and_averages_seeds():
  def run(lr, valid):
    return RunResult("sgd", lr, 0, 1, valid, {"loss": valid}, [], 1.0)

  grid = {0.1: [run(0.1, 0.2), run(0.1, 0.6)], 1.0: [run(1.0, 0.3), run(1.0, 0.3)]}
  assert select_lr(grid) == 1.0  # mean 0.4 against 0.3
  assert select_lr({10.0: [run(10.0, np.inf)], 1e-5: [run(1e-5, 2.0)]}) == 1e-5
  stats = summarize(grid[0.1], loss_scale=2.0)
  assert stats["loss"] == pytest.approx(0.8) and stats["loss_std"] == pytest.approx(0.4)


def test_methods_and_tasks_by_name():
  assert set(LR_FREE) < set(METHODS)
  for name in METHODS:
    if name.startswith("alrao-"):
      method = make_method(name, lr_min=1e-3, lr_max=1.0, copies=4, seed=2)
      assert len(method.copy_lrs) == 4 and method.copy_lrs[-1] == 1.0
    else:
      method = make_method(name)
      assert len(method.copy_lrs) == 1
    assert isinstance(method.optimizer, optax.GradientTransformation)
  assert make_method("schedule-free-sgd").eval_params is not None
  assert make_method("adam").copy_lrs == (1e-3,)
  params = {"w": jax.numpy.ones(3)}
  for name in LR_FREE:  # each peer runs a step at its defaults
    tx = make_method(name).optimizer
    updates, _ = tx.update({"w": jax.numpy.ones(3)}, tx.init(params), params)
    assert np.isfinite(np.asarray(updates["w"])).all()
  assert "ptb-char" in TASKS and load_task("mnist1d-mlp").build(3).width == 256


@pytest.mark.parametrize(
  ("call", "message"),
  [
    (lambda: make_method("lion"), "method must be one of"),
    (lambda: make_method("alrao-sgd", lr=0.1), "lr applies to peers"),
    (lambda: make_method("alrao-sgd", lr_min=1.0), "needs lr_min, lr_max and copies"),
    (lambda: make_method("alrao-sgd", lr_min=1, lr_max=0.1, copies=2), "lr_min"),
    (lambda: make_method("sgd", copies=3), "apply to alrao-\\* methods"),
    (lambda: make_method("sgd", lr=-1.0), "lr must be > 0"),
    (lambda: load_task("imagenet"), "task must be one of"),
    (lambda: load_task("cifar10"), "needs data"),
    (lambda: load_task("digits", batch_size=0), "batch_size"),
  ],
)
def test_bad_names_and_options_are_refused(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_compare_refuses_bad_protocols(tiny):
  with pytest.raises(ValueError, match="grid_seeds"):
    compare(tiny, epochs=1, seeds=(0,), grid_seeds=2)
  with pytest.raises(ValueError, match="not through methods"):
    compare(tiny, epochs=1, methods=("sgd",))
  with pytest.raises(ValueError, match="method must be one of"):
    compare(tiny, epochs=1, grid=(0.1,), methods=("lion",))

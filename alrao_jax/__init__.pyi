"""The public API of alrao_jax (see __init__.py): its names and where they live."""

from alrao_jax import large_head, nnx, sharding
from alrao_jax.checkpoint import (
  Checkpoint,
  restore_checkpoint,
  restore_nnx_checkpoint,
  save_checkpoint,
  save_nnx_checkpoint,
)
from alrao_jax.head import (
  AlraoHead,
  CopyOutputs,
  DeferredCopyOutputs,
  StepCopyOutputs,
  best_copy,
  copy_outputs,
  embedding_init,
  mixture_log_probs,
)
from alrao_jax.health import check_copies
from alrao_jax.layer_schedule import (
  LayerDepths,
  ScaleByLayerScheduleState,
  discriminative_schedule,
  layer_depths,
  scale_by_layer_schedule,
  smith_schedule,
)
from alrao_jax.loop import FitResult, fit
from alrao_jax.loss import (
  AlraoLossAux,
  alrao_loss,
  bernoulli_log_likelihood,
  categorical_log_likelihood,
  gaussian_log_likelihood,
  smoothed_categorical_log_likelihood,
)
from alrao_jax.lr_find import LRFindResult, lr_find
from alrao_jax.predict import mixture_mean, mixture_probabilities, predict
from alrao_jax.rates import copy_rates, sample_rates
from alrao_jax.retire import (
  CopyRetirement,
  copy_retirement,
  retire_averaging_state,
  retire_copies,
  ruled_out,
)
from alrao_jax.screen import ScreenResult, screen
from alrao_jax.splits import Split, Splits, WeightedSplit, split_arrays
from alrao_jax.steps import (
  TrainState,
  create_train_state,
  evaluation_metrics,
  init_averaging,
  make_eval_step,
  make_train_step,
  num_copies_of,
)
from alrao_jax.suggest_lr import LRSuggestion, suggest_lr
from alrao_jax.sweep import SweepResult, sweep
from alrao_jax.switch import (
  BayesState,
  ModelAveraging,
  SwitchState,
  bayes_averaging,
  bayes_init,
  bayes_posterior,
  bayes_update,
  switch_averaging,
  switch_init,
  switch_posterior,
  switch_update,
)
from alrao_jax.transform import (
  ScaleByRatesState,
  alrao_adam,
  alrao_sgd,
  rates_of,
  scale_by_rates,
)
from alrao_jax.tune import TuneResult, race_pick, tune

__all__ = [
  "AlraoHead",
  "AlraoLossAux",
  "BayesState",
  "Checkpoint",
  "CopyOutputs",
  "CopyRetirement",
  "DeferredCopyOutputs",
  "FitResult",
  "LRFindResult",
  "LRSuggestion",
  "LayerDepths",
  "ModelAveraging",
  "ScaleByLayerScheduleState",
  "ScaleByRatesState",
  "ScreenResult",
  "Split",
  "Splits",
  "StepCopyOutputs",
  "SweepResult",
  "SwitchState",
  "TrainState",
  "TuneResult",
  "WeightedSplit",
  "alrao_adam",
  "alrao_loss",
  "alrao_sgd",
  "bayes_averaging",
  "bayes_init",
  "bayes_posterior",
  "bayes_update",
  "bernoulli_log_likelihood",
  "best_copy",
  "categorical_log_likelihood",
  "check_copies",
  "copy_outputs",
  "copy_rates",
  "copy_retirement",
  "create_train_state",
  "discriminative_schedule",
  "embedding_init",
  "evaluation_metrics",
  "fit",
  "gaussian_log_likelihood",
  "init_averaging",
  "large_head",
  "layer_depths",
  "lr_find",
  "make_eval_step",
  "make_train_step",
  "mixture_log_probs",
  "mixture_mean",
  "mixture_probabilities",
  "nnx",
  "num_copies_of",
  "predict",
  "race_pick",
  "rates_of",
  "restore_checkpoint",
  "restore_nnx_checkpoint",
  "retire_averaging_state",
  "retire_copies",
  "ruled_out",
  "sample_rates",
  "save_checkpoint",
  "save_nnx_checkpoint",
  "scale_by_layer_schedule",
  "scale_by_rates",
  "screen",
  "sharding",
  "smith_schedule",
  "smoothed_categorical_log_likelihood",
  "split_arrays",
  "suggest_lr",
  "sweep",
  "switch_averaging",
  "switch_init",
  "switch_posterior",
  "switch_update",
  "tune",
]

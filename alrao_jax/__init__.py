"""alrao-jax: All Learning Rates At Once, for JAX, Optax and Flax."""

from alrao_jax.rates import copy_rates, sample_rates
from alrao_jax.transform import ScaleByRatesState, alrao_adam, alrao_sgd, scale_by_rates

__all__ = [
  "ScaleByRatesState",
  "alrao_adam",
  "alrao_sgd",
  "copy_rates",
  "sample_rates",
  "scale_by_rates",
]

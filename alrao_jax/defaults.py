"""Defaults that the tools share, in a module free of JAX: the command line's help quotes them
without starting JAX."""

SGD_GRID = tuple(10.0**e for e in range(-5, 2))  # the paper's grid, 1e-5 ... 10
TOLERANCE = 0.2  # the suggestion's racer may lag the best by this share of the best's progress
RACE_EPOCHS = 2  # the longest race by default (see alrao_jax.tune.race_length)

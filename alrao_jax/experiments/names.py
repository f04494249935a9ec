"""The names the command line offers (tasks, models, optimizers, schedules), in a module free
of JAX: ``alrao-jax --help`` and a bad flag's error answer without starting it. The modules that
implement them (:mod:`~alrao_jax.experiments.tasks`, :mod:`~alrao_jax.experiments.methods`)
take their names from here."""

TASKS = (
  "digits",
  "mnist1d",
  "mnist1d-mlp",
  "ptb-char",
  "cifar10",
  "fashion-mlp",
  "fashion-cnn",
  "ptb-word",
)
FOLDER_TASKS = ("cifar10", "ptb-char", "fashion-mlp", "fashion-cnn", "ptb-word")  # --data: a folder
MODEL_KINDS = ("mlp", "cnn")  # the built-in models for the user's arrays
ALRAO = ("alrao-sgd", "alrao-adam")
PEERS = (
  "sgd",
  "adam",
  "prodigy",
  "dadapt-adamw",
  "dog",
  "cocob",
  "mechanize-sgd",
  "schedule-free-sgd",
)
METHODS = (*ALRAO, *PEERS)
WITH_MOMENTUM = ("alrao-sgd", "sgd")
SCHEDULES = ("constant", "cosine", "warmup-cosine", "onecycle", "linear", "warmup-linear")
LAYER_SCHEDULES = ("uniform", "discriminative", "smith", "smith-reverse")
PLAIN = ("sgd", "adam")  # the optimizers lr-find, sweep and tune take a rate for

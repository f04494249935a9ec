"""``python -m alrao_jax.experiments.cli``: the alrao-jax command."""

import sys

from alrao_jax.experiments.cli import command_line

sys.exit(command_line())

"""Whether an object is one of ``flax.nnx``'s types, asked without importing ``flax.nnx``.

A linen run never needs NNX, and importing it costs a tenth of a second of the command line's
start. No object can be an NNX module, variable or optimizer before ``flax.nnx`` is imported,
so where it is not imported the answer is no; the NNX code paths import it themselves.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


def is_nnx(x: Any, kind: str = "Module") -> bool:
  """``isinstance(x, flax.nnx.<kind>)``, False while ``flax.nnx`` is not imported.

  Args:
    x: any object.
    kind: the name of an ``flax.nnx`` class: ``"Module"``, ``"Optimizer"``, ``"Variable"``,
      ``"Pytree"``.

  Returns:
    Whether ``x`` is an instance of that class.

  Example:
    >>> import flax.linen as nn
    >>> from alrao_jax.nnx_types import is_nnx
    >>> is_nnx(nn.Dense(3))
    False
  """
  nnx = sys.modules.get("flax.nnx")
  return nnx is not None and isinstance(x, getattr(nnx, kind))


class _Imported:
  """A module imported at the first read of one of its attributes."""

  def __init__(self, name: str):
    self._name = name

  def __getattr__(self, attribute: str) -> Any:
    return getattr(importlib.import_module(self._name), attribute)


nnx: Any = _Imported("flax.nnx")  # flax.nnx itself, imported when an NNX code path first reads it

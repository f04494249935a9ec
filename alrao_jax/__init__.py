"""alrao-jax: All Learning Rates At Once, for JAX, Optax and Flax.

The method: :mod:`~alrao_jax.rates` (one rate per feature), :mod:`~alrao_jax.transform`
(the optax transforms), :mod:`~alrao_jax.head` and :mod:`~alrao_jax.nnx` (the output copies;
:mod:`~alrao_jax.large_head` applies a large head's a few at a time),
:mod:`~alrao_jax.switch` (model averaging), :mod:`~alrao_jax.loss`, :mod:`~alrao_jax.steps`
(jitted steps), :mod:`~alrao_jax.sharding` (several devices and hosts) and
:mod:`~alrao_jax.predict`; around it :mod:`~alrao_jax.loop` (``fit``),
:mod:`~alrao_jax.epochs` (the epoch loop ``fit`` and ``sweep`` share),
:mod:`~alrao_jax.evaluation`, :mod:`~alrao_jax.run_checks`, :mod:`~alrao_jax.checkpoint`,
:mod:`~alrao_jax.splits`, :mod:`~alrao_jax.strict_json` and :mod:`~alrao_jax.defaults`; the tools
:mod:`~alrao_jax.lr_find`, :mod:`~alrao_jax.suggest_lr`, :mod:`~alrao_jax.sweep`,
:mod:`~alrao_jax.tune`, :mod:`~alrao_jax.screen` and :mod:`~alrao_jax.layer_schedule`. The
bundled tasks, models, peers, comparison protocol, plots, demo and command line are in
:mod:`alrao_jax.experiments`.

The names are loaded when first used (PEP 562): ``import alrao_jax`` alone does not start JAX, so
that the command line's ``--help`` answers at once. ``__init__.pyi`` lists them, for type
checkers and for the loader.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys
import types
from typing import Any

__version__ = "0.1.0"


def _exports() -> dict[str, tuple[str, str | None]]:
  """Each public name -> (the module it comes from, its name there; None for a module itself),
  as the stub ``__init__.pyi`` imports it."""
  stub = ast.parse(pathlib.Path(__file__).with_suffix(".pyi").read_text())
  found = {}
  for node in stub.body:
    if isinstance(node, ast.ImportFrom):
      for alias in node.names:
        module = node.module == __name__
        found[alias.name] = (
          (f"{__name__}.{alias.name}", None) if module else (node.module, alias.name)
        )
  return found


_EXPORTS = _exports()
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  """Imports one public name's module on first use (``from alrao_jax import sharding`` does not
  load the tools and heads as well) and keeps the name, so that the next use is a plain lookup."""
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  module, attribute = _EXPORTS[name]
  value = importlib.import_module(module)
  globals()[name] = value if attribute is None else getattr(value, attribute)
  return globals()[name]


def __dir__() -> list[str]:
  return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
  """The package, whose functions named like their modules (``lr_find``, ``sweep``, ``tune``,
  ...) stay functions: importing such a module binds it to the package, which would hide the
  function; that binding is dropped (the module stays in ``sys.modules``)."""

  def __setattr__(self, name: str, value: Any) -> None:
    if isinstance(value, types.ModuleType) and _EXPORTS.get(name, ("", None))[1] is not None:
      return
    super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

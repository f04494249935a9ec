"""JSON that strict parsers read: what alrao-jax writes (checkpoints' pointers, the CLI's
summaries and histories) holds no ``NaN`` or ``Infinity``, which Python's ``json`` writes by
default and which no other JSON parser accepts. A non-finite float is written as ``null``."""

from __future__ import annotations

import json
import math
from typing import Any


def with_nulls(value: Any, found: list | None = None, path: tuple = ()) -> Any:
  """``value`` with each non-finite float replaced by None.

  Args:
    value: nested dicts, lists, tuples and scalars.
    found: if given, each replaced float's path (keys and indices) and ``repr`` are appended.
    path: the path of ``value`` itself (for the recursion).

  Returns:
    The same structure (tuples as lists), non-finite floats as None.
  """
  if isinstance(value, float) and not math.isfinite(value):
    if found is not None:
      found.append([list(path), repr(value)])
    return None
  if isinstance(value, dict):
    return {key: with_nulls(item, found, (*path, key)) for key, item in value.items()}
  if isinstance(value, list | tuple):
    return [with_nulls(item, found, (*path, i)) for i, item in enumerate(value)]
  return value


def dumps(value: Any, *, indent: int | None = None, what: str = "the value") -> str:
  """``json.dumps`` with non-finite floats written as ``null``: text any JSON parser reads.

  Args:
    value: what to write (numpy and JAX scalars must be converted to Python numbers first).
    indent: as for ``json.dumps``.
    what: names ``value`` in the error.

  Returns:
    The JSON text.

  Raises:
    ValueError: ``value`` holds something that JSON cannot write.

  Example:
    >>> from alrao_jax.strict_json import dumps
    >>> dumps({"loss": float("nan"), "best": float("inf"), "epoch": 3})
    '{"loss": null, "best": null, "epoch": 3}'
  """
  try:
    return json.dumps(with_nulls(value), indent=indent, allow_nan=False)
  except (TypeError, ValueError) as err:
    raise ValueError(f"{what} is not JSON-serialisable: {err}") from err

"""Retiring the output copies that the switch has ruled out.

A copy whose posterior weight stays negligible costs as much as the leading one at every step:
its forward pass, its log-softmax over the whole output (10,000 words for a word-level language
model), its backward pass and its update. Retiring it drops it from the head's parameters, from
the optimizer's state (its rate and any moment under the head) and from the averaging state,
whose weights are renormalised over the copies that stay; the next step then computes only the
live copies (one recompile, as the shapes change). What is dropped is the copy's weight in the
mixture, below ``threshold`` by construction, and its chance to come back later: the switch's
prior spreads a switch over the live copies only.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alrao_jax.checks import check_int
from alrao_jax.nnx_types import nnx
from alrao_jax.rates import COPIES_MODULE, leaf_paths, path_string
from alrao_jax.steps import num_copies_of
from alrao_jax.switch import BayesState, SwitchState

__all__ = [
  "CopyRetirement",
  "copy_retirement",
  "retire_averaging_state",
  "retire_copies",
  "retire_nnx_copies",
  "ruled_out",
]


class CopyRetirement(NamedTuple):
  """When :func:`alrao_jax.fit` retires a copy: its posterior weight below ``threshold`` at
  the end of each of the last ``epochs`` epochs, unless it is one of the ``min_copies`` live
  copies nearest in rate to the leading one. Build it with :func:`copy_retirement`."""

  threshold: float
  epochs: int
  min_copies: int = 1


def _check_threshold(threshold: Any) -> float:
  if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
    raise TypeError(f"threshold must be a float in (0, 1), got {threshold!r}.")
  if not 0.0 < threshold < 1.0:
    raise ValueError(
      f"threshold must be in (0, 1), got {threshold}; e.g. 1e-2 retires a copy that holds "
      "less than a hundredth of the posterior."
    )
  return float(threshold)


def copy_retirement(
  *, threshold: float = 1e-2, epochs: int = 2, min_copies: int = 1
) -> CopyRetirement:
  """The rule by which :func:`alrao_jax.fit` retires output copies (``fit(retire=...)``).

  After each epoch, a copy whose switch posterior was below ``threshold`` at the end of each
  of the last ``epochs`` epochs is retired: dropped from the head, the optimizer state and
  the averaging state (:func:`retire_copies`). The copy of largest weight always stays, and
  with it the live copies nearest to it in rate, ``min_copies`` in all: the switch can still
  move to a slower or a faster rate than the leader's (the leading copy's rate often falls as
  training goes on), at ``min_copies`` times one copy's cost.

  The switch keeps every copy at about ``1 / (t N)`` of the posterior or more after step
  ``t`` (its prior of a switch to any copy), however badly the copy predicts: a threshold
  rules copies out once that floor is below it, after about ``1 / (threshold N)`` steps.

  Args:
    threshold: the posterior weight under which a copy counts as ruled out, in (0, 1).
    epochs: how many consecutive epochs it must stay under it, at least 1.
    min_copies: how many live copies always stay, at least 1: the leader and the copies next
      to it in rate (the leader's neighbours on both sides first, the slower one first at a
      tie; at the interval's edge, the next ones on the other side).

  Returns:
    A :class:`CopyRetirement`.

  Example:
    >>> import alrao_jax
    >>> alrao_jax.copy_retirement(threshold=1e-2, epochs=2, min_copies=3)
    CopyRetirement(threshold=0.01, epochs=2, min_copies=3)
  """
  return CopyRetirement(
    _check_threshold(threshold),
    check_int(epochs, "epochs", minimum=1),
    check_int(min_copies, "min_copies", minimum=1),
  )


def check_retirement(retire: Any) -> CopyRetirement | None:
  """``retire`` checked (None: no retirement), or a clear error."""
  if retire is None:
    return None
  if not isinstance(retire, CopyRetirement):
    raise TypeError(
      f"retire must be None or alrao_jax.copy_retirement(threshold=..., epochs=...), got "
      f"{retire!r}."
    )
  return copy_retirement(
    threshold=retire.threshold, epochs=retire.epochs, min_copies=retire.min_copies
  )


def ruled_out(
  posteriors: Sequence[Sequence[float]], live: Sequence[int], retirement: CopyRetirement
) -> np.ndarray:
  """The live copies that ``retirement`` retires now.

  Args:
    posteriors: the posterior over every copy of the head at the end of each epoch so far
      (``fit``'s history), a retired copy at 0.
    live: the indices of the copies that are still live, increasing.
    retirement: the rule.

  Returns:
    The indices (among all copies) to retire, increasing; empty when there are fewer epochs
    than ``retirement.epochs``. The live copy of largest weight in the last epoch is never
    among them, nor the live copies nearest to it in rate (the copies' order),
    ``retirement.min_copies`` in all.

  Example:
    >>> import alrao_jax
    >>> rule = alrao_jax.copy_retirement(threshold=0.01, epochs=2)
    >>> alrao_jax.ruled_out([[0.5, 0.495, 0.005], [0.7, 0.299, 0.001]], [0, 1, 2], rule)
    array([2])
    >>> near = alrao_jax.copy_retirement(threshold=0.01, epochs=1, min_copies=2)
    >>> alrao_jax.ruled_out([[0.001, 0.998, 0.0005, 0.0005]], [0, 1, 2, 3], near)
    array([2, 3])
  """
  live = np.asarray(live, int)
  if len(posteriors) < retirement.epochs:
    return np.zeros(0, int)
  recent = np.asarray(posteriors[-retirement.epochs :], np.float64)[:, live]
  below = (recent < retirement.threshold).all(axis=0)
  lead = int(np.argmax(recent[-1]))
  nearest = sorted(range(len(live)), key=lambda i: (abs(i - lead), i))
  below[nearest[: retirement.min_copies]] = False
  return live[below]


def checked_copies(keep: Sequence[int], num_copies: int) -> np.ndarray:
  """``keep`` checked: distinct indices in [0, num_copies), increasing, at least one.

  Raises:
    ValueError: anything else, naming ``keep``.
  """
  found = np.asarray(keep)
  if found.ndim != 1 or found.size == 0 or not np.issubdtype(found.dtype, np.integer):
    raise ValueError(f"keep must be a non-empty sequence of copy indices, got {keep!r}.")
  if np.any(np.diff(found) <= 0) or found[0] < 0 or found[-1] >= num_copies:
    raise ValueError(
      f"keep must hold increasing, distinct copy indices in [0, {num_copies}), got "
      f"{found.tolist()}."
    )
  return found


def slice_copies(tree: Any, keep: Sequence[int], num_copies: int) -> Any:
  """``tree`` with every array under an ``alrao_copies`` module cut to the copies ``keep``
  along its leading (copy) axis; the rest as it is. Any tree that mirrors the parameters
  works: the parameters, an optimizer state (rates, momenta, Adam's moments), on the device
  or the host (a host array stays on the host)."""
  positions = checked_copies(keep, num_copies)
  paths, leaves, treedef = leaf_paths(tree)

  def one(path: tuple[str, ...], leaf: Any) -> Any:
    if COPIES_MODULE not in path[:-1] or not hasattr(leaf, "shape"):
      return leaf
    if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != num_copies:
      raise ValueError(
        f"{path_string(path)} has shape {jnp.shape(leaf)}, whose leading axis is not the "
        f"head's {num_copies} copies: a head inside a stack of layers cannot retire copies."
      )
    return leaf[positions]

  cut = [one(path, leaf) for path, leaf in zip(paths, leaves, strict=True)]
  return jax.tree.unflatten(treedef, cut)


def retire_averaging_state(state: SwitchState | BayesState, keep: Sequence[int]) -> Any:
  """The averaging state restricted to the copies ``keep``, renormalised over them.

  Args:
    state: a :class:`alrao_jax.SwitchState` or :class:`alrao_jax.BayesState`.
    keep: the indices of the copies that stay, increasing.

  Returns:
    The state over ``len(keep)`` copies: the weights of the copies kept, divided by their sum
    (for the switch, jointly over its two rows, so that the mass that may still switch keeps
    its share).

  Example:
    >>> import jax.numpy as jnp, alrao_jax
    >>> state = alrao_jax.bayes_init(4)
    >>> alrao_jax.bayes_posterior(alrao_jax.retire_averaging_state(state, [0, 2])).tolist()
    [0.5, 0.5]
  """
  if isinstance(state, SwitchState):
    positions = checked_copies(keep, state.log_weights.shape[1])
    kept = state.log_weights[:, positions]
    kept = kept - jax.nn.logsumexp(kept)
    return state._replace(log_weights=kept, log_posterior=jnp.logaddexp(kept[0], kept[1]))
  if isinstance(state, BayesState):
    positions = checked_copies(keep, state.log_posterior.shape[0])
    kept = state.log_posterior[positions]
    return BayesState(kept - jax.nn.logsumexp(kept))
  raise TypeError(
    f"copies can be retired from a SwitchState or a BayesState, got {type(state).__name__}; "
    "use alrao_jax.switch_averaging() or alrao_jax.bayes_averaging(), or retire=None."
  )


def retire_copies(state: Any, keep: Sequence[int]) -> Any:
  """A linen :class:`alrao_jax.TrainState` restricted to the output copies ``keep``.

  The head's parameters, every optimizer-state array under the head (the copies' rates,
  momenta, Adam's moments) and the averaging state (:func:`retire_averaging_state`) are cut
  to those copies; everything else is as it was. :class:`alrao_jax.AlraoHead` applies the
  copies its parameters hold, so the same model trains and predicts from the new state.

  Args:
    state: a :class:`alrao_jax.TrainState` (any object with ``params``, ``opt_state`` and
      ``averaging_state`` fields and ``replace``).
    keep: the indices of the copies that stay, increasing.

  Returns:
    The new state.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, alrao_jax
    >>> model = nn.Sequential([nn.Dense(8), alrao_jax.AlraoHead(3, num_copies=4)])
    >>> tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0))
    >>> state = alrao_jax.create_train_state(model, tx, jax.random.key(1), jnp.ones((2, 5)))
    >>> state = alrao_jax.retire_copies(state, [1, 3])
    >>> model.apply({'params': state.params}, jnp.ones((2, 5))).own.shape
    (2, 2, 3)
  """
  num_copies = num_copies_of(state.params)
  return state.replace(
    params=slice_copies(state.params, keep, num_copies),
    opt_state=slice_copies(state.opt_state, keep, num_copies),
    averaging_state=retire_averaging_state(state.averaging_state, keep),
  )


def retire_nnx_copies(
  nodes: nnx.Module | tuple[nnx.Module, ...], averaging_state: Any, keep: Sequence[int]
) -> Any:
  """NNX's :func:`retire_copies`: the model and its optimizer cut to the copies ``keep``, in
  place, and the averaging state that goes with them.

  Every variable under an ``alrao_copies`` module of ``nodes`` (the head's kernel and bias, the
  optimizer's rates and moments of the copies) keeps the copies ``keep`` along its leading
  axis; the rest is as it was. :class:`alrao_jax.nnx.AlraoHead` applies the copies its kernel
  holds, so the same model, optimizer and step go on (the step retraces once, as the shapes
  change).

  Args:
    nodes: the model and its :class:`flax.nnx.Optimizer`, as a tuple; pass both, or the
      optimizer's state no longer matches the parameters it updates.
    averaging_state: the averaging state the NNX step carries (:func:`alrao_jax.switch_init`,
      :func:`alrao_jax.bayes_init`).
    keep: the indices of the copies that stay, increasing.

  Returns:
    The averaging state over the copies kept (:func:`retire_averaging_state`).

  Example:
    >>> import jax, alrao_jax
    >>> from flax import nnx
    >>> model = alrao_jax.nnx.AlraoHead(8, 3, num_copies=4, rngs=nnx.Rngs(0))
    >>> tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0))
    >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    >>> switch = alrao_jax.retire_nnx_copies((model, optimizer), alrao_jax.switch_init(4), [1, 3])
    >>> model.alrao_copies.kernel.shape, switch.log_posterior.shape
    ((2, 8, 3), (2,))
  """
  state = nnx.state(nodes)
  pure = nnx.to_pure_dict(state)
  nnx.replace_by_pure_dict(state, slice_copies(pure, keep, num_copies_of(pure)))
  nnx.update(nodes, state)
  return retire_averaging_state(averaging_state, keep)

"""A learning rate for plain SGD, read off one Alrao run, with how far to trust it.

The switch posterior says which output copy, and so which of the copies' rates, predicts
best; how far each copy's weights moved from their start says which copies learned at all;
the body's features, each at its own rate, say up to which rate the network's units moved in
proportion to their rate.
:func:`suggest_lr` weighs the three: it follows the posterior among the copies that learned,
returns the candidates it weighed with a stated confidence, and warns when they disagree.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from alrao_jax.loop import FitResult
from alrao_jax.nnx_types import is_nnx
from alrao_jax.rates import COPIES_MODULE, leaf_paths
from alrao_jax.retire import slice_copies
from alrao_jax.steps import TrainState, num_copies_of
from alrao_jax.switch import ModelAveraging, switch_averaging
from alrao_jax.transform import ScaleByRatesState

BIN_DECADES = 0.5  # width of the rate bins of the body's evidence, in decades
MIN_PER_BIN = 3  # features a bin needs to be reported
LEARNED_FRACTION = 0.05  # a copy learned when it moved >= this share of the median copy's
BODY_DECADES = 3.0  # a suggestion this far from the body's knee is doubted
AGREE_DECADES = 0.5  # "high" needs the knee and the kept epoch's posterior this near the suggestion
KNEE_SHARE = 0.5  # the knee: the fastest bin still moving this share of the slow bins' per rate
NEIGHBOUR_MASS = 0.8  # posterior mass the leading copy and its neighbours need for "high"


class LRSuggestion(NamedTuple):
  """A learning rate for plain SGD and the evidence behind it (see :func:`suggest_lr`)."""

  lr: float  # the suggestion: the posterior's geometric mean over the copies that learned
  copy_lrs: np.ndarray  # (N,) the output copies' rates
  posterior: np.ndarray  # (N,) the averaging posterior over the copies
  leading_lr: float  # the rate of the copy of largest posterior weight
  body: tuple[dict[str, float], ...]  # per bin of body rates: lr_low, lr_high, features, movement
  candidates: dict[str, float]  # the rates weighed, by the evidence that gave them
  confidence: str  # "high", "medium" or "low"
  reasons: tuple[str, ...]  # why the confidence is not high
  copy_movement: np.ndarray | None  # (N,) each copy's relative movement from its start


def _unwrap(tree: Any) -> Any:
  """NNX variables -> their arrays; anything else unchanged."""
  return jax.tree.map(
    lambda v: v[...] if is_nnx(v, "Variable") else v,
    tree,
    is_leaf=lambda v: is_nnx(v, "Variable"),
  )


def _merge(first: Any, second: Any) -> Any:
  """Two rate trees of one ``optax.partition``, each masked where the other holds rates."""
  if isinstance(first, optax.MaskedNode):
    return second
  if isinstance(second, optax.MaskedNode):
    return first
  if isinstance(first, Mapping) and isinstance(second, Mapping) and first.keys() == second.keys():
    return {key: _merge(first[key], second[key]) for key in first}
  raise ValueError(
    "opt_state holds several Alrao rate trees (ScaleByRatesState) that rate the same "
    "parameters; pass the state of one alrao_jax.alrao_sgd or alrao_jax.alrao_adam, or of an "
    "optax.partition whose parts each rate their own parameters."
  )


def find_rates(opt_state: Any) -> Any:
  """The rate tree held by the :func:`alrao_jax.scale_by_rates` inside an optimizer state.

  An ``optax.partition`` of Alrao optimizers (e.g. a recurrent cell on an interval of its own)
  holds one rate tree per part, each masked outside its part: they are merged into one.

  Raises:
    ValueError: the state holds no rates, or rate trees that overlap.
  """
  found = [
    s.rates
    for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, ScaleByRatesState))
    if isinstance(s, ScaleByRatesState)
  ]
  if not found:
    raise ValueError(
      "opt_state holds no Alrao rate trees (ScaleByRatesState); pass the state of an "
      "optimizer built with alrao_jax.alrao_sgd or alrao_jax.alrao_adam."
    )
  return functools.reduce(_merge, found)


def _copy_rates(paths: list, rate_leaves: list) -> np.ndarray:
  for path, rate in zip(paths, rate_leaves, strict=True):
    if COPIES_MODULE in path[:-1] and path[-1] == "kernel":
      return np.asarray(rate, np.float64).reshape(-1)
  raise ValueError(
    "the rate tree has no output copies (no 'alrao_copies' kernel); the model must end with "
    "alrao_jax.AlraoHead or alrao_jax.nnx.AlraoHead."
  )


def copy_movement(params: Any, initial_params: Any) -> np.ndarray:
  """How far each output copy's kernel moved from its start: ``|W_T - W_0| / |W_0|``.

  Args:
    params: the parameters now.
    initial_params: the parameters at step 0, the same tree.

  Returns:
    ``(N,)`` relative movements (absolute where a copy started at 0); NaN for a copy whose
    weights are not finite.
  """
  paths, now, _ = leaf_paths(_unwrap(params))
  start_paths, start, _ = leaf_paths(_unwrap(initial_params))
  if start_paths != paths:
    raise ValueError(
      "initial_params must have the structure of params (the same model at step 0), e.g. "
      "alrao_jax.create_train_state(model, tx, key, x).params with the run's key."
    )
  for path, w, w0 in zip(paths, now, start, strict=True):
    if COPIES_MODULE in path[:-1] and path[-1] == "kernel":
      w, w0 = np.asarray(w, np.float64), np.asarray(w0, np.float64)
      axes = tuple(range(1, w.ndim))
      moved = np.sqrt(np.sum((w - w0) ** 2, axis=axes))
      size = np.sqrt(np.sum(w0**2, axis=axes))
      return np.where(size > 0, moved / np.where(size > 0, size, 1.0), moved)
  raise ValueError("params hold no output copies (no 'alrao_copies' kernel).")


def body_knee(body: Sequence[Mapping[str, float]]) -> Mapping[str, float]:
  """The fastest bin of the body's rates whose features still moved in proportion to them.

  At small rates a feature's movement grows as its rate (SGD's steps add up), so the movement
  per unit of rate is flat across the slow bins; above the rates the network can follow it
  falls (steps that overshoot cancel, units saturate or die). The knee is the fastest bin whose
  movement per unit of rate (at the bin's middle) is at least half (:data:`KNEE_SHARE`) the
  median over the slowest half of the bins. Unlike the bin that moved most, it is not the
  interval's top by construction: on the bundled feed-forward tasks it lay 0.25 to 1.25
  decades above the grid's best rate, and at it on PTB characters' LSTM (0.25 below), where
  the bin that moved most was often the interval's top
  (``benchmarks/results/tune_alrao_length.md``, ``tune.md``).

  Args:
    body: the bins of :func:`body_movement` (or :attr:`LRSuggestion.body`), non-empty.

  Returns:
    The knee's bin.

  Example:
    >>> from alrao_jax.suggest_lr import body_knee
    >>> bins = [{"lr_low": lr, "lr_high": 10 * lr, "movement": min(lr, 0.1)} for lr in
    ...         (1e-4, 1e-3, 1e-2, 1e-1, 1.0)]  # in proportion to the rate up to 0.1
    >>> body_knee(bins)["lr_low"]  # the bin [0.1, 1): the next one moved no further
    0.1
  """
  per_rate = np.asarray([b["movement"] / np.sqrt(b["lr_low"] * b["lr_high"]) for b in body])
  reference = float(np.median(per_rate[: max(len(body) // 2, 1)]))
  following = np.flatnonzero(per_rate >= KNEE_SHARE * reference)
  return body[int(following[-1])]


def _weigh(
  lrs: np.ndarray,
  posterior: np.ndarray,
  along: np.ndarray,
  moved: np.ndarray | None,
  body: tuple[dict[str, float], ...],
  reasons: list[str],
) -> tuple[float, dict[str, float], str, tuple[str, ...]]:
  """The suggestion, the candidates, the confidence and its reasons (see :func:`suggest_lr`);
  ``reasons`` holds those found before (a degenerate posterior)."""
  log_lrs = np.log(lrs)
  leading = int(np.argmax(posterior))
  candidates = {
    "posterior": float(np.exp(np.mean(along @ log_lrs))),
    "leading": float(lrs[leading]),
  }
  suggestion = candidates["posterior"]
  if moved is None:
    reasons.append(
      "no initial_params: whether the leading copy learned is unknown (pass fit's result, "
      "or initial_params)"
    )
  else:
    finite = np.isfinite(moved)
    # the median, not the largest: the fastest copies can move by 100x their size as they blow up
    reference = float(np.median(moved[finite])) if finite.any() else 0.0
    learned = finite & (moved >= LEARNED_FRACTION * reference)
    if learned.any() and not learned[leading]:
      kept = along * learned
      mass = kept.sum(axis=1, keepdims=True)
      kept = np.where(mass > 0, kept / np.where(mass > 0, mass, 1.0), learned / learned.sum())
      suggestion = candidates["learned"] = float(np.exp(np.mean(kept @ log_lrs)))
      if not finite[leading]:
        reasons.append(
          f"the leading copy (lr {lrs[leading]:.2g}) diverged: its weights are not finite; "
          "the suggestion follows the posterior among the copies that learned"
        )
      else:
        reasons.append(
          f"the leading copy (lr {lrs[leading]:.2g}) barely moved from its start "
          f"({moved[leading]:.2g} of its size, against {reference:.2g} for the median copy): "
          "the body learned to serve a copy that did not learn; the suggestion "
          "follows the posterior among the copies that learned"
        )
  edge = _edge(lrs, posterior)
  if edge:
    reasons.append(edge)
  if body:
    knee = body_knee(body)
    candidates["body"] = float(np.sqrt(knee["lr_low"] * knee["lr_high"]))
    gap = abs(np.log10(suggestion) - np.log10(candidates["body"]))
    if gap > BODY_DECADES:
      reasons.append(
        f"the body's units moved in proportion to their rates up to [{knee['lr_low']:.2g}, "
        f"{knee['lr_high']:.2g}), {gap:.1f} decades from the suggestion"
      )
    elif gap > AGREE_DECADES:
      side = "above" if candidates["body"] > suggestion else "below"
      reasons.append(
        f"the body and the copies disagree: the body's units moved in proportion to their "
        f"rates up to [{knee['lr_low']:.2g}, {knee['lr_high']:.2g}), {gap:.1f} decades {side} "
        "the suggestion; one rate for the whole model may lie between them"
      )
  centres = along @ log_lrs / np.log(10)
  drift = abs(centres[-1] - centres.mean())
  if drift > AGREE_DECADES:
    reasons.append(
      f"the posterior was still moving: at the last epoch given it centred on "
      f"{10 ** centres[-1]:.2g}, {drift:.1f} decades off its average along the run"
    )
  near = posterior[max(leading - 1, 0) : leading + 2].sum()
  if near < NEIGHBOUR_MASS:
    reasons.append(
      f"the posterior is spread: the leading copy and its neighbours hold {near:.2f} of it"
    )
  doubts = ("barely moved", "diverged", "decades from", "degenerate", "no initial_params")
  if any(word in reason for reason in reasons for word in doubts):
    confidence = "low"
  else:
    confidence = "medium" if reasons else "high"
  return suggestion, candidates, confidence, tuple(reasons)


def _edge(lrs: np.ndarray, posterior: np.ndarray) -> str:
  """Which way to widen the interval when the posterior leads with one of its end copies
  ("" when it does not)."""
  leading = int(np.argmax(posterior))
  if lrs.size < 2 or leading not in (0, lrs.size - 1):
    return ""
  low = leading == 0
  side, way, bound = ("lowest", "downwards", "lr_min") if low else ("highest", "upwards", "lr_max")
  wider = lrs[leading] / 10 if low else lrs[leading] * 10
  return (
    f"the leading copy has the interval's {side} rate ({lrs[leading]:.2g}, posterior weight "
    f"{posterior[leading]:.2f}): the best rate may lie beyond it; widen the interval {way}, "
    f"e.g. {bound}={wider:.2g}"
  )


def _is_distribution(weights: np.ndarray) -> bool:
  """Whether ``weights`` can be read as a posterior: finite, non-negative, some mass."""
  return bool(np.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0)


def body_movement(params: Any, initial_params: Any, rates: Any) -> tuple[dict[str, float], ...]:
  """How far the body's features moved from their start, binned by their rates.

  For each weight of rank >= 2 outside the head (kernels, embeddings, stacked layers), each
  feature's relative movement is ``|w_T - w_0| / |w_0|`` over the entries that share its
  rate. Features are binned by rate in half decades; each bin with at least 3 features
  reports its median movement.

  Args:
    params: the parameters now.
    initial_params: the parameters at step 0, the same tree.
    rates: the rate tree (:func:`find_rates`).

  Returns:
    One dict per bin, by increasing rate: ``lr_low``, ``lr_high``, ``features`` and
    ``movement`` (the median relative movement).
  """
  paths, now, _ = leaf_paths(_unwrap(params))
  start_paths, start, _ = leaf_paths(_unwrap(initial_params))
  _, rate_leaves, _ = leaf_paths(_unwrap(rates))
  if start_paths != paths or len(rate_leaves) != len(paths):
    raise ValueError(
      "initial_params must have the structure of params (the same model at step 0), e.g. "
      "alrao_jax.create_train_state(model, tx, key, x).params with the run's key."
    )
  feature_rates, movements = [], []
  for path, w, w0, rate in zip(paths, now, start, rate_leaves, strict=True):
    w, w0, rate = np.asarray(w, np.float64), np.asarray(w0, np.float64), np.asarray(rate)
    if COPIES_MODULE in path[:-1] or w.ndim < 2 or rate.size <= 1:
      continue
    shared = tuple(a for a in range(w.ndim) if rate.shape[a] == 1)
    moved = np.sqrt(np.sum((w - w0) ** 2, axis=shared))
    size = np.sqrt(np.sum(w0**2, axis=shared))
    keep = size > 0
    feature_rates.append(np.broadcast_to(rate, w.shape).max(axis=shared)[keep])
    movements.append((moved[keep] / size[keep]).reshape(-1))
  if not feature_rates:
    return ()
  lrs = np.log10(np.concatenate([r.reshape(-1) for r in feature_rates]))
  moves = np.concatenate(movements)
  low = np.floor(lrs.min() / BIN_DECADES) * BIN_DECADES
  bins = []
  for edge in np.arange(low, lrs.max() + BIN_DECADES / 2, BIN_DECADES):
    inside = (lrs >= edge) & (lrs < edge + BIN_DECADES)
    if inside.sum() >= MIN_PER_BIN:
      bins.append(
        {
          "lr_low": float(10**edge),
          "lr_high": float(10 ** (edge + BIN_DECADES)),
          "features": int(inside.sum()),
          "movement": float(np.median(moves[inside])),
        }
      )
  return tuple(bins)


def suggest_lr(
  params: Any,
  opt_state: Any = None,
  averaging_state: Any = None,
  *,
  averaging: ModelAveraging | None = None,
  initial_params: Any = None,
  posteriors: Sequence[Any] | None = None,
) -> LRSuggestion:
  """Suggests a learning rate for plain SGD on the same model, from an Alrao run.

  The suggestion is the geometric mean of the output copies' rates under the averaging
  posterior, ``exp(sum_j p_j log lr_j)``: where the switch puts its weight, between two
  neighbouring copies when it is split between them. Use the state of the epoch you would
  keep (``fit``'s ``state``); a running state works too. With ``posteriors`` (e.g. one per
  epoch up to the kept one, ``fit``'s history), the log-rate is averaged over them, which
  keeps a passing switch of a few steps from deciding alone.

  With ``initial_params`` (give them: the switch alone can be wrong by decades), the evidence
  also holds how far each copy moved from its start (:func:`copy_movement`) and how far the
  body's features moved, binned by their rates (:func:`body_movement`). A copy that moved
  less than 5% as far as the median copy did not learn; when the posterior leads with such a
  copy (the body then learned to serve a nearly frozen output), the suggestion follows the
  posterior among the copies that learned. ``confidence`` is ``"low"`` when the leading copy
  did not learn, or whether it learned is unknown (no ``initial_params``: a frozen copy can
  lead the switch), or the suggestion lies more than 3 decades from the body's knee, the
  fastest rates at which its units still moved in proportion to their rate
  (:func:`body_knee`; a `UserWarning` then says why); ``"medium"`` when the leading copy
  sits at the interval's edge, or the posterior is spread beyond the leading copy and its
  neighbours (less than 0.8 of it), or the body's knee lies more than half a decade from the
  suggestion (the copies and the body read different rates), or the last posterior of
  ``posteriors`` centres more than half a decade from their average (the switch was still
  moving); else ``"high"``.
  ``candidates`` holds the rates weighed: ``posterior``, ``leading``, and when known
  ``learned`` and ``body`` (the middle of the knee's bin). A low
  confidence calls for a short race of the candidates (:func:`alrao_jax.tune` runs one).

  The simplest call is on what :func:`alrao_jax.fit` returns for a linen model,
  ``suggest_lr(result)``: the kept epoch's state, the parameters at step 0 and the posteriors
  of the epochs up to the kept one, all read from the result.

  Args:
    params: the model's parameters (a linen ``TrainState.params`` or ``nnx.state(model,
      nnx.Param)``); or a whole :class:`alrao_jax.TrainState`, with the next two left out;
      or a linen run's :class:`alrao_jax.FitResult`, which also gives ``initial_params`` and
      ``posteriors`` (each may still be passed).
    opt_state: the optimizer state holding the Alrao rates (``TrainState.opt_state`` or
      ``nnx.Optimizer.opt_state``).
    averaging_state: the switch's state (``TrainState.averaging_state``, or what the NNX
      step returns).
    averaging: the model averaging of the run (default :func:`alrao_jax.switch_averaging`).
    initial_params: the parameters at step 0, for the copies' and the body's evidence
      (optional, recommended).
    posteriors: posteriors over the copies along the run, each of shape ``(N,)``, to average
      the log-rate over (optional; default: the state's posterior alone). The returned
      ``posterior`` is their mean.

  Returns:
    An :class:`LRSuggestion`.

  Raises:
    ValueError: the optimizer state holds no Alrao rates, or the model no Alrao head.

  Warns:
    UserWarning: the confidence is low, with its reasons; or the posterior leads with the
    interval's lowest or highest copy, with the way to widen the interval (``lr_min`` or
    ``lr_max`` a decade beyond that copy's rate).

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, alrao_jax
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return alrao_jax.AlraoHead(2, num_copies=3)(nn.relu(nn.Dense(8)(x)))
    >>> x, y = jax.random.normal(jax.random.key(0), (64, 4)), jnp.arange(64) % 2
    >>> tx = alrao_jax.alrao_sgd(1e-3, 10.0, key=jax.random.key(1))
    >>> state = alrao_jax.create_train_state(Net(), tx, jax.random.key(2), x)
    >>> step = alrao_jax.make_train_step(Net(), tx)
    >>> start = jax.device_get(state.params)  # the step donates the state's buffers
    >>> for _ in range(50):
    ...   state, _ = step(state, x, y)
    >>> suggestion = alrao_jax.suggest_lr(state, initial_params=start)
    >>> suggestion.copy_lrs.round(3).tolist(), bool(1e-3 <= suggestion.lr <= 10.0)
    ([0.001, 0.1, 10.0], True)

  References:
    Blier, Wolinski & Ollivier, `Learning with Random Learning Rates
    <https://arxiv.org/abs/1810.01322>`_, 2018 (section 4: the switch's posterior).
  """
  if isinstance(params, FitResult):
    if not isinstance(params.state, TrainState):
      raise TypeError(
        "an NNX run's FitResult holds the switch's state only: pass nnx.state(model, "
        "nnx.Param), optimizer.opt_state, result.state and initial_params=result.initial_params."
      )
    result = params
    if initial_params is None:
      initial_params = result.initial_params
    if posteriors is None and result.best_epoch:
      posteriors = [r["posterior"] for r in result.history[: result.best_epoch]]
    if result.copies is not None:  # copies were retired: the state holds these of them
      every = len(result.history[0]["posterior"])
      if posteriors is not None:
        posteriors = [p if len(p) != every else np.asarray(p)[result.copies] for p in posteriors]
      if initial_params is not None and num_copies_of(initial_params) == every:
        initial_params = slice_copies(initial_params, result.copies, every)
    params = result.state
  if isinstance(params, TrainState):
    if opt_state is not None or averaging_state is not None:
      raise TypeError("pass a TrainState alone, or params, opt_state and averaging_state.")
    params, opt_state, averaging_state = params.params, params.opt_state, params.averaging_state
  elif opt_state is None or averaging_state is None:
    raise TypeError(
      "suggest_lr needs a TrainState, or params, opt_state and averaging_state (NNX: "
      "nnx.state(model, nnx.Param), optimizer.opt_state and the switch's state)."
    )
  averaging = averaging or switch_averaging()
  rates = _unwrap(find_rates(_unwrap(opt_state)))
  paths, rate_leaves, _ = leaf_paths(rates)
  lrs = _copy_rates(paths, rate_leaves)
  posterior = np.asarray(averaging.posterior(_unwrap(averaging_state)), np.float64)
  if posterior.shape != lrs.shape:
    raise ValueError(
      f"averaging_state is over {posterior.size} copies but the head has {lrs.size}; pass "
      "the state of the same run."
    )
  reasons: list[str] = []
  if posteriors is not None:
    along = np.asarray([np.asarray(p, np.float64) for p in posteriors])
    if along.ndim != 2 or along.shape[1] != lrs.size or not len(along):
      raise ValueError(
        f"posteriors must be a non-empty sequence of posteriors over the {lrs.size} copies, "
        f"got shape {along.shape}; e.g. [r['posterior'] for r in fit_result.history]."
      )
    usable = np.asarray([_is_distribution(p) for p in along])
    if usable.any() and not usable.all():
      reasons.append(
        f"{int((~usable).sum())} of the {len(along)} posteriors given are not finite or "
        "have no mass: they are left out"
      )
    along = along[usable] if usable.any() else posterior[None]
  else:
    along = posterior[None]
  moved, body = None, ()
  if initial_params is not None:
    moved = copy_movement(params, initial_params)
    body = body_movement(params, initial_params, rates)
  if all(_is_distribution(p) for p in along):
    along = along / along.sum(axis=1, keepdims=True)
    posterior = along.mean(axis=0)
    lr, candidates, confidence, reasons = _weigh(lrs, posterior, along, moved, body, reasons)
  else:  # nothing to weigh: a low answer that says why, not nan
    posterior = np.full(lrs.size, np.nan)
    lr = float(np.exp(np.mean(np.log(lrs))))
    candidates, confidence = {"middle": lr}, "low"
    reasons = (
      "the posterior is degenerate (not finite, or no mass: every copy diverged, or no step "
      "was taken): it says nothing, and the suggestion is the middle of the copies' rates",
    )
  if confidence == "low":
    warnings.warn(
      f"alrao_jax.suggest_lr: low confidence in {lr:.3g}: " + "; ".join(reasons) + ". Race "
      f"the candidates {sorted({round(v, 12) for v in candidates.values()})} with "
      "alrao_jax.sweep before trusting one.",
      UserWarning,
      stacklevel=2,
    )
  elif np.isfinite(posterior).all() and (edge := _edge(lrs, posterior)):
    warnings.warn(f"alrao_jax.suggest_lr: {edge}.", UserWarning, stacklevel=2)
  return LRSuggestion(
    lr=lr,
    copy_lrs=lrs,
    posterior=posterior,
    leading_lr=float(lrs[int(np.argmax(posterior))]) if np.isfinite(posterior).all() else lr,
    body=body,
    candidates=candidates,
    confidence=confidence,
    reasons=reasons,
    copy_movement=moved,
  )


def describe(suggestion: LRSuggestion) -> str:
  """The suggestion and its evidence in a few lines of text."""
  lines = [
    f"suggested lr for SGD: {suggestion.lr:.3g} (leading copy: {suggestion.leading_lr:.3g}); "
    f"confidence {suggestion.confidence}"
  ]
  lines += [f"  - {reason}" for reason in suggestion.reasons]
  lines.append("candidates: " + ", ".join(f"{k} {v:.3g}" for k, v in suggestion.candidates.items()))
  weights = ", ".join(
    f"{lr:.2g}: {p:.2f}" for lr, p in zip(suggestion.copy_lrs, suggestion.posterior, strict=True)
  )
  lines.append(f"switch posterior over the copies' rates: {weights}")
  for b in suggestion.body:
    lines.append(
      f"body features with rates in [{b['lr_low']:.2g}, {b['lr_high']:.2g}): {b['features']}, "
      f"median relative movement {b['movement']:.3g}"
    )
  if suggestion.body:
    knee = body_knee(suggestion.body)
    lines.append(
      f"the body's units moved in proportion to their rates up to [{knee['lr_low']:.2g}, "
      f"{knee['lr_high']:.2g}); faster ones moved less per unit of rate (too fast to follow)"
      if knee is not suggestion.body[-1]
      else "the body's units moved in proportion to their rates up to the interval's top: "
      "faster rates may still learn"
    )
  return "\n".join(lines)

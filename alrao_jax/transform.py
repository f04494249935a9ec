"""The Alrao optax transform: per-feature learning rates kept in the optimizer state."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alrao_jax.checks import check_bounds
from alrao_jax.rates import COPIES_MODULE, Rules, check_rates_fit, leaf_paths, sample_rates


class ScaleByRatesState(NamedTuple):
  """State of :func:`scale_by_rates`."""

  rates: optax.Params  # rate tree: float32 leaves that broadcast against the params


def scale_by_rates(
  rates: optax.Params | Callable[[optax.Params], optax.Params],
) -> optax.GradientTransformationExtraArgs:
  """Multiplies each update leaf by its leaf of per-feature learning rates.

  The rates live in the state (not closed over), so a compiled update does not embed
  them as constants and a checkpoint of the state is self-contained.

  Args:
    rates: a rate tree for the parameters (see :func:`alrao_jax.sample_rates`), or a
      function ``params -> rate tree`` called by ``init``.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`. ``init`` raises a `ValueError` if the
    rates do not fit the parameters.

  Example:
    >>> import jax, jax.numpy as jnp, optax, alrao_jax
    >>> params = {'w': jnp.ones((2, 3))}
    >>> rates = {'w': jnp.array([[0.1, 0.01, 1.0]])}
    >>> tx = optax.chain(alrao_jax.scale_by_rates(rates), optax.scale(-1.0))
    >>> updates, _ = tx.update({'w': jnp.ones((2, 3))}, tx.init(params))
    >>> updates['w'][0].tolist()
    [-0.10000000149011612, -0.009999999776482582, -1.0]

  References:
    Blier, Wolinski & Ollivier, `Learning with Random Learning Rates
    <https://arxiv.org/abs/1810.01322>`_, 2018 (eq. 4).
  """

  def init_fn(params: optax.Params) -> ScaleByRatesState:
    if _is_optax_placeholder(params):
      # optax.tree_utils.tree_map_params marks the state's parameter-shaped fields by
      # initialising with a placeholder: the rates are not (their leaves are (1, out)), so
      # they get its transform_non_params (e.g. replicated), not the parameters' shardings.
      return ScaleByRatesState(rates=jnp.zeros((), jnp.float32))
    tree = rates(params) if callable(rates) else rates
    check_rates_fit(tree, params)
    return ScaleByRatesState(rates=tree)

  def update_fn(
    updates: optax.Updates,
    state: ScaleByRatesState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, ScaleByRatesState]:
    del params, extra_args
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    _, rate_leaves, _ = leaf_paths(state.rates)
    if len(leaves) != len(rate_leaves):
      raise ValueError(
        f"updates have {len(leaves)} leaves but the rate tree has {len(rate_leaves)}; "
        "initialise the transform with the same parameter tree you update."
      )
    scaled = [(u * r).astype(u.dtype) for u, r in zip(leaves, rate_leaves, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, scaled), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _is_optax_placeholder(params: Any) -> bool:
  return type(params).__name__ == "_ParamsPlaceholder"


def _check_key(key: Any) -> None:
  typed = isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
  raw = isinstance(key, jax.Array) and key.shape == (2,) and key.dtype == jnp.uint32
  if not ((typed and key.shape == ()) or raw):
    raise TypeError(
      f"key must be a PRNG key such as jax.random.key(0) (or a raw uint32 key of shape "
      f"(2,) from jax.random.PRNGKey), got {key!r}."
    )


def _check_decay(value: Any, name: str) -> None:
  """Raises unless ``value`` is a real number in [0, 1) (a tracer passes: injected)."""
  if isinstance(value, jax.core.Tracer):
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Real | jax.Array | np.ndarray):
    raise TypeError(f"{name} must be a float in [0, 1), got {value!r}.")
  if not 0.0 <= float(value) < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {float(value)}; e.g. 0.9.")


def _warn_without_head(params: optax.Params, name: str) -> None:
  """Warns when a model's parameters (more than one array) hold no Alrao head: its output
  layer then trains at random per-unit rates like any layer, and no copy is averaged."""
  paths = leaf_paths(params)[0]
  if len(paths) > 1 and not any(COPIES_MODULE in path for path in paths):
    warnings.warn(
      f"{name}: the parameters hold no Alrao head (no '{COPIES_MODULE}' module), so the output "
      "layer's units get random rates like any layer's and no copy is averaged; end the model "
      "with alrao_jax.AlraoHead (linen) or alrao_jax.nnx.AlraoHead (NNX) and train it with "
      "alrao_jax.alrao_loss.",
      UserWarning,
      stacklevel=4,
    )


def _rate_sampler(
  key: jax.Array,
  lr_min: float,
  lr_max: float,
  granularity: str,
  rules: Rules,
  stacked: Mapping[str, int] | None,
  name: str,
) -> Callable[[optax.Params], optax.Params]:
  check_bounds(lr_min, lr_max)
  _check_key(key)

  def sample(params: optax.Params) -> optax.Params:
    _warn_without_head(params, name)
    return sample_rates(
      key, params, lr_min, lr_max, granularity=granularity, rules=rules, stacked=stacked
    )

  return sample


def alrao_sgd(
  lr_min: float,
  lr_max: float,
  *,
  key: jax.Array,
  momentum: float | None = None,
  nesterov: bool = False,
  accumulator_dtype: Any | None = None,
  granularity: str = "feature",
  rules: Rules = None,
  stacked: Mapping[str, int] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Alrao-SGD: SGD where each feature has its own learning rate.

  ``init(params)`` samples the rates with :func:`alrao_jax.sample_rates`; copies of an
  :class:`alrao_jax.AlraoHead` get the deterministic :func:`alrao_jax.copy_rates` grid.
  Momentum is plain optax momentum (the authors' code also scales it by ``sqrt(lr)``;
  we do not).

  Args:
    lr_min: smallest learning rate, > 0.
    lr_max: largest learning rate, >= ``lr_min``.
    key: PRNG key for the rates.
    momentum: decay of the momentum trace, or ``None`` for none.
    nesterov: whether to use Nesterov momentum.
    accumulator_dtype: dtype of the momentum trace (e.g. ``jnp.bfloat16`` to halve its
      memory); ``None``: the parameters' dtypes. As in ``optax.sgd``.
    granularity: ``"feature"``, ``"weight"`` or ``"layer"``; see :func:`sample_rates`.
    rules: per-parameter overrides; see :func:`sample_rates`.
    stacked: layer axes of stacked (scanned) blocks, where shapes cannot tell; see
      :func:`sample_rates`.

  Returns:
    ``optax.chain(trace, scale_by_rates, scale(-1))``.

  Example:
    >>> import jax, jax.numpy as jnp, alrao_jax
    >>> params = {'dense': {'kernel': jnp.ones((4, 2)), 'bias': jnp.ones((2,))}}
    >>> tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0), momentum=0.9)
    >>> updates, state = tx.update(params, tx.init(params))
    >>> bool((updates['dense']['kernel'] < 0).all())
    True

  References:
    Blier, Wolinski & Ollivier, `Learning with Random Learning Rates
    <https://arxiv.org/abs/1810.01322>`_, 2018 (Algorithm 1).
  """
  sampler = _rate_sampler(key, lr_min, lr_max, granularity, rules, stacked, "alrao_sgd")
  if momentum is not None:
    _check_decay(momentum, "momentum")
  elif nesterov or accumulator_dtype is not None:
    raise ValueError(
      "nesterov and accumulator_dtype apply to the momentum trace; pass momentum (e.g. 0.9)."
    )
  return optax.chain(
    optax.trace(decay=momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype)
    if momentum is not None
    else optax.identity(),
    scale_by_rates(sampler),
    optax.scale(-1.0),
  )


def alrao_adam(
  lr_min: float,
  lr_max: float,
  *,
  key: jax.Array,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  mu_dtype: Any | None = None,
  granularity: str = "feature",
  rules: Rules = None,
  stacked: Mapping[str, int] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Alrao-Adam: Adam's direction scaled by per-feature learning rates.

  Args:
    lr_min: smallest learning rate, > 0.
    lr_max: largest learning rate, >= ``lr_min``.
    key: PRNG key for the rates.
    b1: decay of the first moment.
    b2: decay of the second moment.
    eps: term added to the denominator.
    mu_dtype: dtype of the first moment (e.g. ``jnp.bfloat16``); ``None``: the parameters'
      dtypes. As in ``optax.adam``.
    granularity: ``"feature"``, ``"weight"`` or ``"layer"``; see :func:`sample_rates`.
    rules: per-parameter overrides; see :func:`sample_rates`.
    stacked: layer axes of stacked (scanned) blocks, where shapes cannot tell; see
      :func:`sample_rates`.

  Returns:
    ``optax.chain(scale_by_adam, scale_by_rates, scale(-1))``.

  Example:
    >>> import jax, jax.numpy as jnp, alrao_jax
    >>> params = {'dense': {'kernel': jnp.ones((4, 2)), 'bias': jnp.ones((2,))}}
    >>> tx = alrao_jax.alrao_adam(1e-4, 1e-2, key=jax.random.key(0))
    >>> updates, state = tx.update(params, tx.init(params))
    >>> bool((jnp.abs(updates['dense']['kernel']) <= 1e-2 + 1e-6).all())
    True

  References:
    Blier, Wolinski & Ollivier, `Learning with Random Learning Rates
    <https://arxiv.org/abs/1810.01322>`_, 2018 (Appendix C).
  """
  sampler = _rate_sampler(key, lr_min, lr_max, granularity, rules, stacked, "alrao_adam")
  _check_decay(b1, "b1")
  _check_decay(b2, "b2")
  return optax.chain(
    optax.scale_by_adam(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype),
    scale_by_rates(sampler),
    optax.scale(-1.0),
  )


def rates_of(opt_state: optax.OptState) -> optax.Params:
  """The per-feature learning rates an Alrao optimizer sampled, read from its state.

  Works on the state of :func:`alrao_sgd`, :func:`alrao_adam` or :func:`scale_by_rates`,
  alone or inside any optax combinator (``chain``, ``masked``, ``MultiSteps``,
  ``inject_hyperparams``...), and on an ``nnx.Optimizer``'s ``opt_state``.

  Args:
    opt_state: the optimizer state.

  Returns:
    The rate tree (the structure of the parameters; see :func:`alrao_jax.sample_rates`).

  Raises:
    ValueError: the state holds no rates, or several rate trees.

  Example:
    >>> import jax, jax.numpy as jnp, alrao_jax
    >>> params = {'kernel': jnp.ones((2, 3))}  # a Dense kernel: one rate per output unit
    >>> tx = alrao_jax.alrao_sgd(1e-3, 1.0, key=jax.random.key(0))
    >>> alrao_jax.rates_of(tx.init(params))['kernel'].shape
    (1, 3)
  """
  found = optax.tree_utils.tree_get_all_with_path(
    opt_state, "rates", filtering=lambda path, _: _is_rates_field(path)
  )
  if len(found) != 1:
    raise ValueError(
      f"the optimizer state holds {len(found)} rate trees; rates_of needs the state of one "
      "Alrao optimizer (alrao_sgd, alrao_adam or scale_by_rates)."
    )
  return found[0][1]


def _is_rates_field(path: tuple) -> bool:
  return bool(path) and getattr(path[-1], "name", None) == "rates"

"""PNG figures of training runs, written with matplotlib's file-only backend.

matplotlib is imported on first use (it is in the ``cli`` and ``test`` extras).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

History = Sequence[Mapping[str, Any]]  # per epoch, as alrao_jax.train.fit records it


def _figure(ncols: int = 1) -> tuple[Any, Any]:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)


def _save(fig: Any, path: str | pathlib.Path) -> None:
  import matplotlib.pyplot as plt

  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _positive(values: Sequence[float]) -> list[float]:
  """Non-finite values are left out of a log-scale curve (gaps) instead of breaking it."""
  return [v if np.isfinite(v) and v > 0 else np.nan for v in values]


def plot_history(
  history: History, out: str | pathlib.Path, copy_lrs: Sequence[float] | None = None
) -> None:
  """Writes ``curves.png`` (losses per epoch) and ``posterior.png`` of one run into ``out``."""
  out = pathlib.Path(out)
  epochs = [r["epoch"] for r in history]
  fig, axes = _figure()
  ax = axes[0, 0]
  for key in ("train_loss", "valid_loss", "test_loss"):
    ax.plot(epochs, _positive([r[key] for r in history]), marker="o", label=key.replace("_", " "))
  ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="learning curves")
  ax.legend()
  _save(fig, out / "curves.png")
  plot_posterior(history, out / "posterior.png", copy_lrs)


def plot_posterior(
  history: History,
  path: str | pathlib.Path,
  copy_lrs: Sequence[float] | None = None,
  *,
  title: str = "switch posterior over the copies",
) -> None:
  """Writes the switch posterior per epoch as a stacked area, one band per copy."""
  epochs = [r["epoch"] for r in history]
  posterior = np.array([r["posterior"] for r in history]).T
  fig, axes = _figure()
  ax = axes[0, 0]
  names = [
    f"copy {j}" + (f" (lr {copy_lrs[j]:.2g})" if copy_lrs is not None else "")
    for j in range(len(posterior))
  ]
  ax.stackplot(epochs, posterior, labels=names)
  ax.set(xlabel="epoch", ylabel="posterior", ylim=(0, 1), title=title)
  ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
  _save(fig, path)


def plot_curves(
  histories: Mapping[str, History],
  path: str | pathlib.Path,
  *,
  loss_scale: float = 1.0,
  unit: str = "nats",
  title: str = "",
) -> None:
  """Writes train (left) and test (right) loss per epoch of several runs, one line each.

  Args:
    histories: label -> history of one run.
    path: the PNG file.
    loss_scale: factor from nats to ``unit``.
    unit: the loss unit on the y axes.
    title: a title over both panels.
  """
  fig, axes = _figure(2)
  for (label, history), color in zip(histories.items(), _colors(len(histories)), strict=True):
    epochs = [r["epoch"] for r in history]
    for ax, key in zip(axes[0], ("train_loss", "test_loss"), strict=True):
      values = [r[key] * loss_scale for r in history]
      ax.plot(epochs, _positive(values), color=color, label=label)
  for ax, split in zip(axes[0], ("train", "test"), strict=True):
    ax.set(xlabel="epoch", ylabel=f"{split} loss ({unit})", yscale="log")
  axes[0, 1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
  fig.suptitle(title)
  _save(fig, path)


def _colors(n: int) -> list[Any]:
  import matplotlib

  cmap = matplotlib.colormaps["tab20"]
  return [cmap(i % 20) for i in range(n)]


def plot_heatmap(
  values: np.ndarray,
  lr_mins: Sequence[float],
  lr_maxs: Sequence[float],
  path: str | pathlib.Path,
  *,
  title: str,
  label: str,
) -> None:
  """Writes a heatmap of ``values[i, j]`` at (``lr_mins[i]``, ``lr_maxs[j]``), NaN blank.

  Args:
    values: shape ``(len(lr_mins), len(lr_maxs))``; NaN where there is no run or it diverged.
    lr_mins: the rows' smallest rates.
    lr_maxs: the columns' largest rates.
    path: the PNG file.
    title: the figure's title.
    label: the colour bar's label.
  """
  fig, axes = _figure()
  ax = axes[0, 0]
  shown = np.ma.masked_invalid(np.asarray(values, float))
  image = ax.imshow(shown, origin="lower", cmap="viridis_r")
  for (i, j), v in np.ndenumerate(np.asarray(values, float)):
    if np.isfinite(v):
      ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w")
  ax.set_xticks(range(len(lr_maxs)), [f"{v:g}" for v in lr_maxs], rotation=45)
  ax.set_yticks(range(len(lr_mins)), [f"{v:g}" for v in lr_mins])
  ax.set(xlabel="lr_max", ylabel="lr_min", title=title)
  fig.colorbar(image, ax=ax, label=label)
  _save(fig, path)


def plot_lr_find(result: Any, path: str | pathlib.Path) -> None:
  """Writes the range test's raw and smoothed loss against the rate, suggestions marked."""
  fig, axes = _figure()
  ax = axes[0, 0]
  ax.plot(result.learning_rates, result.losses, alpha=0.3, label="batch loss")
  ax.plot(result.learning_rates, result.smoothed, label="smoothed")
  for (name, lr), color in zip(result.suggestions.items(), ("C2", "C3", "C4"), strict=False):
    ax.axvline(lr, color=color, linestyle="--", label=f"{name}: {lr:.2g}")
  ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title="learning-rate range test")
  ax.legend()
  _save(fig, path)

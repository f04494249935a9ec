"""PNG figures of training runs, written with matplotlib's file-only backend.

matplotlib is imported on first use (it is in the ``cli`` and ``test`` extras).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

History = Sequence[Mapping[str, Any]]  # per epoch, as alrao_jax.fit records it


def import_pyplot() -> Any:
  """matplotlib's pyplot with the file-only backend, imported now if not yet.

  The command line draws its figures in a process of its own
  (:mod:`alrao_jax.experiments.cli.figures`), which imports it there; a run imports it itself
  only where that process failed.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


RUN_MARGINS = {"left": 0.15, "right": 0.96, "bottom": 0.12, "top": 0.92}


def _figure(ncols: int = 1) -> tuple[Any, Any]:
  return import_pyplot().subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)


def _save(fig: Any, path: str | pathlib.Path, *, margins: dict[str, float] | None = None) -> None:
  """Writes ``fig``: laid out by matplotlib's tight layout, or, for the figures every run of the
  command line draws, with fixed ``margins`` (``subplots_adjust``'s), a quarter of a second
  less at the end of each run."""
  if margins is None:
    fig.tight_layout()
  else:
    fig.subplots_adjust(**margins)
  fig.savefig(path, dpi=100)
  import_pyplot().close(fig)


def _positive(values: Sequence[float]) -> list[float]:
  """Non-finite values are left out of a log-scale curve (gaps) instead of breaking it."""
  return [v if np.isfinite(v) and v > 0 else np.nan for v in values]


def _integer_epochs(ax: Any) -> None:
  from matplotlib.ticker import MaxNLocator

  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def best_epoch(history: History) -> int | None:
  """The epoch of the lowest finite validation loss (what :func:`alrao_jax.fit` keeps)."""
  losses = [(r["valid_loss"], r["epoch"]) for r in history if np.isfinite(r["valid_loss"])]
  return min(losses)[1] if losses else None


def plot_history(
  history: History,
  out: str | pathlib.Path,
  copy_lrs: Sequence[float] | None = None,
  *,
  title: str = "",
) -> None:
  """Writes ``curves.png`` (losses per epoch) of one run into ``out``, and ``posterior.png``
  when the run has several output copies (``copy_lrs``, the copies' rates).

  Args:
    history: per epoch, as :func:`alrao_jax.fit` records it.
    out: the run's folder.
    copy_lrs: the copies' learning rates; ``None`` or one rate: no posterior figure.
    title: what the run is (task and optimizer), over both figures.
  """
  out = pathlib.Path(out)
  epochs = [r["epoch"] for r in history]
  fig, axes = _figure()
  ax = axes[0, 0]
  for key in ("train_loss", "valid_loss", "test_loss"):
    ax.plot(epochs, _positive([r[key] for r in history]), marker="o", label=key.replace("_", " "))
  best = best_epoch(history)
  if best is not None:
    ax.axvline(best, color="0.5", linestyle=":", label=f"best epoch ({best}), kept")
  ax.set(xlabel="epoch", ylabel="loss (nats)", yscale="log", title=title or "learning curves")
  _integer_epochs(ax)
  ax.legend(fontsize="small")
  _save(fig, out / "curves.png", margins=RUN_MARGINS)
  if copy_lrs is not None and len(copy_lrs) > 1:
    plot_posterior(history, out / "posterior.png", copy_lrs, title=title)


def plot_posterior(
  history: History,
  path: str | pathlib.Path,
  copy_lrs: Sequence[float],
  *,
  title: str = "",
) -> None:
  """Writes the switch posterior per epoch as stacked bands, one per copy, coloured by the
  copy's log learning rate (a colour bar, for any number of copies).

  Args:
    history: per epoch, with ``posterior`` (one weight per copy).
    path: the PNG file.
    copy_lrs: the copies' learning rates, increasing.
    title: what the run is.
  """
  import matplotlib

  epochs = [r["epoch"] for r in history]
  posterior = np.array([r["posterior"] for r in history]).T
  if len(copy_lrs) != len(posterior):
    raise ValueError(f"copy_lrs has {len(copy_lrs)} rates for {len(posterior)} copies.")
  log_lrs = np.log10(np.asarray(copy_lrs, float))
  norm = matplotlib.colors.Normalize(log_lrs.min(), max(log_lrs.max(), log_lrs.min() + 1e-9))
  cmap = matplotlib.colormaps["viridis"]
  fig, axes = _figure()
  ax = axes[0, 0]
  ax.stackplot(epochs, posterior, colors=[cmap(norm(v)) for v in log_lrs], edgecolor="w", lw=0.3)
  ax.set(
    xlabel="epoch",
    ylabel="posterior weight",
    ylim=(0, 1),
    xlim=(min(epochs), max(epochs)) if len(epochs) > 1 else None,
    title=(title + "\n" if title else "") + "switch posterior over the output copies",
  )
  _integer_epochs(ax)
  bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax)
  bar.set_label("copy's learning rate (log10)")
  _save(fig, path, margins={**RUN_MARGINS, "top": 0.86})  # a title of two lines


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
    _integer_epochs(ax)
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
  vmax: float | None = None,
) -> None:
  """Writes a heatmap of ``values[i, j]`` at (``lr_mins[i]``, ``lr_maxs[j]``), NaN blank.

  Args:
    values: shape ``(len(lr_mins), len(lr_maxs))``; NaN where there is no run or it diverged.
    lr_mins: the rows' smallest rates.
    lr_maxs: the columns' largest rates.
    path: the PNG file.
    title: the figure's title.
    label: the colour bar's label.
    vmax: the top of the colour scale (default: the largest value); larger values take its
      colour and keep their number, so that one run that blew up does not flatten the rest.
  """
  fig, axes = _figure()
  ax = axes[0, 0]
  values = np.asarray(values, float)
  shown = np.ma.masked_invalid(values)
  image = ax.imshow(shown, origin="lower", cmap="viridis_r", vmax=vmax)
  for (i, j), v in np.ndenumerate(values):
    if np.isfinite(v):
      text = f"{v:.2f}" if abs(v) < 1000 else f"{v:.0e}"
      ax.text(j, i, text, ha="center", va="center", fontsize=7, color="w")
  ax.set_xticks(range(len(lr_maxs)), [f"{v:g}" for v in lr_maxs], rotation=45)
  ax.set_yticks(range(len(lr_mins)), [f"{v:g}" for v in lr_mins])
  ax.set(xlabel="lr_max", ylabel="lr_min", title=title)
  clipped = vmax is not None and bool((shown > vmax).any())
  fig.colorbar(image, ax=ax, label=label, extend="max" if clipped else "neither")
  _save(fig, path)


def plot_lr_find(result: Any, path: str | pathlib.Path, *, title: str = "") -> None:
  """Writes the range test's plot (:meth:`alrao_jax.LRFindResult.plot`) to a PNG file.

  Args:
    result: an :class:`alrao_jax.LRFindResult`.
    path: the PNG file.
    title: what was tested (task, optimizer).
  """
  fig, axes = _figure()
  fig.set_size_inches(10, 4.5)
  result.plot(axes[0, 0], title=title)
  _save(fig, path)


def plot_bars(
  series: Mapping[str, Sequence[float]],
  groups: Sequence[str],
  path: str | pathlib.Path,
  *,
  title: str = "",
  ylabel: str = "",
  reference: float | None = 1.0,
) -> None:
  """Grouped bars: one group per entry of ``groups``, one bar per series in each.

  Args:
    series: name -> one value per group (non-finite values leave a gap).
    groups: the groups' labels.
    path: the PNG file.
    title: the figure's title.
    ylabel: the y axis's label.
    reference: a dashed horizontal line at this value (None: no line).
  """
  fig, axes = _figure()
  fig.set_size_inches(8.5, 4)  # room for the legend on the right
  ax = axes[0, 0]
  width = 0.8 / max(len(series), 1)
  x = np.arange(len(groups))
  finite = [v for values in series.values() for v in values if np.isfinite(v)]
  for i, (name, values) in enumerate(series.items()):
    values = [v if np.isfinite(v) else np.nan for v in values]
    ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
  if reference is not None:
    ax.axhline(reference, color="black", linestyle="--", linewidth=0.8)
  if finite:  # the bars start below the smallest value, so that differences show
    low, high = min(finite), max(finite)
    ax.set_ylim(max(0.0, low - 0.15 * (high - low + 1e-9)), high + 0.05 * (high - low + 1e-9))
  ax.set_xticks(x, list(groups))
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
  _save(fig, path)


def plot_panels(
  panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
  path: str | pathlib.Path,
  *,
  xlabel: str = "",
  ylabel: str = "",
  log_y: bool = False,
) -> None:
  """One panel per entry, one line per label: ``{title: {label: (x, y)}}``, side by side.

  Args:
    panels: title -> label -> (x values, y values); non-finite y values leave gaps.
    path: the PNG file.
    xlabel: the x axes' label.
    ylabel: the y axes' label.
    log_y: a logarithmic y axis.
  """
  fig, axes = _figure(ncols=len(panels))
  fig.set_size_inches(4.5 * len(panels), 3.8)
  for ax, (title, lines) in zip(axes[0], panels.items(), strict=True):
    for label, (x, y) in lines.items():
      ax.plot(x, _positive(y) if log_y else y, label=label)
    if log_y:
      ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
  _save(fig, path)

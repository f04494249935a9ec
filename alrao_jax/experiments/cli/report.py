"""What ``alrao-jax train`` reports per epoch: metrics.jsonl, the progress bar, the figures."""

from __future__ import annotations

import pathlib
import sys
import threading
import time
from typing import Any

import numpy as np

from alrao_jax import strict_json
from alrao_jax.checkpoint import orbax_checkpoint
from alrao_jax.experiments.cli.figures import Figures
from alrao_jax.experiments.cli.interrupt import CtrlC
from alrao_jax.experiments.methods import Method
from alrao_jax.loop import FitResult


class Reporter:
  """Per epoch: metrics.jsonl (the whole history) and the progress bar; the PNG plots when
  drawing them costs at most a tenth of the time since they were last drawn, and at the end.

  The figures are drawn by a process of their own (:class:`Figures`); the two take about a
  fifth of a second, on the core that training leaves free, but redrawn after every epoch they
  would still take that core from the step's threads.
  """

  PLOT_SHARE = 0.1  # the largest share of the wall time spent redrawing the figures

  def __init__(
    self, out: pathlib.Path, epochs: int, show: bool, method: Method, title: str, ctrl_c: CtrlC
  ):
    self.out, self.epochs, self.show, self.method, self.title = out, epochs, show, method, title
    self.bar, self.epoch, self.ctrl_c = None, 0, ctrl_c
    self.history: list[dict[str, Any]] = []
    # the first epoch's compilation does not count: timed from the end of the first epoch
    self.plotted_epoch, self.plotted_at, self.plot_seconds = 0, None, 0.5
    # imported before Ctrl-C is handled: an import that a Ctrl-C interrupts leaves a
    # half-initialised module behind
    from tqdm import tqdm

    self.tqdm = tqdm
    # orbax is imported beside the start of training, in a thread of its own, which a Ctrl-C
    # (raised in the main thread) cannot interrupt half way; the first checkpoint's save waits
    # for it if it is not there yet
    self._orbax = threading.Thread(target=orbax_checkpoint, daemon=True)
    self._orbax.start()
    self.figures = Figures(out, method.copy_lrs, title)

  def __call__(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
    self.epoch, self.history = record["epoch"], list(history)
    (self.out / "metrics.jsonl").write_text("".join(strict_json.dumps(r) + "\n" for r in history))
    self.ctrl_c.check()  # the epoch is checkpointed and recorded: a good place to stop
    if self.bar is None:
      self.bar = self.tqdm(
        total=self.epochs,
        initial=record["epoch"] - 1,
        disable=not self.show,
        unit="epoch",
        file=sys.stderr,
        dynamic_ncols=True,
      )
    self.bar.set_postfix_str(_fields(record, self.method))
    self.bar.update(1)
    if self.plotted_at is None:
      self.plotted_at = time.perf_counter()
    elif time.perf_counter() - self.plotted_at >= self.plot_seconds / self.PLOT_SHARE:
      self.plot()

  def plot(self, *, wait: bool = False) -> None:
    """Draws curves.png and posterior.png from the history so far (nothing before epoch 1);
    ``wait``: until they are written."""
    if self.history and self.plotted_epoch != self.epoch:
      self.figures.draw(self.history, wait=wait)
      self.plotted_at, self.plotted_epoch = time.perf_counter(), self.epoch
      self.plot_seconds = self.figures.seconds or self.plot_seconds

  def close(self, result: FitResult | None = None) -> None:
    """Draws the figures of the whole history, waits for them, and closes the progress bar."""
    self.plot(wait=True)
    self.figures.close()
    if self.bar is None:
      return
    if result is not None and result.best_epoch:
      best = result.history[result.best_epoch - 1]
      line = f"best epoch {result.best_epoch}: {_fields(best, self.method)}"
      self.bar.set_postfix_str(line, refresh=False)
    self.bar.close()


def _fields(record: dict[str, Any], method: Method) -> str:
  fields = [f"train loss {record['train_loss']:.3f}", f"valid loss {record['valid_loss']:.3f}"]
  if "valid_accuracy" in record:
    fields.append(f"valid acc {record['valid_accuracy']:.3f}")
  if len(method.copy_lrs) > 1:
    fields.append(f"leading copy lr {method.copy_lrs[int(np.argmax(record['posterior']))]:.2g}")
  return ", ".join(fields)


class RunBars:
  """Progress bars of epochs on stderr for the commands that train several runs (tune,
  screen, sweep): a new bar when a run starts its first epoch; ``--no-progress`` hides them.

  ``fit_epoch`` is :func:`alrao_jax.fit`'s ``on_epoch``, ``sweep_epoch`` :func:`alrao_jax.sweep`'s.
  ``epochs`` is every run's length, or one per run, in the order of ``names``.
  """

  def __init__(self, show: bool, epochs: int | tuple[int, ...], names: tuple[str, ...] = ()):
    from tqdm import tqdm

    self.tqdm, self.show, self.epochs, self.names = tqdm, show, epochs, names
    self.bar, self.runs = None, 0

    def fit_epoch(record: dict[str, Any], history: list[dict[str, Any]]) -> None:
      del history
      self._update(record["epoch"], f"valid loss {record['valid_loss']:.3f}")

    def sweep_epoch(epoch: int, histories: list[list[dict[str, Any]]]) -> None:
      going = sum(len(h) == epoch for h in histories)
      self._update(epoch, f"{going} of {len(histories)} rates still training")

    self.fit_epoch, self.sweep_epoch = fit_epoch, sweep_epoch

  def _update(self, epoch: int, fields: str) -> None:
    if epoch == 1 or self.bar is None:
      self.close()
      self.runs += 1
      name = self.names[self.runs - 1] if self.runs <= len(self.names) else f"run {self.runs}"
      total = self.epochs
      if isinstance(total, tuple):
        total = total[min(self.runs, len(total)) - 1]
      self.bar = self.tqdm(
        total=total,
        desc=name,
        disable=not self.show,
        unit="epoch",
        file=sys.stderr,
        dynamic_ncols=True,
      )
    self.bar.set_postfix_str(fields)
    self.bar.update(epoch - self.bar.n)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None

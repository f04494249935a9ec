"""A run's figures drawn by a process of their own, beside the training.

matplotlib's import and the drawing are CPU work in Python: in the training process they wait
for the interpreter's lock behind the tracing of the step (a 5-epoch digits run: about half a
second of its four). A child process started with the run imports matplotlib on another core
while the step compiles, draws each figure it is sent, and answers when the files are written.
Run as ``python -m alrao_jax.experiments.cli.figures``: one JSON request per line on stdin, one
answer per line on stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from alrao_jax.experiments.plots import History, plot_history


class Figures:
  """``curves.png`` and ``posterior.png`` of a run, drawn by a child process.

  The child starts at once, in a session of its own (a Ctrl-C at the terminal reaches the run,
  not the figures it owes), and ends when this process closes its input or exits. Where it
  cannot start, dies or fails to draw, the figures are drawn here instead, so the run's files
  are the same either way (and a drawing error is raised here, as it would be in-process).
  """

  def __init__(self, out: pathlib.Path, copy_lrs: Sequence[float], title: str):
    self.out, self.copy_lrs, self.title = out, [float(v) for v in copy_lrs], title
    self.seconds = None  # how long the child's last drawing took
    self._pending = False
    root = str(pathlib.Path(__file__).resolve().parents[3])  # the child imports this package
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    try:
      self._child = subprocess.Popen(
        [sys.executable, "-m", __name__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": path},
      )
    except OSError:
      self._child = None

  def draw(self, history: History, *, wait: bool) -> None:
    """Draws the figures of ``history``; ``wait``: returns once they are written (else once
    the previous drawing is done and this one is sent)."""
    if self._child is not None:
      request = {
        "history": list(history),
        "out": str(self.out),
        "copy_lrs": self.copy_lrs,
        "title": self.title,
      }
      try:
        self._answer()
        self._child.stdin.write(json.dumps(request) + "\n")
        self._child.stdin.flush()
        self._pending = True
        if wait:
          self._answer()
        return
      except (OSError, TypeError, ValueError, RuntimeError):
        self.close()
    plot_history(history, self.out, self.copy_lrs, title=self.title)

  def _answer(self) -> None:
    """Waits for the pending drawing's answer; RuntimeError when the child failed."""
    if not self._pending:
      return
    answer = self._child.stdout.readline().split(maxsplit=1)
    self._pending = False  # after the read: one that a Ctrl-C interrupts is still owed
    if not answer or answer[0] != "done":
      raise RuntimeError(f"the figures' process failed: {answer}")
    self.seconds = float(answer[1])

  def close(self) -> None:
    """Ends the child (its last drawing finished first: its input is closed, it exits)."""
    if self._child is None:
      return
    child, self._child, self._pending = self._child, None, False
    with contextlib.suppress(OSError):  # a pipe to a child that died: nothing to flush
      child.stdin.close()
    child.wait()
    child.stdout.close()


def _warm_up() -> None:
  """The two figures of a made-up 2-epoch run, drawn into a folder that is then removed: the
  fonts, the tick labels' parser and the colour bar load now, not in the run's first drawing
  (which would take twice as long)."""
  history = [
    {"epoch": e, "train_loss": 1.0, "valid_loss": 1.0, "test_loss": 1.0, "posterior": [0.5] * 2}
    for e in (1, 2)
  ]
  with tempfile.TemporaryDirectory() as folder:
    plot_history(history, folder, [1e-3, 1.0], title="warm-up")


def _serve(requests: Any, answers: Any) -> None:
  """Draws each request's figures; answers ``done <seconds>`` or ``failed <error>``."""
  _warm_up()
  for line in requests:
    request: dict[str, Any] = json.loads(line)
    start = time.perf_counter()
    try:
      plot_history(
        request["history"], request["out"], request["copy_lrs"], title=request["title"]
      )
    except Exception as err:  # told to the run, which draws again itself to raise it there
      message = f"{type(err).__name__}: {err}".replace("\n", " ")
      answers.write(f"failed {message}\n")
    else:
      answers.write(f"done {time.perf_counter() - start:.4f}\n")
    answers.flush()


if __name__ == "__main__":
  _serve(sys.stdin, sys.stdout)
  # every figure is written and answered: end at once, without the interpreter's teardown of
  # matplotlib (a fifth of a second that the run would wait for)
  sys.stdout.flush()
  os._exit(0)

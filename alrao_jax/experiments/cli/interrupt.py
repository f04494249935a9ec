"""Ctrl-C during a run: one line and exit code 130, the run left resumable."""

from __future__ import annotations

import signal
import sys
from typing import Any


class CtrlC:
  """SIGINT raises KeyboardInterrupt and is remembered: where Python drops the exception (a
  garbage-collection callback inside JAX), the flag stops the run at the end of the epoch,
  and the dropped exception's report is silenced."""

  def __init__(self) -> None:
    self.pressed = False

  def __enter__(self) -> CtrlC:
    def handler(signum: int, frame: Any) -> None:
      self.pressed = True
      raise KeyboardInterrupt

    def unraisable(report: Any) -> None:
      if not issubclass(report.exc_type, KeyboardInterrupt):
        self.previous_hook(report)

    self.previous_handler = signal.signal(signal.SIGINT, handler)
    self.previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    return self

  def __exit__(self, *exc: Any) -> None:
    signal.signal(signal.SIGINT, self.previous_handler)
    sys.unraisablehook = self.previous_hook

  def check(self) -> None:
    if self.pressed:
      raise KeyboardInterrupt

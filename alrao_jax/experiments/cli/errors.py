"""The command line's errors: each ends the command with one line on stderr."""


class UsageError(Exception):
  """Bad input: reported on one line, exit code 2."""


class RunInterruptedError(Exception):
  """Ctrl-C during a run; the message says how to continue it."""


class RunDivergedError(Exception):
  """The training loss went non-finite: reported on one line, exit code 2."""

"""SIGTERM and SIGINT: every phase stops cleanly, saving what it can resume.

:class:`StopRequests` turns the two signals into a flag that the phase's
loop reads between steps: the training loop checkpoints and returns, the SFT
reference fit checkpoints its own progress, and a phase with nothing to
resume (computing reference log-probs) just stops. A phase that stops
early raises :class:`Stopped` (or, for training, reports it in its result);
``train.main`` then exits 0 for SIGTERM (a preempted machine, to be
rescheduled) and 130 for SIGINT, as a shell does for Ctrl-C.
"""

import signal

EXIT_CODES = {"SIGTERM": 0, "SIGINT": 130}


class Stopped(Exception):
  """A phase stopped on a signal; the message says what was saved."""

  def __init__(self, signal_name: str, message: str):
    super().__init__(message)
    self.signal_name = signal_name

  @property
  def exit_code(self) -> int:
    return EXIT_CODES[self.signal_name]


class StopRequests:
  """``with StopRequests() as stop:`` ... ``if stop.signal: ...``.

  ``signal`` is None until SIGTERM or SIGINT arrives, then its name. The
  previous handlers come back on exit. Outside the main thread (where
  Python cannot install handlers) nothing is installed and ``signal`` stays
  None.
  """

  def __init__(self):
    self.signal = None
    self._previous = {}

  def _handler(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __enter__(self) -> "StopRequests":
    try:
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handler)
    except ValueError:  # Not the main thread.
      pass
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

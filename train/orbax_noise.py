"""Quiet orbax's background threads when a checkpoint write or read fails.

Orbax writes and reads a checkpoint's arrays concurrently. When one fails
(a full disk, a truncated file) every other pending operation reports its
own failure from a background thread: asyncio log records, thread
tracebacks, and tensorstore callbacks printing from C++. The program reports
the failure itself in one line; this module keeps those hundreds of echoes
off the terminal, and lets everything through when nothing failed.
"""

import contextlib
import gc
import logging
import os
import sys
import tempfile
import threading
import time
import warnings


class _DropUnretrievedFutures(logging.Filter):
  """Orbax reads a checkpoint's arrays concurrently: when one read fails,
  asyncio later logs every other failed read ("Future exception was never
  retrieved", a long tensorstore message each) as its future is collected.
  The first failure is reported, in one line; those are dropped."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "exception was never retrieved" not in str(record.msg)


_STRAGGLERS_SECONDS = 1.0


class _Hold(logging.Filter):
  def __init__(self):
    super().__init__()
    self.records = []

  def filter(self, record: logging.LogRecord) -> bool:
    self.records.append(record)
    return False


@contextlib.contextmanager
def held(*, fatal: bool = False):
  """Holds back what orbax's threads print while a save or read runs.

  When a save or read fails (a full disk, a missing file), each of orbax's
  concurrent operations logs its failure and its thread dies printing a
  traceback: hundreds of lines that bury the one the program prints. They
  are held while the operation runs, printed as usual if it succeeds, and
  dropped if it fails: the failure itself propagates to the caller.

  Args:
    fatal: the program ends if the operation fails (a save). Threads still
      printing from C++ after the failure then write to /dev/null, and
      ``sys.stderr`` moves to a copy of the real standard error, so that
      the program's own last line is the one that shows.
  """
  hold = _Hold()
  loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
  for logger in loggers:
    logger.addFilter(hold)
  thread_errors = []
  previous_hook = threading.excepthook
  threading.excepthook = thread_errors.append
  previous_excepthook = sys.excepthook
  sys.excepthook = _ignoring_closed_loop(previous_excepthook)
  # tensorstore's callbacks print from C++, past every Python hook: file
  # descriptor 2 itself is held.
  sys.stderr.flush()
  held = tempfile.TemporaryFile()
  stderr_fd = os.dup(2)
  os.dup2(held.fileno(), 2)
  failed = True
  try:
    yield
    failed = False
  finally:
    sys.stderr.flush()
    if failed and fatal:
      sys.stderr = os.fdopen(stderr_fd, "w", buffering=1)
      devnull = os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, 2)
      os.close(devnull)
    else:
      if failed:
        # The failed operation's other reads report from tensorstore's
        # threads for a moment after it has raised, and its abandoned
        # coroutines when they are collected.
        time.sleep(_STRAGGLERS_SECONDS)
        gc.collect()
      os.dup2(stderr_fd, 2)
      os.close(stderr_fd)
    if not failed:
      held.seek(0)
      text = held.read().decode(errors="replace")
      if text:
        sys.stderr.write(text)
        sys.stderr.flush()
    held.close()
    for logger in loggers:
      logger.removeFilter(hold)
    if failed:
      # orbax's threads may still die of the failure after it has raised:
      # their closed-event-loop errors stay quiet, anything else is shown.
      def thread_hook(args):
        if not _closed_loop(args.exc_type, args.exc_value):
          previous_hook(args)

      threading.excepthook = thread_hook
      sys.unraisablehook = _ignoring_orbax_coroutines(sys.unraisablehook)
      warnings.filterwarnings("ignore", "coroutine", RuntimeWarning)
    else:
      threading.excepthook = previous_hook
      sys.excepthook = previous_excepthook
      for record in hold.records:
        logging.getLogger(record.name).handle(record)
      for args in thread_errors:
        previous_hook(args)


def _ignoring_orbax_coroutines(hook):
  """Drops the errors of orbax's abandoned coroutines, collected later."""

  def filtered(unraisable):
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and "orbax" in code.co_filename:
      return
    hook(unraisable)

  return filtered


def _closed_loop(kind, value) -> bool:
  return kind is RuntimeError and str(value) == "Event loop is closed"


def _ignoring_closed_loop(hook):
  def filtered(kind, value, traceback):
    if _closed_loop(kind, value):
      return
    hook(kind, value, traceback)

  return filtered


def drop_unretrieved_read_failures() -> None:
  """Drops asyncio's echo of failed concurrent reads (see the filter)."""
  logger = logging.getLogger("asyncio")
  if not any(isinstance(f, _DropUnretrievedFutures) for f in logger.filters):
    logger.addFilter(_DropUnretrievedFutures())

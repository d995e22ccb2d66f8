"""The workdir: created if needed, and held by one run at a time.

A run holds an exclusive ``flock`` on ``WORKDIR/lock`` from start to end, and
writes its host, process id and start time there. The kernel drops the lock
when the process ends in any way (SIGKILL included), so a lock left by a
dead run is simply taken over; a second live run is refused at start. Only
process 0 of a multi-host run takes the lock: the processes of one run share
the workdir by design.
"""

import datetime
import fcntl
import json
import os
import pathlib
import socket

import jax

from train.errors import ConfigError
from train.errors import WorkdirBusyError


def prepare(workdir: pathlib.Path) -> None:
  """Creates ``workdir``, or says in one line why it cannot be used."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise ConfigError(
      f"cannot use --workdir {workdir}: {error.strerror or error}"
    ) from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ConfigError(f"cannot use --workdir {workdir}: not writable")


class WorkdirLock:
  """``with WorkdirLock(workdir):`` holds the workdir for this run."""

  def __init__(self, workdir: str | pathlib.Path):
    self._workdir = pathlib.Path(workdir)
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    if jax.process_index() != 0:
      return self
    prepare(self._workdir)
    path = self._workdir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise WorkdirBusyError(
        f"{self._workdir} is in use by process {holder.get('pid', '?')} on"
        f" host {holder.get('host', '?')} (started"
        f" {holder.get('started', '?')}); wait for that run to end, or use"
        " another --workdir"
      ) from None
    record = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "started": datetime.datetime.now().astimezone().isoformat("T", "seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc_info) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _read_holder(fd: int) -> dict:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (OSError, ValueError):
    return {}

"""Every error a user fixes by changing the config, the data or the workdir.

All of them derive from :class:`UserError`; ``train.main`` reports each as
one line on stderr, ``error: <message>``, and exits with code 2. Messages
say what is wrong and what to change, in one sentence without a final period.
The library's :class:`slpo_jax.models.CheckpointError` (an unreadable or
unsupported Hugging Face folder) is reported the same way.
"""

import errno

from slpo_jax.models import CheckpointError


class UserError(Exception):
  """A mistake in the config, the data or the workdir, not a program bug."""


class ConfigError(UserError, ValueError):
  """A configuration that cannot work, with what to change."""


class DataError(UserError, ValueError):
  """A data file, record or data setting that cannot be used."""


class IncompatibleCheckpointError(UserError, ValueError):
  """The workdir holds a checkpoint of a different run."""


class WorkdirBusyError(UserError, RuntimeError):
  """Another live run holds the workdir."""


class DiskFullError(UserError, OSError):
  """A write failed for want of space."""


class DamagedCheckpointsError(UserError, RuntimeError):
  """Every checkpoint in the workdir failed to read."""


class NoCheckpointError(UserError, LookupError):
  """The workdir has no checkpoint, or none of the step asked for."""


class NonFiniteError(UserError, RuntimeError):
  """The loss or the gradient became NaN or infinite."""


# What train.main reports in one line.
USER_ERRORS: tuple[type[Exception], ...] = (UserError, CheckpointError)


def disk_full(error: BaseException) -> str | None:
  """One line for an error caused by a full disk, else None.

  Looks through the chain of causes: orbax and tensorstore report ENOSPC
  inside their own exception types, with the path in the message.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      where = f" writing {error.filename}" if error.filename else ""
      return _disk_full_line(where)
    if "No space left on device" in str(error):
      return _disk_full_line("")
    error = error.__cause__ or error.__context__
  return None


def _disk_full_line(where: str) -> str:
  return (
    f"no space left on device{where}; free some space and rerun the same"
    " command: it resumes from the last complete checkpoint"
  )

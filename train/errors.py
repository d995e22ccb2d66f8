"""Every error a user fixes by changing the config, the data or the workdir.

All of them derive from :class:`UserError`; ``train.main`` reports each as
one line on stderr, ``error: <message>``, and exits with code 2. Messages
say what is wrong and what to change, in one sentence without a final period.
The library's :class:`slpo_jax.models.CheckpointError` (an unreadable or
unsupported Hugging Face folder) is reported the same way.
"""

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


class DamagedCheckpointsError(UserError, RuntimeError):
  """Every checkpoint in the workdir failed to read."""


class NonFiniteError(UserError, RuntimeError):
  """The loss or the gradient became NaN or infinite."""


# What train.main reports in one line.
USER_ERRORS: tuple[type[Exception], ...] = (UserError, CheckpointError)

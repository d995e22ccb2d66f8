"""Errors a user fixes by changing the config, the data or the workdir.

The program reports these as one line without a traceback.
"""


class ConfigError(ValueError):
  """A configuration that cannot work, with what to change."""


def user_errors() -> tuple[type[BaseException], ...]:
  """The exception types reported without a traceback."""
  from slpo_jax.models import CheckpointError
  from train.checkpoint import IncompatibleCheckpointError
  from train.data import DataError
  from train.loop import NonFiniteError

  return (ConfigError, CheckpointError, DataError,
          IncompatibleCheckpointError, NonFiniteError)

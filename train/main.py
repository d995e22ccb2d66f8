"""Train a policy on preference pairs.

  python -m train.main --config configs/default.py --workdir /tmp/run

Any config key can be overridden: ``--config.loss.name=slpo``. Rerunning the
same command in the same workdir resumes from the latest checkpoint. A
mistake in the flags, the config or the data ends the program with one line
on stderr, ``error: ...``, and exit code 2.
"""

import functools
import sys
import threading

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from train import cli
from train import distributed
from train import errors
from train import stopping

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Where checkpoints, metrics and caches go."
)
config_flags.DEFINE_config_file(
  "config", None, "Path to a config file (configs/*.py).", lock_config=True
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    # Library INFO logs (checkpoint internals) would bury the progress bar;
    # pass -v 0 to see them.
    logging.set_verbosity(logging.WARNING)
  config = flags.FLAGS.config
  distributed.initialize(config.distributed)
  distributed.log_devices()
  from train import loop  # Imported after JAX's distributed runtime is up.

  try:
    result = loop.train_and_evaluate(config, _WORKDIR.value)
  except stopping.Stopped as stopped:
    # A signal before training proper (the reference fit): what was saved
    # is in the message; the same command continues.
    print(stopped, file=sys.stderr, flush=True)
    sys.exit(stopped.exit_code)
  except errors.USER_ERRORS as error:
    # Errors the user can fix by changing the config or data: one line, no
    # traceback (and not repeated by an absl log line).
    if isinstance(error, errors.DiskFullError):
      _quiet_exit_flushes()
    cli.fail(str(error))
  except Exception as error:
    # A full disk is the user's to fix too; any other error is a bug and
    # keeps its traceback.
    message = errors.disk_full(error)
    if message is None:
      raise
    _quiet_exit_flushes()
    cli.fail(message)
  if result.stopped_by is not None:
    sys.exit(stopping.EXIT_CODES[result.stopped_by])


def _quiet_exit_flushes() -> None:
  # Writers that flush in their own thread or at exit (TensorBoard's) fail
  # on the full disk too; the one line above says why.
  sys.unraisablehook = lambda unraisable: None
  threading.excepthook = lambda args: None


if __name__ == "__main__":
  app.run(main, flags_parser=functools.partial(cli.parse_flags, usage=__doc__))

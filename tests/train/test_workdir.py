"""One run per workdir, and workdirs that cannot be used, in one line."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from train import workdir as workdir_lib
from train.errors import ConfigError
from train.errors import WorkdirBusyError

from train_testing import REPO_ROOT

HOLD = (
  "import sys, time; from train import workdir;"
  " lock = workdir.WorkdirLock(sys.argv[1]).__enter__();"
  " print('held', flush=True); time.sleep(600)"
)


def _hold_in_another_process(path) -> subprocess.Popen:
  process = subprocess.Popen(
    [sys.executable, "-c", HOLD, str(path)],
    cwd=REPO_ROOT,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert process.stdout.readline().strip() == "held"
  return process


def test_a_live_run_holds_the_workdir_and_a_dead_one_does_not(tmp_path):
  # (A whole second train.main refused at start: bench.faults.)
  holder = _hold_in_another_process(tmp_path)
  try:
    with pytest.raises(WorkdirBusyError) as error:
      with workdir_lib.WorkdirLock(tmp_path):
        pass
    message = str(error.value)
    assert f"process {holder.pid} on host {socket.gethostname()}" in message
    assert "\n" not in message
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # SIGKILL leaves the lock file behind; its lock died with the process.
  assert (tmp_path / "lock").exists()
  with workdir_lib.WorkdirLock(tmp_path):
    recorded = (tmp_path / "lock").read_text()
  assert f'"pid": {os.getpid()}' in recorded


def test_a_workdir_under_a_file_is_refused_in_one_line(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(
    ConfigError, match="cannot use --workdir .*file/run: Not a directory"
  ):
    with workdir_lib.WorkdirLock(tmp_path / "file" / "run"):
      pass

"""Fixtures of the training program's tests.

Compilation dominates their cost, so the tests of this directory share a
persistent compilation cache for the session: a program compiled in one test,
or by the test process for a ``python -m train.main`` child, is loaded from
disk by the next one with the same program.
"""

import contextlib
import dataclasses
import functools
import io
import pathlib
import subprocess
import sys

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from bench import fault_runs

from train_testing import BASELINE
from train_testing import REPO_ROOT
from train_testing import Trained
from train_testing import make_tiny_config
from train_testing import subprocess_env
from train_testing import train
from train_testing import write_chat_tokenizer


@contextlib.contextmanager
def _persistent_compilation_cache(directory: pathlib.Path):
  names = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
  )
  previous = {name: getattr(jax.config, name) for name in names}
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    for name, value in previous.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="session", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
  """One compilation cache for these tests and their ``train.main`` children."""
  with _persistent_compilation_cache(tmp_path_factory.mktemp("jax_cache")):
    yield


@pytest.fixture(scope="session")
def pair_files(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  """Training and evaluation JSONL files of the tiny runs."""
  return fault_runs.write_pairs(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="session")
def make_config(pair_files):
  """``make_config(**{"loss.name": "ipo"})``: the tiny config on the files."""
  return functools.partial(make_tiny_config, pair_files)


@pytest.fixture(scope="session")
def baseline(make_config, tmp_path_factory) -> Trained:
  """The baseline run (``BASELINE`` on all 8 devices), trained once."""
  return train(make_config(**BASELINE), tmp_path_factory.mktemp("baseline"))


@dataclasses.dataclass
class ChatRun:
  """A finished run with a tokenizer folder and a chat template."""

  trained: Trained
  tokenizer_folder: pathlib.Path
  output: str  # What the run printed.


@pytest.fixture(scope="session")
def chat_run(make_config, tmp_path_factory) -> ChatRun:
  """Two steps on one device with a BPE tokenizer folder and the built-in
  ChatML template, checkpoints at steps 1 and 2, exported at the end.

  The learning rate is high enough that two steps change what the policy
  generates greedily.
  """
  root = tmp_path_factory.mktemp("chat_run")
  folder = write_chat_tokenizer(root / "tokenizer")
  config = make_config(
    steps=2,
    checkpoint_every=1,
    **{
      "data.tokenizer": str(folder),
      "data.chat_template": "chatml",
      "mesh.data": 1,
      "optimizer.learning_rate": 1e-2,
    },
  )
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    trained = train(config, root / "run", devices=1)
  return ChatRun(trained, folder, printed.getvalue())


@pytest.fixture(scope="session")
def command_lines(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
  """``train.export`` and ``train.sample`` runs that end before any work,
  by name: a refused setting, and ``--help``.

  They run side by side: most of their time is Python and JAX start-up.
  """
  root = tmp_path_factory.mktemp("command_lines")
  workdir, out = str(root / "run"), str(root / "out")
  commands = {
    "export_peft": (
      "train.export", "--workdir", workdir, "--out", out, "--format", "peft",
    ),
    "export_help": ("train.export", "--help"),
    "sample_temperature": (
      "train.sample", "--workdir", workdir, "--prompt", "hi",
      "--temperature=-1",
    ),
  }  # fmt: skip
  processes = {
    name: subprocess.Popen(
      [sys.executable, "-m", *command],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=subprocess_env(1),
      cwd=REPO_ROOT,
    )
    for name, command in commands.items()
  }
  done = {}
  for name, process in processes.items():
    stdout, stderr = process.communicate(timeout=120)
    done[name] = subprocess.CompletedProcess(
      process.args, process.returncode, stdout, stderr
    )
  return done

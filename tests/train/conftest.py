"""Fixtures of the training program's tests.

Compilation dominates their cost, so the tests of this directory share a
persistent compilation cache for the session: a program compiled in one test,
or by the test process for a ``python -m train.main`` child, is loaded from
disk by the next one with the same program.
"""

import contextlib
import functools
import pathlib

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from train_testing import BASELINE
from train_testing import Trained
from train_testing import make_tiny_config
from train_testing import train
from train_testing import write_pair_files


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
  return write_pair_files(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="session")
def make_config(pair_files):
  """``make_config(**{"loss.name": "ipo"})``: the tiny config on the files."""
  return functools.partial(make_tiny_config, pair_files)


@pytest.fixture(scope="session")
def baseline(make_config, tmp_path_factory) -> Trained:
  """The baseline run (``BASELINE`` on all 8 devices), trained once."""
  return train(make_config(**BASELINE), tmp_path_factory.mktemp("baseline"))

"""Two processes on this machine form one 8-device mesh.

Each ``python -m train.main`` process has 4 CPU devices and reads its own
shard of the data (``batch_size / 2`` pairs a step); JAX's distributed
runtime joins them, and cross-process collectives on CPU go through gloo,
JAX's default ``jax_cpu_collectives_implementation``.
"""

import dataclasses

import jax
import numpy as np
import pytest

from train import data as data_lib
from train import loop

from train_testing import BASELINE
from train_testing import TOLERANCE
from train_testing import build
from train_testing import finish
from train_testing import free_port
from train_testing import read_metrics
from train_testing import start_train_main
from train_testing import train_losses

# Two train.main processes compiling for a 2-process mesh: ~1.5 min.
pytestmark = pytest.mark.slow

PROCESSES = 2
# The baseline without evaluation (its steps are the baseline's steps).
CHANGES = {**BASELINE, "eval_every": 0}


@pytest.fixture(scope="module")
def two_processes(make_config, tmp_path_factory):
  """The workdir of a finished 2-process run; both exited with 0."""
  workdir = tmp_path_factory.mktemp("multihost") / "run"
  config = make_config(**CHANGES)
  address = f"localhost:{free_port()}"
  processes = [
    start_train_main(
      config,
      workdir,
      f"--config.distributed.coordinator_address={address}",
      f"--config.distributed.num_processes={PROCESSES}",
      f"--config.distributed.process_id={index}",
      devices=8 // PROCESSES,
      log_name=f"process{index}",
    )
    for index in range(PROCESSES)
  ]
  outputs = [finish(process, timeout=540) for process in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output
  assert f"{PROCESSES} process(es), 4 local and 8 global devices" in outputs[0]
  # The export gathers the parameters from both processes; process 0 writes.
  assert (workdir / "hf" / "model.safetensors").is_file()
  return workdir


class _HostShards:
  """One process's view of what ``PROCESSES`` hosts read each step.

  Row block i of each batch is what host i reads: the same call of
  ``PreferenceDataset.batches`` that host makes.
  """

  def __init__(self, iterators):
    self._iterators = iterators

  def __iter__(self):
    return self

  def __next__(self):
    parts = [next(iterator) for iterator in self._iterators]
    return jax.tree.map(lambda *rows: np.concatenate(rows), *parts)

  def get_state(self):
    return {"hosts": [iterator.get_state() for iterator in self._iterators]}

  def set_state(self, state):
    for iterator, host in zip(self._iterators, state["hosts"]):
      iterator.set_state(host)


def test_two_processes_train_like_one_process_reading_their_shards(
  two_processes, make_config, tmp_path
):
  config = make_config(**CHANGES)
  run = build(config, tmp_path)
  dataset = data_lib.load_dataset(
    config.data,
    tokenizer=data_lib.make_tokenizer(config.data, ""),
    split="train",
  )
  # One process that reads the two hosts' shards in turn, as the two
  # processes do side by side.
  shards = _HostShards(
    [
      dataset.batches(
        batch_size=config.batch_size // PROCESSES,
        seed=config.seed,
        shard_index=host,
        shard_count=PROCESSES,
        repeat=True,
      )
      for host in range(PROCESSES)
    ]
  )
  loop.train_and_evaluate(
    config, tmp_path, run=dataclasses.replace(run, train_iterator=shards)
  )
  expected = read_metrics(tmp_path)
  actual = read_metrics(two_processes)
  assert [r["step"] for r in actual] == [r["step"] for r in expected]
  for name in ("loss", "grad_norm", "logps/chosen", "rewards/margins"):
    np.testing.assert_allclose(
      [r[name] for r in actual],
      [r[name] for r in expected],
      rtol=TOLERANCE,
      atol=TOLERANCE,
      err_msg=name,
    )


def test_two_processes_train_like_one_process(two_processes, baseline):
  expected = train_losses(baseline.workdir)
  actual = train_losses(two_processes)
  assert sorted(actual) == sorted(expected)
  np.testing.assert_allclose(
    [actual[s] for s in sorted(actual)],
    [expected[s] for s in sorted(expected)],
    rtol=TOLERANCE,
    atol=TOLERANCE,
  )

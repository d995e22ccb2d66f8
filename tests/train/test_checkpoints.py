"""Resuming, preemption and checkpoint hygiene of the training program."""

import shutil
import signal

import numpy as np
import pytest

from train.checkpoint import IncompatibleCheckpointError
from train.errors import DamagedCheckpointsError

from train_testing import BASELINE
from train_testing import TOLERANCE
from train_testing import assert_trees_equal
from train_testing import checkpoint_steps
from train_testing import finish
from train_testing import load_checkpoint_params
from train_testing import make_tiny_config
from train_testing import read_metrics
from train_testing import start_train_main
from train_testing import train
from train_testing import wait_for


def _without_timing(record: dict) -> dict:
  return {k: v for k, v in record.items() if k != "tokens_per_second"}


def test_rerun_resumes_keeping_one_record_per_step(
  make_config, baseline, tmp_path, capsys
):
  changes = {**BASELINE, "checkpoint_every": 1, "keep_checkpoints": 2}
  train(make_config(**{**changes, "steps": 2}), tmp_path)
  assert checkpoint_steps(tmp_path) == [1, 2]

  trained = train(make_config(**changes), tmp_path)
  assert "Resumed from the checkpoint of step 2." in capsys.readouterr().out
  assert int(trained.result.state.step) == BASELINE["steps"]
  assert checkpoint_steps(tmp_path) == [3, 4]  # keep_checkpoints = 2.
  records = read_metrics(tmp_path)
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  # Optimizer state and data position came back: the run continued exactly
  # like the uninterrupted baseline.
  expected = read_metrics(baseline.workdir)
  for actual, wanted in zip(records, expected):
    actual, wanted = _without_timing(actual), _without_timing(wanted)
    assert actual.keys() == wanted.keys()
    for name in wanted:
      np.testing.assert_allclose(
        actual[name], wanted[name], rtol=TOLERANCE, atol=TOLERANCE, err_msg=name
      )

  # The same command once more: nothing left to do, nothing written twice.
  train(make_config(**changes), tmp_path)
  assert "Resumed from the checkpoint of step 4." in capsys.readouterr().out
  assert read_metrics(tmp_path) == records
  assert checkpoint_steps(tmp_path) == [3, 4]


def test_incompatible_checkpoint_fails_at_start(
  make_config, baseline, tmp_path
):
  shutil.copytree(baseline.workdir / "checkpoints", tmp_path / "checkpoints")
  with pytest.raises(IncompatibleCheckpointError) as error:
    train(make_config(**BASELINE, **{"loss.name": "ipo", "seed": 3}), tmp_path)
  message = str(error.value)
  assert 'loss: checkpoint has "dpo", config has "ipo"' in message
  assert "seed: checkpoint has 0, config has 3" in message
  assert "batch_size" not in message  # Only what differs.
  assert "--workdir" in message
  assert not (tmp_path / "metrics.jsonl").exists()


def _truncate_largest_state_file(checkpoint):
  largest = max(
    (f for f in (checkpoint / "state").rglob("*") if f.is_file()),
    key=lambda f: f.stat().st_size,
  )
  largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])


def _delete_manifest(checkpoint):
  (checkpoint / "state" / "manifest.ocdbt").unlink()


@pytest.mark.parametrize(
  "damage",
  [
    _truncate_largest_state_file,
    # Another kind of damage, the same path (every kind is in bench.faults).
    pytest.param(_delete_manifest, marks=pytest.mark.slow),
  ],
)
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_one_before_resumed(
  make_config, baseline, tmp_path, capsys, damage
):
  shutil.copytree(baseline.workdir / "checkpoints", tmp_path / "checkpoints")
  shutil.copy(baseline.workdir / "metrics.jsonl", tmp_path / "metrics.jsonl")
  damage(tmp_path / "checkpoints" / "4")
  train(make_config(**BASELINE), tmp_path)
  printed = capsys.readouterr()
  warnings = [line for line in printed.err.splitlines() if "warning:" in line]
  assert len(warnings) == 1 and "checkpoints/4 cannot be read" in warnings[0]
  assert "Resumed from the checkpoint of step 2." in printed.out
  # Moved aside, not deleted; the run went on from step 2 and ended like the
  # uninterrupted baseline, one metrics record per step.
  assert (tmp_path / "checkpoints-damaged" / "4" / "state").is_dir()
  assert checkpoint_steps(tmp_path) == [2, 4]
  assert_trees_equal(
    load_checkpoint_params(tmp_path, 4),
    load_checkpoint_params(baseline.workdir, 4),
  )
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_when_no_checkpoint_reads_the_run_stops_with_one_line(
  make_config, baseline, tmp_path
):
  shutil.copytree(baseline.workdir / "checkpoints", tmp_path / "checkpoints")
  for step in (2, 4):
    _delete_manifest(tmp_path / "checkpoints" / str(step))
  with pytest.raises(DamagedCheckpointsError, match="no checkpoint in .* can"):
    train(make_config(**BASELINE), tmp_path)
  assert sorted(
    p.name for p in (tmp_path / "checkpoints-damaged").iterdir()
  ) == [
    "2",
    "4",
  ]


# The default program path: synthetic pairs sampled from an SFT reference
# that the run fits and caches in its workdir.
KILLED = {
  "steps": 24,
  "checkpoint_every": 4,
  "reference.sft_steps": 2,
  "reference.sft_batch_size": 16,
}


@pytest.mark.slow  # Two train.main processes and an SFT reference: ~2 min.
def test_sigkill_then_rerun_ends_bitwise_like_an_uninterrupted_run(tmp_path):
  config = make_tiny_config(None, **KILLED)
  uninterrupted = tmp_path / "uninterrupted"
  train(config, uninterrupted)

  killed = tmp_path / "killed"
  process = start_train_main(config, killed, log_name="first")
  wait_for(
    lambda: (killed / "checkpoints" / "4").exists(),
    process=process,
    what="the first checkpoint",
  )
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL
  assert checkpoint_steps(killed)[-1] < config.steps, "killed too late"

  rerun = start_train_main(config, killed, log_name="rerun")
  output = finish(rerun)
  assert rerun.returncode == 0, output
  assert "Resumed from the checkpoint of step" in output
  assert_trees_equal(
    load_checkpoint_params(killed, config.steps),
    load_checkpoint_params(uninterrupted, config.steps),
  )
  assert [r["step"] for r in read_metrics(killed)] == list(
    range(1, config.steps + 1)
  )


@pytest.mark.parametrize(
  ("stop", "returncode"),
  [
    (signal.SIGTERM, 0),
    # The same path with another code (also in bench.faults): slow.
    pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow),
  ],
)
def test_a_stop_signal_writes_a_checkpoint_and_exits_cleanly(
  make_config, tmp_path, stop, returncode
):
  config = make_config(steps=1000)
  process = start_train_main(config, tmp_path / "run")
  wait_for(
    lambda: (
      len(read_metrics(tmp_path / "run")) >= 2
      if (tmp_path / "run" / "metrics.jsonl").exists()
      else False
    ),
    process=process,
    what="two steps",
  )
  process.send_signal(stop)
  output = finish(process)
  assert process.returncode == returncode, output
  assert "Traceback" not in output
  (step,) = checkpoint_steps(tmp_path / "run")
  assert 2 <= step < config.steps
  assert f"{stop.name} received: checkpoint written at step {step}." in output
  assert read_metrics(tmp_path / "run")[-1]["step"] == step
  # Output to a file: plain progress lines, no carriage-return redraws, and
  # where the results are at the end.
  assert "\r" not in output
  assert "train step 1/1000, loss" in output
  assert "training sees 62.50 epochs of the train split" in output
  assert (
    f"checkpoints: {tmp_path / 'run' / 'checkpoints'} (latest step {step})"
    in output
  )
  # A run stopped early exports nothing: WORKDIR/hf is a finished run's.
  assert not (tmp_path / "run" / "hf").exists()
  assert "Hugging Face folder" not in output

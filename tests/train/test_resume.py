"""What a resumed run may change: the schedule no, other settings with a
one-line notice."""

import shutil

import pytest

from train import resume
from train.errors import ConfigError

from train_testing import BASELINE
from train_testing import make_tiny_config
from train_testing import train


def _cosine(**changes):
  return make_tiny_config(
    **{
      "steps": 30,
      "optimizer.decay": "cosine",
      "optimizer.warmup_steps": 3,
      **changes,
    }
  )


def test_a_longer_cosine_schedule_is_refused_saying_how_to_go_on():
  stored = resume.settings(_cosine())
  with pytest.raises(ConfigError) as error:
    resume.check(stored, _cosine(steps=60), step=30)
  message = str(error.value)
  assert "schedule with steps=30" in message
  assert "new --workdir" in message and "\n" not in message
  with pytest.raises(ConfigError, match="optimizer.decay='cosine'"):
    resume.check(stored, _cosine(**{"optimizer.decay": "linear"}), step=10)


def test_changes_that_keep_the_schedule_are_listed():
  # A constant rate is the same schedule for any number of steps.
  constant = resume.settings(make_tiny_config(steps=4))
  assert (
    resume.check(constant, make_tiny_config(steps=8), step=4)
    == "resuming with changed settings: steps 4 -> 8"
  )
  # The peak rate and beta change what the run does, not which run it is.
  line = resume.check(
    resume.settings(_cosine()),
    _cosine(**{"loss.beta": 0.2, "optimizer.learning_rate": 5e-4}),
    step=10,
  )
  assert line == (
    "resuming with changed settings: loss.beta 0.1 -> 0.2,"
    " optimizer.learning_rate 0.001 -> 0.0005"
  )
  assert resume.check(resume.settings(_cosine()), _cosine(), step=10) is None
  # Checkpoints written before settings were stored are not checked.
  assert resume.check({}, _cosine(steps=60), step=30) is None


def test_a_resumed_run_prints_what_changed(
  make_config, baseline, tmp_path, capsys
):
  # Resumed at its last step: nothing left to train, the notice printed.
  shutil.copytree(baseline.workdir / "checkpoints", tmp_path / "checkpoints")
  train(make_config(**BASELINE, **{"loss.beta": 0.25}), tmp_path)
  assert (
    "resuming with changed settings: loss.beta 0.1 -> 0.25"
    in capsys.readouterr().out
  )

"""Configs that cannot work fail at start, saying what to change."""

import pytest

from slpo_jax import losses
from train.errors import ConfigError
from train.errors import DataError

from train_testing import build
from train_testing import finish
from train_testing import start_train_main
from train_testing import train

# (override, a part of the message). Each runs on the 8 simulated devices.
CONFIG_ERRORS = {
  "batch_not_divisible": (
    {"batch_size": 12},
    "cannot be split over mesh.data x mesh.fsdp = 8 devices; make"
    " batch_size a multiple of 8",
  ),
  "mesh_too_large": (
    {"mesh.data": 16},
    "mesh data=16 x fsdp=1 x tensor=1 = 16 devices, but 8 are available;"
    " set one axis to -1",
  ),
  "unknown_loss": (
    {"loss.name": "dpoo"},
    "unknown loss 'dpoo'; config.loss.name must be one of"
    f" {sorted(losses.LOSSES)}, or several joined by commas",
  ),
  "unknown_optimizer": (
    {"optimizer.name": "adamm"},
    "unknown optimizer.name 'adamm'; use 'adamw' or 'rmsprop'",
  ),
  "weights_do_not_match": (
    {"loss.name": "sigmoid,sft", "loss.weights": (1.0,)},
    "config.loss: 1 weights for the 2 losses ['sigmoid', 'sft']",
  ),
  "bad_hyperparameter": (
    {"loss.name": "slpo", "loss.temperature": 0.5},
    "config.loss (slpo): temperature must be >= 1, got 0.5",
  ),
  "negative_learning_rate": (
    {"optimizer.learning_rate": -1e-4},
    "optimizer.learning_rate is -0.0001; it must be a number > 0",
  ),
}

# Checked in-process only (the command-line path is the same for all).
RANGE_ERRORS = {
  "no_steps": ({"steps": 0}, "steps is 0; it must be a positive integer"),
  "negative_steps": ({"steps": -5}, "steps is -5; it must be a positive"),
  "b1_one": (
    {"optimizer.b1": 1.0},
    "optimizer.b1 is 1.0; it must be a number in [0, 1)",
  ),
  "nan_beta": (
    {"loss.beta": float("nan")},
    "loss.beta is nan; it must be a number > 0",
  ),
  "smoothing": ({"loss.label_smoothing": 0.5}, "loss.label_smoothing is 0.5"),
  "bool_seed": ({"seed": True}, "seed is True; it must be an integer"),
  "negative_weight": (
    {"loss.name": "sigmoid,sft", "loss.weights": (1.0, -1.0)},
    "loss.weights is (1.0, -1.0); it must be a tuple of numbers >= 0",
  ),
  "sft_batch": (
    {"reference.sft_batch_size": 0},
    "reference.sft_batch_size is 0",
  ),
  "export_dtype": (
    {"export.dtype": "float16"},
    "export.dtype is 'float16'; use one of ['float32', 'bfloat16']",
  ),
  "export_shard_size": (
    {"export.max_shard_size": -1},
    "export.max_shard_size is -1; it must be a number of bytes >= 0",
  ),
  "eval_top_p": ({"eval.top_p": 0.0}, "eval.top_p is 0.0; it must be a number"),
  "eval_temperature": (
    {"eval.temperature": -1.0},
    "eval.temperature is -1.0; it must be a number >= 0",
  ),
  "eval_samples": (
    {"eval.num_samples": -1},
    "eval.num_samples is -1; it must be an integer >= 0",
  ),
  "eval_new_tokens": (
    {"eval.max_new_tokens": 0},
    "eval.max_new_tokens is 0; it must be a positive integer",
  ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_config_error_before_any_work(case, make_config, tmp_path):
  changes, message = CONFIG_ERRORS[case]
  with pytest.raises(ConfigError) as error:
    train(make_config(**changes), tmp_path / "run")
  assert message in str(error.value)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", sorted(RANGE_ERRORS))
def test_numeric_settings_out_of_range(case, make_config, tmp_path):
  changes, message = RANGE_ERRORS[case]
  with pytest.raises(ConfigError) as error:
    train(make_config(**changes), tmp_path / "run")
  assert message in str(error.value)
  assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def command_line_failures(make_config, tmp_path_factory):
  """``(exit code, output, workdir)`` of ``train.main`` for each bad config.

  The processes run side by side: most of their time is Python start-up.
  """
  root = tmp_path_factory.mktemp("config_errors")
  processes = {
    case: start_train_main(make_config(**changes), root / case)
    for case, (changes, _) in CONFIG_ERRORS.items()
  }
  processes["unknown_key"] = start_train_main(
    make_config(), root / "unknown_key", "--config.loss.nmae=x"
  )
  processes["help"] = start_train_main(make_config(), root / "help", "--help")
  outputs = {
    case: finish(process, timeout=120) for case, process in processes.items()
  }
  return {
    case: (process.returncode, outputs[case], root / case)
    for case, process in processes.items()
  }


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_command_line_reports_a_config_error_in_one_line(
  case, command_line_failures
):
  returncode, output, workdir = command_line_failures[case]
  _, message = CONFIG_ERRORS[case]
  assert returncode == 2, output
  assert "Traceback" not in output
  (line,) = [line for line in output.splitlines() if message in line]
  assert line.startswith("error: ")
  assert not workdir.exists()


def test_command_line_refuses_an_unknown_config_key(command_line_failures):
  returncode, output, workdir = command_line_failures["unknown_key"]
  assert returncode == 2, output
  assert "Traceback" not in output
  assert output.strip().splitlines() == [
    "error: no config key 'nmae' Did you mean \"name\" instead of \"nmae\"?"
  ]
  assert not workdir.exists()


def test_a_train_split_smaller_than_a_batch_needs_allow_repeats(
  make_config, tmp_path
):
  with pytest.raises(
    DataError, match="has 128 pairs, fewer than one batch of 256"
  ):
    train(make_config(batch_size=256), tmp_path / "run")
  run = build(
    make_config(**{"batch_size": 256, "data.allow_repeats": True}),
    tmp_path / "allowed",
  )
  assert next(run.train_iterator).chosen_input_ids.shape[0] == 256


def test_help_exits_0_saying_where_the_keys_are(command_line_failures):
  returncode, output, workdir = command_line_failures["help"]
  assert returncode == 0, output
  assert "--workdir" in output and "train/config_schema.py" in output
  assert not workdir.exists()

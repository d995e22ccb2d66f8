"""KTO runs of the program: pairs split into records, a records file, LoRA.

The loss and metrics against float64 are in test_objective_kto.py; here the
run's path: loading, batches on 8 devices, evaluation, checkpoints and
resumption, and LoRA's policy seam.
"""

import json
import shutil

import numpy as np
import pytest

from train_testing import assert_trees_equal
from train_testing import load_checkpoint_params
from train_testing import read_metrics
from train_testing import train
from train_testing import train_losses

KTO = {
  "loss.name": "kto",
  "steps": 4,
  "eval_every": 2,
  "checkpoint_every": 2,
  "export.at_end": False,
}


def _check_first_step(workdir):
  # Policy = reference at step 0: every log-ratio and the reference point
  # are 0, so each record's loss is sigmoid(0) = 1/2.
  assert train_losses(workdir)[1] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.slow
def test_kto_on_split_pairs_evaluates_and_resumes_bitwise(
  make_config, tmp_path, capsys
):
  first = tmp_path / "first"
  train(make_config(**KTO), first)
  out = capsys.readouterr().out
  assert ": 256 records (128 desirable, 128 not); 128 records read" in out
  _check_first_step(first)
  records = read_metrics(first)
  evals = [r for r in records if "eval/loss" in r]
  assert [r["step"] for r in evals] == [2, 4]
  for record in evals:
    assert 0 <= record["eval/rewards/accuracies"] <= 1
    assert record["eval/kl"] >= 0
    for name in ("rewards/chosen", "rewards/rejected", "logps/chosen"):
      assert np.isfinite(record[f"eval/{name}"]), name
  assert all(r["num_tokens"] > 0 for r in records if "loss" in r)
  # Resumed from step 2: the same records, batches and parameters.
  second = tmp_path / "second"
  (second / "checkpoints").mkdir(parents=True)
  shutil.copytree(first / "checkpoints" / "2", second / "checkpoints" / "2")
  train(make_config(**KTO), second)
  assert_trees_equal(
    load_checkpoint_params(second, 4), load_checkpoint_params(first, 4)
  )


def test_kto_reads_a_file_of_unpaired_records(make_config, tmp_path):
  config = make_config(
    **{**KTO, "steps": 2, "eval_every": 0, "data.unpaired": True}
  )
  pairs = [json.loads(line) for line in open(config.data.train_path)]
  path = tmp_path / "records.jsonl"
  with open(path, "w") as file:
    for i, pair in enumerate(pairs):
      side = "chosen" if i % 3 else "rejected"
      record = {
        "prompt": pair["prompt"],
        "completion": pair[side],
        "label": side == "chosen",
      }
      file.write(json.dumps(record) + "\n")
  config.data.train_path = str(path)
  config.data.eval_path = ""
  train(config, tmp_path / "run")
  _check_first_step(tmp_path / "run")


@pytest.mark.slow
def test_kto_trains_lora_adapters(make_config, tmp_path):
  config = make_config(
    **{**KTO, "model.lora.rank": 4, "mesh.data": 1, "eval_every": 0}
  )
  train(config, tmp_path / "run", devices=1)
  _check_first_step(tmp_path / "run")
  losses = train_losses(tmp_path / "run")
  assert losses[4] != losses[1]

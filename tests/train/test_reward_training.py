"""Bradley-Terry reward models trained by the program: above chance on the
synthetic task's held-out pairs, resumed from a checkpoint, and exported as
a folder transformers scores alike."""

import json

import jax
import numpy as np
import pytest

from slpo_jax import models
from train import reward_training
from train.errors import ConfigError

from train_testing import make_tiny_config

STEPS = 100


def _config(**changes):
  return make_tiny_config(
    **{
      "reward_model.train": True,
      "steps": STEPS,
      "eval_every": STEPS,
      "checkpoint_every": STEPS // 2,
      "log_every": 10,
      "optimizer.learning_rate": 1e-3,
      "data.synthetic.num_prompts": 512,
      "data.synthetic.num_eval_prompts": 128,
    }
    | changes
  )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Half the steps, then the same command with all of them: a resume."""
  workdir = tmp_path_factory.mktemp("reward_model")
  reward_training.train(_config(steps=STEPS // 2, eval_every=0), workdir)
  result = reward_training.train(_config(), workdir)
  return workdir, result


# A synthetic task's pairs and two runs of 50 steps: about a minute on two
# cores, so in the full suite only.
@pytest.mark.slow
def test_ranks_held_out_pairs_above_chance(trained):
  workdir, result = trained
  # About 128 held-out pairs: chance is 0.5 with a standard deviation of
  # 0.045.
  assert result.eval_metrics["eval/rewards/accuracies"] >= 0.65
  assert result.eval_metrics["eval/rewards/margins"] > 0
  steps = [
    json.loads(line)["step"]
    for line in (workdir / "metrics.jsonl").read_text().splitlines()
  ]
  assert steps == list(range(10, STEPS + 1, 10))  # Each step once.


@pytest.mark.slow
def test_export_scores_equal_transformers(trained):
  transformers = pytest.importorskip("transformers")
  import torch

  workdir, result = trained
  folder = workdir / "hf"
  hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(
    folder
  )
  assert type(hf_model).__name__ == "LlamaForSequenceClassification"
  model, params = models.load_hf_reward_model(folder)
  final = jax.device_get(result.state.params)
  np.testing.assert_array_equal(params["score"], final["score"])
  rng = np.random.default_rng(0)
  ids = rng.integers(4, model.backbone.config.vocab_size, size=(3, 9))
  ours = np.asarray(model.scores(final, ids, np.ones_like(ids)))
  with torch.no_grad():
    theirs = hf_model(input_ids=torch.from_numpy(ids)).logits[:, 0].numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_pair_losses_match_their_definition():
  chosen, rejected = np.array([1.0, -0.5]), np.array([0.0, 0.5])
  got = reward_training.pair_losses(
    chosen, rejected, margin=0.25, center_coefficient=0.1
  )
  want = (
    np.log1p(np.exp(-(chosen - rejected - 0.25)))
    + 0.1 * (chosen + rejected) ** 2
  )
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_refuses_what_it_does_not_take(tmp_path):
  with pytest.raises(ConfigError, match="data.packing is set"):
    reward_training.train(_config(**{"data.packing": True}), tmp_path)

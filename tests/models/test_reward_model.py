"""Reward models: tiny random ``*ForSequenceClassification`` folders scored
as ``transformers`` scores them."""

import json

import numpy as np
import pytest

from slpo_jax import models

from models_testing import hf_config
from models_testing import randomize
from models_testing import right_padded_batch

# Every family; those whose layers another family's test already covers run
# in the full suite only (python dev.py test --all).
_SLOW = pytest.mark.slow
KINDS = (
  "llama",
  "gemma2",
  "gpt2",
  pytest.param("qwen2", marks=_SLOW),
  pytest.param("qwen3", marks=_SLOW),
  pytest.param("gemma", marks=_SLOW),
  pytest.param("mistral", marks=_SLOW),
  pytest.param("phi3", marks=_SLOW),
)
PAD = 0


def _hf_reward_model(kind):
  transformers = pytest.importorskip("transformers")
  config = hf_config(kind)
  config._attn_implementation = "eager"
  config.num_labels = 1
  config.pad_token_id = PAD
  model = transformers.AutoModelForSequenceClassification.from_config(config)
  return randomize(model, seed=3)


def _hf_scores(model, ids, mask):
  import torch

  with torch.no_grad():
    out = model(
      input_ids=torch.from_numpy(np.asarray(ids, np.int64)),
      attention_mask=torch.from_numpy(np.asarray(mask, np.int64)),
    )
  return out.logits[:, 0].float().numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_scores_equal_transformers(kind, tmp_path):
  hf_model = _hf_reward_model(kind)
  hf_model.save_pretrained(tmp_path)
  model, params = models.load_hf_reward_model(tmp_path)
  # Right-padded with PAD, which no real token is: transformers pools the
  # last non-padding token, as the mask says.
  ids, mask = right_padded_batch(model.backbone.config.vocab_size, (7, 4, 9))
  got = np.asarray(model.scores(params, ids, mask))
  want = _hf_scores(hf_model, ids, mask)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  assert np.ptp(want) > 1e-3  # The rows score differently.


def test_refuses_a_causal_lm_and_several_labels(hf_checkpoint, tmp_path):
  folder, _ = hf_checkpoint("llama")
  with pytest.raises(models.CheckpointError, match="ForSequenceClassification"):
    models.load_hf_reward_model(folder)
  hf_model = _hf_reward_model("llama")
  hf_model.save_pretrained(tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  config["id2label"] = {"0": "a", "1": "b"}
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(models.CheckpointError, match="2 labels"):
    models.load_hf_reward_model(tmp_path)


@pytest.mark.parametrize(
  "kind, max_shard_size",
  [
    ("llama", None),
    pytest.param("gemma2", None, marks=_SLOW),
    pytest.param("gpt2", 20_000, marks=_SLOW),
  ],
)
def test_export_loads_in_transformers_with_the_same_scores(
  kind, max_shard_size, tmp_path
):
  """transformers folder -> ours -> written back -> transformers: the
  scores are the first model's (a sharded folder too)."""
  transformers = pytest.importorskip("transformers")
  hf_model = _hf_reward_model(kind)
  hf_model.save_pretrained(tmp_path / "in")
  model, params = models.load_hf_reward_model(tmp_path / "in")
  models.save_hf_reward_model(
    model,
    params,
    tmp_path / "out",
    max_shard_size=max_shard_size,
    pad_token_id=PAD,
  )
  reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(
    tmp_path / "out", attn_implementation="eager"
  )
  assert type(reloaded) is type(hf_model)
  ids, mask = right_padded_batch(model.backbone.config.vocab_size, (6, 3))
  np.testing.assert_allclose(
    _hf_scores(reloaded, ids, mask),
    _hf_scores(hf_model, ids, mask),
    atol=1e-5,
  )

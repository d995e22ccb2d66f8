"""PEFT's adapter folders: ours load in ``peft``, ``peft``'s load here.

Tiny random ``transformers`` models are saved locally; both directions
compare the logits of ``peft.PeftModel`` with our merged policy.
"""

import json

import jax
import numpy as np
import pytest

from slpo_jax import lora
from slpo_jax import lora_peft
from slpo_jax import lora_sites
from slpo_jax import models
from tests.models import models_testing

pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

# (model kind, our targets, PEFT's target_modules for the reverse test)
CASES = {
  "llama3": (("attention", "mlp", "lm_head", "embed"), ["q_proj", "down_proj"]),
  "gpt2": (("attention", "fc"), ["c_attn", "c_proj"]),
}


def _checkpoint(kind, folder):
  hf_model = models_testing.make_hf_model(kind)
  hf_model.save_pretrained(folder)
  return hf_model


def _peft_logits(peft_model, ids, mask):
  return models_testing.hf_logits(peft_model, ids, mask)


def _our_logits(model, base, adapters, sites, config, ids, mask):
  policy = lora.policy_params(base, adapters, sites, config)
  return np.asarray(models_testing.apply(model, policy, ids, mask))


@pytest.mark.parametrize("kind", sorted(CASES))
def test_saved_adapters_give_our_logits_in_peft(kind, tmp_path):
  hf_model = _checkpoint(kind, tmp_path / "base")
  model, base = models.load_hf_model(tmp_path / "base")
  config = lora.LoraConfig(rank=4, alpha=8.0, targets=CASES[kind][0])
  sites = lora_sites.select_sites(model, config)
  rng = np.random.default_rng(0)
  # Random B as well as A: zero B would pass with any wiring.
  adapters = jax.tree.map(
    lambda x: rng.normal(size=x.shape).astype(np.float32) * 0.1,
    lora.abstract_adapters(sites, 4),
  )
  lora_peft.save_adapters(tmp_path / "adapters", model, sites, config, adapters)
  ids, mask = models_testing.right_padded_batch(128, (7, 5, 3))
  base_logits = models_testing.hf_logits(hf_model, ids, mask)
  # (from_pretrained wraps hf_model in place.)
  peft_model = peft.PeftModel.from_pretrained(hf_model, tmp_path / "adapters")
  ours = _our_logits(model, base, adapters, sites, config, ids, mask)
  theirs = _peft_logits(peft_model, ids, mask)
  assert models_testing.max_masked_diff(ours, theirs, mask) <= 1e-4
  # The adapters change the logits, so a wrong wiring cannot pass.
  assert models_testing.max_masked_diff(ours, base_logits, mask) > 1e-2
  _, _, reloaded = lora_peft.load_adapters(tmp_path / "adapters", model)
  for a, b in zip(jax.tree.leaves(reloaded), jax.tree.leaves(adapters)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_peft_folders_load_into_the_same_policy(kind, tmp_path):
  hf_model = _checkpoint(kind, tmp_path / "base")
  peft_model = peft.get_peft_model(
    hf_model,
    peft.LoraConfig(
      r=4,
      lora_alpha=16,
      target_modules=CASES[kind][1],
      use_rslora=True,
      init_lora_weights=False,  # Random B: the adapters do something.
    ),
  ).eval()
  peft_model.save_pretrained(tmp_path / "peft")
  for scan_layers in (False, True):
    model, base = models.load_hf_model(
      tmp_path / "base", scan_layers=scan_layers
    )
    config, sites, adapters = lora_peft.load_adapters(tmp_path / "peft", model)
    assert (config.rank, config.rslora, config.scale) == (4, True, 8.0)
    ids, mask = models_testing.right_padded_batch(128, (6, 4))
    ours = _our_logits(model, base, adapters, sites, config, ids, mask)
    theirs = _peft_logits(peft_model, ids, mask)
    assert models_testing.max_masked_diff(ours, theirs, mask) <= 1e-4


def test_layer_specific_targets_are_written_as_a_regex(tmp_path):
  model = models.build(models.tiny_config("gpt2"))
  config = lora.LoraConfig(rank=2, targets=("o", "layers_1/mlp/fc"))
  sites = lora_sites.select_sites(model, config)
  adapters = lora.init_adapters(sites, 2, jax.random.key(0))
  lora_peft.save_adapters(tmp_path, model, sites, config, adapters)
  written = json.loads((tmp_path / "adapter_config.json").read_text())
  # "c_proj" alone would also select the MLP's c_proj.
  assert isinstance(written["target_modules"], str)
  loaded_config, loaded_sites, _ = lora_peft.load_adapters(tmp_path, model)
  assert [s.path for s in loaded_sites] == [s.path for s in sites]
  assert loaded_config.scale == config.scale


def test_unsupported_peft_options_are_refused(tmp_path):
  (tmp_path / "adapter_config.json").write_text(
    json.dumps({"peft_type": "LORA", "r": 4, "use_dora": True})
  )
  with pytest.raises(lora.LoraError, match="use_dora=True is not supported"):
    lora_peft.load_adapters(tmp_path, models.build(models.tiny_config("llama")))

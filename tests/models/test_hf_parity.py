"""Logit parity with ``transformers`` for every supported architecture.

Each test builds a tiny random model with ``transformers``, saves it with
``save_pretrained`` into a temp folder, loads it here and compares logits on
a right-padded batch at the real (non-padded) positions, in float32.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from slpo_jax import models

from models_testing import HF_KINDS
from models_testing import apply
from models_testing import hf_logits
from models_testing import make_hf_model
from models_testing import max_masked_diff
from models_testing import random_params
from models_testing import right_padded_batch

TOLERANCE = 1e-4
# Row lengths of the test batch: full, partial, short. 12 tokens exceed the
# Mistral reference's 4-token window.
LENGTHS = (12, 9, 4)


def _batch(vocab_size):
  return right_padded_batch(vocab_size, LENGTHS, seed=1)


@pytest.mark.parametrize("kind", HF_KINDS)
def test_logits_match_transformers(kind, hf_checkpoint):
  folder, hf_model = hf_checkpoint(kind)
  apply_fn, params = models.load_hf_checkpoint(folder)
  ids, mask = _batch(hf_model.config.vocab_size)
  ours = jax.jit(apply_fn)(params, ids, mask)
  assert ours.dtype == jnp.float32
  diff = max_masked_diff(ours, hf_logits(hf_model, ids, mask), mask)
  print(f"max abs logit difference {kind}: {diff:.2e}")
  assert diff <= TOLERANCE


def test_config_translation(hf_checkpoint):
  folder, _ = hf_checkpoint("llama3")
  config = models.load_hf_config(folder)
  assert config.family == "llama"
  assert (config.num_heads, config.num_kv_heads, config.head_dim) == (4, 2, 8)
  assert not config.tie_embeddings
  assert config.qkv_bias and config.out_bias and config.mlp_bias
  assert config.rope_scaling == models.RopeScaling(
    "llama3",
    factor=4.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_len=16,
  )
  qwen = models.load_hf_config(hf_checkpoint("qwen2")[0])
  assert qwen.qkv_bias and not qwen.out_bias and qwen.tie_embeddings
  assert qwen.rope_theta == 1e6
  assert models.load_hf_config(hf_checkpoint("mistral")[0]).sliding_window == 4


@pytest.mark.parametrize("kind", ["gpt2", "llama3"])
def test_scanned_layers_match(kind, hf_checkpoint):
  folder, hf_model = hf_checkpoint(kind)
  model, params = models.load_hf_model(folder, scan_layers=True, remat=True)
  assert params["layers"]["attn"]["q"]["kernel"].shape[0] == 2
  ids, mask = _batch(hf_model.config.vocab_size)
  diff = max_masked_diff(
    apply(model, params, ids, mask), hf_logits(hf_model, ids, mask), mask
  )
  assert diff <= TOLERANCE


def test_checkpoint_takes_the_models_layout_options(hf_checkpoint):
  folder, hf_model = hf_checkpoint("llama3")
  layout = dict(
    scan_layers=True, remat=True, remat_policy="dots", attention_impl="dense"
  )
  apply_fn, params = models.load_hf_checkpoint(folder, **layout)
  config = apply_fn.__self__.config
  assert {name: getattr(config, name) for name in layout} == layout
  assert params["layers"]["attn"]["q"]["kernel"].shape[0] == 2
  ids, mask = _batch(hf_model.config.vocab_size)
  diff = max_masked_diff(
    jax.jit(apply_fn)(params, ids, mask), hf_logits(hf_model, ids, mask), mask
  )
  assert diff <= TOLERANCE


def test_sharded_index_checkpoint(hf_checkpoint):
  folder, hf_model = hf_checkpoint("llama3", max_shard_size="40KB")
  assert (folder / "model.safetensors.index.json").exists()
  assert not (folder / "model.safetensors").exists()
  assert len(list(folder.glob("model-*.safetensors"))) > 1
  apply_fn, params = models.load_hf_checkpoint(folder)
  ids, mask = _batch(hf_model.config.vocab_size)
  assert (
    max_masked_diff(
      jax.jit(apply_fn)(params, ids, mask), hf_logits(hf_model, ids, mask), mask
    )
    <= TOLERANCE
  )


def test_unprefixed_gpt2_with_mask_buffers(hf_checkpoint, tmp_path):
  """The layout of the original GPT-2 upload: no "transformer." prefix and
  the causal-mask buffers stored as ".attn.bias" tensors."""
  folder, hf_model = hf_checkpoint("gpt2")
  weights = {
    k.removeprefix("transformer."): v
    for k, v in load_file(folder / "model.safetensors").items()
  }
  for i in range(hf_model.config.n_layer):
    weights[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
  save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
  (tmp_path / "config.json").write_text((folder / "config.json").read_text())
  model, params = models.load_hf_model(tmp_path)
  ids, mask = _batch(hf_model.config.vocab_size)
  diff = max_masked_diff(
    apply(model, params, ids, mask), hf_logits(hf_model, ids, mask), mask
  )
  assert diff <= TOLERANCE


def test_bfloat16_checkpoint_tensors(tmp_path):
  """bfloat16 tensors load through the NumPy API into float32 params."""
  torch = pytest.importorskip("torch")
  hf_model = make_hf_model("qwen2").to(torch.bfloat16)
  hf_model.save_pretrained(tmp_path / "bf16")
  # The same (already rounded) values stored in float32.
  hf_model.to(torch.float32).save_pretrained(tmp_path / "f32")
  model, params = models.load_hf_model(tmp_path / "bf16")
  _, expected = models.load_hf_model(tmp_path / "f32")
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  jax.tree.map(np.testing.assert_array_equal, params, expected)
  assert model.config.hf_model_type == "qwen2"


@pytest.mark.parametrize("kind", HF_KINDS)
def test_round_trip_through_transformers(kind, hf_checkpoint, tmp_path):
  import transformers

  folder, hf_model = hf_checkpoint(kind)
  model, params = models.load_hf_model(folder)
  models.save_hf_checkpoint(model, params, tmp_path)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
    tmp_path, attn_implementation="eager"
  ).eval()
  assert type(reloaded) is type(hf_model)
  ids, mask = _batch(hf_model.config.vocab_size)
  expected = hf_logits(hf_model, ids, mask)
  assert max_masked_diff(hf_logits(reloaded, ids, mask), expected, mask) <= 1e-5


# A Gemma 2 built here: sliding and global layers under one scanned block.
_NATIVE_GEMMA2 = dict(
  norm_plus_one=True,
  embed_scale=True,
  sandwich_norms=True,
  activation="gelu_tanh",
  tie_embeddings=True,
  layer_types=("sliding_attention", "full_attention"),
  sliding_window=4,
  attn_logit_softcap=2.0,
  final_logit_softcap=3.0,
  query_scale=24**-0.5,
  hf_model_type="gemma2",
)


@pytest.mark.parametrize(
  "family,scan_layers,changes",
  [("gpt2", False, {}), ("llama", True, {}), ("llama", True, _NATIVE_GEMMA2)],
  ids=["gpt2", "llama_scanned", "gemma2_scanned"],
)
def test_export_of_native_model(family, scan_layers, changes, tmp_path):
  """A model initialised here, exported, runs identically in transformers."""
  pytest.importorskip("torch")
  import transformers

  config = models.tiny_config(
    family, vocab_size=128, scan_layers=scan_layers, **changes
  )
  model = models.build(config)
  # Random norms and biases too, so that their export is checked.
  params = random_params(model, seed=3)
  models.save_hf_checkpoint(model, params, tmp_path, max_shard_size=50_000)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(
    tmp_path, attn_implementation="eager"
  ).eval()
  ids, mask = _batch(config.vocab_size)
  diff = max_masked_diff(
    apply(model, params, ids, mask), hf_logits(hf_model, ids, mask), mask
  )
  assert diff <= TOLERANCE
  # And back: our own loader reads the sharded export.
  reloaded, reloaded_params = models.load_hf_model(
    tmp_path, scan_layers=scan_layers
  )
  assert reloaded.config.replace(hf_model_type=None) == config.replace(
    hf_model_type=None
  )
  jax.tree.map(np.testing.assert_array_equal, reloaded_params, params)


def test_exported_config_json(tmp_path):
  config = models.tiny_config(
    "llama",
    rope_scaling=models.RopeScaling("llama3", factor=8.0, original_max_len=64),
    eos_token_id=(2, 3),
  )
  model = models.build(config)
  models.save_hf_checkpoint(model, random_params(model), tmp_path)
  written = json.loads((tmp_path / "config.json").read_text())
  assert written["model_type"] == "llama"
  assert written["rope_scaling"]["rope_type"] == "llama3"
  assert written["rope_parameters"]["original_max_position_embeddings"] == 64
  assert written["eos_token_id"] == [2, 3]
  assert models.load_hf_config(tmp_path) == config


def test_make_hf_model_is_random():
  """Norm scales and biases are randomised, not left at 1 and 0."""
  pytest.importorskip("torch")
  hf_model = make_hf_model("qwen2")
  bias = hf_model.model.layers[0].self_attn.q_proj.bias.detach().numpy()
  scale = hf_model.model.norm.weight.detach().numpy()
  assert np.std(bias) > 0.05 and np.std(scale) > 0.05

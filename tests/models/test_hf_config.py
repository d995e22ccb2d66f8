"""config.json translation for the newer families, on plain dicts (no I/O).

The defaults transformers fills in when a key is absent must be ours too:
Gemma 2 alternates local and global layers, Gemma 3 has one global layer in
six and separate rotary bases, Qwen3's head_dim is 128.
"""

import pytest

from slpo_jax import models
from slpo_jax.models.hf_config_export import export_model_type

_SHAPE = dict(
  vocab_size=128,
  hidden_size=32,
  intermediate_size=64,
  num_attention_heads=4,
  num_key_value_heads=2,
)


def _config(model_type, **fields):
  return models.config_from_hf(
    {"model_type": model_type, "num_hidden_layers": 8, **_SHAPE, **fields}
  )


def test_gemma3_defaults_transformers4_spelling():
  config = _config(
    "gemma3_text",
    rope_theta=1e6,
    rope_local_base_freq=1e4,
    rope_scaling={"rope_type": "linear", "factor": 8.0},
    sliding_window=512,
  )
  sliding = ["sliding_attention"] * 5
  assert config.layer_types == tuple(sliding + ["full_attention"] + sliding[:2])
  assert (config.rope_theta, config.rope_local_theta) == (1e6, 1e4)
  assert config.rope_scaling == models.RopeScaling("linear", 8.0)
  assert config.qk_norm and config.sandwich_norms and config.norm_plus_one
  assert config.head_dim == 256 and config.query_scale == 256**-0.5
  assert config.layer_windows()[5] is None and config.layer_windows()[0] == 512


def test_gemma2_alternates_and_caps():
  config = _config("gemma2")
  assert config.layer_types[:2] == ("sliding_attention", "full_attention")
  # transformers' Gemma2Config defaults for absent keys...
  assert (config.attn_logit_softcap, config.final_logit_softcap) == (50, 30)
  assert config.sliding_window == 4096
  assert config.activation == "gelu_tanh" and config.tie_embeddings
  # ...and an explicit null turns a cap off.
  assert (
    _config("gemma2", final_logit_softcapping=None).final_logit_softcap is None
  )


def test_gemma_legacy_gelu_is_tanh():
  assert _config("gemma", hidden_act="gelu").activation == "gelu_tanh"


def test_qwen3_default_head_dim():
  assert _config("qwen3").head_dim == 128
  assert _config("qwen3", head_dim=16).qk_norm


@pytest.mark.parametrize(
  "model_type,fields,named",
  [
    (
      "phi3",
      {
        "rope_scaling": {
          "rope_type": "longrope",
          "short_factor": [1.0] * 4,
          "long_factor": [1.0] * 4,
        }
      },
      "longrope",
    ),
    ("gemma3_text", {"use_bidirectional_attention": True}, "bidirectional"),
    ("gemma2", {"hidden_activation": "tanh"}, "hidden_activation"),
    ("qwen3", {"layer_types": ["sliding_attention"] * 8}, "sliding"),
  ],
)
def test_refused_fields_are_named(model_type, fields, named):
  with pytest.raises(models.CheckpointError, match=named):
    _config(model_type, **fields)


def test_export_refuses_what_the_class_cannot_represent():
  qwen2 = _config("qwen2")
  assert export_model_type(qwen2) == "qwen2"
  with pytest.raises(models.CheckpointError, match="qwen2 export.*qk_norm"):
    export_model_type(qwen2.replace(qk_norm=True))
  with pytest.raises(models.CheckpointError, match="final_logit_softcap"):
    export_model_type(_config("llama").replace(final_logit_softcap=30.0))
  # Inferred for a native config: q/k norms with Gemma norms is Gemma 3.
  native = models.tiny_config(
    "llama", qk_norm=True, norm_plus_one=True, sandwich_norms=True,
    embed_scale=True, hf_model_type=None,
  )  # fmt: skip
  assert export_model_type(native) == "gemma3_text"

"""Writing a ``DecoderConfig`` as a Hugging Face ``config.json``.

Each transformers class fixes some choices (Qwen2's q/k/v-only bias, Gemma's
``1 + weight`` norms, ...), so a config exports as the one ``model_type``
whose class reproduces it exactly, and otherwise fails with a
``CheckpointError`` that names the mismatch.
"""

from __future__ import annotations

import math
from typing import Any

from slpo_jax.models.config import DecoderConfig
from slpo_jax.models.hf_config import CheckpointError

_ARCHITECTURES = {
  "gpt2": "GPT2LMHeadModel",
  "llama": "LlamaForCausalLM",
  "mistral": "MistralForCausalLM",
  "qwen2": "Qwen2ForCausalLM",
  "qwen3": "Qwen3ForCausalLM",
  "gemma": "GemmaForCausalLM",
  "gemma2": "Gemma2ForCausalLM",
  "gemma3_text": "Gemma3ForCausalLM",
  "phi3": "Phi3ForCausalLM",
}
# (qk_norm, norm_plus_one, sandwich_norms, embed_scale) fixed by each class.
_STRUCTURE = {
  "llama": (False, False, False, False),
  "mistral": (False, False, False, False),
  "qwen2": (False, False, False, False),
  "phi3": (False, False, False, False),
  "qwen3": (True, False, False, False),
  "gemma": (False, True, False, True),
  "gemma2": (False, True, True, True),
  "gemma3_text": (True, True, True, True),
}
_STRUCTURE_NAMES = ("qk_norm", "norm_plus_one", "sandwich_norms", "embed_scale")
# Classes with one ``attention_bias`` for q, k, v and o.
_ATTENTION_BIAS_TYPES = ("llama", "qwen3", "gemma", "gemma2", "gemma3_text")
_HF_ACTIVATIONS = {
  "silu": "silu",
  "gelu_tanh": "gelu_pytorch_tanh",
  "gelu": "gelu",
  "relu": "relu",
}


def _infer_model_type(config: DecoderConfig) -> str:
  if config.norm_plus_one:
    if config.qk_norm:
      return "gemma3_text"
    return "gemma2" if config.sandwich_norms else "gemma"
  if config.qk_norm:
    return "qwen3"
  if config.qkv_bias and not config.out_bias and not config.mlp_bias:
    return "qwen2"
  if config.sliding_window is not None:
    return "mistral"
  return "llama"


def _mismatches(config: DecoderConfig, model_type: str) -> list[str]:
  """What of ``config`` the ``model_type`` class cannot reproduce."""
  problems = []
  structure = dict(zip(_STRUCTURE_NAMES, _STRUCTURE[model_type]))
  for name, wanted in structure.items():
    if getattr(config, name) != wanted:
      problems.append(f"{name}={getattr(config, name)}")
  if model_type in _ATTENTION_BIAS_TYPES:
    if config.qkv_bias != config.out_bias:
      problems.append(
        f"qkv_bias={config.qkv_bias} with out_bias={config.out_bias}"
      )
  elif model_type == "qwen2":
    if not config.qkv_bias or config.out_bias:
      problems.append("qwen2 needs qkv_bias=True and out_bias=False")
  elif config.qkv_bias or config.out_bias:
    problems.append("attention biases")
  if config.mlp_bias and model_type != "llama":
    problems.append("mlp_bias=True")
  windows = set(config.layer_windows())
  if model_type in ("gemma2", "gemma3_text"):
    if config.layer_types is None and config.sliding_window is not None:
      problems.append("a sliding window without layer_types")
  elif model_type in ("mistral", "phi3"):
    if len(windows) > 1:
      problems.append("different windows per layer")
  elif windows != {None}:
    problems.append("sliding_window")
  if model_type not in ("gemma2", "gemma3_text"):
    default_scale = config.head_dim**-0.5
    if config.query_scale is not None and not math.isclose(
      config.query_scale, default_scale, rel_tol=1e-7
    ):
      problems.append(f"query_scale={config.query_scale}")
    for name in ("attn_logit_softcap", "final_logit_softcap"):
      if getattr(config, name) is not None:
        problems.append(name)
  if config.rope_local_theta is not None and model_type != "gemma3_text":
    problems.append("rope_local_theta")
  if model_type == "phi3" and config.rope_scaling is not None:
    problems.append("rope_scaling")
  if model_type == "gemma" and config.activation == "gelu":
    # transformers reads Gemma's hidden_act "gelu" as the tanh approximation.
    problems.append("activation='gelu'")
  return problems


def export_model_type(config: DecoderConfig) -> str:
  """The Hugging Face ``model_type`` that reproduces ``config`` exactly."""
  if config.family == "gpt2":
    return "gpt2"
  model_type = config.hf_model_type or _infer_model_type(config)
  if model_type not in _STRUCTURE:
    raise CheckpointError(f"cannot export as model_type {model_type!r}")
  problems = _mismatches(config, model_type)
  if problems:
    raise CheckpointError(
      f"{model_type} export cannot represent {', '.join(problems)}"
    )
  return model_type


def _rope_parameters(theta: float, scaling: Any) -> dict[str, Any]:
  """transformers 4 ``rope_scaling`` and 5 ``rope_parameters`` dicts."""
  if scaling is None:
    legacy = None
  elif scaling.rope_type == "linear":
    legacy = {"rope_type": "linear", "factor": scaling.factor}
  else:
    legacy = {
      "rope_type": "llama3",
      "factor": scaling.factor,
      "low_freq_factor": scaling.low_freq_factor,
      "high_freq_factor": scaling.high_freq_factor,
      "original_max_position_embeddings": scaling.original_max_len,
    }
  return legacy, {"rope_type": "default", **(legacy or {}), "rope_theta": theta}


def _rope_to_hf(config: DecoderConfig, model_type: str) -> dict[str, Any]:
  legacy, parameters = _rope_parameters(config.rope_theta, config.rope_scaling)
  # transformers 4 reads rope_theta/rope_scaling, transformers 5 reads
  # rope_parameters; writing both keeps the export loadable by either.
  hf = {
    "rope_theta": config.rope_theta,
    "rope_scaling": legacy,
    "rope_parameters": parameters,
  }
  if model_type == "gemma3_text":
    local_theta = config.rope_local_theta or config.rope_theta
    hf["rope_local_base_freq"] = local_theta
    hf["rope_parameters"] = {
      "full_attention": parameters,
      "sliding_attention": {"rope_type": "default", "rope_theta": local_theta},
    }
  return hf


def _gpt2_to_hf(config: DecoderConfig) -> dict[str, Any]:
  act = {"gelu_tanh": "gelu_new"}.get(config.activation, config.activation)
  return {
    "n_embd": config.d_model,
    "n_layer": config.num_layers,
    "n_head": config.num_heads,
    "n_inner": config.mlp_dim,
    "n_positions": config.max_len,
    "n_ctx": config.max_len,
    "layer_norm_epsilon": config.norm_eps,
    "activation_function": act,
    "attn_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "resid_pdrop": 0.0,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
  }


def _query_pre_attn_scalar(config: DecoderConfig) -> float:
  scale = config.query_scale or config.head_dim**-0.5
  scalar = scale**-2.0
  # Written as the integer the released configs use when it is one.
  return round(scalar) if math.isclose(scalar, round(scalar)) else scalar


def config_to_hf(config: DecoderConfig) -> dict[str, Any]:
  """A Hugging Face ``config.json`` dict describing ``config``."""
  model_type = export_model_type(config)
  hf = {
    "architectures": [_ARCHITECTURES[model_type]],
    "model_type": model_type,
    "vocab_size": config.vocab_size,
    "tie_word_embeddings": config.tie_embeddings,
    "bos_token_id": config.bos_token_id,
    "eos_token_id": (
      list(config.eos_token_id)
      if isinstance(config.eos_token_id, tuple)
      else config.eos_token_id
    ),
    "pad_token_id": config.pad_token_id,
    "torch_dtype": config.param_dtype,
    "use_cache": True,
  }
  if model_type == "gpt2":
    return {**hf, **_gpt2_to_hf(config)}
  act_key = "hidden_act"
  if model_type in ("gemma2", "gemma3_text"):
    act_key = "hidden_activation"
  hf.update(
    {
      "hidden_size": config.d_model,
      "intermediate_size": config.mlp_dim,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim,
      "max_position_embeddings": config.max_len,
      "rms_norm_eps": config.norm_eps,
      act_key: _HF_ACTIVATIONS[config.activation],
      "attention_dropout": 0.0,
      **_rope_to_hf(config, model_type),
    }
  )
  if model_type in ("qwen2", "qwen3"):
    hf.update(
      use_sliding_window=False,
      sliding_window=None,
      max_window_layers=config.num_layers,
      layer_types=["full_attention"] * config.num_layers,
    )
  if model_type in ("mistral", "phi3"):
    hf.update(sliding_window=config.sliding_window)
  if model_type == "phi3":
    hf.update(
      original_max_position_embeddings=config.max_len,
      resid_pdrop=0.0,
      embd_pdrop=0.0,
    )
  if model_type in _ATTENTION_BIAS_TYPES:
    hf.update(attention_bias=config.qkv_bias)
  if model_type == "llama":
    hf.update(mlp_bias=config.mlp_bias)
  if model_type in ("gemma2", "gemma3_text"):
    layer_types = config.layer_types or ("full_attention",) * config.num_layers
    hf.update(
      query_pre_attn_scalar=_query_pre_attn_scalar(config),
      attn_logit_softcapping=config.attn_logit_softcap,
      final_logit_softcapping=config.final_logit_softcap,
      sliding_window=config.sliding_window,
      layer_types=list(layer_types),
      use_bidirectional_attention=False,
    )
  return hf

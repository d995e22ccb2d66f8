"""Reading Hugging Face ``config.json`` into a ``DecoderConfig``.

Supported ``model_type`` values: ``gpt2`` (family "gpt2") and ``llama``,
``mistral``, ``qwen2``, ``qwen3``, ``gemma``, ``gemma2``, ``gemma3_text``,
``phi3`` (family "llama": rotary, RMSNorm, gated MLP). Both the transformers 4
spelling of the rotary settings (``rope_theta`` + ``rope_scaling``) and the
transformers 5 one (``rope_parameters``, per layer kind for Gemma 3) are
read; the writer is ``hf_config_export``.

Options that would change the computation but are not implemented (YaRN or
LongRoPE scaling, Qwen's sliding-window layers, bidirectional attention,
quantised weights, ...) are refused with a ``CheckpointError`` naming the
field, rather than ignored. Dropout rates are the one kind of field read and
not used: they only act in training mode, and training here runs without
dropout.
"""

from __future__ import annotations

from typing import Any
from typing import Mapping

from slpo_jax.models.config import DecoderConfig
from slpo_jax.models.config import RopeScaling

SUPPORTED_MODEL_TYPES = (
  "gpt2",
  "llama",
  "mistral",
  "qwen2",
  "qwen3",
  "gemma",
  "gemma2",
  "gemma3_text",
  "phi3",
)
# Architectures people will try, with why they are refused.
_REFUSED_MODEL_TYPES = {
  "qwen3_moe": "Qwen3 MoE (qwen3_moe) is not supported: mixture-of-experts "
  "MLPs are not implemented; dense Qwen3 (qwen3) is",
  "qwen2_moe": "Qwen2 MoE (qwen2_moe) is not supported: mixture-of-experts "
  "MLPs are not implemented",
  "mixtral": "Mixtral (mixtral) is not supported: mixture-of-experts MLPs "
  "are not implemented",
  "gemma3": "multimodal Gemma 3 (gemma3) is not supported; its text-only "
  "checkpoints (gemma3_text, e.g. gemma-3-1b) are",
}
_GPT2_ACTIVATIONS = {
  "gelu_new": "gelu_tanh",
  "gelu_pytorch_tanh": "gelu_tanh",
  "gelu_fast": "gelu_tanh",
  "gelu": "gelu",
  "relu": "relu",
  "silu": "silu",
  "swish": "silu",
}
# transformers' ACT2FN names for the gated MLP's non-linearity.
_GATED_ACTIVATIONS = {
  "silu": "silu",
  "swish": "silu",
  "gelu_pytorch_tanh": "gelu_tanh",
  "gelu_new": "gelu_tanh",
  "gelu": "gelu",
  "relu": "relu",
}
_GEMMA_TYPES = ("gemma", "gemma2", "gemma3_text")


class CheckpointError(ValueError):
  """A checkpoint folder, its config or one of its tensors cannot be used."""


def _require(hf: Mapping[str, Any], key: str, source: str) -> Any:
  if key not in hf or hf[key] is None:
    raise CheckpointError(f"{source}: required key {key!r} is missing")
  return hf[key]


def _refuse(hf: Mapping[str, Any], source: str, key: str, *allowed) -> None:
  """Refuses ``key`` unless it is absent or one of the ``allowed`` values."""
  if key in hf and hf[key] not in allowed:
    raise CheckpointError(f"{source}: {key}={hf[key]!r} is not supported")


def _eos(value: Any) -> int | tuple[int, ...] | None:
  return tuple(value) if isinstance(value, list) else value


def _gpt2_from_hf(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
  act = hf.get("activation_function", "gelu_new")
  if act not in _GPT2_ACTIVATIONS:
    raise CheckpointError(f"{source}: unsupported activation_function {act!r}")
  if hf.get("scale_attn_by_inverse_layer_idx", False):
    raise CheckpointError(
      f"{source}: scale_attn_by_inverse_layer_idx=true is not supported"
    )
  if not hf.get("scale_attn_weights", True):
    raise CheckpointError(
      f"{source}: scale_attn_weights=false is not supported"
    )
  if hf.get("add_cross_attention", False):
    raise CheckpointError(
      f"{source}: add_cross_attention=true is not supported"
    )
  d_model = _require(hf, "n_embd", source)
  num_heads = _require(hf, "n_head", source)
  return dict(
    family="gpt2",
    vocab_size=_require(hf, "vocab_size", source),
    d_model=d_model,
    num_layers=_require(hf, "n_layer", source),
    num_heads=num_heads,
    num_kv_heads=num_heads,
    head_dim=d_model // num_heads,
    mlp_dim=hf.get("n_inner") or 4 * d_model,
    max_len=_require(hf, "n_positions", source),
    norm_eps=hf.get("layer_norm_epsilon", 1e-5),
    activation=_GPT2_ACTIVATIONS[act],
    tie_embeddings=hf.get("tie_word_embeddings", True),
    qkv_bias=True,
    out_bias=True,
    mlp_bias=True,
  )


def _rope_settings(
  params: Mapping[str, Any], hf: Mapping[str, Any], source: str
) -> tuple[float, RopeScaling | None]:
  """``(theta, scaling)`` from one merged dict of rotary settings."""
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  rope_type = params.get("rope_type", params.get("type", "default"))
  factor = params.get("partial_rotary_factor", 1.0)
  if factor != 1.0:
    raise CheckpointError(
      f"{source}: partial_rotary_factor={factor!r} is not supported"
    )
  if rope_type == "default":
    return float(theta), None
  if rope_type == "linear":
    return float(theta), RopeScaling("linear", float(params["factor"]))
  if rope_type == "llama3":
    try:
      scaling = RopeScaling(
        "llama3",
        factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_len=int(
          params.get(
            "original_max_position_embeddings",
            hf.get("max_position_embeddings"),
          )
        ),
      )
    except (KeyError, TypeError, ValueError) as e:
      raise CheckpointError(
        f"{source}: bad llama3 rope settings {params}: {e}"
      ) from e
    return float(theta), scaling
  raise CheckpointError(
    f"{source}: rope type {rope_type!r} is not supported (supported: "
    "default, linear, llama3)"
  )


def _rope_from_hf(
  hf: Mapping[str, Any], source: str, default_theta: float = 10000.0
) -> tuple[float, RopeScaling | None]:
  """Reads the rotary settings from either transformers spelling."""
  params = dict(hf.get("rope_scaling") or {})
  params.update(hf.get("rope_parameters") or {})
  params.setdefault("rope_theta", hf.get("rope_theta", default_theta))
  return _rope_settings(params, hf, source)


def _gemma3_rope(
  hf: Mapping[str, Any], source: str
) -> tuple[float, RopeScaling | None, float]:
  """``(global theta, global scaling, local theta)`` of Gemma 3.

  transformers 5 nests the settings per layer kind; transformers 4 has
  ``rope_theta``/``rope_scaling`` for the global layers and
  ``rope_local_base_freq`` for the local ones, which are never scaled.
  """
  nested = hf.get("rope_parameters") or {}
  if "full_attention" in nested or "sliding_attention" in nested:
    full = dict(nested.get("full_attention") or {})
    full.setdefault("rope_theta", 1_000_000.0)
    local = dict(nested.get("sliding_attention") or {})
    local.setdefault("rope_theta", 10_000.0)
  else:
    full = dict(hf.get("rope_scaling") or {})
    full.setdefault("rope_theta", hf.get("rope_theta", 1_000_000.0))
    local = {"rope_theta": hf.get("rope_local_base_freq", 10_000.0)}
  theta, scaling = _rope_settings(full, hf, source)
  local_theta, local_scaling = _rope_settings(local, hf, source)
  if local_scaling is not None:
    raise CheckpointError(
      f"{source}: rope scaling on the sliding_attention layers is not supported"
    )
  return theta, scaling, local_theta


def _activation(hf: Mapping[str, Any], model_type: str, source: str) -> str:
  if model_type == "gemma":
    key, default = "hidden_act", "gelu_pytorch_tanh"
  elif model_type in _GEMMA_TYPES:
    key, default = "hidden_activation", "gelu_pytorch_tanh"
  else:
    key, default = "hidden_act", "silu"
  act = hf.get(key) or default
  if model_type == "gemma" and act == "gelu":
    # transformers maps Gemma's legacy "gelu" to the tanh approximation.
    act = "gelu_pytorch_tanh"
  if act not in _GATED_ACTIVATIONS:
    raise CheckpointError(f"{source}: unsupported {key} {act!r}")
  return _GATED_ACTIVATIONS[act]


def _no_sliding_layers(hf: Mapping[str, Any], name: str, source: str) -> None:
  layer_types = hf.get("layer_types") or ()
  if hf.get("use_sliding_window", False) or "sliding_attention" in layer_types:
    raise CheckpointError(
      f"{source}: use_sliding_window / sliding_attention layer_types: "
      f"{name} sliding-window layers are not supported"
    )


def _gemma_layer_types(
  hf: Mapping[str, Any], model_type: str, num_layers: int
) -> tuple[str, ...]:
  """Gemma 2 alternates local and global layers; Gemma 3 has one global
  layer in every ``sliding_window_pattern`` (6), as transformers fills in."""
  if hf.get("layer_types"):
    return tuple(hf["layer_types"])
  period = 2 if model_type == "gemma2" else hf.get("sliding_window_pattern", 6)
  return tuple(
    "sliding_attention" if (i + 1) % period else "full_attention"
    for i in range(num_layers)
  )


def _gated_from_hf(
  hf: Mapping[str, Any], model_type: str, source: str
) -> dict[str, Any]:
  """Every rotary family: Llama, Mistral, Qwen2/3, Gemma 1-3, Phi-3."""
  d_model = _require(hf, "hidden_size", source)
  num_heads = _require(hf, "num_attention_heads", source)
  num_layers = _require(hf, "num_hidden_layers", source)
  gemma = model_type in _GEMMA_TYPES
  # transformers' defaults when config.json has no head_dim.
  default_head_dim = 256 if gemma else d_model // num_heads
  if model_type == "qwen3":
    default_head_dim = 128
  fields = dict(
    family="llama",
    vocab_size=_require(hf, "vocab_size", source),
    d_model=d_model,
    num_layers=num_layers,
    num_heads=num_heads,
    num_kv_heads=hf.get("num_key_value_heads") or num_heads,
    head_dim=hf.get("head_dim") or default_head_dim,
    mlp_dim=_require(hf, "intermediate_size", source),
    max_len=hf.get("max_position_embeddings", 2048),
    norm_eps=hf.get("rms_norm_eps", 1e-5 if model_type == "phi3" else 1e-6),
    activation=_activation(hf, model_type, source),
    tie_embeddings=hf.get("tie_word_embeddings", gemma),
    qkv_bias=False,
    out_bias=False,
    mlp_bias=False,
  )
  _refuse(hf, source, "use_bidirectional_attention", None, False)
  _refuse(hf, source, "pretraining_tp", None, 1)
  if model_type == "gemma3_text":
    theta, scaling, local_theta = _gemma3_rope(hf, source)
    fields.update(rope_local_theta=local_theta)
  else:
    theta, scaling = _rope_from_hf(hf, source)
  fields.update(rope_theta=theta, rope_scaling=scaling)
  if model_type in ("qwen2", "qwen3"):
    _no_sliding_layers(hf, model_type, source)
  if model_type == "qwen2":
    fields.update(qkv_bias=True)
  elif model_type == "phi3":
    if scaling is not None:
      raise CheckpointError(f"{source}: phi3 rope scaling is not supported")
    fields.update(sliding_window=hf.get("sliding_window"))
  elif model_type == "mistral":
    fields.update(sliding_window=hf.get("sliding_window"))
  else:
    attention_bias = bool(hf.get("attention_bias", False))
    fields.update(qkv_bias=attention_bias, out_bias=attention_bias)
  if model_type == "llama":
    fields.update(mlp_bias=bool(hf.get("mlp_bias", False)))
  if model_type in ("qwen3", "gemma3_text"):
    fields.update(qk_norm=True)
  if gemma:
    fields.update(norm_plus_one=True, embed_scale=True)
  if model_type in ("gemma2", "gemma3_text"):
    # transformers' defaults for absent keys; an explicit null means none.
    gemma2 = model_type == "gemma2"
    defaults = dict(
      query_pre_attn_scalar=256,
      sliding_window=4096,
      attn_logit_softcapping=50.0 if gemma2 else None,
      final_logit_softcapping=30.0 if gemma2 else None,
    )
    value = {k: hf[k] if k in hf else v for k, v in defaults.items()}
    layer_types = _gemma_layer_types(hf, model_type, num_layers)
    fields.update(
      sandwich_norms=True,
      query_scale=float(value["query_pre_attn_scalar"]) ** -0.5,
      attn_logit_softcap=value["attn_logit_softcapping"],
      final_logit_softcap=value["final_logit_softcapping"],
      layer_types=layer_types,
      sliding_window=(
        value["sliding_window"] if "sliding_attention" in layer_types else None
      ),
    )
  return fields


def config_from_hf(
  hf: Mapping[str, Any], *, source: str = "config.json", **changes: Any
) -> DecoderConfig:
  """Builds a ``DecoderConfig`` from a parsed Hugging Face ``config.json``.

  Args:
    hf: the parsed JSON.
    source: file name used in error messages.
    **changes: fields to set on the result (``dtype``, ``scan_layers``, ...).

  Raises:
    CheckpointError: unsupported ``model_type`` or option, missing keys.
  """
  model_type = hf.get("model_type")
  if model_type in _REFUSED_MODEL_TYPES:
    raise CheckpointError(f"{source}: {_REFUSED_MODEL_TYPES[model_type]}")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise CheckpointError(
      f"{source}: unsupported model_type {model_type!r}; supported: "
      f"{', '.join(SUPPORTED_MODEL_TYPES)}"
    )
  if hf.get("quantization_config"):
    raise CheckpointError(
      f"{source}: quantization_config is not supported (quantised weights)"
    )
  if model_type == "gpt2":
    fields = _gpt2_from_hf(hf, source)
  else:
    fields = _gated_from_hf(hf, model_type, source)
  fields.update(
    bos_token_id=hf.get("bos_token_id"),
    eos_token_id=_eos(hf.get("eos_token_id")),
    pad_token_id=hf.get("pad_token_id"),
    hf_model_type=model_type,
  )
  fields.update(changes)
  try:
    return DecoderConfig(**fields)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{source}: {e}") from e

"""Translation between Hugging Face ``config.json`` and ``DecoderConfig``.

Supported ``model_type`` values: ``gpt2`` (family "gpt2") and ``llama``,
``mistral``, ``qwen2`` (family "llama"). Both the transformers 4 spelling
of the rotary settings (``rope_theta`` + ``rope_scaling``) and the
transformers 5 one (``rope_parameters``) are read; both are written.
Options that would change the computation but are not implemented (e.g.
YaRN scaling, Qwen2's per-layer sliding window) are refused rather than
ignored.
"""

from __future__ import annotations

from typing import Any
from typing import Mapping

from slpo_jax.models.config import DecoderConfig
from slpo_jax.models.config import RopeScaling

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")
_ARCHITECTURES = {
  "gpt2": "GPT2LMHeadModel",
  "llama": "LlamaForCausalLM",
  "mistral": "MistralForCausalLM",
  "qwen2": "Qwen2ForCausalLM",
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


class CheckpointError(ValueError):
  """A checkpoint folder, its config or one of its tensors cannot be used."""


def _require(hf: Mapping[str, Any], key: str, source: str) -> Any:
  if key not in hf or hf[key] is None:
    raise CheckpointError(f"{source}: required key {key!r} is missing")
  return hf[key]


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


def _rope_from_hf(
  hf: Mapping[str, Any], source: str
) -> tuple[float, RopeScaling | None]:
  """Reads the rotary settings from either transformers spelling."""
  params = dict(hf.get("rope_scaling") or {})
  params.update(hf.get("rope_parameters") or {})
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  rope_type = params.get("rope_type", params.get("type", "default"))
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


def _llama_from_hf(
  hf: Mapping[str, Any], model_type: str, source: str
) -> dict[str, Any]:
  act = hf.get("hidden_act", "silu")
  if act not in ("silu", "swish"):
    raise CheckpointError(f"{source}: unsupported hidden_act {act!r}")
  d_model = _require(hf, "hidden_size", source)
  num_heads = _require(hf, "num_attention_heads", source)
  rope_theta, rope_scaling = _rope_from_hf(hf, source)
  sliding_window = None
  if model_type == "qwen2":
    layer_types = hf.get("layer_types") or ()
    if hf.get("use_sliding_window", False) or (
      "sliding_attention" in layer_types
    ):
      raise CheckpointError(
        f"{source}: Qwen2 sliding-window layers are not supported"
      )
    qkv_bias, out_bias, mlp_bias = True, False, False
  else:
    attention_bias = bool(hf.get("attention_bias", False))
    qkv_bias = out_bias = attention_bias
    mlp_bias = bool(hf.get("mlp_bias", False))
    if model_type == "mistral":
      sliding_window = hf.get("sliding_window")
  return dict(
    family="llama",
    vocab_size=_require(hf, "vocab_size", source),
    d_model=d_model,
    num_layers=_require(hf, "num_hidden_layers", source),
    num_heads=num_heads,
    num_kv_heads=hf.get("num_key_value_heads") or num_heads,
    head_dim=hf.get("head_dim") or d_model // num_heads,
    mlp_dim=_require(hf, "intermediate_size", source),
    max_len=hf.get("max_position_embeddings", 2048),
    norm_eps=hf.get("rms_norm_eps", 1e-6),
    activation="silu",
    tie_embeddings=hf.get("tie_word_embeddings", False),
    qkv_bias=qkv_bias,
    out_bias=out_bias,
    mlp_bias=mlp_bias,
    rope_theta=rope_theta,
    rope_scaling=rope_scaling,
    sliding_window=sliding_window,
  )


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
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise CheckpointError(
      f"{source}: unsupported model_type {model_type!r}; supported: "
      f"{', '.join(SUPPORTED_MODEL_TYPES)}"
    )
  if model_type == "gpt2":
    fields = _gpt2_from_hf(hf, source)
  else:
    fields = _llama_from_hf(hf, model_type, source)
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


def export_model_type(config: DecoderConfig) -> str:
  """The Hugging Face ``model_type`` that reproduces ``config`` exactly."""
  if config.family == "gpt2":
    return "gpt2"
  qwen_like = config.qkv_bias and not config.out_bias and not config.mlp_bias
  if config.hf_model_type == "qwen2" or (
    config.hf_model_type is None and qwen_like
  ):
    if not qwen_like:
      raise CheckpointError(
        "qwen2 export needs qkv_bias=True, out_bias=False, mlp_bias=False"
      )
    if config.sliding_window is not None:
      raise CheckpointError("qwen2 export does not support sliding_window")
    return "qwen2"
  if config.qkv_bias != config.out_bias:
    raise CheckpointError(
      "llama/mistral configs have one attention_bias for q, k, v and o; "
      f"got qkv_bias={config.qkv_bias}, out_bias={config.out_bias}"
    )
  if config.hf_model_type == "mistral" or config.sliding_window is not None:
    if config.qkv_bias or config.mlp_bias:
      raise CheckpointError("mistral export does not support biases")
    return "mistral"
  return "llama"


def _rope_to_hf(config: DecoderConfig) -> dict[str, Any]:
  scaling = config.rope_scaling
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
  parameters = {
    "rope_type": "default",
    **(legacy or {}),
    "rope_theta": config.rope_theta,
  }
  # transformers 4 reads rope_theta/rope_scaling, transformers 5 reads
  # rope_parameters; writing both keeps the export loadable by either.
  return {
    "rope_theta": config.rope_theta,
    "rope_scaling": legacy,
    "rope_parameters": parameters,
  }


def config_to_hf(config: DecoderConfig) -> dict[str, Any]:
  """A Hugging Face ``config.json`` dict describing ``config``."""
  model_type = export_model_type(config)
  common = {
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
    act = {"gelu_tanh": "gelu_new"}.get(config.activation, config.activation)
    return {
      **common,
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
  if config.activation != "silu":
    raise CheckpointError(f"{model_type} export needs activation='silu'")
  hf = {
    **common,
    "hidden_size": config.d_model,
    "intermediate_size": config.mlp_dim,
    "num_hidden_layers": config.num_layers,
    "num_attention_heads": config.num_heads,
    "num_key_value_heads": config.num_kv_heads,
    "head_dim": config.head_dim,
    "max_position_embeddings": config.max_len,
    "rms_norm_eps": config.norm_eps,
    "hidden_act": "silu",
    "attention_dropout": 0.0,
    **_rope_to_hf(config),
  }
  if model_type == "qwen2":
    hf.update(
      use_sliding_window=False,
      sliding_window=None,
      max_window_layers=config.num_layers,
    )
  elif model_type == "mistral":
    hf.update(sliding_window=config.sliding_window)
  else:
    hf.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
  return hf

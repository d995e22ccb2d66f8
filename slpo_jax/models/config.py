"""Configuration of the decoder-only language models.

One frozen dataclass, ``DecoderConfig``, describes both supported families:

* ``"gpt2"``: learned absolute positions, LayerNorm, a two-matrix GELU MLP,
  biases everywhere, tied input and output embeddings.
* ``"llama"``: rotary position embeddings (optionally with the Llama 3
  frequency scaling), RMSNorm, a gated MLP (SwiGLU, or GeGLU for Gemma),
  grouped-query attention, optional QKV bias (Qwen2), q/k norms (Qwen3,
  Gemma 3), a sliding window on all layers (Mistral, Phi-3) or on some
  (Gemma 2 and 3), and Gemma's extra norms, embedding scale and logit caps.

The dataclass is hashable, so a model built from it can be a static argument
of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from slpo_jax.models.attention_choice import ATTENTION_IMPLS
from slpo_jax.models.attention_choice import unsupported

FAMILIES = ("gpt2", "llama")
# Compute and parameter dtypes the modules are written and tested for.
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
ACTIVATIONS = ("gelu_tanh", "gelu", "relu", "silu")
ROPE_TYPES = ("llama3", "linear")
# Per-layer attention kinds, spelled as transformers' ``layer_types``.
LAYER_TYPES = ("full_attention", "sliding_attention")
# "blockwise": online softmax over key blocks, memory linear in the length,
# any backend. "dense": the [T, S] score matrix (the reference; short
# sequences). "cudnn": jax.nn.dot_product_attention on cuDNN (GPU only; see
# ``attention.py`` for what it requires of the batch).
# What a rematerialised block keeps for the backward pass: nothing but its
# input ("full"), or also every matmul output without batch dimensions
# ("dots", i.e. ``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``).
REMAT_POLICIES = ("full", "dots")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Frequency scaling applied to the rotary embedding.

  Attributes:
    rope_type: ``"llama3"`` (Llama 3.1 smooth interpolation of the low
      frequencies) or ``"linear"`` (all frequencies divided by ``factor``).
    factor: the context extension factor.
    low_freq_factor: Llama 3 only; wavelengths above
      ``original_max_len / low_freq_factor`` are divided by ``factor``.
    high_freq_factor: Llama 3 only; wavelengths below
      ``original_max_len / high_freq_factor`` are kept.
    original_max_len: Llama 3 only; the pre-training context length.
  """

  rope_type: str = "llama3"
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_len: int = 8192

  def __post_init__(self):
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(
        f"rope_type must be one of {ROPE_TYPES}, got {self.rope_type!r}"
      )
    if self.factor <= 0:
      raise ValueError(
        f"rope scaling factor must be positive, got {self.factor}"
      )
    if self.rope_type == "llama3" and (
      self.high_freq_factor <= self.low_freq_factor
    ):
      raise ValueError(
        "llama3 rope scaling needs high_freq_factor > low_freq_factor, got "
        f"{self.high_freq_factor} and {self.low_freq_factor}"
      )


def canonical_dtype(dtype: Any) -> str:
  """Returns the canonical name of a floating dtype the models can compute in.

  Raises:
    ValueError: if ``dtype`` is not one of ``SUPPORTED_DTYPES``.
  """
  try:
    name = jnp.dtype(dtype).name
  except TypeError as e:
    raise ValueError(f"not a dtype: {dtype!r}") from e
  if name not in SUPPORTED_DTYPES:
    raise ValueError(
      f"dtype {name} is not supported; use one of {SUPPORTED_DTYPES}"
    )
  return name


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture and numerics of a decoder-only causal language model.

  Attributes:
    family: ``"gpt2"`` or ``"llama"`` (every rotary checkpoint: Llama,
      Mistral, Qwen2/3, Gemma 1-3, Phi-3).
    vocab_size: number of token ids.
    d_model: width of the residual stream.
    num_layers: number of transformer blocks.
    num_heads: number of query heads.
    num_kv_heads: number of key/value heads (grouped-query attention);
      ``num_heads`` for plain multi-head attention.
    head_dim: width of one attention head.
    mlp_dim: hidden width of the MLP.
    max_len: maximum number of positions (the size of GPT-2's position table;
      informational for rotary models).
    norm_eps: epsilon of LayerNorm / RMSNorm.
    activation: MLP non-linearity, one of ``ACTIVATIONS`` (``"gelu_tanh"`` is
      GPT-2's ``gelu_new``).
    tie_embeddings: whether the output projection is the transposed input
      embedding.
    qkv_bias: whether the query/key/value projections have a bias.
    out_bias: whether the attention output projection has a bias.
    mlp_bias: whether the MLP projections have biases.
    rope_theta: base wavelength of the rotary embedding (llama family).
    rope_scaling: optional ``RopeScaling`` (llama family).
    sliding_window: if set, a query attends only to the last ``sliding_window``
      positions, itself included (Mistral); with ``layer_types``, only on the
      ``"sliding_attention"`` layers (Gemma 2 and 3).
    layer_types: optional per-layer ``"full_attention"`` /
      ``"sliding_attention"``; None means every layer is alike.
    rope_local_theta: rotary base of the sliding layers (Gemma 3's
      ``rope_local_base_freq``), which get no ``rope_scaling``; None: all
      layers use ``rope_theta`` and ``rope_scaling``.
    qk_norm: RMSNorm over ``head_dim`` of every query and key head, before
      the rotary embedding (Qwen3, Gemma 3).
    norm_plus_one: RMSNorms scale by ``1 + weight``, computed in float32 and
      then cast (Gemma); the stored weight is the offset from one.
    sandwich_norms: extra norms on the attention and MLP outputs before the
      residual sums (Gemma 2 and 3).
    embed_scale: multiply the embeddings by ``sqrt(d_model)``, rounded to the
      compute dtype as transformers does (Gemma).
    query_scale: attention logit scale; None is ``head_dim ** -0.5`` (Gemma
      2 and 3 use ``query_pre_attn_scalar ** -0.5``).
    attn_logit_softcap: if set, attention logits become
      ``cap * tanh(logits / cap)`` before the mask (Gemma 2).
    final_logit_softcap: if set, the output logits become
      ``cap * tanh(logits / cap)`` (Gemma 2); the fused loss head takes it
      as ``logit_softcap``.
    attention_impl: one of ``ATTENTION_IMPLS`` (see ``attention_choice``);
      ``"auto"`` picks each platform's kernel when the step is lowered.
    attention_block: query and key tile of the blockwise kernel; a length
      that fits one tile takes the dense kernel (the same single tile,
      without the loop).
    dtype: compute dtype (``"float32"`` or ``"bfloat16"``); logits are always
      float32.
    param_dtype: dtype of the parameters.
    scan_layers: stack the blocks' parameters along a leading ``"layers"``
      axis and run them with ``nn.scan`` (faster compilation of deep models).
    remat: rematerialise each block in the backward pass to save memory.
    remat_policy: one of ``REMAT_POLICIES``, what a rematerialised block
      saves.
    bos_token_id: beginning-of-sequence id, carried to exported checkpoints.
    eos_token_id: end-of-sequence id(s), carried to exported checkpoints.
    pad_token_id: padding id, carried to exported checkpoints.
    hf_model_type: the Hugging Face ``model_type`` to export as (``"gpt2"``,
      ``"llama"``, ``"mistral"``, ``"qwen2"``, ``"qwen3"``, ``"gemma"``,
      ``"gemma2"``, ``"gemma3_text"``, ``"phi3"``); inferred when None.
  """

  family: str
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  max_len: int
  norm_eps: float
  activation: str
  tie_embeddings: bool
  qkv_bias: bool
  out_bias: bool
  mlp_bias: bool
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  sliding_window: int | None = None
  layer_types: tuple[str, ...] | None = None
  rope_local_theta: float | None = None
  qk_norm: bool = False
  norm_plus_one: bool = False
  sandwich_norms: bool = False
  embed_scale: bool = False
  query_scale: float | None = None
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  attention_impl: str = "auto"
  attention_block: int = 512
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = False
  remat: bool = False
  remat_policy: str = "full"
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None
  hf_model_type: str | None = None

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
    for field in (
      "vocab_size",
      "d_model",
      "num_layers",
      "num_heads",
      "num_kv_heads",
      "head_dim",
      "mlp_dim",
      "max_len",
      "attention_block",
    ):
      value = getattr(self, field)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive int, got {value!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
        f"({self.num_kv_heads})"
      )
    if self.activation not in ACTIVATIONS:
      raise ValueError(
        f"activation must be one of {ACTIVATIONS}, got {self.activation!r}"
      )
    if self.family == "gpt2":
      if self.num_kv_heads != self.num_heads:
        raise ValueError(
          "gpt2 uses multi-head attention: num_kv_heads must equal num_heads"
        )
      rotary_only = ("rope_scaling", "sliding_window", "layer_types")
      rotary_only += ("rope_local_theta", "qk_norm", "norm_plus_one")
      rotary_only += ("sandwich_norms", "embed_scale")
      for field in rotary_only:
        if getattr(self, field):
          raise ValueError(f"gpt2 has no {field}")
    if self.sliding_window is not None and self.sliding_window <= 0:
      raise ValueError(
        f"sliding_window must be positive, got {self.sliding_window}"
      )
    if self.layer_types is not None:
      object.__setattr__(self, "layer_types", tuple(self.layer_types))
      if len(self.layer_types) != self.num_layers:
        raise ValueError(
          f"layer_types has {len(self.layer_types)} entries for "
          f"{self.num_layers} layers"
        )
      unknown = set(self.layer_types) - set(LAYER_TYPES)
      if unknown:
        raise ValueError(
          f"layer_types entries must be in {LAYER_TYPES}, got {unknown}"
        )
      if "sliding_attention" in self.layer_types and not self.sliding_window:
        raise ValueError("sliding_attention layers need a sliding_window")
    for field in ("query_scale", "attn_logit_softcap", "final_logit_softcap"):
      value = getattr(self, field)
      if value is not None and not value > 0:
        raise ValueError(f"{field} must be positive or None, got {value!r}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(
        f"attention_impl must be one of {ATTENTION_IMPLS}, got "
        f"{self.attention_impl!r}"
      )
    reason = unsupported(
      self.attention_impl,
      softcap=self.attn_logit_softcap is not None,
      window=any(w is not None for w in self.layer_windows()),
      dtype=canonical_dtype(self.dtype),
    )
    if reason:
      raise ValueError(reason)
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
        f"remat_policy must be one of {REMAT_POLICIES}, got "
        f"{self.remat_policy!r}"
      )
    # Normalise dtypes to names so that equal configs hash equally and the
    # dataclass stays serialisable.
    object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
    object.__setattr__(self, "param_dtype", canonical_dtype(self.param_dtype))
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

  def layer_windows(self) -> tuple[int | None, ...]:
    """The sliding window of each layer (None: attends to all the past)."""
    if self.layer_types is None:
      return (self.sliding_window,) * self.num_layers
    return tuple(
      self.sliding_window if kind == "sliding_attention" else None
      for kind in self.layer_types
    )

  @property
  def num_params(self) -> int:
    """Number of parameters of a model with this configuration."""
    d, f, v = self.d_model, self.mlp_dim, self.vocab_size
    q_width = self.num_heads * self.head_dim
    kv_width = self.num_kv_heads * self.head_dim
    attention = d * (q_width + 2 * kv_width) + q_width * d
    attention += (q_width + 2 * kv_width) * self.qkv_bias + d * self.out_bias
    if self.family == "gpt2":
      mlp = 2 * d * f + (f + d) * self.mlp_bias
      norms = 4 * d
      final_norm = 2 * d
      positions = self.max_len * d
    else:
      mlp = 3 * d * f + (2 * f + d) * self.mlp_bias
      norms = (4 if self.sandwich_norms else 2) * d
      norms += 2 * self.head_dim * self.qk_norm
      final_norm = d
      positions = 0
    head = 0 if self.tie_embeddings else d * v
    return (
      v * d
      + positions
      + self.num_layers * (attention + mlp + norms)
      + final_norm
      + head
    )

  def replace(self, **changes: Any) -> DecoderConfig:
    """Returns a copy with ``changes`` applied (and validated)."""
    return dataclasses.replace(self, **changes)

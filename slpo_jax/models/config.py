"""Configuration of the decoder-only language models.

One frozen dataclass, ``DecoderConfig``, describes both supported families:

* ``"gpt2"``: learned absolute positions, LayerNorm, a two-matrix GELU MLP,
  biases everywhere, tied input and output embeddings.
* ``"llama"``: rotary position embeddings (optionally with the Llama 3
  frequency scaling), RMSNorm, a SwiGLU MLP, grouped-query attention, optional
  QKV bias (Qwen2) and an optional sliding window (Mistral).

The dataclass is hashable, so a model built from it can be a static argument
of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

FAMILIES = ("gpt2", "llama")
# Compute and parameter dtypes the modules are written and tested for.
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
ACTIVATIONS = ("gelu_tanh", "gelu", "relu", "silu")
ROPE_TYPES = ("llama3", "linear")


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
    family: ``"gpt2"`` or ``"llama"`` (Llama, Mistral and Qwen2 checkpoints).
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
      positions, itself included (Mistral).
    dtype: compute dtype (``"float32"`` or ``"bfloat16"``); logits are always
      float32.
    param_dtype: dtype of the parameters.
    scan_layers: stack the blocks' parameters along a leading ``"layers"``
      axis and run them with ``nn.scan`` (faster compilation of deep models).
    remat: rematerialise each block in the backward pass to save memory.
    bos_token_id: beginning-of-sequence id, carried to exported checkpoints.
    eos_token_id: end-of-sequence id(s), carried to exported checkpoints.
    pad_token_id: padding id, carried to exported checkpoints.
    hf_model_type: the Hugging Face ``model_type`` to export as (``"gpt2"``,
      ``"llama"``, ``"mistral"`` or ``"qwen2"``); inferred when None.
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
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = False
  remat: bool = False
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
      if self.rope_scaling is not None or self.sliding_window is not None:
        raise ValueError("gpt2 has no rope_scaling or sliding_window")
    if self.sliding_window is not None and self.sliding_window <= 0:
      raise ValueError(
        f"sliding_window must be positive, got {self.sliding_window}"
      )
    # Normalise dtypes to names so that equal configs hash equally and the
    # dataclass stays serialisable.
    object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
    object.__setattr__(self, "param_dtype", canonical_dtype(self.param_dtype))
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

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
      norms = 2 * d
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


def _gpt2(vocab_size, d_model, num_layers, num_heads, max_len) -> DecoderConfig:
  return DecoderConfig(
    family="gpt2",
    vocab_size=vocab_size,
    d_model=d_model,
    num_layers=num_layers,
    num_heads=num_heads,
    num_kv_heads=num_heads,
    head_dim=d_model // num_heads,
    mlp_dim=4 * d_model,
    max_len=max_len,
    norm_eps=1e-5,
    activation="gelu_tanh",
    tie_embeddings=True,
    qkv_bias=True,
    out_bias=True,
    mlp_bias=True,
    hf_model_type="gpt2",
  )


def _llama(
  vocab_size,
  d_model,
  num_layers,
  num_heads,
  num_kv_heads,
  mlp_dim,
  max_len,
  tie_embeddings,
) -> DecoderConfig:
  return DecoderConfig(
    family="llama",
    vocab_size=vocab_size,
    d_model=d_model,
    num_layers=num_layers,
    num_heads=num_heads,
    num_kv_heads=num_kv_heads,
    head_dim=d_model // num_heads,
    mlp_dim=mlp_dim,
    max_len=max_len,
    norm_eps=1e-6,
    activation="silu",
    tie_embeddings=tie_embeddings,
    qkv_bias=False,
    out_bias=False,
    mlp_bias=False,
    hf_model_type="llama",
  )


# Built-in sizes for runs that start from random weights. "tiny" is a few
# hundred thousand parameters (tests, the CPU default run); "small" is the
# GPT-2 124M shape and a Llama of similar size.
_BUILTIN = {
  ("gpt2", "tiny"): lambda: _gpt2(512, 64, 2, 4, 256),
  ("gpt2", "small"): lambda: _gpt2(50257, 768, 12, 12, 1024),
  ("llama", "tiny"): lambda: _llama(512, 64, 2, 4, 2, 176, 256, False),
  ("llama", "small"): lambda: _llama(32000, 768, 12, 12, 4, 2048, 2048, False),
}
SIZES = ("tiny", "small")


def get_config(
  family: str, size: str = "tiny", **changes: Any
) -> DecoderConfig:
  """Returns a built-in configuration.

  Args:
    family: ``"gpt2"`` or ``"llama"``.
    size: one of ``SIZES``.
    **changes: fields to override, e.g. ``dtype="bfloat16"``.

  Returns:
    The ``DecoderConfig``.
  """
  try:
    make = _BUILTIN[(family, size)]
  except KeyError:
    raise ValueError(
      f"no built-in config for family={family!r} size={size!r}; families "
      f"are {FAMILIES} and sizes {SIZES}"
    ) from None
  return make().replace(**changes)


def tiny_config(family: str, **changes: Any) -> DecoderConfig:
  """A few-hundred-thousand-parameter configuration for tests and CPU runs."""
  return get_config(family, "tiny", **changes)

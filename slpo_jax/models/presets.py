"""Built-in model sizes for runs that start from random weights."""

from __future__ import annotations

from typing import Any

from slpo_jax.models.config import FAMILIES
from slpo_jax.models.config import DecoderConfig


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

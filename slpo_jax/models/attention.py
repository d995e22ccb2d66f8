"""Attention kernels: blockwise (memory linear in length), dense, cuDNN.

The mask is given as segment ids and positions (``attention_core``); the
blockwise kernel is in ``blockwise_attention``; ``attention`` picks one.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from slpo_jax.models.attention_core import NO_WINDOW
from slpo_jax.models.attention_core import AttentionMask
from slpo_jax.models.attention_core import Window
from slpo_jax.models.attention_core import allowed
from slpo_jax.models.attention_core import attention_logits
from slpo_jax.models.attention_core import group_heads
from slpo_jax.models.attention_core import self_attention_mask
from slpo_jax.models.blockwise_attention import DEFAULT_BLOCK
from slpo_jax.models.blockwise_attention import blockwise_attention

__all__ = [
  "DEFAULT_BLOCK",
  "NO_WINDOW",
  "AttentionMask",
  "Window",
  "attention",
  "blockwise_attention",
  "cudnn_attention",
  "dense_attention",
  "self_attention_mask",
]
Array = jax.Array


def dense_attention(
  query: Array,
  key: Array,
  value: Array,
  mask: AttentionMask,
  *,
  scale: float,
  softcap: float | None = None,
  window: Window = None,
  dtype: Any = jnp.float32,
) -> Array:
  """The reference: the whole ``[B, heads, T, S]`` score tensor at once.

  Args:
    query: ``[B, T, heads, head_dim]``.
    key: ``[B, S, kv_heads, head_dim]``.
    value: ``[B, S, kv_heads, head_dim]``.
    mask: the ``AttentionMask``.
    scale: logit scale.
    softcap: if set, logits become ``softcap * tanh(logits / softcap)``.
    window: sliding window, or None.
    dtype: compute dtype of the value product.

  Returns:
    ``[B, T, heads, head_dim]``.
  """
  batch, length, num_heads, head_dim = query.shape
  grouped = group_heads(query, key.shape[2])
  scores, _ = attention_logits(grouped, key, scale, softcap)
  ok = allowed(*mask, window)[:, None, None]
  # A finite fill keeps fully masked rows free of NaN; they are zeroed below.
  scores = jnp.where(ok, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, value.astype(dtype))
  out = out.reshape(batch, length, num_heads, head_dim)
  return jnp.where(mask.query_segment_ids[:, :, None, None] != 0, out, 0)


def cudnn_attention(
  query: Array,
  key: Array,
  value: Array,
  mask: AttentionMask,
  *,
  scale: float,
  window: int | None = None,
  dtype: Any = jnp.bfloat16,
  implementation: str = "cudnn",
) -> Array:
  """``jax.nn.dot_product_attention`` as cuDNN's fused kernel runs it.

  cuDNN takes causal masking, sequence lengths and a static window, not
  segments, so this is only equal to the other kernels for batches of
  right-padded, unpacked rows (segment 1 then 0, positions ``0..L-1``)
  attending to themselves, with no logit cap; it needs a GPU and bfloat16 or
  float16. ``implementation="xla"`` runs the same call on any backend (tests
  use it to check the arguments).
  """
  lengths = jnp.sum(mask.query_segment_ids != 0, axis=1).astype(jnp.int32)
  out = jax.nn.dot_product_attention(
    query.astype(dtype),
    key.astype(dtype),
    value.astype(dtype),
    scale=scale,
    is_causal=True,
    query_seq_lengths=lengths,
    key_value_seq_lengths=lengths,
    local_window_size=None if window is None else (window - 1, 0),
    implementation=implementation,
  )
  return jnp.where(mask.query_segment_ids[:, :, None, None] != 0, out, 0)


def attention(
  query: Array,
  key: Array,
  value: Array,
  mask: AttentionMask,
  *,
  impl: str,
  scale: float | None = None,
  softcap: float | None = None,
  window: Window = None,
  dtype: Any = jnp.float32,
  block: int = DEFAULT_BLOCK,
) -> Array:
  """Dispatches to the kernel ``impl`` (see ``config.ATTENTION_IMPLS``).

  Single-token queries (decoding with a KV cache) take the dense kernel:
  their score row is ``[S]``, already linear in the length. So do blockwise
  calls whose queries and keys fit one ``block`` tile: that is one tile
  either way, and the loop would only add compile time.
  """
  if scale is None:
    scale = 1.0 / math.sqrt(query.shape[-1])
  one_tile = max(query.shape[1], key.shape[1]) <= block
  if (
    impl == "dense" or query.shape[1] == 1 or (impl == "blockwise" and one_tile)
  ):
    return dense_attention(
      query,
      key,
      value,
      mask,
      scale=scale,
      softcap=softcap,
      window=window,
      dtype=dtype,
    )
  if impl == "cudnn":
    if softcap is not None or not (window is None or isinstance(window, int)):
      raise ValueError(
        "cudnn attention supports neither logit soft-capping nor per-layer "
        "windows under scan_layers; use attention_impl='blockwise'"
      )
    return cudnn_attention(
      query, key, value, mask, scale=scale, window=window, dtype=dtype
    )
  return blockwise_attention(
    query,
    key,
    value,
    mask,
    scale=scale,
    softcap=softcap,
    window=window,
    dtype=dtype,
    q_block=block,
    k_block=block,
  )

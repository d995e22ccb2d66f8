"""Attention kernels: blockwise (memory linear in length), dense, cuDNN,
and the Pallas splash (TPU) and GPU kernels.

The mask is given as segment ids and positions (``attention_core``); the
blockwise kernel is in ``blockwise_attention``, the Pallas ones in
``pallas_attention``; ``attention`` runs the one named (which one runs
where: ``attention_choice``).
"""

from __future__ import annotations

import functools
import math
from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp

from slpo_jax.models.attention_choice import ATTENTION_IMPLS
from slpo_jax.models.attention_choice import choose
from slpo_jax.models.attention_choice import unsupported
from slpo_jax.models.attention_core import NO_WINDOW
from slpo_jax.models.attention_core import AttentionMask
from slpo_jax.models.attention_core import Window
from slpo_jax.models.attention_core import attention_logits
from slpo_jax.models.attention_core import group_heads
from slpo_jax.models.attention_core import mask_allowed
from slpo_jax.models.attention_core import self_attention_mask
from slpo_jax.models.blockwise_attention import DEFAULT_BLOCK
from slpo_jax.models.blockwise_attention import blockwise_attention
from slpo_jax.models.pallas_attention import pallas_gpu_attention
from slpo_jax.models.pallas_attention import splash_attention

__all__ = [
  "DEFAULT_BLOCK",
  "NO_WINDOW",
  "AttentionMask",
  "Window",
  "attention",
  "blockwise_attention",
  "cudnn_attention",
  "dense_attention",
  "pallas_gpu_attention",
  "splash_attention",
  "self_attention_mask",
]
Array = jax.Array
# The kernels that take a batch attending to itself, with a static window.
FUSED = ("splash", "cudnn", "pallas_gpu")


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
  ok = mask_allowed(mask, window)[:, None, None]
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


def _static_window(kernel: Callable, window: Window, window_size: int | None):
  """``kernel(window=w)`` for a static ``w``, as the fused kernels need.

  A traced window (per-layer windows under ``scan_layers``) is either
  ``window_size`` or ``NO_WINDOW``: both kernels are compiled and the layer
  runs one of them.
  """
  if window is None or isinstance(window, int):
    return kernel(None if window in (None, NO_WINDOW) else window)
  if window_size is None:
    raise ValueError("a traced window needs window_size, its static value")
  return jax.lax.cond(
    window == NO_WINDOW, lambda: kernel(None), lambda: kernel(window_size)
  )


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
  window_size: int | None = None,
  dtype: Any = jnp.float32,
  block: int = DEFAULT_BLOCK,
) -> Array:
  """Dispatches to the kernel ``impl`` (see ``attention_choice``).

  Single-token queries (decoding with a KV cache) take the dense kernel:
  their score row is ``[S]``, already linear in the length. So do blockwise
  calls whose queries and keys fit one ``block`` tile: that is one tile
  either way, and the loop would only add compile time. The fused kernels
  (splash, cudnn, pallas_gpu) take a batch attending to itself; queries
  written into a longer KV cache (a prompt before sampling) run blockwise.
  ``auto`` is chosen when the program is lowered: splash on TPU, the GPU
  kernel that takes every segment layout (``attention_choice.choose`` with
  packed rows) on CUDA, blockwise elsewhere.

  Args:
    query: ``[B, T, heads, head_dim]``.
    key: ``[B, S, kv_heads, head_dim]``.
    value: ``[B, S, kv_heads, head_dim]``.
    mask: the ``AttentionMask``.
    impl: one of ``ATTENTION_IMPLS``.
    scale: logit scale; None is ``head_dim ** -0.5``.
    softcap: if set, logits become ``softcap * tanh(logits / softcap)``.
    window: None, a static window, or a traced one (``NO_WINDOW``: none).
    window_size: the value a traced ``window`` takes on sliding layers.
    dtype: compute dtype of the value product.
    block: the kernels' tile along the lengths.

  Returns:
    ``[B, T, heads, head_dim]``.
  """
  if scale is None:
    scale = 1.0 / math.sqrt(query.shape[-1])
  args = (query, key, value, mask)
  common = dict(scale=scale, dtype=dtype)
  if impl == "auto" and mask.branched:
    # No fused kernel takes branches (attention_choice): blockwise on every
    # platform.
    impl = "blockwise"
  if impl == "auto":
    return _auto(*args, softcap, window, window_size, block, common)
  if impl in FUSED and query.shape[1] != key.shape[1]:
    impl = "blockwise"
  reason = unsupported(
    impl,
    softcap=softcap is not None,
    window=window is not None,
    branched=mask.branched,
  )
  if reason:
    raise ValueError(reason)
  one_tile = max(query.shape[1], key.shape[1]) <= block
  if (
    impl == "dense" or query.shape[1] == 1 or (impl == "blockwise" and one_tile)
  ):
    return dense_attention(*args, softcap=softcap, window=window, **common)
  if impl == "blockwise":
    return blockwise_attention(
      *args,
      softcap=softcap,
      window=window,
      q_block=block,
      k_block=block,
      **common,
    )
  if impl == "splash":
    kernel = functools.partial(
      splash_attention, *args, softcap=softcap, block=block, **common
    )
  elif impl == "cudnn":
    kernel = functools.partial(cudnn_attention, *args, **common)
  elif impl == "pallas_gpu":
    kernel = functools.partial(pallas_gpu_attention, *args, **common)
    return kernel()
  else:
    raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}")
  return _static_window(
    lambda window: kernel(window=window), window, window_size
  )


def _auto(query, key, value, mask, softcap, window, window_size, block, common):
  """``auto``: each platform's kernel, chosen at lowering."""
  gpu, _ = choose(
    "gpu", softcap=softcap is not None, window=window is not None, packed=True
  )

  def run(impl):
    def kernel(query, key, value, mask):
      return attention(
        query,
        key,
        value,
        mask,
        impl=impl,
        softcap=softcap,
        window=window,
        window_size=window_size,
        block=block,
        **common,
      )

    return kernel

  return jax.lax.platform_dependent(
    query,
    key,
    value,
    mask,
    tpu=run("splash"),
    cuda=run(gpu),
    default=run("blockwise"),
  )

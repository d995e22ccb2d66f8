"""Attention through the Pallas kernels shipped with JAX: splash and Triton.

* ``splash_attention``: the TPU kernel (``pallas.ops.tpu.splash_attention``)
  that MaxText and Tunix train with: causal or local (sliding window) masks,
  segment ids, logit soft-capping and grouped-query heads, with its own
  backward kernels.
* ``pallas_gpu_attention``: the GPU flash kernel (``pallas.ops.gpu.attention``):
  causal masks and segment ids only (no window, no soft-capping), and the
  same number of key and query heads, so grouped keys are repeated.

Both mask by the row index, not by the positions of ``AttentionMask``: a
query sees the keys at or before its own index (within ``window`` of it) in
its segment. That is ``attention_core.allowed`` exactly when each segment
is contiguous and its positions count up by one from 0, as in right-padded
rows and in the packed rows of ``slpo_jax.packing``; it is the caller's
precondition. Padding (segment 0) attends to padding, which keeps every
softmax row non-empty; its output is zeroed, so nothing flows back from it.

Lengths are padded inside the call to a multiple of the kernel's tile. On a
platform other than the kernel's own the kernel runs in interpret mode
(slowly: that is how the tests run it on a CPU). The choice is made when the
program is lowered (``jax.lax.platform_dependent``), so a TPU step compiled
ahead of time on a CPU host gets the real kernel.

Under a mesh (``jax.set_mesh``) each device runs the kernel on its own rows
and heads inside ``jax.shard_map``, with the batch and heads placed by the
logical-axis rules in context (``activation_batch``, ``heads``) as the rest
of the model's activations are; a mesh axis that does not divide the rows
or the heads is left out, and that dimension is computed whole.
"""

from __future__ import annotations

import functools
from typing import Any
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import attention as triton_kernel
from jax.experimental.pallas.ops.tpu import splash_attention as splash_kernel
from jax.sharding import PartitionSpec

from slpo_jax.models.attention_core import AttentionMask

Array = jax.Array
# The TPU's lane width: the splash tiles are multiples of it.
LANE = 128


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _tile(length: int, block: int) -> int:
  """The square tile: ``block`` or, for short rows, the rounded length."""
  return min(_round_up(block, LANE), _round_up(length, LANE))


def _pad_length(x: Array, length: int, axis: int) -> Array:
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, widths)


def _splash_rows(q, k, v, segment_ids, *, window, softcap, tile, interpret):
  """Splash on ``[B, heads, T, D]`` rows (``T`` a multiple of ``tile``)."""
  shape = (q.shape[2], k.shape[2])
  if window is None:
    base = splash_kernel.CausalMask(shape)
  else:
    base = splash_kernel.LocalMask(shape, window_size=(window - 1, 0), offset=0)
  sizes = splash_kernel.BlockSizes(
    block_q=tile,
    block_kv=tile,
    block_kv_compute=tile,
    block_q_dkv=tile,
    block_kv_dkv=tile,
    block_kv_dkv_compute=tile,
    block_q_dq=tile,
    block_kv_dq=tile,
  )
  kernel = splash_kernel.make_splash_mha(
    mask=splash_kernel.MultiHeadMask([base] * q.shape[1]),
    block_sizes=sizes,
    head_shards=1,
    q_seq_shards=1,
    attn_logits_soft_cap=softcap,
    interpret=interpret,
  )
  segments = splash_kernel.SegmentIds(segment_ids, segment_ids)
  per_row = jax.vmap(kernel, in_axes=(0, 0, 0, splash_kernel.SegmentIds(0, 0)))
  return per_row(q, k, v, segments)


def _triton_rows(q, k, v, segment_ids, *, tile, interpret):
  """The Triton kernel on ``[B, T, heads, D]`` rows, keys repeated per group."""
  groups = q.shape[2] // k.shape[2]
  k = jnp.repeat(k, groups, axis=2)
  v = jnp.repeat(v, groups, axis=2)
  sizes = triton_kernel.BlockSizes(
    block_q=tile,
    block_k=min(tile, 64),
    block_q_dkv=min(tile, 64),
    block_kv_dkv=min(tile, 64),
    block_q_dq=min(tile, 64),
    block_kv_dq=min(tile, 64),
  )
  return triton_kernel.mha(
    q,
    k,
    v,
    segment_ids,
    sm_scale=1.0,
    causal=True,
    block_sizes=sizes,
    interpret=interpret,
  )


def _on_platform(native: str, rows: Callable, *args: Array) -> Array:
  """``rows`` compiled for ``native``, interpreted on every other platform."""
  return jax.lax.platform_dependent(
    *args,
    **{native: functools.partial(rows, interpret=False)},
    default=functools.partial(rows, interpret=True),
  )


def _divides(mesh, axes, size: int) -> bool:
  if axes is None:
    return True
  names = (axes,) if isinstance(axes, str) else axes
  count = 1
  for name in names:
    count *= mesh.shape[name]
  return size % count == 0


def _per_device(fn: Callable, q: Array, k: Array, v: Array, seg: Array):
  """``fn(q, k, v, seg)`` on each device's rows and heads, under a mesh.

  ``q``, ``k``, ``v`` are ``[B, T, heads, D]``; ``seg`` is ``[B, T]``.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1 or mesh.manual_axes:
    return fn(q, k, v, seg)
  batch, heads = nn.logical_to_mesh_axes(("activation_batch", "heads"))
  if not _divides(mesh, batch, q.shape[0]):
    batch = None
  if not (
    _divides(mesh, heads, q.shape[2]) and _divides(mesh, heads, k.shape[2])
  ):
    heads = None
  qkv = PartitionSpec(batch, None, heads, None)
  return jax.shard_map(
    fn,
    mesh=mesh,
    in_specs=(qkv, qkv, qkv, PartitionSpec(batch, None)),
    out_specs=qkv,
    check_vma=False,
  )(q, k, v, seg)


def _zero_padding(out: Array, mask: AttentionMask, length: int) -> Array:
  out = out[:, :length]
  return jnp.where(mask.query_segment_ids[:, :, None, None] != 0, out, 0)


def splash_attention(
  query: Array,
  key: Array,
  value: Array,
  mask: AttentionMask,
  *,
  scale: float,
  softcap: float | None = None,
  window: int | None = None,
  dtype: Any = jnp.float32,
  block: int = 512,
  interpret: bool | None = None,
) -> Array:
  """Splash attention of a batch attending to itself (see module doc).

  Args:
    query: ``[B, T, heads, head_dim]``.
    key: ``[B, T, kv_heads, head_dim]``; ``heads`` a multiple of
      ``kv_heads``.
    value: ``[B, T, kv_heads, head_dim]``.
    mask: the ``AttentionMask`` (contiguous segments; see module doc).
    scale: logit scale, applied to the queries before the kernel.
    softcap: if set, logits become ``softcap * tanh(logits / softcap)``.
    window: a static sliding window, or None.
    dtype: compute dtype of the kernel's inputs (float32 accumulation).
    block: the tile along both lengths (rounded up to a multiple of 128 and
      down to the padded length).
    interpret: force (True) or forbid (False) interpret mode; None chooses
      per platform at lowering (compiled on TPU, interpreted elsewhere).

  Returns:
    ``[B, T, heads, head_dim]``.
  """
  length = query.shape[1]
  tile = _tile(length, block)
  padded = _round_up(length, tile)
  rows = functools.partial(
    _splash_rows, window=window, softcap=softcap, tile=tile
  )

  def local(q, k, v, seg):
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    if interpret is None:
      out = _on_platform("tpu", rows, q, k, v, seg)
    else:
      out = rows(q, k, v, seg, interpret=interpret)
    return jnp.swapaxes(out, 1, 2)

  q = (query.astype(jnp.float32) * scale).astype(dtype)
  q, k, v = (_pad_length(x.astype(dtype), padded, 1) for x in (q, key, value))
  seg = _pad_length(mask.query_segment_ids.astype(jnp.int32), padded, 1)
  return _zero_padding(_per_device(local, q, k, v, seg), mask, length)


def pallas_gpu_attention(
  query: Array,
  key: Array,
  value: Array,
  mask: AttentionMask,
  *,
  scale: float,
  dtype: Any = jnp.float32,
  block: int = 128,
  interpret: bool | None = None,
) -> Array:
  """The Pallas Triton flash kernel on a batch attending to itself.

  Causal, with segment ids; no window or soft-capping (see module doc).
  Arguments as ``splash_attention``; compiled on CUDA GPUs, interpreted
  elsewhere when ``interpret`` is None.
  """
  length = query.shape[1]
  tile = _tile(length, block)
  padded = _round_up(length, tile)
  rows = functools.partial(_triton_rows, tile=tile)

  def local(q, k, v, seg):
    if interpret is None:
      return _on_platform("cuda", rows, q, k, v, seg)
    return rows(q, k, v, seg, interpret=interpret)

  q = (query.astype(jnp.float32) * scale).astype(dtype)
  q, k, v = (_pad_length(x.astype(dtype), padded, 1) for x in (q, key, value))
  seg = _pad_length(mask.query_segment_ids.astype(jnp.int32), padded, 1)
  return _zero_padding(_per_device(local, q, k, v, seg), mask, length)

"""Blockwise attention: flash attention in plain JAX.

An online softmax over key blocks inside ``lax.scan``, query blocks mapped
likewise, and a custom VJP that recomputes each score tile in the backward
pass, so neither pass holds more than a few ``[q_block, k_block]`` tiles per
head: memory linear in the lengths. It visits every (query block, key block)
pair but computes only those with some allowed entry (``lax.cond``), so a
causal pass does about half the work of a full one; which tiles are skipped
depends on the segment ids and positions, not on an assumption about their
layout. Equal to ``attention.dense_attention`` in values and gradients.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from slpo_jax.models.attention_core import AttentionMask
from slpo_jax.models.attention_core import Window
from slpo_jax.models.attention_core import allowed
from slpo_jax.models.attention_core import attention_logits
from slpo_jax.models.attention_core import group_heads

Array = jax.Array
# Tile sizes: a float32 [32 heads, 512, 512] score tile is 32 MiB.
DEFAULT_BLOCK = 512


def _rows(x: Array, i: Array, size: int) -> Array:
  return jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=1)


def _maybe_rows(x: Array | None, i: Array, size: int) -> Array | None:
  return None if x is None else _rows(x, i, size)


def _tile_mask(q_seg, q_pos, k_seg, k_pos, window, q_branch, k_branch):
  return allowed(q_seg, q_pos, k_seg, k_pos, window, q_branch, k_branch)[
    :, None, None
  ]


def _flash_forward(q, k, v, seg, window, scale, softcap, q_block, k_block):
  """Online softmax; returns out ``[B, T, K, G, D]`` and lse ``[B, K, G, T]``."""
  q_seg, q_pos, k_seg, k_pos, q_branch, k_branch = seg
  batch, length, kv_heads, groups, head_dim = q.shape
  num_k = k.shape[1] // k_block

  def query_step(_, i):
    qi = _rows(q, i, q_block)
    qs, qp = _rows(q_seg, i, q_block), _rows(q_pos, i, q_block)
    qb = _maybe_rows(q_branch, i, q_block)

    def key_step(carry, j):
      ok = _tile_mask(
        qs,
        qp,
        _rows(k_seg, j, k_block),
        _rows(k_pos, j, k_block),
        window,
        qb,
        _maybe_rows(k_branch, j, k_block),
      )
      # Tiles wholly masked (above the causal diagonal, outside the window,
      # a query branch against another branch's keys) change nothing: skipping them halves the work of a causal pass.
      return jax.lax.cond(
        jnp.any(ok), visit, lambda c, j, ok: c, carry, j, ok
      ), None

    def visit(carry, j, ok):
      m, total, acc = carry
      kj, vj = _rows(k, j, k_block), _rows(v, j, k_block)
      s, _ = attention_logits(qi, kj, scale, softcap)
      s = jnp.where(ok, s, -jnp.inf)
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      # A row with nothing allowed yet has max -inf; shifting it by 0 keeps
      # exp(-inf) = 0 instead of exp(-inf + inf) = NaN.
      shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
      p = jnp.exp(s - shift[..., None])
      correction = jnp.exp(m - shift)
      total = total * correction + jnp.sum(p, axis=-1)
      pv = jnp.einsum(
        "bkgts,bskd->bkgtd",
        p.astype(v.dtype),
        vj,
        preferred_element_type=jnp.float32,
      )
      return m_new, total, acc * correction[..., None] + pv

    stats = (batch, kv_heads, groups, q_block)
    init = (
      jnp.full(stats, -jnp.inf, jnp.float32),
      jnp.zeros(stats, jnp.float32),
      jnp.zeros((*stats, head_dim), jnp.float32),
    )
    (m, total, acc), _ = jax.lax.scan(key_step, init, jnp.arange(num_k))
    seen = total > 0
    out = acc / jnp.where(seen, total, 1.0)[..., None]
    # lse 0 for empty rows: every score of theirs is -inf, so the backward's
    # exp(s - lse) is 0 there, as it should be.
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, total, 1.0)), 0.0)
    return None, (jnp.moveaxis(out, 3, 1).astype(q.dtype), lse)

  _, (out, lse) = jax.lax.scan(query_step, None, jnp.arange(length // q_block))
  # [num_q, B, q_block, ...] -> [B, T, ...]
  out = jnp.moveaxis(out, 0, 1).reshape(q.shape)
  lse = jnp.moveaxis(lse, 0, 3).reshape(batch, kv_heads, groups, length)
  return out, lse


def _flash_backward(res, d_out, scale, softcap, q_block, k_block):
  q, k, v, seg, window, out, lse = res
  q_seg, q_pos, k_seg, k_pos, q_branch, k_branch = seg
  num_q = q.shape[1] // q_block
  # delta_t = sum_d dO * O, the softmax backward's row term, [B, K, G, T].
  delta = jnp.einsum(
    "btkgd,btkgd->bkgt",
    d_out.astype(jnp.float32),
    out.astype(jnp.float32),
  )

  def key_step(d_q, j):
    kj, vj = _rows(k, j, k_block), _rows(v, j, k_block)
    ks, kp = _rows(k_seg, j, k_block), _rows(k_pos, j, k_block)
    kb = _maybe_rows(k_branch, j, k_block)

    def query_step(carry, i):
      ok = _tile_mask(
        _rows(q_seg, i, q_block),
        _rows(q_pos, i, q_block),
        ks,
        kp,
        window,
        _maybe_rows(q_branch, i, q_block),
        kb,
      )
      return jax.lax.cond(
        jnp.any(ok), visit, lambda c, i, ok: c, carry, i, ok
      ), None

    def visit(carry, i, ok):
      d_k, d_v, d_q = carry
      qi, d_oi = _rows(q, i, q_block), _rows(d_out, i, q_block)
      lse_i = jax.lax.dynamic_slice_in_dim(lse, i * q_block, q_block, axis=3)
      delta_i = jax.lax.dynamic_slice_in_dim(
        delta, i * q_block, q_block, axis=3
      )
      s, t = attention_logits(qi, kj, scale, softcap)
      p = jnp.where(ok, jnp.exp(s - lse_i[..., None]), 0.0)
      d_v = d_v + jnp.einsum(
        "bkgts,btkgd->bskd",
        p.astype(d_oi.dtype),
        d_oi,
        preferred_element_type=jnp.float32,
      )
      d_p = jnp.einsum(
        "btkgd,bskd->bkgts", d_oi, vj, preferred_element_type=jnp.float32
      )
      d_s = p * (d_p - delta_i[..., None])
      if softcap is not None:
        d_s = d_s * (1.0 - t * t)
      d_s = (d_s * scale).astype(q.dtype)
      d_qi = jnp.einsum(
        "bkgts,bskd->btkgd", d_s, kj, preferred_element_type=jnp.float32
      )
      d_q = jax.lax.dynamic_update_slice_in_dim(
        d_q, _rows(d_q, i, q_block) + d_qi, i * q_block, axis=1
      )
      d_k = d_k + jnp.einsum(
        "bkgts,btkgd->bskd", d_s, qi, preferred_element_type=jnp.float32
      )
      return d_k, d_v, d_q

    zeros = jnp.zeros(kj.shape, jnp.float32)
    (d_k, d_v, d_q), _ = jax.lax.scan(
      query_step, (zeros, zeros, d_q), jnp.arange(num_q)
    )
    return d_q, (d_k, d_v)

  d_q, (d_k, d_v) = jax.lax.scan(
    key_step, jnp.zeros(q.shape, jnp.float32), jnp.arange(k.shape[1] // k_block)
  )

  def unblock(x):  # [num_k, B, k_block, K, D] -> [B, S, K, D]
    return jnp.moveaxis(x, 0, 1).reshape(k.shape)

  return (
    d_q.astype(q.dtype),
    unblock(d_k).astype(k.dtype),
    unblock(d_v).astype(v.dtype),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _flash(q, k, v, seg, window, scale, softcap, q_block, k_block):
  return _flash_forward(q, k, v, seg, window, scale, softcap, q_block, k_block)[
    0
  ]


def _flash_fwd(q, k, v, seg, window, scale, softcap, q_block, k_block):
  # Under an outer lax.scan (scanned layers), JAX's partial evaluation of
  # the tile-skipping lax.cond would keep every tile's scores and mask as
  # residuals, [num_k, num_q, ..., q_block, k_block]: the dense attention's
  # memory. Checkpointing the forward keeps only (out, lse); the backward
  # recomputes its tiles anyway (the Llama 3.2 1B LoRA step compiled for a
  # v5p: 2.15 -> 1.26 GiB of temporaries per chip).
  forward = jax.checkpoint(_flash_forward, static_argnums=(5, 6, 7, 8))
  out, lse = forward(q, k, v, seg, window, scale, softcap, q_block, k_block)
  return out, (q, k, v, seg, window, out, lse)


def _flash_bwd(scale, softcap, q_block, k_block, res, d_out):
  d_q, d_k, d_v = _flash_backward(res, d_out, scale, softcap, q_block, k_block)
  return d_q, d_k, d_v, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _pad_to(x: Array | None, multiple: int, value: int = 0) -> Array | None:
  if x is None:
    return None
  pad = -x.shape[1] % multiple
  if not pad:
    return x
  widths = [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)
  return jnp.pad(x, widths, constant_values=value)


def blockwise_attention(
  query: Array,
  key: Array,
  value: Array,
  mask: AttentionMask,
  *,
  scale: float,
  softcap: float | None = None,
  window: Window = None,
  dtype: Any = jnp.float32,
  q_block: int = DEFAULT_BLOCK,
  k_block: int = DEFAULT_BLOCK,
) -> Array:
  """``dense_attention`` in tiles: memory linear in T and S, both passes.

  Arguments as ``dense_attention``, plus the tile sizes (clipped to the
  lengths; T and S are padded to multiples of them with segment 0, which
  attends to and is attended by nothing).
  """
  batch, length, num_heads, head_dim = query.shape
  q_block = min(q_block, length)
  k_block = min(k_block, key.shape[1])
  q = _pad_to(group_heads(query.astype(dtype), key.shape[2]), q_block)
  k = _pad_to(key.astype(dtype), k_block)
  v = _pad_to(value.astype(dtype), k_block)
  seg = (
    _pad_to(mask.query_segment_ids, q_block),
    _pad_to(mask.query_positions, q_block),
    _pad_to(mask.key_segment_ids, k_block),
    _pad_to(mask.key_positions, k_block),
    _pad_to(mask.query_branches, q_block),
    _pad_to(mask.key_branches, k_block),
  )
  if window is not None:
    window = jnp.asarray(window, jnp.int32)
  out = _flash(q, k, v, seg, window, scale, softcap, q_block, k_block)
  return out[:, :length].reshape(batch, length, num_heads, head_dim)

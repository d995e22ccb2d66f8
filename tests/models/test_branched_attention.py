"""Branched masks (a prompt, then responses that see it and not each other):
dense and blockwise against a float64 NumPy reference, values and
gradients; the fused kernels refuse them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slpo_jax import models
from slpo_jax.models import attention
from slpo_jax.models import attention_choice

B, T, HEADS, KV_HEADS, HEAD_DIM = 2, 45, 4, 2, 8


def _layout():
  """Row 0: two pairs (prompt 5, responses 7 and 4; prompt 9, responses 3
  and 11) then padding; row 1: one pair (prompt 12, responses 14 and 9)."""
  seg = np.zeros((B, T), np.int32)
  pos = np.zeros((B, T), np.int32)
  branch = np.zeros((B, T), np.int32)
  rows = [[(5, 7, 4), (9, 3, 11)], [(12, 14, 9)]]
  for b, pairs in enumerate(rows):
    offset = 0
    for s, (p, lw, ll) in enumerate(pairs):
      span = slice(offset, offset + p + lw + ll)
      seg[b, span] = s + 1
      pos[b, span] = np.concatenate(
        [np.arange(p), p + np.arange(lw), p + np.arange(ll)]
      )
      branch[b, span] = np.repeat([0, 1, 2], [p, lw, ll])
      offset += p + lw + ll
  return seg, pos, branch


def _reference(q, k, v, seg, pos, branch, scale):
  """float64, one query at a time, the rule spelt out."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  groups = HEADS // KV_HEADS
  out = np.zeros(q.shape)
  for b in range(B):
    for t in range(T):
      if seg[b, t] == 0:
        continue
      keys = [
        s
        for s in range(T)
        if seg[b, s] == seg[b, t]
        and pos[b, s] <= pos[b, t]
        and branch[b, s] in (0, branch[b, t])
      ]
      for h in range(HEADS):
        kv = h // groups
        logits = scale * k[b, keys, kv] @ q[b, t, h]
        weights = np.exp(logits - logits.max())
        out[b, t, h] = weights @ v[b, keys, kv] / weights.sum()
  return out


@functools.partial(jax.jit, static_argnames=("kernel",))
def _value_and_grads(q, k, v, cotangent, seg, pos, branch, kernel):
  mask = attention.self_attention_mask(seg, pos, branch)

  def run(q, k, v):
    if kernel == "blockwise":
      out = attention.blockwise_attention(
        q, k, v, mask, scale=0.3, q_block=8, k_block=16
      )
    else:
      out = attention.dense_attention(q, k, v, mask, scale=0.3)
    return jnp.sum(out * cotangent), out

  (_, out), grads = jax.value_and_grad(run, argnums=(0, 1, 2), has_aux=True)(
    q, k, v
  )
  return out, grads


def test_blockwise_and_dense_equal_the_reference():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(B, T, HEADS, HEAD_DIM)).astype(np.float32)
  k = rng.normal(size=(B, T, KV_HEADS, HEAD_DIM)).astype(np.float32)
  v = rng.normal(size=(B, T, KV_HEADS, HEAD_DIM)).astype(np.float32)
  cotangent = rng.normal(size=q.shape).astype(np.float32)
  seg, pos, branch = _layout()
  want = _reference(q, k, v, seg, pos, branch, 0.3)
  dense, dense_grads = _value_and_grads(
    q, k, v, cotangent, seg, pos, branch, "dense"
  )
  np.testing.assert_allclose(dense, want, rtol=1e-5, atol=1e-5)
  blockwise, grads = _value_and_grads(
    q, k, v, cotangent, seg, pos, branch, "blockwise"
  )
  np.testing.assert_allclose(blockwise, want, rtol=1e-5, atol=1e-5)
  for got, expected in zip(grads, dense_grads):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # The branches matter: without them the rejected tokens see the chosen.
  plain = attention.dense_attention(
    q, k, v, attention.self_attention_mask(seg, pos), scale=0.3
  )
  assert np.max(np.abs(np.asarray(plain) - want)) > 1e-2


@pytest.mark.parametrize("impl", ["splash", "cudnn", "pallas_gpu"])
def test_fused_kernels_refuse_branches(impl):
  reason = attention_choice.unsupported(
    impl, softcap=False, window=False, packed=True, branched=True
  )
  assert reason and "shared-prompt" in reason
  seg, pos, branch = _layout()
  x = jnp.zeros((B, T, HEADS, HEAD_DIM))
  kv = jnp.zeros((B, T, KV_HEADS, HEAD_DIM))
  mask = attention.self_attention_mask(seg, pos, branch)
  with pytest.raises(ValueError, match="shared-prompt"):
    attention.attention(x, kv, kv, mask, impl=impl)


@pytest.mark.parametrize("platform", ["tpu", "gpu", "cpu"])
def test_auto_is_blockwise_for_branched_rows(platform):
  impl, _ = models.choose_attention(
    platform, softcap=False, window=False, packed=True, branched=True
  )
  assert impl == "blockwise"

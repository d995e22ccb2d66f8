"""Attention kernels: blockwise against dense in values and gradients.

The dense kernel is the pre-existing reference (the whole ``[T, S]`` score
matrix); the blockwise one must equal it to 1e-5 in float32 for every mask
feature: right padding, packed segments, a sliding window (static or traced,
as under ``scan_layers``), logit soft-capping, grouped-query heads, and
lengths that are not multiples of the tiles.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slpo_jax import models
from slpo_jax.models import attention

from models_testing import random_params

B, T, HEADS, KV_HEADS, HEAD_DIM = 2, 37, 4, 2, 8
TOLERANCE = 1e-5


def _segments():
  """Row 0: one sequence of 30 then padding; row 1: two packed sequences
  (15 and 18 tokens) then padding. Positions count from 0 per segment."""
  seg = np.ones((B, T), np.int32)
  seg[0, 30:] = 0
  seg[1, 15:33] = 2
  seg[1, 33:] = 0
  pos = np.zeros((B, T), np.int32)
  for b in range(B):
    for s in np.unique(seg[b]):
      idx = np.flatnonzero(seg[b] == s)
      pos[b, idx] = np.arange(len(idx))
  return seg, pos


def _qkv(seed=0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(B, T, HEADS, HEAD_DIM)).astype(np.float32)
  k = rng.normal(size=(B, T, KV_HEADS, HEAD_DIM)).astype(np.float32)
  v = rng.normal(size=(B, T, KV_HEADS, HEAD_DIM)).astype(np.float32)
  weights = rng.normal(size=(B, T, HEADS, HEAD_DIM)).astype(np.float32)
  return q, k, v, weights


@functools.partial(jax.jit, static_argnames=("kernel", "softcap", "blocks"))
def _value_and_grads(
  q, k, v, weights, seg, pos, window, kernel, softcap, blocks
):
  mask = attention.self_attention_mask(seg, pos)
  kwargs = dict(scale=0.3, softcap=softcap, window=window)
  if kernel == "blockwise":
    kwargs.update(q_block=blocks[0], k_block=blocks[1])
    fn = attention.blockwise_attention
  else:
    fn = attention.dense_attention

  def loss(q, k, v):
    out = fn(q, k, v, mask, **kwargs)
    return jnp.sum(out * weights), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
    q, k, v
  )
  return out, grads


@pytest.mark.parametrize(
  "softcap,window,blocks",
  [
    (None, None, (8, 16)),  # ragged tiles: 37 = 4 * 8 + 5, 2 * 16 + 5
    (2.0, 6, (16, 8)),
  ],
)
def test_blockwise_equals_dense_with_gradients(softcap, window, blocks):
  q, k, v, weights = _qkv()
  seg, pos = _segments()
  # Padded queries have no keys; their outputs are zero in both kernels
  # and the loss weights them anyway, so their gradients are checked too.
  args = (q, k, v, weights, seg, pos, window)
  dense_out, dense_grads = _value_and_grads(
    *args, kernel="dense", softcap=softcap, blocks=None
  )
  block_out, block_grads = _value_and_grads(
    *args, kernel="blockwise", softcap=softcap, blocks=blocks
  )
  np.testing.assert_allclose(block_out, dense_out, atol=TOLERANCE)
  for ours, reference in zip(block_grads, dense_grads):
    np.testing.assert_allclose(ours, reference, atol=TOLERANCE)
  np.testing.assert_array_equal(np.asarray(block_out)[seg == 0], 0.0)


@functools.partial(jax.jit, static_argnames=("static_window",))
def _blockwise_values(q, k, v, seg, pos, window, static_window=None):
  mask = attention.self_attention_mask(seg, pos)
  window = static_window if window is None else window
  return attention.blockwise_attention(
    q, k, v, mask, scale=0.3, window=window, q_block=8, k_block=8
  )


def test_traced_window_equals_static_window():
  """Per-layer windows under scan_layers arrive as traced scalars; the
  NO_WINDOW sentinel is no window."""
  q, k, v, _ = _qkv(1)
  seg, pos = _segments()
  args = (q, k, v, seg, pos)
  static = _blockwise_values(*args, None, static_window=5)
  traced = _blockwise_values(*args, jnp.int32(5))
  unlimited = _blockwise_values(*args, jnp.int32(attention.NO_WINDOW))
  unwindowed = _blockwise_values(*args, None)
  np.testing.assert_array_equal(traced, static)
  np.testing.assert_allclose(unlimited, unwindowed, atol=TOLERANCE)
  assert np.max(np.abs(np.asarray(static) - np.asarray(unwindowed))) > 0.1


def test_cudnn_arguments_on_right_padded_rows():
  """The cuDNN call, run by XLA here, equals blockwise on the batches it is
  meant for: right-padded, one segment per row."""
  q, k, v, _ = _qkv(2)
  window = 5
  lengths = np.array([37, 20])
  seg = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
  pos = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))
  mask = attention.self_attention_mask(jnp.asarray(seg), jnp.asarray(pos))
  via_xla = jax.jit(
    functools.partial(
      attention.cudnn_attention,
      scale=0.3,
      window=window,
      dtype=jnp.float32,
      implementation="xla",
    )
  )(q, k, v, mask)
  blockwise = attention.blockwise_attention(
    q, k, v, mask, scale=0.3, window=window, q_block=8, k_block=8
  )
  np.testing.assert_allclose(via_xla, blockwise, atol=TOLERANCE)


def _temp_bytes(kernel, length, heads=4, kv_heads=2, head_dim=16, layers=0):
  """Scratch bytes of the compiled gradient; with ``layers``, of that many
  attention layers under ``lax.scan``, as the models' scanned blocks run."""
  shape = jax.ShapeDtypeStruct
  q = shape((1, length, heads, head_dim), jnp.float32)
  kv = shape((1, length, kv_heads, head_dim), jnp.float32)
  ids = shape((1, length), jnp.int32)
  fn = getattr(attention, f"{kernel}_attention")

  def loss(q, k, v, seg, pos):
    mask = attention.self_attention_mask(seg, pos)
    if not layers:
      return jnp.sum(fn(q, k, v, mask, scale=0.25))

    def layer(x, scale):
      return fn(x * scale, k, v, mask, scale=0.25), None

    out, _ = jax.lax.scan(layer, q, jnp.linspace(0.5, 1.5, layers))
    return jnp.sum(out)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  compiled = grad.lower(q, kv, kv, ids, ids).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("layers", [0, 2])
def test_blockwise_memory_is_linear_in_length(layers):
  """Compiled, not run: 4x the tokens is at most ~4x the blockwise scratch
  (dense grows ~16x; bench/attention_memory.py measures both at real head
  counts). Under scanned layers too, where JAX would otherwise keep every
  tile of the forward pass for the backward (x8.9 here before the forward
  was checkpointed)."""
  growth = _temp_bytes("blockwise", 4096, layers=layers) / _temp_bytes(
    "blockwise", 1024, layers=layers
  )
  print(f"blockwise temp bytes at 4x the length: x{growth:.1f}")
  assert growth < 5


@pytest.fixture(scope="module")
def tiny_llama():
  # 4-token tiles: the 11-token test rows cross three of them.
  config = models.tiny_config(
    "llama", vocab_size=64, sliding_window=6, num_layers=1, attention_block=4
  )
  model = models.build(config)
  return model, random_params(model, seed=2)


def test_model_dense_and_blockwise_agree(tiny_llama):
  model, params = tiny_llama
  dense_model = models.build(model.config.replace(attention_impl="dense"))
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(1, 64, (2, 11)), jnp.int32)
  mask = jnp.asarray(np.arange(11)[None] < np.array([[11], [7]]), jnp.int32)

  def loss(model, params):
    logits = model.apply(params, ids, mask)
    return jnp.sum(jnp.where(mask[..., None] == 1, logits, 0) ** 2) / 100

  grad = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
  blockwise, grads = grad(model, params)
  dense, dense_grads = grad(dense_model, params)
  np.testing.assert_allclose(blockwise, dense, rtol=TOLERANCE)
  for ours, reference in zip(
    jax.tree.leaves(grads), jax.tree.leaves(dense_grads)
  ):
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=1e-4)


def test_packed_rows_equal_separate_rows(tiny_llama):
  """Two sequences packed in one row (segment ids 1 and 2) give the logits
  they have as rows of their own."""
  model, params = tiny_llama
  rng = np.random.default_rng(1)
  first, second = rng.integers(1, 64, 5), rng.integers(1, 64, 8)
  packed = jnp.asarray(np.concatenate([first, second, [0, 0]])[None], jnp.int32)
  segment_ids = jnp.asarray([[1] * 5 + [2] * 8 + [0, 0]], jnp.int32)
  positions = jnp.asarray([list(range(5)) + list(range(8)) + [0, 0]], jnp.int32)
  apply = jax.jit(model.apply)
  logits = apply(params, packed, segment_ids=segment_ids, positions=positions)
  # Both alone in one right-padded batch: one more compilation, not two.
  alone = np.zeros((2, 8), np.int32)
  alone[0, :5], alone[1] = first, second
  alone_mask = (alone != 0).astype(np.int32)
  alone_mask[0, :5] = 1
  alone_logits = apply(params, alone, alone_mask)
  alone_first, alone_second = alone_logits[:1, :5], alone_logits[1:]
  np.testing.assert_allclose(logits[0, :5], alone_first[0], atol=TOLERANCE)
  np.testing.assert_allclose(logits[0, 5:13], alone_second[0], atol=TOLERANCE)

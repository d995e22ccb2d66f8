"""Model FLOPs of a DPO step on the tokens it computes, and this CPU's
measured float32 matmul peak, for the packing benchmark's utilisation.

A step's model FLOPs count every real (non-padding) position the variant
computes: ``2 N`` per position for the matmuls (N the weights a token
multiplies: every layer's projections and the output head, the embedding
lookup excluded) and ``4 d_attn k`` per layer for attention over the ``k``
keys the position sees (``position + 1`` in every layout: a response's
positions continue its prompt's); the policy's forward and backward passes
are three forward passes, the online reference one more. Padding and
masked attention tiles are not useful work and are not counted, so a
layout's FLOP/s falls when it wastes positions, and the shared-prompt
layout, which computes each prompt once, counts each prompt once.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

# Forward-pass equivalents per step: policy forward + backward (3), the
# online reference's forward (1).
PASSES = 4


def matmul_weights(model_config) -> int:
  """Weights a token multiplies per forward pass (head included)."""
  c = model_config
  kv = c.num_kv_heads * c.head_dim
  attn = c.d_model * (c.num_heads * c.head_dim) * 2 + c.d_model * kv * 2
  mlp = 3 * c.d_model * c.mlp_dim
  return c.num_layers * (attn + mlp) + c.d_model * c.vocab_size


def positions_and_keys(segment_ids: np.ndarray, positions: np.ndarray):
  """``(real positions, keys seen summed over them)`` of token rows."""
  real = np.asarray(segment_ids) > 0
  return int(real.sum()), int((np.asarray(positions)[real] + 1).sum())


def batch_counts(batch) -> tuple[int, int]:
  """``positions_and_keys`` for a padded, packed or shared-prompt batch."""
  if getattr(batch, "shares_prompt", False):
    return positions_and_keys(batch.segment_ids, batch.positions)
  total = [0, 0]
  for side in ("chosen", "rejected"):
    mask = np.asarray(getattr(batch, f"{side}_attention_mask"))
    if getattr(batch, "packed", False):
      seg, pos = np.asarray(batch.segment_ids) * mask, batch.positions
    else:
      seg, pos = mask, np.cumsum(mask, axis=1) - 1
    counts = positions_and_keys(seg, pos)
    total = [a + b for a, b in zip(total, counts)]
  return tuple(total)


def trl_counts(batches) -> tuple[int, int]:
  """``positions_and_keys`` of TRL's right-padded ``input_ids`` batches."""
  total = [0, 0]
  for b in batches:
    mask = b["attention_mask"].numpy()
    counts = positions_and_keys(mask, np.cumsum(mask, axis=1) - 1)
    total = [a + c for a, c in zip(total, counts)]
  return tuple(total)


def step_flops(model_config, positions: int, keys: int) -> float:
  """Model FLOPs of a pass over batches with these counts."""
  c = model_config
  attention = 4 * c.num_heads * c.head_dim * c.num_layers * keys
  return PASSES * (2.0 * matmul_weights(c) * positions + attention)


def matmul_peak(size: int = 1024, repeats: int = 20) -> float:
  """float32 matmul FLOP/s of this machine through XLA, the best of
  ``repeats`` products of two ``[size, size]`` matrices."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  product = jax.jit(jnp.matmul)
  product(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    product(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best

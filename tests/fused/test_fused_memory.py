"""The fused head's compiled scratch memory is far below the plain path's.

A property of the compiled program (XLA's buffer assignment), not a timing:
it compiles both forward-plus-backward programs and compares
``memory_analysis().temp_size_in_bytes``. It runs nothing.
"""

import jax
import jax.numpy as jnp
import numpy as np

import slpo_jax
from slpo_jax import fused


def _temp_bytes(loss, *args) -> int:
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_fused_temp_memory_is_far_below_plain_and_flat_in_vocab():
  tokens, d = 256, 64
  labels = jnp.zeros((4, tokens // 4), jnp.int32)

  def plain(h, w):
    return sum(jnp.sum(v) for v in slpo_jax.sequence_logps(h @ w, labels))

  def chunked(h, w):
    return sum(
      jnp.sum(v)
      for v in fused.sequence_logps_from_hidden(
        h, w, labels, vocab_chunk_size=512, token_chunk_size=128
      )
    )

  temps = {}
  for vocab in (8192, 32768):
    hidden = jax.ShapeDtypeStruct((4, tokens // 4, d), jnp.float32)
    lm_head = jax.ShapeDtypeStruct((d, vocab), jnp.float32)
    temps[vocab] = _temp_bytes(chunked, hidden, lm_head)
  plain_temp = _temp_bytes(plain, hidden, lm_head)
  # The plain program holds [N, V] logits and their cotangent: at least
  # 2 * N * V * 4 bytes.
  assert plain_temp >= 2 * tokens * 32768 * 4
  # The fused one holds [token_chunk, vocab_chunk] tiles, whatever V is.
  assert temps[32768] <= plain_temp / 50, (temps, plain_temp)
  np.testing.assert_allclose(temps[32768], temps[8192], rtol=0.05)

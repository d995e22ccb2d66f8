"""Who attends to whom, and the pieces every attention kernel shares.

Which keys a query sees is described by segment ids and positions rather
than a ``[B, T, S]`` mask, so that no kernel needs one:

* ``segment_ids`` ``[B, T]`` int, 0 for padding; several sequences packed in
  one row get different ids.
* ``positions`` ``[B, T]`` int, the position of each token in its sequence.
* optionally ``branches`` ``[B, T]`` int: a segment that forks after a
  shared stem (a prompt followed by two responses, ``data.share_prompt``)
  marks the stem 0 and each continuation 1, 2, ...; each continuation's
  positions start where the stem ends.

A query attends to a key when both are in the same non-zero segment, the
key's position is at most the query's, (with a sliding window ``w``) less
than ``w`` positions behind, and, with branches, the key is in the stem or
in the query's own branch. For the KV cache the keys are the cache
slots (segment 0 for slots not written yet). A query in segment 0 attends to
nothing; its output is zero.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
# A window is None (none), a Python int, or a traced int32 scalar (per-layer
# windows under ``nn.scan``), where NO_WINDOW means none.
NO_WINDOW = jnp.iinfo(jnp.int32).max
Window = int | Array | None


class AttentionMask(NamedTuple):
  """Who attends to whom, as segment ids and positions (see module doc).

  The branches are None for rows without forks; only the dense and
  blockwise kernels take them.
  """

  query_segment_ids: Array
  query_positions: Array
  key_segment_ids: Array
  key_positions: Array
  query_branches: Array | None = None
  key_branches: Array | None = None

  @property
  def branched(self) -> bool:
    return self.query_branches is not None


def self_attention_mask(
  segment_ids: Array, positions: Array, branches: Array | None = None
) -> AttentionMask:
  """The mask of a batch attending to itself."""
  return AttentionMask(
    segment_ids, positions, segment_ids, positions, branches, branches
  )


def allowed(
  query_segment_ids: Array,
  query_positions: Array,
  key_segment_ids: Array,
  key_positions: Array,
  window: Window,
  query_branches: Array | None = None,
  key_branches: Array | None = None,
) -> Array:
  """Boolean ``[B, T, S]``: True where query t may attend to key s."""
  q_seg = query_segment_ids[:, :, None]
  q_pos = query_positions[:, :, None]
  ok = (q_seg == key_segment_ids[:, None, :]) & (q_seg != 0)
  ok &= key_positions[:, None, :] <= q_pos
  if window is not None:
    ok &= (q_pos - key_positions[:, None, :]) < window
  if query_branches is not None:
    k_branch = key_branches[:, None, :]
    ok &= (k_branch == 0) | (k_branch == query_branches[:, :, None])
  return ok


def mask_allowed(mask: AttentionMask, window: Window) -> Array:
  """:func:`allowed` for a whole :class:`AttentionMask`."""
  return allowed(*mask[:4], window, *mask[4:])


def attention_logits(query, key, scale, softcap):
  """float32 ``[B, K, G, T, S]`` logits (capped) and the tanh, if capped."""
  s = jnp.einsum(
    "btkgd,bskd->bkgts", query, key, preferred_element_type=jnp.float32
  )
  s = s * scale
  if softcap is None:
    return s, None
  t = jnp.tanh(s / softcap)
  return softcap * t, t


def group_heads(query: Array, num_kv_heads: int) -> Array:
  # Query head h uses key/value head h // groups, as in the reference
  # ``repeat_kv``; grouping avoids materialising repeated keys.
  batch, length, num_heads, head_dim = query.shape
  groups = num_heads // num_kv_heads
  return query.reshape(batch, length, num_kv_heads, groups, head_dim)

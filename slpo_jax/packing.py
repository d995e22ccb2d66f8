"""Pairs packed into fixed-length rows: per-pair values as segment reductions.

A packed batch holds several pairs per row. Row r of the chosen block and
row r of the rejected block hold the same pairs at the same offsets: pair k
of the row occupies the same positions of both rows (its prompt, then the
longer response's length; the shorter response's tail is padding inside
the segment), and ``segment_ids`` (``[R, T]`` int, shared by the two rows)
is k there, 1..S, and 0 on the row's padding. So position t of the two rows
still holds the same response step of one pair, which the pair complement
relies on.

Per-token values depend only on the token and the model's distribution at
its position, so they are computed on the packed rows as they are; only the
reductions over time change. :func:`spread` copies a ``[..., T]`` array to
``[..., S, T]`` and :func:`spread_where` cuts a response mask to one
segment per slot. Every reduction over T then runs over one pair's
positions exactly: outside its segment a slot's mask is False and its masked
values are 0, so a prefix sum (the complements' ``sum_{s<t}``) enters the
segment at 0, a logsumexp sees only the segment's terms, and the first
difference of a pair cannot come before the segment. The price is S copies
of the ``[R, T]`` token arrays, small next to the ``[R, T, d]`` hidden
states.

Slots without a pair have an empty mask: their ``counted`` is False, and
the program gives them example weight 0.
"""

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from slpo_jax import logprobs


def segment_masks(segment_ids: ArrayLike, num_segments: int) -> jax.Array:
  """``[..., S, T]`` bool: slot s marks the positions of segment s + 1.

  Args:
    segment_ids: ``[..., T]`` int, 0 for padding, 1..S for the pairs.
    num_segments: S, the pair slots per row (static).
  """
  segment_ids = jnp.asarray(segment_ids)
  slots = jnp.arange(1, num_segments + 1, dtype=segment_ids.dtype)
  return segment_ids[..., None, :] == slots[:, None]


def spread(values: ArrayLike, masks: jax.Array) -> jax.Array:
  """``[..., T]`` values seen by every slot, ``[..., S, T]`` (a broadcast)."""
  values = jnp.asarray(values)
  return jnp.broadcast_to(values[..., None, :], masks.shape)


def spread_where(where: ArrayLike, masks: jax.Array) -> jax.Array:
  """A ``[..., T]`` response mask cut to each slot's segment, ``[..., S, T]``."""
  return jnp.asarray(where, bool)[..., None, :] & masks


def spread_tokens(
  tokens: logprobs.TokenLogps, masks: jax.Array
) -> logprobs.TokenLogps:
  """Every field of ``tokens`` spread over the slots (see :func:`spread`)."""
  return logprobs.TokenLogps(
    *(None if field is None else spread(field, masks) for field in tokens)
  )


def pairs_first(tree: Any) -> Any:
  """Per-slot values ``[R, S, ...]`` as one axis of pairs, ``[R * S, ...]``.

  Losses that compare the pairs of a batch (AOT sorts their margins) read
  the pairs along one axis, as they do for unpacked batches; the empty
  slots are not ``counted`` and so stay out of such comparisons.
  """
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)

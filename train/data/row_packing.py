"""Preference pairs packed into fixed-length rows (``data.packing``).

A packed batch is the same pairs as an unpacked one (``batch_size`` pairs of
the shuffled order, so epochs, resumption and the reference cache see the
same sequence of pairs), laid out in ``[R, packed_length]`` rows instead of
one row per pair. The layout is paired (see :mod:`slpo_jax.packing`): row r
of the chosen block and row r of the rejected block hold the same pairs at
the same offsets, each pair taking its prompt plus the longer response's
tokens in both, so that position t of the two rows is the same step of one
pair. The shorter response's tail is padding inside the segment.

Placement is first-fit decreasing: the pairs of a host's share are taken
longest first (ties in batch order) and each goes into the first row with
room, rows in order of opening; within a row, pairs keep the order they were
placed in. It is a pure function of the pairs' lengths, so batches are
deterministic.

Static shapes: jit compiles one program per shape. The row count R is
rounded up to a multiple of ``ceil(n / ROW_SHAPES)`` for n pairs per host
(at most n, which always fits: every pair fits a row), so that there are at
most ``ROW_SHAPES`` programs while a batch wastes less than that step's
rows. The pair slots per row S, which only size the small ``[R, S]`` and
``[R, S, T]`` per-pair arrays, are rounded up to a power of two. Every host
uses the largest R and S over the hosts' shares, which the global arrays
need; all hosts see the global batch, so they agree without talking. Rows
without a pair are padding; slots without a pair have weight 0 and id -1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from train import batch as batch_lib
from train.data.batching import Weighted
from train.data.batching import bucket_length


def first_fit_decreasing(
  lengths: Sequence[int], capacity: int
) -> list[list[int]]:
  """Indices of ``lengths`` grouped into rows of at most ``capacity``.

  Longest first (ties by index), each into the first row with room.
  """
  order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
  rows: list[list[int]] = []
  room: list[int] = []
  for i in order:
    if lengths[i] > capacity:
      raise ValueError(f"a pair of {lengths[i]} tokens exceeds {capacity}")
    for r, left in enumerate(room):
      if lengths[i] <= left:
        rows[r].append(i)
        room[r] -= lengths[i]
        break
    else:
      rows.append([i])
      room.append(capacity - lengths[i])
  return rows


# Most row counts, hence compiled programs, per pairs-per-host. HH pairs
# (8,192-token BPE) in 512-token rows, batches of 16 to 64 pairs: 81% to 82%
# real tokens; exact row counts would give 81% to 88%, 8 shapes 75%, powers
# of two 63% to 66%, and one padded row per pair 33%.
ROW_SHAPES = 16


def _power_of_two_at_least(n: int, limit: int) -> int:
  return min(1 << max(n - 1, 0).bit_length(), max(limit, n))


def _row_count(n: int, limit: int, multiple: int) -> int:
  step = -(-max(limit, 1) // ROW_SHAPES)
  step = -(-step // multiple) * multiple
  return min(-(-n // step) * step, max(limit, n))


def _real(entries: Sequence[Weighted]) -> list:
  # Weight-0 entries (the filler of the last evaluation batch) add nothing
  # to any sum; packing leaves them out instead of spending positions.
  return [pair for pair, weight in entries if weight > 0]


def layout_shape(
  shares: Sequence[Sequence[Weighted]],
  packed_length: int,
  row_multiple: int = 1,
) -> tuple[int, int]:
  """``(R, S)`` for the hosts' shares: rows and pair slots per row.

  ``R`` is a multiple of ``row_multiple`` (a host's devices on the batch
  axes, which split its rows) whenever the pairs per host are, which
  validation ensures (``batch_size`` a multiple of mesh.data x mesh.fsdp).
  """
  rows, slots, limit = 1, 1, 1
  for share in shares:
    lengths = [pair.length for pair in _real(share)]
    layout = first_fit_decreasing(lengths, packed_length)
    rows = max(rows, len(layout))
    slots = max([slots] + [len(row) for row in layout])
    limit = max(limit, len(share))
  return (
    _row_count(rows, limit, row_multiple),
    _power_of_two_at_least(slots, limit),
  )


def pack_pairs(
  entries: Sequence[Weighted],
  *,
  packed_length: int,
  pad_id: int,
  num_rows: int,
  num_slots: int,
) -> batch_lib.PackedBatch:
  """Packs weighted ``TokenizedPair``s into ``num_rows`` paired rows.

  Returns:
    ``chosen_`` and ``rejected_`` ``input_ids``, ``attention_mask``,
    ``labels``, ``loss_mask`` ``[R, T]`` as in ``collate_pairs`` but several
    pairs per row (labels and loss mask never cross a pair's end);
    ``segment_ids`` ``[R, T]`` int32, the same for both rows (1..S for the
    pairs of a row, 0 after the last); ``positions`` ``[R, T]`` int32,
    from 0 at each pair's start; ``pair_example_weight`` ``[R, S]`` float32
    and ``pair_example_id`` ``[R, S]`` int32 (-1 for empty slots), as a
    :class:`train.batch.PackedBatch`.
  """
  pairs = _real(entries)
  weights = [weight for _, weight in entries if weight > 0]
  layout = first_fit_decreasing([p.length for p in pairs], packed_length)
  if len(layout) > num_rows or any(len(row) > num_slots for row in layout):
    raise ValueError(f"{len(pairs)} pairs do not fit {num_rows} rows")
  shape = [num_rows, packed_length]
  batch = {
    "segment_ids": np.zeros(shape, np.int32),
    "positions": np.zeros(shape, np.int32),
    "pair_example_weight": np.zeros([num_rows, num_slots], np.float32),
    "pair_example_id": np.full([num_rows, num_slots], -1, np.int32),
  }
  for side in ("chosen_", "rejected_"):
    batch[f"{side}input_ids"] = np.full(shape, pad_id, np.int32)
    batch[f"{side}attention_mask"] = np.zeros(shape, np.int32)
    batch[f"{side}labels"] = np.zeros(shape, np.int32)
    batch[f"{side}loss_mask"] = np.zeros(shape, bool)
  for r, members in enumerate(layout):
    offset = 0
    for s, i in enumerate(members):
      pair, span = pairs[i], pairs[i].length
      batch["segment_ids"][r, offset : offset + span] = s + 1
      batch["positions"][r, offset : offset + span] = np.arange(span)
      batch["pair_example_weight"][r, s] = weights[i]
      batch["pair_example_id"][r, s] = pair.example_id
      first_label = offset + len(pair.prompt) - 1
      for side in ("chosen_", "rejected_"):
        tokens = np.concatenate([pair.prompt, getattr(pair, side[:-1])])
        end = offset + len(tokens)
        batch[f"{side}input_ids"][r, offset:end] = tokens
        batch[f"{side}attention_mask"][r, offset:end] = 1
        batch[f"{side}labels"][r, offset : end - 1] = tokens[1:]
        batch[f"{side}loss_mask"][r, first_label : end - 1] = True
      offset += span
  return batch_lib.packed(batch)


def packed_collate(
  *,
  packed_length: int,
  pad_id: int,
  shard_index: int,
  shard_count: int,
  row_multiple: int = 1,
  pack=None,
  layout=None,
):
  """A collate of the global batch's entries into this host's packed rows.

  Host i packs entries ``[i * n, (i + 1) * n)`` of the global batch (n =
  entries per host), the pairs ``collate_pairs`` would give it, into the
  shape every host computes alike (``layout_shape``), its row count a
  multiple of ``row_multiple``. ``pack`` and ``layout`` replace
  ``pack_pairs`` and ``layout_shape`` for another row layout (the
  shared-prompt rows of ``shared_rows``).
  """
  pack = pack or pack_pairs
  layout = layout or layout_shape

  def collate(
    entries: Sequence[Weighted],
  ) -> batch_lib.PackedBatch | batch_lib.SharedPromptBatch:
    per_host = len(entries) // shard_count
    shares = [
      entries[k * per_host : (k + 1) * per_host] for k in range(shard_count)
    ]
    rows, slots = layout(shares, packed_length, row_multiple)
    return pack(
      shares[shard_index],
      packed_length=packed_length,
      pad_id=pad_id,
      num_rows=rows,
      num_slots=slots,
    )

  return collate


def real_token_fractions(
  pairs: Sequence,
  *,
  batch_size: int,
  packed_length: int,
  buckets: Sequence[int],
  row_multiple: int = 1,
) -> tuple[float, float]:
  """Shares of the positions that hold real tokens: packed, and unpacked.

  Measured over the pairs in their order, in batches of ``batch_size`` (one
  host's share; shuffled batches differ, but not in expectation), both rows
  of every pair counted. The unpacked share pads each batch to its length
  bucket, as ``collate_pairs`` does; packed rows are counted as
  ``layout_shape`` rounds them, to a multiple of ``row_multiple``.
  """
  real = packed = padded = 0
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start : start + batch_size]
    real += sum(
      2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in chunk
    )
    rows, _ = layout_shape(
      [[(p, 1.0) for p in chunk]], packed_length, row_multiple
    )
    packed += 2 * rows * packed_length
    longest = bucket_length(max(p.length for p in chunk), buckets)
    padded += 2 * len(chunk) * longest
  return real / max(packed, 1), real / max(padded, 1)

"""Pairs packed with each prompt once (``data.share_prompt``).

The same pairs per batch as ``train.data.row_packing`` (so epochs,
resumption and the reference cache see the same sequence of pairs), the
same placement (first-fit decreasing, now by ``prompt + chosen + rejected``
tokens) and the same static shapes (row counts rounded as there, pair slots
to a power of two). What differs is the row: one block instead of a chosen
and a rejected block, each pair a segment of its prompt, its chosen
response and its rejected response, laid out as
:class:`train.batch.SharedPromptBatch` describes and
:mod:`slpo_jax.shared_prompt` reads.

A pair that paired rows give ``2 (P + max(Lw, Ll))`` positions takes
``P + Lw + Ll`` here; the load report gives both layouts' shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from train import batch as batch_lib
from train.data import row_packing
from train.data.batching import Weighted


def shared_span(pair) -> int:
  """Positions a pair takes in a shared-prompt row."""
  return len(pair.prompt) + len(pair.chosen) + len(pair.rejected)


def layout_shape(
  shares: Sequence[Sequence[Weighted]],
  packed_length: int,
  row_multiple: int = 1,
) -> tuple[int, int]:
  """``(R, S)`` for the hosts' shares, as ``row_packing.layout_shape``."""
  rows, slots, limit = 1, 1, 1
  for share in shares:
    spans = [shared_span(pair) for pair in row_packing._real(share)]
    layout = row_packing.first_fit_decreasing(spans, packed_length)
    rows = max(rows, len(layout))
    slots = max([slots] + [len(row) for row in layout])
    limit = max(limit, len(share))
  return (
    row_packing._row_count(rows, limit, row_multiple),
    row_packing._power_of_two_at_least(slots, limit),
  )


def pack_shared(
  entries: Sequence[Weighted],
  *,
  packed_length: int,
  pad_id: int,
  num_rows: int,
  num_slots: int,
) -> batch_lib.SharedPromptBatch:
  """Packs weighted ``TokenizedPair``s into ``num_rows`` shared-prompt rows."""
  pairs = row_packing._real(entries)
  weights = [weight for _, weight in entries if weight > 0]
  spans = [shared_span(pair) for pair in pairs]
  layout = row_packing.first_fit_decreasing(spans, packed_length)
  if len(layout) > num_rows or any(len(row) > num_slots for row in layout):
    raise ValueError(f"{len(pairs)} pairs do not fit {num_rows} rows")
  shape = [num_rows, packed_length]
  batch = {
    name: np.zeros(shape, batch_lib.DTYPES[name])
    for name in batch_lib.SHARED_TOKEN_FIELDS
  }
  batch["input_ids"][:] = pad_id
  batch["prompt_ends"] = np.zeros([num_rows, num_slots], np.int32)
  batch["pair_example_weight"] = np.zeros([num_rows, num_slots], np.float32)
  batch["pair_example_id"] = np.full([num_rows, num_slots], -1, np.int32)
  for r, members in enumerate(layout):
    offset = 0
    for s, i in enumerate(members):
      _place(batch, r, s, offset, pairs[i], packed_length)
      batch["pair_example_weight"][r, s] = weights[i]
      offset += spans[i]
  return batch_lib.shared_prompt(batch)


def _place(batch, r: int, s: int, offset: int, pair, length: int) -> None:
  """Pair ``pair`` as segment ``s + 1`` of row ``r`` from ``offset``."""
  prompt, chosen, rejected = pair.prompt, pair.chosen, pair.rejected
  p, lw, ll = len(prompt), len(chosen), len(rejected)
  row = slice(offset, offset + p + lw + ll)
  batch["segment_ids"][r, row] = s + 1
  batch["input_ids"][r, row] = np.concatenate([prompt, chosen, rejected])
  batch["positions"][r, row] = np.concatenate(
    [np.arange(p), p + np.arange(lw), p + np.arange(ll)]
  )
  batch["branch_ids"][r, row] = np.repeat([0, 1, 2], [p, lw, ll])
  # Each position's next token within its branch: the prompt continues into
  # the chosen response; a response's last token predicts nothing here.
  chosen_start, rejected_start = offset + p, offset + p + lw
  batch["labels"][r, offset : chosen_start - 1] = prompt[1:]
  batch["labels"][r, chosen_start - 1 : rejected_start - 1] = chosen
  batch["labels"][r, rejected_start : rejected_start + ll - 1] = rejected[1:]
  # The step axis: step j of both responses at the prompt's end + j.
  end = chosen_start - 1
  batch["prompt_ends"][r, s] = end
  batch["pair_example_id"][r, s] = pair.example_id
  batch["chosen_loss_mask"][r, end : end + lw] = True
  batch["rejected_labels"][r, end : end + ll] = rejected
  batch["rejected_loss_mask"][r, end : end + ll] = True
  # y_l's step 0 comes from the prompt's end evaluated again (index T + s),
  # step j >= 1 from its token j - 1.
  batch["rejected_source"][r, end] = length + s
  batch["rejected_source"][r, end + 1 : end + ll] = rejected_start + np.arange(
    ll - 1
  )


def shared_collate(
  *,
  packed_length: int,
  pad_id: int,
  shard_index: int,
  shard_count: int,
  row_multiple: int = 1,
):
  """``row_packing.packed_collate`` for shared-prompt rows."""
  return row_packing.packed_collate(
    packed_length=packed_length,
    pad_id=pad_id,
    shard_index=shard_index,
    shard_count=shard_count,
    row_multiple=row_multiple,
    pack=pack_shared,
    layout=layout_shape,
  )


def position_shares(
  pairs: Sequence,
  *,
  batch_size: int,
  packed_length: int,
  row_multiple: int = 1,
) -> tuple[float, float]:
  """``(real-token share of the shared rows, positions saved)``.

  The real-token share counts the rows' tokens (each prompt once) over
  their positions; the saving is one minus the shared rows' positions over
  those of the paired rows (``row_packing``) of the same batches, both
  measured as ``row_packing.real_token_fractions`` measures.
  """
  real = shared = paired = 0
  for start in range(0, len(pairs), batch_size):
    chunk = [(p, 1.0) for p in pairs[start : start + batch_size]]
    real += sum(shared_span(p) for p, _ in chunk)
    rows, _ = layout_shape([chunk], packed_length, row_multiple)
    shared += rows * packed_length
    rows, _ = row_packing.layout_shape([chunk], packed_length, row_multiple)
    paired += 2 * rows * packed_length
  return real / max(shared, 1), 1.0 - shared / max(paired, 1)

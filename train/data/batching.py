"""Batches with static shapes, and a checkpointable iterator over them.

Length buckets: a batch is padded to the smallest bucket in ``length_buckets``
that fits its longest sequence, so jit compiles one program per bucket. We pad
every pair of a batch to the batch's bucket instead of grouping pairs by
bucket: batches stay plain random-access slices of a shuffled index, so the
iterator position is one integer (exact resumption is trivial and cheap), the
order does not depend on lengths, and each batch is an unbiased sample of the
data. The price is more padding when short and long pairs mix in one batch.

Order, shuffling, sharding and the saved position come from grain:
``MapDataset.source(...)[shard_index::shard_count]`` gives each host a disjoint
strided share, ``.shuffle(seed).repeat()`` reshuffles every epoch from the seed,
and the iterator's state is the index of the next batch. ``BatchIterator`` is a
``grain.DatasetIterator``, so orbax saves it with grain's checkpoint handler
(``grain.checkpoint.CheckpointSave(iterator)``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np

from train import batch as batch_lib
from train.data.report import DataError
from train.data.report import DataReport

# Named arrays: a supervised batch, or a preference batch's before typing.
Arrays = dict[str, np.ndarray]
Batch = batch_lib.Batch | Arrays
# An element of the batched dataset: an example and its weight (0 for the
# padding rows that fill the last evaluation batch).
Weighted = tuple[Any, float]

# Background threads that collate batches ahead of the training step.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds ``length`` tokens."""
  for bucket in sorted(buckets):
    if length <= bucket:
      return bucket
  raise DataError(
    f"a sequence of {length} tokens fits no length bucket {sorted(buckets)}"
  )


def _fill(
  side: str,
  sequences: Sequence[tuple[np.ndarray, int]],
  length: int,
  pad_id: int,
) -> Arrays:
  """Right-padded next-token arrays for (tokens, first_loss_label) rows."""
  rows = len(sequences)
  input_ids = np.full([rows, length], pad_id, np.int32)
  attention_mask = np.zeros([rows, length], np.int32)
  labels = np.zeros([rows, length], np.int32)
  loss_mask = np.zeros([rows, length], bool)
  for i, (tokens, first_label) in enumerate(sequences):
    n = len(tokens)
    input_ids[i, :n] = tokens
    attention_mask[i, :n] = 1
    # labels[t] = input_ids[t + 1]; the last label and padding labels stay 0.
    labels[i, : n - 1] = tokens[1:]
    loss_mask[i, first_label : n - 1] = True
  return {
    f"{side}input_ids": input_ids,
    f"{side}attention_mask": attention_mask,
    f"{side}labels": labels,
    f"{side}loss_mask": loss_mask,
  }


def _weights_and_ids(entries: Sequence[Weighted]) -> Arrays:
  return {
    "example_weight": np.asarray([w for _, w in entries], np.float32),
    "example_id": np.asarray([e.example_id for e, _ in entries], np.int32),
  }


def collate_pairs(
  entries: Sequence[Weighted], *, buckets: Sequence[int], pad_id: int
) -> batch_lib.PaddedBatch:
  """Stacks weighted ``TokenizedPair``s into a preference batch.

  Returns:
    A :class:`train.batch.PaddedBatch`: ``chosen_`` and ``rejected_``
    ``input_ids``, ``attention_mask``, ``labels`` (int32) and ``loss_mask``
    (bool), all ``[B, T]`` with T the batch's bucket; ``example_weight``
    ``[B]`` float32 and ``example_id`` ``[B]`` int32. The loss mask is True where the label is a response token:
    from the label at the last prompt position to the label at the
    second-to-last token.
  """
  length = bucket_length(max(pair.length for pair, _ in entries), buckets)
  batch = _weights_and_ids(entries)
  for side in ("chosen", "rejected"):
    sequences = []
    for pair, _ in entries:
      tokens = np.concatenate([pair.prompt, getattr(pair, side)])
      sequences.append((tokens, len(pair.prompt) - 1))
    batch.update(_fill(f"{side}_", sequences, length, pad_id))
  return batch_lib.padded(batch)


@dataclasses.dataclass(frozen=True)
class TokenSequence:
  """One sequence for supervised fine-tuning: BOS, then the text's tokens."""

  example_id: int
  tokens: np.ndarray

  @property
  def length(self) -> int:
    return len(self.tokens)


def collate_sequences(
  entries: Sequence[Weighted], *, buckets: Sequence[int], pad_id: int
) -> Arrays:
  """Stacks weighted ``TokenSequence``s into a supervised batch.

  Returns:
    ``input_ids``, ``attention_mask``, ``labels``, ``loss_mask`` ``[B, T]``
    (every token after BOS is a label in the loss), ``example_weight``,
    ``example_id``.
  """
  length = bucket_length(max(seq.length for seq, _ in entries), buckets)
  batch = _weights_and_ids(entries)
  batch.update(_fill("", [(s.tokens, 0) for s, _ in entries], length, pad_id))
  return batch


class BatchIterator(grain.DatasetIterator):
  """An iterator of batches whose position can be saved and restored.

  ``get_state()`` returns a small JSON-serialisable dict: the grain position
  plus what the position means (dataset fingerprint, seed, batch size,
  shard). ``set_state`` refuses a state saved for different data or settings,
  since resuming there would silently replay different batches.

  Attributes:
    fingerprint: hash of the tokenized dataset (see ``encode.fingerprint``).
    report: what loading the data did.
    num_examples: examples in the dataset (all shards).
    num_shard_examples: examples this host iterates over per epoch.
    num_batches: batches in one pass (evaluation); None when repeating.
  """

  def __init__(
    self,
    batches: grain.MapDataset,
    *,
    identity: dict[str, Any],
    report: DataReport,
    num_examples: int,
    num_shard_examples: int,
    num_batches: int | None,
  ):
    super().__init__(batches.to_iter_dataset(_READ_OPTIONS).__iter__())
    self._identity = identity
    self.fingerprint: str = identity["fingerprint"]
    self.report = report
    self.num_examples = num_examples
    self.num_shard_examples = num_shard_examples
    self.num_batches = num_batches

  def __next__(self) -> Batch:
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    return {"position": self._parent.get_state(), **self._identity}

  def set_state(self, state: dict[str, Any]) -> None:
    changed = sorted(
      key for key, value in self._identity.items() if state.get(key) != value
    )
    if changed:
      details = ", ".join(
        f"{key}: saved {state.get(key)!r}, now {self._identity[key]!r}"
        for key in changed
      )
      raise DataError(
        f"cannot resume the data iterator: the data or its settings changed "
        f"since the state was saved ({details})"
      )
    self._parent.set_state(state["position"])


def make_batch_iterator(
  examples: Sequence[Any],
  collate: Callable[[Sequence[Weighted]], Batch],
  *,
  batch_size: int,
  seed: int,
  shard_index: int,
  shard_count: int,
  repeat: bool,
  fingerprint: str,
  report: DataReport,
  collate_selects_rows: bool = False,
  identity_extra: dict[str, Any] | None = None,
) -> BatchIterator:
  """Batches ``examples`` for one host.

  Args:
    examples: the whole dataset (every host passes the same list).
    collate: stacks a list of ``(example, weight)`` into a batch.
    batch_size: examples per batch on this host.
    seed: shuffling seed (training); the order is a pure function of it.
    shard_index: this host's index, in [0, shard_count).
    shard_count: number of hosts; host i keeps rows
      ``[i * batch_size, (i + 1) * batch_size)`` of every global batch.
    repeat: True for training (shuffled, endless, batches may span epochs);
      False for evaluation (one pass in order; the last batch is filled with
      rows of weight 0, and every host yields the same number of batches so
      collective evaluation steps stay in lockstep).
    fingerprint: dataset hash, stored in the iterator state.
    report: the loading report, attached to the iterator.
    collate_selects_rows: ``collate`` is given the whole global batch and
      returns this host's batch itself (packed batches, whose rows are not
      one per example); False: this host's rows are cut from its result.
    identity_extra: more settings the saved position means (e.g. packing),
      checked on resumption like the others.
  """
  if batch_size < 1:
    raise DataError(f"batch_size must be positive, got {batch_size}")
  if not 0 <= shard_index < shard_count:
    raise DataError(f"shard_index {shard_index} not in [0, {shard_count})")
  if not examples:
    raise DataError(f"{report.source}: the {report.split} split is empty")
  if len(examples) < shard_count:
    raise DataError(
      f"{report.source}: {len(examples)} {report.split} examples cannot "
      f"be sharded over {shard_count} hosts"
    )
  identity = dict(
    fingerprint=fingerprint,
    seed=seed,
    batch_size=batch_size,
    shard_index=shard_index,
    shard_count=shard_count,
    repeat=repeat,
    **(identity_extra or {}),
  )
  # Every host forms the same global batch (all hosts shuffle with the same
  # seed) and keeps its own rows of it. The global batches, and so the
  # losses, are then the same for any number of hosts, and every host pads
  # to the same bucket, which the global arrays need.
  global_size = batch_size * shard_count
  first_row = shard_index * batch_size

  def collate_own_rows(entries):
    batch = collate(entries)
    if collate_selects_rows:
      return batch
    # A dict of arrays or a typed batch: every array's rows alike.
    return jax.tree.map(lambda v: v[first_row : first_row + batch_size], batch)

  if repeat:
    batches = (
      grain.MapDataset.source(examples)
      .shuffle(seed=seed)
      .repeat()
      .map(lambda e: (e, 1.0))
      .batch(global_size, drop_remainder=True, batch_fn=collate_own_rows)
    )
    num_batches = None
  else:
    # Filler rows copy a real example (so every loss stays finite) and keep
    # its example_id (so a cache indexed by id is still written correctly);
    # their weight is 0.
    num_batches = math.ceil(len(examples) / global_size)
    rows = [(e, 1.0) for e in examples]
    rows += [(examples[0], 0.0)] * (num_batches * global_size - len(rows))
    batches = grain.MapDataset.source(rows).batch(
      global_size, batch_fn=collate_own_rows
    )
  num_shard_examples = len(examples) // shard_count
  return BatchIterator(
    batches,
    identity=identity,
    report=report,
    num_examples=len(examples),
    num_shard_examples=num_shard_examples,
    num_batches=num_batches,
  )

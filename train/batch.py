"""What a batch of preference pairs is: the pipeline makes one, the step
reads it.

Two layouts share the token arrays, ``chosen_*`` and ``rejected_*``, each
``[rows, length]``:

* :class:`PaddedBatch` (the default): one right-padded row per pair and
  side; per-pair values are ``[B]``.
* :class:`PackedBatch` (``data.packing``): several pairs per row, marked by
  ``segment_ids`` (1..S, 0 after the last pair) and ``positions`` (from 0
  at each pair's start); per-pair values are ``[R, S]``, one per pair slot,
  with weight 0 and id -1 in empty slots.

* :class:`SharedPromptBatch` (``data.share_prompt`` with ``data.packing``):
  one block of rows, each pair one segment holding its prompt once, then
  the chosen response, then the rejected one (branches 0, 1, 2), with the
  two responses' labels on one step axis (:mod:`slpo_jax.shared_prompt`);
  per-pair values ``[R, S]`` as packed.

KTO's unpaired records have their own class, :class:`UnpairedBatch`: one
completion row per record and one mismatched row (the record's prompt with
another record's completion) for the reference point.

Both are pytrees (``flax.struct``), so the same object is a host batch of
NumPy arrays, a global batch of sharded ``jax.Array`` and, for
``train.aot``, a batch of ``jax.ShapeDtypeStruct`` (:func:`abstract`).
Every field has one dtype, :data:`DTYPES`, wherever a batch is made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

SIDES = ("chosen", "rejected")
# The token arrays of one side, [rows, length].
TOKEN_FIELDS = ("input_ids", "attention_mask", "labels", "loss_mask")

DTYPES: dict[str, Any] = {
  **{
    f"{side}_{name}": np.int32
    for side in SIDES
    for name in TOKEN_FIELDS
    if name != "loss_mask"
  },
  "chosen_loss_mask": np.bool_,
  "rejected_loss_mask": np.bool_,
  "example_weight": np.float32,
  "example_id": np.int32,
  "segment_ids": np.int32,
  "positions": np.int32,
  "pair_example_weight": np.float32,
  "pair_example_id": np.int32,
  "reference_chosen_logps": np.float32,
  "reference_rejected_logps": np.float32,
  **{
    f"{rows}_{name}": np.int32
    for rows in ("completion", "kl")
    for name in TOKEN_FIELDS
    if name != "loss_mask"
  },
  "completion_loss_mask": np.bool_,
  "kl_loss_mask": np.bool_,
  "desirable": np.bool_,
  "pair_id": np.int32,
  # Shared-prompt rows.
  "input_ids": np.int32,
  "branch_ids": np.int32,
  "labels": np.int32,
  "rejected_source": np.int32,
  "prompt_ends": np.int32,
}
# The [R, T] arrays of a shared-prompt batch.
SHARED_TOKEN_FIELDS = (
  "input_ids",
  "segment_ids",
  "positions",
  "branch_ids",
  "labels",
  "chosen_loss_mask",
  "rejected_labels",
  "rejected_loss_mask",
  "rejected_source",
)


@flax.struct.dataclass
class _Pairs:
  """The token arrays both layouts have, ``[rows, length]`` per side, and
  what both answer."""

  chosen_input_ids: Any
  chosen_attention_mask: Any
  chosen_labels: Any
  chosen_loss_mask: Any
  rejected_input_ids: Any
  rejected_attention_mask: Any
  rejected_labels: Any
  rejected_loss_mask: Any

  packed = False
  shares_prompt = False

  def side(self, side: str) -> tuple[Any, Any, Any, Any]:
    """``(input_ids, attention_mask, labels, loss_mask)`` of one side."""
    return tuple(getattr(self, f"{side}_{name}") for name in TOKEN_FIELDS)

  def pair_weights(self):
    """The example weight of every pair, one axis of pairs."""
    raise NotImplementedError

  def pair_ids(self):
    """The example id of every pair, one axis of pairs (as pair_weights)."""
    raise NotImplementedError

  @property
  def per_pair_shape(self) -> tuple[int, ...]:
    """The shape of a per-pair value: ``[B]``, or ``[R, S]`` packed."""
    raise NotImplementedError

  def with_reference(self, chosen, rejected):
    """The batch with precomputed reference log-probs (per-pair shape)."""
    return self.replace(
      reference_chosen_logps=chosen, reference_rejected_logps=rejected
    )

  def count_tokens(self) -> int:
    """Real (non-padding) tokens of both sides, on the host."""
    return int(
      np.sum(self.chosen_attention_mask) + np.sum(self.rejected_attention_mask)
    )

  def real_tokens(self):
    """:meth:`count_tokens` inside a jitted step (a jnp scalar)."""
    return jnp.sum(self.chosen_attention_mask) + jnp.sum(
      self.rejected_attention_mask
    )

  def filled_positions(self):
    """``(positions holding a token, positions computed)`` (jnp, int)."""
    return self.real_tokens(), 2 * self.chosen_attention_mask.size

  def arrays(self) -> dict[str, Any]:
    """The batch's arrays by field name (precomputed values if present)."""
    return {
      field.name: getattr(self, field.name)
      for field in dataclasses.fields(self)
      if getattr(self, field.name) is not None
    }


@flax.struct.dataclass
class PaddedBatch(_Pairs):
  """One right-padded row per pair and side, ``[B, T]``."""

  example_weight: Any  # [B]; 0 for rows that pad the last eval batch.
  example_id: Any  # [B]
  reference_chosen_logps: Any = None  # [B], with reference.mode=precomputed.
  reference_rejected_logps: Any = None

  def pair_weights(self):
    return self.example_weight

  def pair_ids(self):
    return self.example_id

  @property
  def per_pair_shape(self) -> tuple[int, ...]:
    return tuple(np.shape(self.example_weight))


@flax.struct.dataclass
class PackedBatch(_Pairs):
  """Several pairs per row, ``[R, T]``; per-pair values ``[R, S]``."""

  segment_ids: Any  # [R, T], the same for both sides.
  positions: Any  # [R, T]
  pair_example_weight: Any  # [R, S]; 0 in empty slots.
  pair_example_id: Any  # [R, S]; -1 in empty slots.
  reference_chosen_logps: Any = None  # [R, S]
  reference_rejected_logps: Any = None

  packed = True

  def pair_weights(self):
    return self.pair_example_weight.reshape(-1)

  def pair_ids(self):
    return self.pair_example_id.reshape(-1)

  @property
  def per_pair_shape(self) -> tuple[int, ...]:
    return tuple(np.shape(self.pair_example_weight))


@flax.struct.dataclass
class SharedPromptBatch:
  """Pairs as prompt + chosen + rejected segments of one block of rows.

  ``[R, T]`` (see :func:`slpo_jax.shared_prompt.pair_stats_from_shared_hidden`
  for the step axis): ``input_ids``, ``segment_ids`` (1..S, 0 after the
  last pair), ``positions`` (0..P-1 on a prompt, from P again on each
  response), ``branch_ids`` (0 prompt, 1 chosen, 2 rejected), ``labels``
  (each position's next token in its branch; on the step axis the chosen
  labels), ``chosen_loss_mask``, ``rejected_labels``,
  ``rejected_loss_mask``, ``rejected_source``; ``[R, S]``: ``prompt_ends``,
  ``pair_example_weight``, ``pair_example_id`` and the optional reference
  log-probs.
  """

  input_ids: Any
  segment_ids: Any
  positions: Any
  branch_ids: Any
  labels: Any
  chosen_loss_mask: Any
  rejected_labels: Any
  rejected_loss_mask: Any
  rejected_source: Any
  prompt_ends: Any
  pair_example_weight: Any
  pair_example_id: Any
  reference_chosen_logps: Any = None
  reference_rejected_logps: Any = None

  packed = True
  shares_prompt = True

  pair_weights = PackedBatch.pair_weights
  pair_ids = PackedBatch.pair_ids
  per_pair_shape = PackedBatch.per_pair_shape
  with_reference = _Pairs.with_reference
  arrays = _Pairs.arrays

  def count_tokens(self) -> int:
    """The tokens the pairs have in paired rows (the prompt twice), on the
    host: the measure the other layouts and TRL count."""
    real = np.asarray(self.segment_ids) > 0
    return int(np.sum(real) + np.sum(real & (np.asarray(self.branch_ids) == 0)))

  def real_tokens(self):
    """:meth:`count_tokens` inside a jitted step."""
    real = self.segment_ids > 0
    return jnp.sum(real) + jnp.sum(real & (self.branch_ids == 0))

  def filled_positions(self):
    """``(positions holding a token, positions computed)``: one block."""
    return jnp.sum(self.segment_ids > 0), self.segment_ids.size


Batch = PaddedBatch | PackedBatch | SharedPromptBatch


def _typed(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {
    name: np.asarray(value, DTYPES[name]) for name, value in arrays.items()
  }


def padded(arrays: Mapping[str, Any]) -> PaddedBatch:
  """A host :class:`PaddedBatch` from its named arrays, in their dtypes."""
  return PaddedBatch(**_typed(arrays))


def packed(arrays: Mapping[str, Any]) -> PackedBatch:
  """A host :class:`PackedBatch` from its named arrays, in their dtypes."""
  return PackedBatch(**_typed(arrays))


def shared_prompt(arrays: Mapping[str, Any]) -> SharedPromptBatch:
  """A host :class:`SharedPromptBatch` from its named arrays."""
  return SharedPromptBatch(**_typed(arrays))


def abstract(
  *,
  rows: int,
  length: int,
  sharding: Any = None,
  slots: int = 0,
  with_reference: bool = False,
  share_prompt: bool = False,
) -> Batch:
  """A global batch of ``jax.ShapeDtypeStruct``: padded, or packed when
  ``slots`` (pair slots per row) is given, shared-prompt rows with
  ``share_prompt`` too."""

  def shaped(name: str, shape: tuple[int, ...]):
    return jax.ShapeDtypeStruct(shape, DTYPES[name], sharding=sharding)

  tokens = {
    f"{side}_{name}": shaped(f"{side}_{name}", (rows, length))
    for side in SIDES
    for name in TOKEN_FIELDS
  }
  per_pair = (rows, slots) if slots else (rows,)
  reference = {}
  if with_reference:
    reference = {
      f"reference_{side}_logps": shaped(f"reference_{side}_logps", per_pair)
      for side in SIDES
    }
  if share_prompt:
    return SharedPromptBatch(
      **{name: shaped(name, (rows, length)) for name in SHARED_TOKEN_FIELDS},
      prompt_ends=shaped("prompt_ends", per_pair),
      pair_example_weight=shaped("pair_example_weight", per_pair),
      pair_example_id=shaped("pair_example_id", per_pair),
      **reference,
    )
  if not slots:
    return PaddedBatch(
      **tokens,
      example_weight=shaped("example_weight", per_pair),
      example_id=shaped("example_id", per_pair),
      **reference,
    )
  return PackedBatch(
    **tokens,
    segment_ids=shaped("segment_ids", (rows, length)),
    positions=shaped("positions", (rows, length)),
    pair_example_weight=shaped("pair_example_weight", per_pair),
    pair_example_id=shaped("pair_example_id", per_pair),
    **reference,
  )


@flax.struct.dataclass
class UnpairedBatch:
  """KTO's unpaired records, one right-padded row each, ``[B, T]``.

  ``completion_*`` is each record's prompt and completion; ``kl_*`` the
  same prompt with the completion of the record before it in the batch
  (the first takes the last one's), the mismatched pairs whose log-ratio
  estimates KTO's reference point, as TRL builds them.
  """

  completion_input_ids: Any
  completion_attention_mask: Any
  completion_labels: Any
  completion_loss_mask: Any
  kl_input_ids: Any
  kl_attention_mask: Any
  kl_labels: Any
  kl_loss_mask: Any
  desirable: Any  # [B] bool: the record's label.
  pair_id: Any  # [B]: the pair a split pair's record came from, else -1.
  example_weight: Any  # [B]; 0 for rows that pad the last eval batch.
  example_id: Any  # [B]

  packed = False

  def as_rows(self) -> PaddedBatch:
    """The rows as the pair head reads them: the completions as the
    ``chosen`` side, the mismatched rows as the ``rejected`` side."""
    return PaddedBatch(
      *(getattr(self, f"completion_{name}") for name in TOKEN_FIELDS),
      *(getattr(self, f"kl_{name}") for name in TOKEN_FIELDS),
      example_weight=self.example_weight,
      example_id=self.example_id,
    )

  def pair_weights(self):
    return self.example_weight

  def pair_ids(self):
    return self.example_id

  def real_tokens(self):
    """The records' own tokens, not the mismatched rows'."""
    return self.completion_attention_mask.sum()

  @property
  def per_pair_shape(self) -> tuple[int, ...]:
    return tuple(np.shape(self.example_weight))

  def count_tokens(self) -> int:
    """Real tokens of the completion rows, on the host."""
    return int(np.sum(self.completion_attention_mask))

  def arrays(self) -> dict[str, Any]:
    return {
      field.name: getattr(self, field.name)
      for field in dataclasses.fields(self)
    }


def unpaired(arrays: Mapping[str, Any]) -> UnpairedBatch:
  """A host :class:`UnpairedBatch` from its named arrays, in their dtypes."""
  return UnpairedBatch(**_typed(arrays))


def abstract_unpaired(
  *, rows: int, length: int, sharding: Any = None
) -> UnpairedBatch:
  """A global :class:`UnpairedBatch` of ``jax.ShapeDtypeStruct``."""

  def shaped(name: str, shape: tuple[int, ...]):
    return jax.ShapeDtypeStruct(shape, DTYPES[name], sharding=sharding)

  fields = {
    f"{side}_{name}": shaped(f"{side}_{name}", (rows, length))
    for side in ("completion", "kl")
    for name in TOKEN_FIELDS
  }
  for name in ("desirable", "pair_id", "example_weight", "example_id"):
    fields[name] = shaped(name, (rows,))
  return UnpairedBatch(**fields)

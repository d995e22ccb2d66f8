"""The statistics of shared-prompt rows (``data.share_prompt``).

One pass of the model over rows whose segments hold a prompt once and both
responses on branches (:class:`train.batch.SharedPromptBatch`), then the
head on the step axis of :mod:`slpo_jax.shared_prompt`.
"""

from __future__ import annotations

import jax

import slpo_jax
from slpo_jax import packing
from slpo_jax import sharding
from slpo_jax import shared_prompt

_BATCH = jax.sharding.PartitionSpec(sharding.BATCH_AXES)
_REPLICATED = jax.sharding.PartitionSpec()


def shared_prompt_stats(
  model, params, batch, *, pair_values, head, mesh
) -> slpo_jax.PairStats:
  """:func:`train.objective.batch_stats` of a :class:`train.batch.SharedPromptBatch`: one
  pass over the rows with branches, the head on the step axis
  (:mod:`slpo_jax.shared_prompt`)."""
  num_segments = batch.per_pair_shape[1]
  hidden, lm_head = model.hidden_states(
    params,
    batch.input_ids,
    segment_ids=batch.segment_ids,
    positions=batch.positions,
    branch_ids=batch.branch_ids,
  )

  def head_fn(hidden, lm_head, *rows):
    labels, rejected_labels, where_w, where_l, source, ends, segments = rows
    return shared_prompt.pair_stats_from_shared_hidden(
      hidden,
      lm_head,
      labels,
      rejected_labels,
      chosen_where=where_w,
      rejected_where=where_l,
      rejected_source=source,
      prompt_ends=ends,
      segment_ids=segments,
      num_segments=num_segments,
      pair_values=pair_values,
      head=head,
    )

  if (
    mesh is not None
    and head.fused
    and mesh.shape["data"] * mesh.shape["fsdp"] > 1
  ):
    # Each device's own rows, as ``objective`` runs the head for the other layouts.
    head_fn = jax.shard_map(
      head_fn,
      mesh=mesh,
      in_specs=(_BATCH, _REPLICATED) + (_BATCH,) * 7,
      out_specs=_BATCH,
      check_vma=False,
    )
  stats = head_fn(
    hidden,
    lm_head,
    batch.labels,
    batch.rejected_labels,
    batch.chosen_loss_mask,
    batch.rejected_loss_mask,
    batch.rejected_source,
    batch.prompt_ends,
    batch.segment_ids,
  )
  stats = packing.pairs_first(stats)
  return stats._replace(counted=stats.counted & (batch.pair_weights() > 0))

"""The program's one path from a batch of pairs to its loss and metrics.

batch -> ``model.hidden_states`` once, chosen and rejected rows stacked ->
the library's loss head (:func:`slpo_jax.pair_stats_from_hidden`, fused or
plain) -> the loss table (:data:`slpo_jax.losses.LOSSES`) -> example-weighted
sums. The loss math is all in :mod:`slpo_jax`; this module routes arrays.

A :class:`train.batch.PackedBatch` (``data.packing``) holds several pairs
per row, marked by ``segment_ids`` and ``positions``; its per-pair
statistics come out ``[R, S]`` and are flattened to one axis of ``R * S``
pairs, weighted by ``pair_example_weight``, so the losses and sums below see
a batch of pairs either way.

The loss a config names is built once, as a :class:`Loss` (its table terms
and their hyperparameters); no config section reaches a jitted function.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

import slpo_jax
from slpo_jax import losses
from slpo_jax import packing
from slpo_jax import sharding
from train import objective_kto
from train import objective_shared
from train.batch import Batch
from train.batch import UnpairedBatch

_BATCH = jax.sharding.PartitionSpec(sharding.BATCH_AXES)
_REPLICATED = jax.sharding.PartitionSpec()


@dataclasses.dataclass(frozen=True)
class Loss:
  """The loss of ``config.loss``, built: its terms and hyperparameters.

  Attributes:
    terms: the weighted table entries (:func:`slpo_jax.losses.weighted_loss`).
    hparams: the hyperparameters the terms read, by name.
    beta: the metrics' reward scale (``config.loss.beta``).
  """

  terms: losses.WeightedLoss
  hparams: tuple[tuple[str, Any], ...]
  beta: float

  unpaired = False  # Reads pairs (KTO's objective_kto.KtoLoss: records).

  @property
  def needs_reference(self) -> bool:
    return self.terms.needs_reference

  @property
  def needs_reference_tokens(self) -> bool:
    return self.terms.needs_reference_tokens

  def initial_state(self) -> Any:
    """The loss state before training; None if no term has one."""
    return self.terms.initial_state() or None

  @property
  def ld_alpha(self) -> float | None:
    """LD-DPO's tail weight, which a cached reference is computed with."""
    return self.terms.options.ld_alpha

  def apply(self, policy, reference, loss_state):
    """``(per-term per-example losses, new loss state)``."""
    return self.terms.apply(policy, reference, loss_state, **dict(self.hparams))


def dpo_options(loss_config: Any) -> losses.DpoOptions:
  """TRL's ``use_weighting``, ``ld_alpha`` and ``f_divergence_type`` of
  ``config.loss`` (``ld_alpha = 1``, the whole tail counted, is TRL's None).
  """
  ld_alpha = float(loss_config.ld_alpha)
  return losses.DpoOptions(
    use_weighting=bool(loss_config.use_weighting),
    ld_alpha=None if ld_alpha == 1.0 else ld_alpha,
    f_divergence_type=loss_config.f_divergence_type,
    f_alpha_divergence_coef=float(loss_config.f_alpha_divergence_coef),
  )


def build_loss(loss_config: Any) -> Loss | objective_kto.KtoLoss:
  """The loss ``config.loss`` names: one table name, or several joined by
  commas with ``config.loss.weights`` (empty: weight 1 each), under the
  options of :func:`dpo_options`; or ``kto``, the loss of unpaired records
  (:mod:`train.objective_kto`).

  Raises:
    ValueError: an unknown name, weights that do not match the names, or
      options the losses do not take.
  """
  if loss_config.name.strip() == objective_kto.NAME:
    return objective_kto.build(loss_config)
  names = [name.strip() for name in loss_config.name.split(",")]
  terms = losses.weighted_loss(
    names, loss_config.weights, dpo_options(loss_config)
  )
  hparams = tuple((name, loss_config[name]) for name in terms.hparams)
  return Loss(terms=terms, hparams=hparams, beta=float(loss_config.beta))


def _head_per_shard(
  head_fn, mesh: jax.sharding.Mesh | None, fused: bool, packed: bool = False
):
  """``head_fn`` run on each device's own rows, when the batch is split.

  The fused head walks the flattened tokens tile by tile; under plain jit
  that walk over a batch-sharded axis makes XLA gather every device's
  hidden states, so each device would run the head on the whole global
  batch. Under ``shard_map`` each device walks only its rows (the output
  projection is gathered, as the matmul needs it whole anyway).
  """
  if mesh is None or not fused:
    return head_fn
  if mesh.shape["data"] * mesh.shape["fsdp"] == 1:
    return head_fn
  rows = (_BATCH, _BATCH, _REPLICATED, _BATCH, _BATCH, _BATCH, _BATCH)
  rows += (_BATCH,) * packed  # The pair segments of packed rows.
  return jax.shard_map(
    head_fn, mesh=mesh, in_specs=rows, out_specs=_BATCH, check_vma=False
  )


def batch_stats(
  model: Any,
  params: Any,
  batch: Batch,
  *,
  pair_values: bool,
  head: slpo_jax.HeadOptions,
  mesh: jax.sharding.Mesh | None = None,
) -> slpo_jax.PairStats:
  """The statistics of ``model`` with ``params`` on a batch of the pipeline.

  Args:
    model: an object with ``hidden_states(params, ids, mask) -> (hidden,
      lm_head)`` (and ``segment_ids=``, ``positions=`` for packed batches).
    params: the model's parameters.
    batch: the data pipeline's batch, padded or packed.
    pair_values: compute the pair complement and the token values too.
    head: fused or plain per-token computation.
    mesh: the mesh the batch is split over; the fused head then runs on
      each device's rows (None: one device, or no split).

  Returns:
    The :class:`slpo_jax.PairStats` of the batch, per pair (``[R * S]``
    pair slots for a packed batch).
  """
  if batch.shares_prompt:
    return objective_shared.shared_prompt_stats(
      model, params, batch, pair_values=pair_values, head=head, mesh=mesh
    )
  n = batch.chosen_input_ids.shape[0]
  # One forward pass over the chosen and rejected rows together.
  ids = jnp.concatenate([batch.chosen_input_ids, batch.rejected_input_ids])
  mask = jnp.concatenate(
    [batch.chosen_attention_mask, batch.rejected_attention_mask]
  )
  packed = batch.packed
  num_segments = None
  if packed:
    num_segments = batch.per_pair_shape[1]
    # The model sees each row's own padding (the shorter response's tail
    # inside a pair's segment) as segment 0.
    hidden, lm_head = model.hidden_states(
      params,
      ids,
      segment_ids=jnp.concatenate([batch.segment_ids] * 2) * mask,
      positions=jnp.concatenate([batch.positions] * 2),
    )
  else:
    hidden, lm_head = model.hidden_states(params, ids, mask)

  def head_fn(
    chosen, rejected, lm_head, labels_w, labels_l, where_w, where_l, *segments
  ):
    return slpo_jax.pair_stats_from_hidden(
      chosen,
      rejected,
      lm_head,
      labels_w,
      labels_l,
      chosen_where=where_w,
      rejected_where=where_l,
      pair_values=pair_values,
      head=head,
      segment_ids=segments[0] if segments else None,
      num_segments=num_segments,
    )

  segments = (batch.segment_ids,) if packed else ()
  stats = _head_per_shard(head_fn, mesh, head.fused, packed)(
    hidden[:n],
    hidden[n:],
    lm_head,
    batch.chosen_labels,
    batch.rejected_labels,
    batch.chosen_loss_mask,
    batch.rejected_loss_mask,
    *segments,
  )
  if packed:
    stats = packing.pairs_first(stats)
  # Padding rows (weight 0, copies of a real pair) do not count either.
  return stats._replace(counted=stats.counted & (batch.pair_weights() > 0))


def reference_stats(
  model: Any,
  reference: Any,
  batch: Batch,
  loss: Loss,
  head: slpo_jax.HeadOptions,
  mesh: jax.sharding.Mesh | None = None,
) -> slpo_jax.PairStats | None:
  """The reference's statistics: from the frozen tree, or the batch's cache.

  Args:
    model: the model object.
    reference: the frozen reference parameters, or None when the batch
      carries precomputed ``reference_chosen_logps``/``_rejected_logps``.
    batch: the pipeline's batch.
    loss: the loss, which says what it reads.
    head: fused or plain per-token computation.

  Returns:
    The statistics, or None for a loss without a reference.
  """
  if not loss.needs_reference:
    return None
  if reference is None:
    chosen, rejected = (
      batch.reference_chosen_logps,
      batch.reference_rejected_logps,
    )
    cached = slpo_jax.PairStats(chosen_logps=chosen, rejected_logps=rejected)
    if loss.ld_alpha is not None:
      # The cache holds LD-DPO's desensitised values already
      # (train/reference.py); counted as all shared, desensitising them
      # again leaves them as they are.
      cached = cached._replace(
        chosen_shared_logps=chosen, rejected_shared_logps=rejected
      )
    # A packed batch carries them per pair slot, [R, S].
    return packing.pairs_first(cached) if batch.packed else cached
  # stop_gradient makes the frozen tree a constant of the loss even if a
  # caller differentiates through it.
  return batch_stats(
    model,
    jax.lax.stop_gradient(reference),
    batch,
    pair_values=loss.needs_reference_tokens,
    head=head,
    mesh=mesh,
  )


def weighted_sums(
  loss: Loss,
  policy: slpo_jax.PairStats,
  reference: slpo_jax.PairStats | None,
  example_weight: jax.Array,
  loss_state: Any = None,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
  """Weighted sums of the loss and the metrics over one batch.

  Returns sums, not means, together with the total weight under ``"weight"``:
  accumulating micro-batches then divides once, so metrics are averaged by
  example weight and an accuracy never exceeds 1.

  Returns:
    ``(loss sum, (metric sums, new loss state))``; the loss state is None
    when no term carries one.
  """
  parts, new_state = loss.apply(policy, reference, loss_state)
  per_example = sum(w * parts[term.name] for term, w in loss.terms.terms)
  weight = example_weight.astype(jnp.float32)
  # Padding rows (weight 0) may hold infinite values; they add exactly nothing.
  counted = weight > 0
  sums = {"loss": jnp.sum(jnp.where(counted, per_example * weight, 0.0))}
  if len(parts) > 1:
    for name, value in parts.items():
      sums[f"loss/{name}"] = jnp.sum(jnp.where(counted, value * weight, 0.0))
  # Rewards and log-probs as the loss reads them: with LD-DPO, desensitised
  # (as TRL logs them, and as a cached reference holds them).
  desensitized = loss.terms.options.length_desensitized
  rewarded, reference = desensitized(policy), desensitized(reference)
  if reference is not None:
    metrics = slpo_jax.preference_metrics(
      rewarded.chosen_logps,
      rewarded.rejected_logps,
      reference.chosen_logps,
      reference.rejected_logps,
      beta=loss.beta,
      policy_chosen_not_logps=policy.chosen_not_logps,
      policy_rejected_not_logps=policy.rejected_not_logps,
    )
  else:
    metrics = {
      "logps/chosen": rewarded.chosen_logps,
      "logps/rejected": rewarded.rejected_logps,
    }
  if policy.chosen_mean_logits is not None:
    metrics["logits/chosen"] = policy.chosen_mean_logits
    metrics["logits/rejected"] = policy.rejected_mean_logits
  if policy.chosen_top1_tokens is not None:
    metrics[_TOP1_TOKENS] = policy.chosen_top1_tokens
    metrics[_CHOSEN_TOKENS] = policy.chosen_lengths
  if policy.chosen_entropy is not None:
    metrics[_ENTROPY] = policy.chosen_entropy + policy.rejected_entropy
    metrics[_CHOSEN_ENTROPY] = policy.chosen_entropy
    metrics[_RESPONSE_TOKENS] = policy.chosen_lengths + policy.rejected_lengths
    metrics.setdefault(_CHOSEN_TOKENS, policy.chosen_lengths)
  for name, value in metrics.items():
    sums[name] = jnp.sum(jnp.where(counted, value * weight, 0.0))
  sums["weight"] = jnp.sum(weight)
  return sums["loss"], (sums, new_state or None)


# Token counts summed for ``mean_token_accuracy``, a share of the batch's
# tokens (as TRL pools them), not a mean over pairs.
_TOP1_TOKENS = "_chosen_top1_tokens"
_CHOSEN_TOKENS = "_chosen_tokens"
# Entropy sums for ``entropy`` (TRL's: over both responses' tokens) and
# ``entropy/chosen`` (over the chosen response's), per-token means likewise.
_ENTROPY = "_entropy"
_CHOSEN_ENTROPY = "_chosen_entropy"
_RESPONSE_TOKENS = "_response_tokens"


def metric_means(sums: Mapping[str, Any]) -> dict[str, Any]:
  """Metrics from summed ones (:func:`weighted_sums`, summed over batches).

  Every value is divided by the total weight, except ``mean_token_accuracy``:
  the share of the chosen response tokens that the policy ranks first.
  Works on device arrays and host floats alike.
  """
  sums = dict(sums)
  weight = jnp.maximum(sums.pop("weight"), 1e-9)
  # Means over their own count (KTO's per-label ones), as if by the weight.
  prefix = objective_kto.COUNT_PREFIX
  for name in [name for name in sums if name.startswith(prefix)]:
    count = jnp.maximum(sums.pop(name), 1e-9)
    sums[name[len(prefix) :]] = sums[name[len(prefix) :]] / count * weight
  chosen_tokens = jnp.maximum(sums.pop(_CHOSEN_TOKENS, 0.0), 1e-9)
  # Token-pooled means, multiplied by the weight the last line divides by.
  if _TOP1_TOKENS in sums:
    top1 = sums.pop(_TOP1_TOKENS)
    sums["mean_token_accuracy"] = top1 / chosen_tokens * weight
  if _ENTROPY in sums:
    tokens = jnp.maximum(sums.pop(_RESPONSE_TOKENS), 1e-9)
    sums["entropy"] = sums.pop(_ENTROPY) / tokens * weight
    sums["entropy/chosen"] = sums.pop(_CHOSEN_ENTROPY) / chosen_tokens * weight
  return {name: value / weight for name, value in sums.items()}


def batch_loss(
  model: Any,
  params: Any,
  reference: Any,
  batch: Batch,
  *,
  loss: Loss,
  head: slpo_jax.HeadOptions,
  mesh: jax.sharding.Mesh | None = None,
  loss_state: Any = None,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
  """The weighted loss sum of ``params`` on a batch, and ``(metric sums,
  new loss state)`` (:func:`weighted_sums`)."""
  if isinstance(batch, UnpairedBatch):
    # KTO reads sequence log-probs only: no pair values, and no entropy
    # (a metric of the pair path) unless the head asks for it.
    def stats_fn(tree, rows):
      return batch_stats(
        model, tree, rows, pair_values=False, head=head, mesh=mesh
      )

    return objective_kto.batch_loss(
      stats_fn, params, reference, batch, loss=loss
    )
  policy = batch_stats(
    model,
    params,
    batch,
    pair_values=loss.terms.needs_pair_values,
    # The policy's entropy (a metric) and WPO's alignment term ride along
    # on the head's pass; the reference needs neither.
    head=dataclasses.replace(head, distribution_stats=True),
    mesh=mesh,
  )
  ref = reference_stats(model, reference, batch, loss, head, mesh)
  return weighted_sums(loss, policy, ref, batch.pair_weights(), loss_state)

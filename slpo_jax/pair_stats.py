"""What every preference loss reads: per-example statistics of a batch of pairs.

:class:`PairStats` is the one bundle the loss table (:mod:`slpo_jax.losses`)
maps to losses. It is built by one function,
:func:`pair_stats_from_token_logps`, from per-token values; the two front
ends give it those values from logits (:func:`pair_stats_from_logits`) or,
through the loss head, from a model's final hidden states
(:func:`pair_stats_from_hidden`, fused or plain).

A pair is two rows that share their time axis (same prompt, same layout):
position t of both holds the same response step, and ``chosen_where`` /
``rejected_where`` mark the response tokens of each row. Rows may also hold
several pairs each (packed, :mod:`slpo_jax.packing`): with ``segment_ids``
every per-pair field is ``[R, S]``, one value per pair slot of a row.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from slpo_jax import fused
from slpo_jax import logprobs
from slpo_jax import packing


class PairStats(NamedTuple):
  """Sequence (and optionally token) values of one model on a batch of pairs.

  The sequence fields are ``[B]`` (any leading shape), the token fields
  ``[B, T]``. Fields a loss does not need may be None: the reference's
  statistics, for instance, are often only ``chosen_logps`` and
  ``rejected_logps`` (precomputed once).

  Attributes:
    chosen_logps: ``log pi(y_w)``.
    rejected_logps: ``log pi(y_l)``.
    chosen_not_logps: ``log pi(Y != y_w)``.
    rejected_not_logps: ``log pi(Y != y_l)``.
    chosen_lengths: response tokens of y_w.
    rejected_lengths: response tokens of y_l.
    pair_not_logps: ``log pi(Y not in {y_w, y_l})``.
    chosen_token_logps: ``log p_t(y_w,t)`` on y_w's prefixes.
    chosen_token_pair_not_logps: ``log(1 - p_t(y_w,t) - p_t(y_l,t))`` on
      y_w's prefixes, the per-token form of ``pair_not_logps``.
    chosen_where: y_w's response mask.
    chosen_mean_logits: the logits of y_w's response steps, averaged over
      the vocabulary and the steps (a metric, ``logits/chosen`` in TRL).
    rejected_mean_logits: the same for y_l.
    chosen_top1_tokens: response tokens of y_w that the model ranks first
      (a metric: TRL's ``mean_token_accuracy`` is their share of the
      batch's chosen response tokens).
    counted: whether the pair counts (False for padding rows); losses of the
      whole batch, such as AOT's sort, leave the others out.
    chosen_shared_logps: ``log pi`` of y_w's first ``min(|y_w|, |y_l|)``
      response tokens, the part LD-DPO keeps whole (the rest is y_w's tail,
      ``chosen_logps - chosen_shared_logps``).
    rejected_shared_logps: the same for y_l.
    chosen_entropy: the sum of the per-step entropies over y_w's response
      steps (a metric, TRL's ``entropy``; filled by a head with
      ``distribution_stats``).
    rejected_entropy: the same for y_l.
    chosen_log_sum_sq_probs: ``sum_t log sum_v p_t(v)^2`` over y_w's
      response steps (WPO's weight alignment; with ``distribution_stats``).
    rejected_log_sum_sq_probs: the same for y_l.
  """

  chosen_logps: jax.Array
  rejected_logps: jax.Array
  chosen_not_logps: jax.Array | None = None
  rejected_not_logps: jax.Array | None = None
  chosen_lengths: jax.Array | None = None
  rejected_lengths: jax.Array | None = None
  pair_not_logps: jax.Array | None = None
  chosen_token_logps: jax.Array | None = None
  chosen_token_pair_not_logps: jax.Array | None = None
  chosen_where: jax.Array | None = None
  chosen_mean_logits: jax.Array | None = None
  rejected_mean_logits: jax.Array | None = None
  chosen_top1_tokens: jax.Array | None = None
  counted: jax.Array | None = None
  chosen_shared_logps: jax.Array | None = None
  rejected_shared_logps: jax.Array | None = None
  chosen_entropy: jax.Array | None = None
  rejected_entropy: jax.Array | None = None
  chosen_log_sum_sq_probs: jax.Array | None = None
  rejected_log_sum_sq_probs: jax.Array | None = None


def pair_stats_from_token_logps(
  chosen: logprobs.TokenLogps,
  rejected: logprobs.TokenLogps,
  chosen_labels: ArrayLike,
  rejected_labels: ArrayLike,
  *,
  chosen_where: ArrayLike,
  rejected_where: ArrayLike,
  chosen_token_pair_not_logps: ArrayLike | None = None,
  segment_ids: ArrayLike | None = None,
  num_segments: int | None = None,
) -> PairStats:
  """The :class:`PairStats` of a batch from its per-token values.

  Args:
    chosen: per-token values of y_w (:func:`slpo_jax.token_logps`).
    rejected: per-token values of y_l.
    chosen_labels: ``[B, T]`` ids of y_w.
    rejected_labels: ``[B, T]`` ids of y_l.
    chosen_where: ``[B, T]`` bool response mask of y_w.
    rejected_where: ``[B, T]`` bool response mask of y_l.
    chosen_token_pair_not_logps: optional ``[B, T]``
      ``log(1 - p_t(y_w,t) - p_t(y_l,t))`` on the chosen row; when given,
      the pair complement and the token fields are filled in.
    segment_ids: optional ``[R, T]`` int for packed rows (see
      :mod:`slpo_jax.packing`): 1..S where the pairs of a row lie, the same
      in both rows, 0 on padding. None: one pair per row.
    num_segments: S, the pair slots per row (static); with ``segment_ids``.

  Returns:
    The statistics; the pair and token fields are None without
    ``chosen_token_pair_not_logps``. With ``segment_ids`` the per-pair
    fields are ``[R, S]`` and the token fields ``[R, S, T]``.
  """
  shape = jnp.shape(chosen_labels)
  chosen_where = logprobs._check_where(chosen_where, shape)
  rejected_where = logprobs._check_where(rejected_where, shape)
  if segment_ids is not None:
    # Each slot sees its own pair's positions only; every reduction below
    # then runs over one pair (see slpo_jax.packing).
    masks = _segment_masks(segment_ids, num_segments, shape)
    chosen = packing.spread_tokens(chosen, masks)
    rejected = packing.spread_tokens(rejected, masks)
    chosen_labels = packing.spread(chosen_labels, masks)
    rejected_labels = packing.spread(rejected_labels, masks)
    chosen_where = packing.spread_where(chosen_where, masks)
    rejected_where = packing.spread_where(rejected_where, masks)
    if chosen_token_pair_not_logps is not None:
      chosen_token_pair_not_logps = packing.spread(
        chosen_token_pair_not_logps, masks
      )
  chosen_logps, chosen_not_logps = logprobs.sequence_logps_from_token_logps(
    chosen.logp, chosen.not_logp, where=chosen_where
  )
  rejected_logps, rejected_not_logps = logprobs.sequence_logps_from_token_logps(
    rejected.logp, rejected.not_logp, where=rejected_where
  )
  chosen_lengths = jnp.sum(chosen_where, axis=-1)
  rejected_lengths = jnp.sum(rejected_where, axis=-1)
  shared_length = jnp.minimum(chosen_lengths, rejected_lengths)[..., None]

  def shared_logps(token_logp, where):
    # The k-th response token (k = 1, 2, ...) is shared when k <= the
    # shorter response's length.
    rank = jnp.cumsum(where, axis=-1)
    shared = where & (rank <= shared_length)
    return jnp.sum(jnp.where(shared, token_logp, 0.0), axis=-1)

  def response_sum(values, where):
    return jnp.sum(jnp.where(where, values, 0.0), axis=-1)

  stats = PairStats(
    chosen_logps=chosen_logps,
    rejected_logps=rejected_logps,
    chosen_not_logps=chosen_not_logps,
    rejected_not_logps=rejected_not_logps,
    chosen_lengths=chosen_lengths,
    rejected_lengths=rejected_lengths,
    # A row with no response token is padding.
    counted=jnp.any(chosen_where, axis=-1),
    chosen_shared_logps=shared_logps(chosen.logp, chosen_where),
    rejected_shared_logps=shared_logps(rejected.logp, rejected_where),
  )
  if chosen.is_top1 is not None:
    stats = stats._replace(
      chosen_top1_tokens=jnp.sum(chosen_where & chosen.is_top1, axis=-1)
    )
  if chosen.entropy is not None and rejected.entropy is not None:
    stats = stats._replace(
      chosen_entropy=response_sum(chosen.entropy, chosen_where),
      rejected_entropy=response_sum(rejected.entropy, rejected_where),
      chosen_log_sum_sq_probs=response_sum(
        chosen.log_sum_sq_probs, chosen_where
      ),
      rejected_log_sum_sq_probs=response_sum(
        rejected.log_sum_sq_probs, rejected_where
      ),
    )
  if chosen_token_pair_not_logps is None:
    return stats
  pair_not_logps = logprobs.pair_not_logps_from_token_logps(
    chosen,
    chosen_token_pair_not_logps,
    rejected,
    logprobs.masked_ids(chosen_labels, chosen_where, fill=0),
    logprobs.masked_ids(rejected_labels, rejected_where, fill=0),
    chosen_where=chosen_where,
    rejected_where=rejected_where,
  )
  return stats._replace(
    pair_not_logps=pair_not_logps,
    chosen_token_logps=jnp.where(chosen_where, chosen.logp, 0.0),
    chosen_token_pair_not_logps=jnp.where(
      chosen_where, jnp.asarray(chosen_token_pair_not_logps), 0.0
    ),
    chosen_where=chosen_where,
  )


def _segment_masks(segment_ids, num_segments, shape) -> jax.Array:
  if num_segments is None or jnp.shape(segment_ids) != tuple(shape):
    raise ValueError(
      f"segment_ids need num_segments and the labels' shape {tuple(shape)};"
      f" got {jnp.shape(segment_ids)} and num_segments={num_segments}"
    )
  return packing.segment_masks(segment_ids, num_segments)


def mean_over_steps(
  per_step: jax.Array,
  where: jax.Array,
  segment_ids: ArrayLike | None = None,
  num_segments: int | None = None,
) -> jax.Array:
  """Mean of ``per_step`` over the steps ``where`` selects, per row (per
  packed segment when ``segment_ids`` is given)."""
  if segment_ids is not None:
    masks = _segment_masks(segment_ids, num_segments, jnp.shape(where))
    per_step = packing.spread(per_step, masks)
    where = packing.spread_where(where, masks)
  counted = jnp.where(where, per_step, 0.0)
  return jnp.sum(counted, axis=-1) / jnp.maximum(jnp.sum(where, axis=-1), 1)


def pair_ids(chosen_labels, rejected_labels, chosen_where, rejected_where):
  """Labels safe to look up, and y_l's ids to leave out on the chosen row.

  Where y_l has no token (it ended earlier) nothing more is left out: -1
  matches no column.
  """
  return (
    logprobs.masked_ids(chosen_labels, chosen_where, fill=0),
    logprobs.masked_ids(rejected_labels, rejected_where, fill=0),
    logprobs.masked_ids(rejected_labels, rejected_where, fill=-1),
  )


def pair_stats_from_logits(
  chosen_logits: ArrayLike,
  rejected_logits: ArrayLike,
  chosen_labels: ArrayLike,
  rejected_labels: ArrayLike,
  *,
  chosen_where: ArrayLike,
  rejected_where: ArrayLike,
  pair_values: bool = False,
  distribution_stats: bool = False,
  segment_ids: ArrayLike | None = None,
  num_segments: int | None = None,
) -> PairStats:
  """The :class:`PairStats` of a batch from teacher-forced logits.

  Args:
    chosen_logits: ``[B, T, V]``; ``chosen_logits[:, t]`` predicts
      ``chosen_labels[:, t]``.
    rejected_logits: ``[B, T, V]``, likewise for y_l.
    chosen_labels: ``[B, T]`` ids of y_w (ignored where not ``chosen_where``).
    rejected_labels: ``[B, T]`` ids of y_l.
    chosen_where: ``[B, T]`` bool response mask of y_w.
    rejected_where: ``[B, T]`` bool response mask of y_l.
    pair_values: also compute the pair complement and the token values
      (soft and token-level SLPO need them).
    distribution_stats: also fill the entropy and ``log sum p^2`` sums
      (``chosen_entropy``, ``chosen_log_sum_sq_probs``, ...).
    segment_ids: optional ``[R, T]`` pair segments of packed rows, see
      :func:`pair_stats_from_token_logps`.
    num_segments: the pair slots per row, with ``segment_ids``.

  Returns:
    The statistics.
  """
  segments = dict(segment_ids=segment_ids, num_segments=num_segments)
  logprobs._check_logits_labels(chosen_logits, chosen_labels, "chosen_logits")
  logprobs._check_logits_labels(
    rejected_logits, rejected_labels, "rejected_logits"
  )
  chosen_where = logprobs._check_where(chosen_where, jnp.shape(chosen_labels))
  rejected_where = logprobs._check_where(
    rejected_where, jnp.shape(rejected_labels)
  )
  chosen_ids, rejected_ids, excluded = pair_ids(
    chosen_labels, rejected_labels, chosen_where, rejected_where
  )
  pair_not = None
  if pair_values:
    pair_not = logprobs.token_logps(
      chosen_logits, chosen_ids, also_exclude=excluded
    ).not_logp
  chosen = logprobs.token_logps(chosen_logits, chosen_ids)
  rejected = logprobs.token_logps(rejected_logits, rejected_ids)
  if distribution_stats:
    chosen = chosen._replace(
      **dict(zip(_DISTRIBUTION, logprobs.distribution_stats(chosen_logits)))
    )
    rejected = rejected._replace(
      **dict(zip(_DISTRIBUTION, logprobs.distribution_stats(rejected_logits)))
    )
  stats = pair_stats_from_token_logps(
    chosen,
    rejected,
    chosen_ids,
    rejected_ids,
    chosen_where=chosen_where,
    rejected_where=rejected_where,
    chosen_token_pair_not_logps=pair_not,
    **segments,
  )
  return stats._replace(
    chosen_mean_logits=mean_over_steps(
      jnp.mean(jnp.asarray(chosen_logits, jnp.float32), -1),
      chosen_where,
      **segments,
    ),
    rejected_mean_logits=mean_over_steps(
      jnp.mean(jnp.asarray(rejected_logits, jnp.float32), -1),
      rejected_where,
      **segments,
    ),
  )


_DISTRIBUTION = ("entropy", "log_sum_sq_probs")


@dataclasses.dataclass(frozen=True)
class HeadOptions:
  """How per-token values are computed from hidden states.

  Attributes:
    fused: stream over vocabulary tiles (:mod:`slpo_jax.fused`), never
      holding the ``[B, T, V]`` logits; False computes the logits.
    vocab_chunk_size: the fused head's vocabulary tile; None for the
      backend's default.
    token_chunk_size: the fused head's token tile; None for the default.
    logit_softcap: the model's final-logit soft-capping (Gemma 2's
      ``final_logit_softcap``), applied by both heads; None for none.
    distribution_stats: also sum each response's per-step entropies and
      ``log sum_v p_v^2`` (the ``entropy`` metric, WPO's weights); the
      fused head gets them in its pass over the vocabulary tiles.
  """

  fused: bool = True
  vocab_chunk_size: int | None = None
  token_chunk_size: int | None = None
  logit_softcap: float | None = None
  distribution_stats: bool = False


def capped_mean_logits(hidden, lm_head, softcap, chunk) -> jax.Array:
  """Mean over the vocabulary of the capped logits, one tile at a time.

  A metric only (no gradient): the cap makes the mean no longer one
  product with the mean column, so it takes a second pass over the head.
  """
  hidden = jax.lax.stop_gradient(jnp.asarray(hidden))
  lm_head = jax.lax.stop_gradient(jnp.asarray(lm_head))
  vocab = lm_head.shape[1]
  chunk = min(chunk or 4096, vocab)
  pad = -vocab % chunk
  columns = jnp.pad(lm_head, ((0, 0), (0, pad)))
  columns = columns.reshape(lm_head.shape[0], -1, chunk).swapaxes(0, 1)
  valid = (jnp.arange(vocab + pad) < vocab).reshape(-1, chunk)

  def add(total, tile):
    block, ok = tile
    capped = logprobs.logits_from_hidden(hidden, block, softcap)
    return total + jnp.sum(jnp.where(ok, capped, 0.0), -1), None

  total, _ = jax.lax.scan(
    add, jnp.zeros(hidden.shape[:-1], jnp.float32), (columns, valid)
  )
  return total / vocab


def pair_stats_from_hidden(
  chosen_hidden: ArrayLike,
  rejected_hidden: ArrayLike,
  lm_head: ArrayLike,
  chosen_labels: ArrayLike,
  rejected_labels: ArrayLike,
  *,
  chosen_where: ArrayLike,
  rejected_where: ArrayLike,
  pair_values: bool = False,
  head: HeadOptions = HeadOptions(),
  segment_ids: ArrayLike | None = None,
  num_segments: int | None = None,
) -> PairStats:
  """The loss head: :class:`PairStats` from a model's final hidden states.

  The model runs once per row; with ``pair_values`` only the head runs a
  second time on the chosen rows, leaving y_l's token out too.

  Args:
    chosen_hidden: ``[B, T, d]`` final hidden states on the chosen rows;
      position t predicts ``chosen_labels[:, t]``.
    rejected_hidden: ``[B, T, d]`` on the rejected rows.
    lm_head: ``[d, V]`` output projection.
    chosen_labels: ``[B, T]`` ids of y_w.
    rejected_labels: ``[B, T]`` ids of y_l.
    chosen_where: ``[B, T]`` bool response mask of y_w.
    rejected_where: ``[B, T]`` bool response mask of y_l.
    pair_values: also compute the pair complement and the token values.
    head: fused or plain, and the fused head's tiles.
    segment_ids: optional ``[R, T]`` pair segments of packed rows (the
      hidden states then come from a model run with them, each row's
      padding as segment 0); see :func:`pair_stats_from_token_logps`.
    num_segments: the pair slots per row, with ``segment_ids``.

  Returns:
    The statistics, equal (to float rounding) for both heads.
  """
  softcap = head.logit_softcap
  segments = dict(segment_ids=segment_ids, num_segments=num_segments)
  if not head.fused:
    return pair_stats_from_logits(
      logprobs.logits_from_hidden(chosen_hidden, lm_head, softcap),
      logprobs.logits_from_hidden(rejected_hidden, lm_head, softcap),
      chosen_labels,
      rejected_labels,
      chosen_where=chosen_where,
      rejected_where=rejected_where,
      pair_values=pair_values,
      distribution_stats=head.distribution_stats,
      **segments,
    )
  chosen_where = logprobs._check_where(chosen_where, jnp.shape(chosen_labels))
  rejected_where = logprobs._check_where(
    rejected_where, jnp.shape(rejected_labels)
  )
  chosen_ids, rejected_ids, excluded = pair_ids(
    chosen_labels, rejected_labels, chosen_where, rejected_where
  )

  def tokens(hidden, ids, also_exclude=None):
    return fused.token_logps_from_hidden(
      hidden,
      lm_head,
      ids,
      also_exclude=also_exclude,
      vocab_chunk_size=head.vocab_chunk_size,
      token_chunk_size=head.token_chunk_size,
      logit_softcap=softcap,
      distribution_stats=head.distribution_stats and also_exclude is None,
    )

  pair_not = None
  if pair_values:
    pair_not = tokens(chosen_hidden, chosen_ids, excluded).not_logp
  stats = pair_stats_from_token_logps(
    tokens(chosen_hidden, chosen_ids),
    tokens(rejected_hidden, rejected_ids),
    chosen_ids,
    rejected_ids,
    chosen_where=chosen_where,
    rejected_where=rejected_where,
    chosen_token_pair_not_logps=pair_not,
    **segments,
  )
  if softcap is None:
    # The mean logit of a step is h_t . mean_v(W[:, v]): one vector, no tile.
    mean_column = jnp.mean(jnp.asarray(lm_head, jnp.float32), axis=-1)
    chosen_mean = logprobs.logits_from_hidden(
      chosen_hidden, mean_column[:, None]
    )[..., 0]
    rejected_mean = logprobs.logits_from_hidden(
      rejected_hidden, mean_column[:, None]
    )[..., 0]
  else:
    chunk = head.vocab_chunk_size
    chosen_mean = capped_mean_logits(chosen_hidden, lm_head, softcap, chunk)
    rejected_mean = capped_mean_logits(rejected_hidden, lm_head, softcap, chunk)
  return stats._replace(
    chosen_mean_logits=mean_over_steps(chosen_mean, chosen_where, **segments),
    rejected_mean_logits=mean_over_steps(
      rejected_mean, rejected_where, **segments
    ),
  )

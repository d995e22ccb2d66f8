"""The loss head on shared-prompt rows: each prompt once, both responses after.

A shared-prompt row (``data.share_prompt``) holds several pairs, each as one
segment: its prompt ``x`` (P tokens), then the chosen response ``y_w``, then
the rejected ``y_l``. The model runs on it with branches (the prompt is
branch 0, ``y_w`` branch 1, ``y_l`` branch 2, each response seeing the
prompt and itself only) and positions ``0..P-1`` on the prompt that restart
at ``P`` for each response, so every hidden state equals the one the paired
layout computes for the same token.

The statistics are those of the paired layout (:mod:`slpo_jax.packing`)
once the per-token values are put on one time axis per pair, the *step
axis* of the row: step ``j`` of both responses sits at the row index of the
hidden state that predicts ``y_w``'s token ``j``, i.e. the prompt's last
token plus ``j``. There

* ``y_w``'s values are the row's own: position ``i`` predicts the next
  token of its branch (``labels``), and the prompt's last position predicts
  ``y_w``'s first token;
* ``y_l``'s values are gathered (``rejected_source``): its step ``j >= 1``
  from the position of its token ``j - 1``, its first step from the prompt's
  last hidden state, which the head evaluates a second time with ``y_l``'s
  first token as label (one extra head position per pair, appended to the
  row: index ``T + s`` for pair slot ``s``).

A segment spans ``P + |y_w| + |y_l|`` indices and its steps run from
``P - 1`` to ``P - 2 + max(|y_w|, |y_l|)``, so the step axis never leaves
the segment, and :func:`slpo_jax.pair_stats_from_token_logps` with the
row's segment ids reduces each pair exactly as the paired layout does.
The head runs on ``T + S`` positions per row (``T`` more for the pair
complement), against ``2 T`` (``3 T``) of a paired row of the same pairs'
longer length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from slpo_jax import fused
from slpo_jax import logprobs
from slpo_jax.pair_stats import HeadOptions
from slpo_jax.pair_stats import PairStats
from slpo_jax.pair_stats import capped_mean_logits
from slpo_jax.pair_stats import mean_over_steps
from slpo_jax.pair_stats import pair_ids
from slpo_jax.pair_stats import pair_stats_from_token_logps

_DEFAULT_HEAD = HeadOptions()


def _take(values: jax.Array, index: jax.Array) -> jax.Array:
  """``values[r, index[r, k], ...]``: a gather along the row axis."""
  index = jnp.asarray(index)
  extra = values.ndim - index.ndim
  index = index.reshape(index.shape + (1,) * extra)
  return jnp.take_along_axis(values, index, axis=1)


def pair_stats_from_shared_hidden(
  hidden: ArrayLike,
  lm_head: ArrayLike,
  labels: ArrayLike,
  rejected_labels: ArrayLike,
  *,
  chosen_where: ArrayLike,
  rejected_where: ArrayLike,
  rejected_source: ArrayLike,
  prompt_ends: ArrayLike,
  segment_ids: ArrayLike,
  num_segments: int,
  pair_values: bool = False,
  head: HeadOptions = _DEFAULT_HEAD,
) -> PairStats:
  """:class:`PairStats` ``[R, S]`` of shared-prompt rows (see module doc).

  Args:
    hidden: ``[R, T, d]`` final hidden states of the rows, run with branches.
    lm_head: ``[d, V]`` output projection.
    labels: ``[R, T]`` the token each position predicts within its branch
      (the prompt's last position: ``y_w``'s first token); on the step axis
      these are ``y_w``'s labels.
    rejected_labels: ``[R, T]`` ``y_l``'s tokens on the step axis.
    chosen_where: ``[R, T]`` bool, ``y_w``'s steps.
    rejected_where: ``[R, T]`` bool, ``y_l``'s steps.
    rejected_source: ``[R, T]`` int, where ``y_l``'s step is predicted: a
      row index, or ``T + s`` for pair slot s's prompt end (anything where
      ``rejected_where`` is False).
    prompt_ends: ``[R, S]`` int, the row index of each pair's last prompt
      token (anything for empty slots).
    segment_ids: ``[R, T]`` int, 1..S for the pairs, 0 on padding.
    num_segments: S (static).
    pair_values: also compute the pair complement and the token values.
    head: fused or plain, and the fused head's tiles.

  Returns:
    The statistics, per pair slot, equal (to float rounding) to
    :func:`slpo_jax.pair_stats_from_hidden` on the paired rows of the same
    pairs.
  """
  hidden = jnp.asarray(hidden)
  shape = jnp.shape(labels)
  chosen_where = logprobs._check_where(chosen_where, shape)
  rejected_where = logprobs._check_where(rejected_where, shape)
  chosen_ids, rejected_ids, excluded = pair_ids(
    labels, rejected_labels, chosen_where, rejected_where
  )
  prompt_ends = jnp.asarray(prompt_ends)
  # The head's positions: the row, then each pair's prompt end once more
  # with y_l's first token as label.
  extended = jnp.concatenate([hidden, _take(hidden, prompt_ends)], axis=1)
  # Every position's own label (y_l's too, beyond y_w's steps), then y_l's
  # first token at the prompt ends.
  extended_ids = jnp.concatenate(
    [jnp.asarray(labels), _take(rejected_ids, prompt_ends)], axis=1
  )
  softcap = head.logit_softcap

  def tokens(h, ids, also_exclude=None):
    # The entropy metric (and WPO's weights) on the response steps, as the
    # paired head gives them; not for the pair complement's extra pass.
    distribution = head.distribution_stats and also_exclude is None
    if head.fused:
      return fused.token_logps_from_hidden(
        h,
        lm_head,
        ids,
        also_exclude=also_exclude,
        vocab_chunk_size=head.vocab_chunk_size,
        token_chunk_size=head.token_chunk_size,
        logit_softcap=softcap,
        distribution_stats=distribution,
      )
    logits = logprobs.logits_from_hidden(h, lm_head, softcap)
    values = logprobs.token_logps(logits, ids, also_exclude=also_exclude)
    if not distribution:
      return values
    entropy, log_sum_sq = logprobs.distribution_stats(logits)
    return values._replace(entropy=entropy, log_sum_sq_probs=log_sum_sq)

  length = shape[-1]
  values = tokens(extended, extended_ids)
  chosen = logprobs.TokenLogps(
    *(None if f is None else f[:, :length] for f in values)
  )
  rejected = logprobs.TokenLogps(
    *(None if f is None else _take(f, rejected_source) for f in values)
  )
  pair_not = None
  if pair_values:
    pair_not = tokens(hidden, chosen_ids, excluded).not_logp
  segments = dict(segment_ids=segment_ids, num_segments=num_segments)
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
  mean = _mean_logits(extended, lm_head, head)
  return stats._replace(
    chosen_mean_logits=mean_over_steps(
      mean[:, :length], chosen_where, **segments
    ),
    rejected_mean_logits=mean_over_steps(
      _take(mean, rejected_source), rejected_where, **segments
    ),
  )


def _mean_logits(hidden, lm_head, head: HeadOptions) -> jax.Array:
  """Each position's logits averaged over the vocabulary, ``[R, N]``."""
  # As pair_stats_from_hidden computes them, head by head.
  softcap = head.logit_softcap
  if not head.fused:
    logits = logprobs.logits_from_hidden(hidden, lm_head, softcap)
    return jnp.mean(jnp.asarray(logits, jnp.float32), -1)
  if softcap is None:
    # h_t . mean_v(W[:, v]): one column, no tile.
    mean_column = jnp.mean(jnp.asarray(lm_head, jnp.float32), axis=-1)
    return logprobs.logits_from_hidden(hidden, mean_column[:, None])[..., 0]
  return capped_mean_logits(hidden, lm_head, softcap, head.vocab_chunk_size)

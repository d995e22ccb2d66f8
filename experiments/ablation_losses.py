"""Losses that change one part of SLPO at a time (docs/RESULTS.md, sec. 5).

They are experiment-only forms, not entries of the library's table: each is a
pure function whose parameters follow the table's naming
(:mod:`slpo_jax.losses.table`), so :class:`slpo_jax.losses.LossSpec` reads
them as it reads the library's losses and the training program runs them on
the same path.

* :func:`dpo_share_weighted_loss`: DPO's loss, each pair weighted by 2s with
  s = pi_ref(y_l) / (pi_ref(y_w) + pi_ref(y_l)). At the reference its
  gradient with respect to (log pi(y_w), log pi(y_l)) is beta * (-s, +s),
  the direction of ``slpo_normalized`` there, while its target stays DPO's.
* :func:`slpo_ratio_loss`: ``slpo_normalized`` written in the pair's
  probability ratios r = pi / pi_ref, exact where pi(y_w), pi(y_l) << 1.
* :func:`slpo_share_per_token_loss`: the ratio form with s replaced by the
  share of per-token mean log-probabilities; it leaves Eq. 6.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from slpo_jax.losses import dpo_family


def loser_share(
  reference_chosen_logps: ArrayLike, reference_rejected_logps: ArrayLike
) -> jax.Array:
  """s = pi_ref(y_l) / (pi_ref(y_w) + pi_ref(y_l)), from log-probabilities."""
  return jax.nn.sigmoid(
    jnp.asarray(reference_rejected_logps) - jnp.asarray(reference_chosen_logps)
  )


def dpo_share_weighted_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  beta: float,
) -> jax.Array:
  """DPO's per-pair loss times 2s (s from the frozen reference: no gradient).

  The factor 2 makes the weight 1 for a balanced pair (s = 1/2).
  """
  share = jax.lax.stop_gradient(
    loser_share(reference_chosen_logps, reference_rejected_logps)
  )
  return (
    2.0
    * share
    * dpo_family.dpo_loss(
      policy_chosen_logps,
      policy_rejected_logps,
      reference_chosen_logps,
      reference_rejected_logps,
      beta=beta,
    )
  )


def _ratio_form(share, chosen_log_ratio, rejected_log_ratio) -> jax.Array:
  """-log r_w + (1 - s) r_w + s r_l, minimised at r_w = 1/(1 - s), r_l = 0.

  The log-ratios are capped at 60 nats before ``exp`` only to keep a
  diverging run finite; the experiments' runs stay far below.
  """
  share = jax.lax.stop_gradient(share)
  chosen = jnp.minimum(chosen_log_ratio, 60.0)
  rejected = jnp.minimum(rejected_log_ratio, 60.0)
  return -chosen + (1.0 - share) * jnp.exp(chosen) + share * jnp.exp(rejected)


def slpo_ratio_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
) -> jax.Array:
  """``slpo_normalized`` where both responses are improbable, in ratios.

  With -log(1 - p) = p + O(p^2) and w = pi_ref(y_w) + pi_ref(y_l) << 1,
  ``slpo_normalized`` is -log pi(y_w) + pi(y_w) / w + pi(y_l) / w, which is
  this loss plus the constant -log pi_ref(y_w). Kept as the control that the
  ratio form changes nothing on this task's pairs.
  """
  share = loser_share(reference_chosen_logps, reference_rejected_logps)
  return _ratio_form(
    share,
    jnp.asarray(policy_chosen_logps) - jnp.asarray(reference_chosen_logps),
    jnp.asarray(policy_rejected_logps) - jnp.asarray(reference_rejected_logps),
  )


def slpo_share_per_token_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  chosen_lengths: ArrayLike,
  rejected_lengths: ArrayLike,
) -> jax.Array:
  """The ratio form with s̄ = sigmoid(mean log pi_ref(y_l) - mean log
  pi_ref(y_w)), per-token means over each response's own length.

  The winner's target rises by -log(1 - s̄) nats: the share no longer
  follows the lengths, and the target is no longer Eq. 6's.
  """
  chosen_mean = jnp.asarray(reference_chosen_logps) / jnp.maximum(
    jnp.asarray(chosen_lengths), 1
  )
  rejected_mean = jnp.asarray(reference_rejected_logps) / jnp.maximum(
    jnp.asarray(rejected_lengths), 1
  )
  share = jax.nn.sigmoid(rejected_mean - chosen_mean)
  return _ratio_form(
    share,
    jnp.asarray(policy_chosen_logps) - jnp.asarray(reference_chosen_logps),
    jnp.asarray(policy_rejected_logps) - jnp.asarray(reference_rejected_logps),
  )

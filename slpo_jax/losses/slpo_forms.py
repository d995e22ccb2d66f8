"""Two more SLPO forms: length-tempered SLPO and SLPO-diff.

* :func:`slpo_length_tempered_loss` is tempered SLPO whose temperature is each
  response's own length, so that the tempered probabilities
  ``pi(y)^(1/|y|)`` are geometric means per token and stay of order one at
  any length (docs/RESULTS.md, section 2).
* :func:`slpo_diff_loss` is the logistic loss on the difference of per-token
  log-odds against targets that move a fraction of the loser's reference mass
  to the winner.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from slpo_jax.losses._common import log1mexp
from slpo_jax.losses.slpo import slpo_target_log_weight


def _tempered_two_class_cross_entropy(
  log_target: jax.Array,
  log_rest_target: jax.Array,
  log_prob: jax.Array,
  log_rest_prob: jax.Array,
  temperature: jax.Array,
) -> jax.Array:
  """CE of softmax([p, p_rest] / t) against softmax([q, q_rest] / t), per row."""
  t = temperature[..., None]
  target = jax.nn.softmax(jnp.stack([log_target, log_rest_target], -1) / t)
  log_pred = jax.nn.log_softmax(jnp.stack([log_prob, log_rest_prob], -1) / t)
  # A target of exactly 0 ignores its log-prediction (0 * -inf = 0).
  terms = jnp.where(target > 0, target * log_pred, 0.0)
  return -jnp.sum(terms, axis=-1)


def slpo_length_tempered_loss(
  policy_chosen_logps: ArrayLike,
  policy_chosen_not_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  policy_rejected_not_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  chosen_lengths: ArrayLike,
  rejected_lengths: ArrayLike,
) -> jax.Array:
  r"""Tempered SLPO with temperature ``t = |y|``, each response its own.

  With ``w = pi_ref(y_w) + pi_ref(y_l)`` and ``s_t(a, b) = softmax([a, b] / t)``:

  .. math::
    L = \mathrm{CE}\big(s_{|y_w|}(\log w, \log(1-w)),
        s_{|y_w|}(\log\pi(y_w), \log\pi(Y \ne y_w))\big)
        + \mathrm{softplus}\big((\log\pi(y_l) - \log\pi(Y \ne y_l))/|y_l|\big)

  The tempered transform is monotone in pi(y), so a lone pair's minimiser is
  still Eq. 6's (pi(y_w) = w, pi(y_l) = 0). At the reference the gradient
  with respect to ``log pi`` scales like ``pi(y)^{1/|y|} / |y|``, a per-token
  geometric mean over the length, instead of ``pi(y)``.

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[...]`` log pi(y | x).
    policy_chosen_not_logps, policy_rejected_not_logps: ``[...]``
      log pi(Y != y | x).
    reference_chosen_logps, reference_rejected_logps: ``[...]``
      log pi_ref(y | x).
    chosen_lengths, rejected_lengths: ``[...]`` response tokens; lengths
      below 1 count as 1 (Eq. 8 itself).

  Returns:
    ``[...]`` per-example losses.

  References:
    Ho, "Supervised Learning Preference Optimization", Eq. 6 and 8; the
    per-response temperature is slpo-jax's variant.
  """
  log_w = slpo_target_log_weight(
    reference_chosen_logps, reference_rejected_logps
  )
  t_w = jnp.maximum(jnp.asarray(chosen_lengths, jnp.float32), 1.0)
  t_l = jnp.maximum(jnp.asarray(rejected_lengths, jnp.float32), 1.0)
  winner = _tempered_two_class_cross_entropy(
    log_w,
    log1mexp(log_w),
    jnp.asarray(policy_chosen_logps),
    jnp.asarray(policy_chosen_not_logps),
    t_w,
  )
  loser = jax.nn.softplus(
    (
      jnp.asarray(policy_rejected_logps)
      - jnp.asarray(policy_rejected_not_logps)
    )
    / t_l
  )
  return winner + loser


def _per_token_log_odds(log_p: jax.Array, log_not_p: jax.Array, length):
  return (log_p - log_not_p) / jnp.maximum(length, 1.0)


def slpo_diff_loss(
  policy_chosen_logps: ArrayLike,
  policy_chosen_not_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  policy_rejected_not_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  chosen_lengths: ArrayLike,
  rejected_lengths: ArrayLike,
  *,
  transfer: float = 0.5,
) -> jax.Array:
  r"""SLPO-diff: a logistic loss on per-token log-odds, offset by targets.

  With ``omega(y) = (log pi(y) - log pi(Y != y)) / |y|``, targets
  ``q_w = pi_ref(y_w) + a pi_ref(y_l)`` and ``q_l = (1 - a) pi_ref(y_l)``
  (``a = transfer``, the share of the loser's reference mass moved to the
  winner) and ``tau(y) = (log q - log(1 - q)) / |y|``:

  .. math::
    L = -\log\sigma\big((\omega_w - \omega_l) - (\tau_w - \tau_l)\big)

  Rows whose winner target ``q_w`` reaches 1 are left out (loss and gradient
  0). The loss falls monotonically in the margin ``omega_w - omega_l``, so it
  has no stationary point at the target margin ``tau_w - tau_l``: like DPO it
  keeps pushing the margin up, the targets only setting where its sigmoid is
  centred. For probabilities far below 1, ``omega`` is ``log pi(y) / |y|``
  and the loss is length-normalised DPO with beta = 1 / |y| and the targets
  in place of the reference.

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[...]`` log pi(y | x).
    policy_chosen_not_logps, policy_rejected_not_logps: ``[...]``
      log pi(Y != y | x).
    reference_chosen_logps, reference_rejected_logps: ``[...]``
      log pi_ref(y | x).
    chosen_lengths, rejected_lengths: ``[...]`` response tokens (at least 1).
    transfer: the share a of the loser's reference mass the targets move,
      ``0 < a < 1``.

  Returns:
    ``[...]`` per-example losses.

  Raises:
    ValueError: for ``transfer`` outside (0, 1).

  References:
    The SLPO paper's author's "SLPO-diff" (public code, July 2026), from its
    formula.
  """
  if not 0.0 < transfer < 1.0:
    raise ValueError(f"transfer must be in (0, 1), got {transfer}")
  ref_w = jnp.asarray(reference_chosen_logps)
  ref_l = jnp.asarray(reference_rejected_logps)
  log_q_w = jnp.logaddexp(ref_w, jnp.log(transfer) + ref_l)
  log_q_l = jnp.log1p(-transfer) + ref_l
  valid = log_q_w < 0.0
  # Left-out rows still run the arithmetic: keep their values finite.
  log_q_w = jnp.where(valid, log_q_w, -1.0)
  len_w = jnp.asarray(chosen_lengths, jnp.float32)
  len_l = jnp.asarray(rejected_lengths, jnp.float32)
  target_margin = _per_token_log_odds(
    log_q_w, log1mexp(log_q_w), len_w
  ) - _per_token_log_odds(log_q_l, log1mexp(log_q_l), len_l)
  margin = _per_token_log_odds(
    jnp.asarray(policy_chosen_logps),
    jnp.asarray(policy_chosen_not_logps),
    len_w,
  ) - _per_token_log_odds(
    jnp.asarray(policy_rejected_logps),
    jnp.asarray(policy_rejected_not_logps),
    len_l,
  )
  return jnp.where(valid, jax.nn.softplus(target_margin - margin), 0.0)

"""Hard SLPO divided by its target weight: Eq. 6's target, gradients of order 1.

Eq. 8's loss of a pair is proportional to w = pi_ref(y_w) + pi_ref(y_l),
which is below 1e-38 for a response of a few dozen tokens, so a pair's
gradient scales with its sequence probability and long pairs do not train.
Dividing each pair's loss by its own w (a constant of the pair) keeps that
pair's minimiser, Eq. 6's target, and makes its gradients with respect to
``log pi`` of order 1 at the reference, whatever the length:

  dL/d log pi(y_w) = (pi(y_w) / w - 1) / (1 - pi(y_w)),
  dL/d log pi(y_l) = (pi(y_l) / w) / (1 - pi(y_l)).

Everything is computed in log space: for log w down to -1e4 the values and
gradients are finite in float32.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from slpo_jax.losses._common import log1mexp
from slpo_jax.losses.slpo import slpo_target_log_weight

_LOG_HALF = -0.6931471805599453


def _log_neg_log1mexp(log_p: jax.Array) -> jax.Array:
  """``log(-log(1 - p))`` from ``log p``, for ``p <= 1/2``, without underflow.

  ``-log(1 - p) = p * r`` with ``r = -log1p(-p) / p = 1 + p/2 + p^2/3 + ...``,
  so the result is ``log p + log r``; r is taken as 1 + p/2 where p is too
  small for the quotient.
  """
  # where, not minimum: at log p = log(1/2) minimum would halve the gradient.
  log_p = jnp.where(log_p <= _LOG_HALF, log_p, _LOG_HALF)
  p = jnp.exp(log_p)
  tiny = p < 1e-4
  safe_p = jnp.where(tiny, 0.5, p)
  ratio = jnp.where(tiny, 1.0 + 0.5 * p, -jnp.log1p(-safe_p) / safe_p)
  return log_p + jnp.log(ratio)


def _scaled_neg_complement(
  log_p: jax.Array, not_logp: jax.Array, log_w: jax.Array
) -> jax.Array:
  """``-log pi(Y != y) / w`` in log space.

  Below pi(y) = 1/2 the complement is ``log1p(-pi(y))`` exactly (as
  :mod:`slpo_jax.logprobs` computes it there), so the quotient comes from
  ``log pi(y)`` and survives pi(y) and w far below float range; above 1/2,
  w >= pi(y) > 1/2 and the given complement is used as it is.
  """
  small = log_p <= _LOG_HALF
  from_logp = jnp.exp(_log_neg_log1mexp(log_p) - log_w)
  # The unselected branch must stay finite for its gradient: clamp its w.
  from_not = -not_logp * jnp.exp(-jnp.where(small, 0.0, log_w))
  return jnp.where(small, from_logp, from_not)


def slpo_normalized_loss(
  policy_chosen_logps: ArrayLike,
  policy_chosen_not_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  policy_rejected_not_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
) -> jax.Array:
  r"""Hard SLPO (Eq. 8) divided by each pair's target weight w.

  .. math::
    L = -\log\pi(y_w) - \frac{1-w}{w}\log\pi(Y \ne y_w)
        - \frac{1}{w}\log\pi(Y \ne y_l)

  A pair's minimiser is Eq. 6's: pi(y_w) = w, pi(y_l) = 0. Where pairs share
  responses, the per-pair weights 1/w change how their targets average.

  Args:
    policy_chosen_logps: ``[...]`` log pi(y_w | x).
    policy_chosen_not_logps: ``[...]`` log pi(Y != y_w | x).
    policy_rejected_logps: ``[...]`` log pi(y_l | x).
    policy_rejected_not_logps: ``[...]`` log pi(Y != y_l | x).
    reference_chosen_logps: ``[...]`` log pi_ref(y_w | x).
    reference_rejected_logps: ``[...]`` log pi_ref(y_l | x).

  Returns:
    ``[...]`` per-example losses.

  References:
    Ho, "Supervised Learning Preference Optimization", Eq. 6 and 8; the
    normalisation by w is slpo-jax's variant.
  """
  log_w = slpo_target_log_weight(
    reference_chosen_logps, reference_rejected_logps
  )
  chosen = jnp.asarray(policy_chosen_logps)
  rejected = jnp.asarray(policy_rejected_logps)
  winner = -chosen + jnp.exp(log1mexp(log_w)) * _scaled_neg_complement(
    chosen, jnp.asarray(policy_chosen_not_logps), log_w
  )
  loser = _scaled_neg_complement(
    rejected, jnp.asarray(policy_rejected_not_logps), log_w
  )
  return winner + loser

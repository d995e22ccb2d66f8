"""SLPO: hard (Eq. 8), tempered, soft (Eq. 7) and token-level forms.

Each loss is one pure function of per-example sequence log-probabilities
(from :mod:`slpo_jax.logprobs`), returning per-example losses.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from slpo_jax import logprobs as _logprobs
from slpo_jax.losses._common import log1mexp
from slpo_jax.losses._common import weighted_log


def slpo_target_log_weight(
  reference_chosen_logps: ArrayLike, reference_rejected_logps: ArrayLike
) -> jax.Array:
  """``log w`` with ``w = min(1, pi_ref(y_w) + pi_ref(y_l))``, in log space.

  ``w`` exceeds 1 only when both responses are the same near-certain sequence
  (chosen equal to rejected); it is capped at 1 so that ``1 - w`` stays a
  probability. The sum is taken by ``logaddexp``: exponentiating two sequence
  probabilities of a few dozen tokens would underflow to 0.
  """
  return jnp.minimum(
    jnp.logaddexp(reference_chosen_logps, reference_rejected_logps), 0.0
  )


def _two_class_cross_entropy(
  log_target: jax.Array,
  log_rest_target: jax.Array,
  log_prob: jax.Array,
  log_rest_prob: jax.Array,
  temperature: float,
) -> jax.Array:
  """CE of softmax([t1, t2] / T) against softmax([p1, p2] / T)."""
  target = jax.nn.softmax(
    jnp.stack([log_target, log_rest_target], axis=-1) / temperature, axis=-1
  )
  log_pred = jax.nn.log_softmax(
    jnp.stack([log_prob, log_rest_prob], axis=-1) / temperature, axis=-1
  )
  return -jnp.sum(weighted_log(target, log_pred), axis=-1)


def slpo_loss(
  policy_chosen_logps: ArrayLike,
  policy_chosen_not_logps: ArrayLike,
  policy_rejected_not_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  temperature: float = 1.0,
  policy_rejected_logps: ArrayLike | None = None,
) -> jax.Array:
  r"""Hard SLPO (Eq. 8), optionally tempered.

  With ``w = pi_ref(y_w) + pi_ref(y_l)`` (capped at 1, see
  :func:`slpo_target_log_weight`):

  .. math::
    L = -\big[w \log\pi(y_w) + (1-w)\log\pi(Y \ne y_w)\big]
        - \log\pi(Y \ne y_l)

  The winner moves to the mass of both responses, the loser to zero, and the
  rest of the distribution keeps its reference mass.

  ``temperature`` t > 1 gives the tempered form: each half becomes the
  two-class cross-entropy of ``softmax([log pi(y), log pi(Y != y)] / t)``
  against ``softmax([log w, log(1 - w)] / t)`` (target [0, 1] for the loser),
  i.e. both distributions are replaced by normalised t-th roots. At t = 1 the
  normaliser is ``pi(y) + pi(Y != y) = 1`` and the two forms agree; this
  function then evaluates Eq. 8 exactly as written.

  The winner's gradient with respect to ``log pi(y_w)`` is
  ``(pi(y_w) - w) / (1 - pi(y_w))``, which scales with a sequence probability
  and vanishes for long responses; the tempered form raises it to
  ``pi(y_w)^{1/t}`` scale.

  Args:
    policy_chosen_logps: ``[...]`` log pi(y_w | x).
    policy_chosen_not_logps: ``[...]`` log pi(Y != y_w | x).
    policy_rejected_not_logps: ``[...]`` log pi(Y != y_l | x).
    reference_chosen_logps: ``[...]`` log pi_ref(y_w | x).
    reference_rejected_logps: ``[...]`` log pi_ref(y_l | x).
    temperature: t >= 1; 1 is Eq. 8.
    policy_rejected_logps: ``[...]`` log pi(y_l | x); required when
      ``temperature != 1``, where the loser's two-class softmax needs it.

  Returns:
    ``[...]`` per-example losses.

  Raises:
    ValueError: for ``temperature < 1``, or ``temperature != 1`` without
      ``policy_rejected_logps``.

  References:
    Ho, "Supervised Learning Preference Optimization", Eq. 6 and 8.
  """
  if temperature < 1.0:
    raise ValueError(f"temperature must be >= 1, got {temperature}")
  log_w = slpo_target_log_weight(
    reference_chosen_logps, reference_rejected_logps
  )
  log_rest = log1mexp(log_w)
  chosen = jnp.asarray(policy_chosen_logps)
  chosen_not = jnp.asarray(policy_chosen_not_logps)
  rejected_not = jnp.asarray(policy_rejected_not_logps)
  if temperature == 1.0:
    winner = -(
      jnp.exp(log_w) * chosen + weighted_log(jnp.exp(log_rest), chosen_not)
    )
    return winner - rejected_not
  if policy_rejected_logps is None:
    raise ValueError(
      "slpo_loss with temperature != 1 needs policy_rejected_logps"
    )
  winner = _two_class_cross_entropy(
    log_w, log_rest, chosen, chosen_not, temperature
  )
  # The loser's target is [0, 1]: -log softmax([a, b] / t)[1].
  loser = jax.nn.softplus(
    (jnp.asarray(policy_rejected_logps) - rejected_not) / temperature
  )
  return winner + loser


def slpo_soft_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  policy_pair_not_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  alpha: float = 0.9,
  temperature: float = 1.0,
) -> jax.Array:
  r"""Soft SLPO (Eq. 7): a three-way target over y_w, y_l and the rest.

  With ``w = pi_ref(y_w) + pi_ref(y_l)`` (capped at 1):

  .. math::
    L = -\big[\alpha w \log\pi(y_w) + (1-\alpha) w \log\pi(y_l)
        + (1 - w)\log\pi(Y \notin \{y_w, y_l\})\big]

  ``temperature`` t > 1 replaces target and prediction by the normalised
  t-th roots of the three masses, as in :func:`slpo_loss`.

  Args:
    policy_chosen_logps: ``[...]`` log pi(y_w | x).
    policy_rejected_logps: ``[...]`` log pi(y_l | x).
    policy_pair_not_logps: ``[...]`` log pi(Y not in {y_w, y_l} | x), from
      :func:`slpo_jax.pair_not_logps`.
    reference_chosen_logps: ``[...]`` log pi_ref(y_w | x).
    reference_rejected_logps: ``[...]`` log pi_ref(y_l | x).
    alpha: share of w given to the winner, ``0.5 < alpha <= 1``.
    temperature: t >= 1; 1 is Eq. 7.

  Returns:
    ``[...]`` per-example losses.

  References:
    Ho, "Supervised Learning Preference Optimization", Eq. 7.
  """
  if not 0.5 < alpha <= 1.0:
    raise ValueError(f"alpha must satisfy 0.5 < alpha <= 1, got {alpha}")
  if temperature < 1.0:
    raise ValueError(f"temperature must be >= 1, got {temperature}")
  log_w = slpo_target_log_weight(
    reference_chosen_logps, reference_rejected_logps
  )
  log_targets = jnp.stack(
    [
      log_w + jnp.log(alpha),
      log_w + (jnp.log1p(-alpha) if alpha < 1.0 else -jnp.inf),
      log1mexp(log_w),
    ],
    axis=-1,
  )
  log_preds = jnp.stack(
    [
      jnp.asarray(policy_chosen_logps),
      jnp.asarray(policy_rejected_logps),
      jnp.asarray(policy_pair_not_logps),
    ],
    axis=-1,
  )
  if temperature != 1.0:
    log_targets = jax.nn.log_softmax(log_targets / temperature, axis=-1)
    log_preds = jax.nn.log_softmax(log_preds / temperature, axis=-1)
  return -jnp.sum(weighted_log(jnp.exp(log_targets), log_preds), axis=-1)


def slpo_token_weights(
  reference_logits: ArrayLike,
  chosen_labels: ArrayLike,
  rejected_labels: ArrayLike,
) -> jax.Array:
  """Per-token targets ``w_t = p_ref,t(y_w,t) + p_ref,t(y_l,t)`` for the token form.

  Where the two tokens coincide, the probability is counted once.

  Args:
    reference_logits: ``[..., T, V]`` reference logits on the chosen sequence.
    chosen_labels: ``[..., T]`` ids of y_w.
    rejected_labels: ``[..., T]`` ids of y_l, aligned by position.

  Returns:
    ``[..., T]`` weights in [0, 1].
  """
  stats = _logprobs.token_logps(
    reference_logits, chosen_labels, also_exclude=rejected_labels
  )
  # 1 - w_t is exactly the mass outside both tokens.
  return -jnp.expm1(stats.not_logp)


def slpo_token_loss(
  logits: ArrayLike,
  chosen_labels: ArrayLike,
  rejected_labels: ArrayLike,
  target_weights: ArrayLike,
  *,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""Token-level SLPO, the form in the earlier draft's code.

  At every counted step the next-token distribution is split three ways: the
  chosen token, the rejected token and all others, with targets
  ``[w_t, 0, 1 - w_t]``:

  .. math::
    L = -\frac{1}{\sum_t m_t}\sum_t m_t\big[w_t \log p_t(y_{w,t})
        + (1 - w_t)\log(1 - p_t(y_{w,t}) - p_t(y_{l,t}))\big]

  Tokens are aligned by position, as in the draft; :func:`slpo_token_weights`
  gives the natural ``w_t`` from a reference model.

  Args:
    logits: ``[..., T, V]`` policy logits teacher-forced on y_w.
    chosen_labels: ``[..., T]`` ids of y_w.
    rejected_labels: ``[..., T]`` ids of y_l, aligned by position.
    target_weights: ``[..., T]`` w_t in [0, 1].
    where: optional ``[..., T]`` bool mask of counted tokens.

  Returns:
    ``[...]`` per-example losses, averaged over counted tokens (0 for a row
    with none).

  References:
    Ho, "Supervised Learning Preference Optimization" (earlier draft), section 6
    code listing.
  """
  _logprobs._check_logits_labels(logits, chosen_labels)
  where = _logprobs._check_where(where, jnp.shape(chosen_labels))
  stats = _logprobs.token_logps(
    logits,
    _logprobs.masked_ids(chosen_labels, where, fill=0),
    also_exclude=_logprobs.masked_ids(rejected_labels, where, fill=-1),
  )
  return slpo_token_loss_from_token_logps(
    stats.logp, stats.not_logp, target_weights, where=where
  )


def slpo_token_loss_from_token_logps(
  chosen_token_logps: ArrayLike,
  chosen_token_pair_not_logps: ArrayLike,
  target_weights: ArrayLike,
  *,
  where: ArrayLike | None = None,
) -> jax.Array:
  """:func:`slpo_token_loss` from per-token values instead of logits.

  Args:
    chosen_token_logps: ``[..., T]`` ``log p_t(y_w,t)``.
    chosen_token_pair_not_logps: ``[..., T]``
      ``log(1 - p_t(y_w,t) - p_t(y_l,t))``, as from
      ``token_logps(logits, chosen, also_exclude=rejected).not_logp``.
    target_weights: ``[..., T]`` w_t in [0, 1].
    where: optional ``[..., T]`` bool mask of counted tokens.

  Returns:
    ``[...]`` per-example losses, averaged over counted tokens.
  """
  chosen_token_logps = jnp.asarray(chosen_token_logps)
  where = _logprobs._check_where(where, chosen_token_logps.shape)
  weights = jnp.clip(jnp.asarray(target_weights), 0.0, 1.0)
  per_token = -(
    weighted_log(weights, chosen_token_logps)
    + weighted_log(1.0 - weights, jnp.asarray(chosen_token_pair_not_logps))
  )
  per_token = jnp.where(where, per_token, 0.0)
  count = jnp.sum(where, axis=-1)
  return jnp.sum(per_token, axis=-1) / jnp.maximum(count, 1)


def slpo_token_loss_from_reference(
  policy_chosen_token_logps: ArrayLike,
  policy_chosen_token_pair_not_logps: ArrayLike,
  reference_chosen_token_pair_not_logps: ArrayLike,
  *,
  chosen_where: ArrayLike | None = None,
) -> jax.Array:
  """Token-level SLPO with the draft's targets, from the reference's values.

  The targets are ``w_t = p_ref,t(y_w,t) + p_ref,t(y_l,t)``, that is
  ``1 - exp(reference_chosen_token_pair_not_logps)`` (as
  :func:`slpo_token_weights` gives from logits), held constant.

  Args:
    policy_chosen_token_logps: ``[..., T]`` the policy's ``log p_t(y_w,t)``.
    policy_chosen_token_pair_not_logps: ``[..., T]`` the policy's
      ``log(1 - p_t(y_w,t) - p_t(y_l,t))`` on y_w's prefixes.
    reference_chosen_token_pair_not_logps: ``[..., T]`` the same value under
      the reference model.
    chosen_where: optional ``[..., T]`` bool mask of y_w's counted tokens.

  Returns:
    ``[...]`` per-example losses, averaged over counted tokens.
  """
  reference = jax.lax.stop_gradient(
    jnp.asarray(reference_chosen_token_pair_not_logps)
  )
  # 1 - w_t is exactly the reference's mass outside both tokens.
  weights = -jnp.expm1(reference)
  return slpo_token_loss_from_token_logps(
    policy_chosen_token_logps,
    policy_chosen_token_pair_not_logps,
    weights,
    where=chosen_where,
  )

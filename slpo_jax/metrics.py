"""Per-example preference metrics under the names users know from TRL."""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from slpo_jax.losses import slpo_target_log_weight
from slpo_jax.losses._common import log_ratios


def preference_metrics(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  beta: float = 0.1,
  policy_chosen_not_logps: ArrayLike | None = None,
  policy_rejected_not_logps: ArrayLike | None = None,
) -> dict[str, jax.Array]:
  """Implicit rewards, accuracies and log-probs, one value per example.

  ``rewards/chosen`` is ``beta * (log pi(y_w) - log pi_ref(y_w))`` (DPO's
  implicit reward), and likewise for the rejected response. Values are
  per-example ``[...]`` arrays so that a caller can average them with its own
  example weights (for instance across accumulated micro-batches).

  Args:
    policy_chosen_logps: ``[...]`` log pi(y_w | x).
    policy_rejected_logps: ``[...]`` log pi(y_l | x).
    reference_chosen_logps: ``[...]`` log pi_ref(y_w | x).
    reference_rejected_logps: ``[...]`` log pi_ref(y_l | x).
    beta: reward scale.
    policy_chosen_not_logps: optional ``[...]`` log pi(Y != y_w | x).
    policy_rejected_not_logps: optional ``[...]`` log pi(Y != y_l | x).

  Returns:
    A dict with ``rewards/chosen``, ``rewards/rejected``,
    ``rewards/accuracies`` (1.0 where the chosen reward is larger),
    ``rewards/margins``, ``logps/chosen``, ``logps/rejected``,
    ``slpo/target_log_weight`` (log w of SLPO), and, when given,
    ``logps/chosen_not`` and ``logps/rejected_not``.
  """
  chosen, rejected = log_ratios(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  chosen_rewards = beta * chosen
  rejected_rewards = beta * rejected
  metrics = {
    "rewards/chosen": chosen_rewards,
    "rewards/rejected": rejected_rewards,
    "rewards/accuracies": (chosen_rewards > rejected_rewards).astype(
      chosen_rewards.dtype
    ),
    "rewards/margins": chosen_rewards - rejected_rewards,
    "logps/chosen": jnp.asarray(policy_chosen_logps),
    "logps/rejected": jnp.asarray(policy_rejected_logps),
    "slpo/target_log_weight": slpo_target_log_weight(
      reference_chosen_logps, reference_rejected_logps
    ),
  }
  if policy_chosen_not_logps is not None:
    metrics["logps/chosen_not"] = jnp.asarray(policy_chosen_not_logps)
  if policy_rejected_not_logps is not None:
    metrics["logps/rejected_not"] = jnp.asarray(policy_rejected_not_logps)
  return metrics

"""KTO: binary feedback on unpaired (prompt, completion, label) examples.

Unlike the pair table's losses, KTO reads one completion per example, its
label (desirable or not), and a reference point estimated from mismatched
prompt-completion rows of the same batch (each prompt with another
example's completion). Its inputs are therefore per-example sequence
log-probabilities of two row sets, not :class:`slpo_jax.PairStats`.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def kto_reference_point(
  policy_kl_logps: ArrayLike,
  reference_kl_logps: ArrayLike,
  counted: ArrayLike,
) -> jax.Array:
  r"""KTO's reference point z: the batch's KL estimate, at least 0.

  .. math::
    z = \max\Big(0, \frac{1}{n}\sum_{j}
        \log\frac{\pi(y'_j \mid x_j)}{\pi_{ref}(y'_j \mid x_j)}\Big)

  over the counted examples, where ``y'_j`` is a completion of another
  example of the batch. No gradient flows through it (TRL computes it
  without gradient, and the paper treats it as a constant).

  Args:
    policy_kl_logps: ``[B]`` ``log pi(y'_j | x_j)``.
    reference_kl_logps: ``[B]`` ``log pi_ref(y'_j | x_j)``.
    counted: ``[B]`` bool, False for padding examples.

  Returns:
    The scalar z.

  References:
    Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic
    Optimization", arXiv:2402.01306, the KL estimate of section 4.
  """
  counted = jnp.asarray(counted)
  ratio = jnp.asarray(policy_kl_logps) - jnp.asarray(reference_kl_logps)
  total = jnp.sum(jnp.where(counted, ratio, 0.0))
  mean = total / jnp.maximum(jnp.sum(counted), 1)
  return jax.lax.stop_gradient(jnp.maximum(mean, 0.0))


def kto_loss(
  policy_logps: ArrayLike,
  reference_logps: ArrayLike,
  desirable: ArrayLike,
  reference_point: ArrayLike,
  *,
  beta: float = 0.1,
  desirable_weight: float = 1.0,
  undesirable_weight: float = 1.0,
) -> jax.Array:
  r"""KTO's per-example loss, with TRL's desirable and undesirable weights.

  With :math:`r = \log\pi(y|x) - \log\pi_{ref}(y|x)` and the reference
  point z (:func:`kto_reference_point`):

  .. math::
    L = \begin{cases}
      \lambda_D\,(1 - \sigma(\beta(r - z))) & y \text{ desirable} \\
      \lambda_U\,(1 - \sigma(\beta(z - r))) & y \text{ undesirable}
    \end{cases}

  The batch's loss is the mean over its examples, as in TRL.

  Args:
    policy_logps: ``[B]`` ``log pi(y | x)``.
    reference_logps: ``[B]`` ``log pi_ref(y | x)``.
    desirable: ``[B]`` bool labels.
    reference_point: the scalar z.
    beta: the reward scale.
    desirable_weight: lambda_D.
    undesirable_weight: lambda_U.

  Returns:
    ``[B]`` per-example losses.

  References:
    Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic
    Optimization", arXiv:2402.01306, Eq. 7.
  """
  r = jnp.asarray(policy_logps) - jnp.asarray(reference_logps)
  desirable = jnp.asarray(desirable, bool)
  margin = jnp.where(desirable, r - reference_point, reference_point - r)
  weight = jnp.where(desirable, desirable_weight, undesirable_weight)
  # 1 - sigmoid(h) = sigmoid(-h), exact in the tails.
  return weight * jax.nn.sigmoid(-beta * margin)

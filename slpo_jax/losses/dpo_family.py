"""The DPO family: DPO (with cDPO smoothing), IPO, SLiC hinge, SimPO, ORPO.

Each loss is one pure function of per-example sequence log-probabilities,
returning per-example losses; hyperparameters are keyword-only.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from slpo_jax.losses._common import log1mexp
from slpo_jax.losses._common import log_ratio_margin


def dpo_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  beta: float = 0.1,
  label_smoothing: float = 0.0,
) -> jax.Array:
  r"""Direct Preference Optimization, with conservative label smoothing.

  .. math::
    h = \beta\Big[\log\frac{\pi(y_w)}{\pi_{ref}(y_w)}
                 - \log\frac{\pi(y_l)}{\pi_{ref}(y_l)}\Big], \quad
    L = -(1-\epsilon)\log\sigma(h) - \epsilon\log\sigma(-h)

  ``label_smoothing`` = epsilon is the probability that a label is flipped
  (cDPO); 0 gives the original loss.

  Args:
    policy_chosen_logps: ``[...]`` log pi(y_w | x).
    policy_rejected_logps: ``[...]`` log pi(y_l | x).
    reference_chosen_logps: ``[...]`` log pi_ref(y_w | x).
    reference_rejected_logps: ``[...]`` log pi_ref(y_l | x).
    beta: inverse temperature of the implicit reward.
    label_smoothing: cDPO's flip probability, in [0, 0.5).

  Returns:
    ``[...]`` per-example losses.

  Example:
    >>> import jax.numpy as jnp
    >>> float(dpo_loss(jnp.array(-2.), jnp.array(-3.), jnp.array(-2.),
    ...                jnp.array(-3.), beta=0.1))  # log 2 at the reference
    0.6931...

  References:
    Rafailov et al., "Direct Preference Optimization", arXiv:2305.18290, Eq. 7;
    Ho, "Supervised Learning Preference Optimization", Eq. 1; Mitchell, "A note
    on DPO with noisy preferences" (cDPO), 2023.
  """
  h = beta * log_ratio_margin(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  # log_sigmoid is the stable form of log(sigmoid(h)) for large |h|.
  return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(
    h
  ) - label_smoothing * jax.nn.log_sigmoid(-h)


def ipo_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  beta: float = 0.1,
) -> jax.Array:
  r"""Identity Preference Optimization: squared distance to a fixed margin.

  .. math::
    L = \Big(\log\frac{\pi(y_w)\,\pi_{ref}(y_l)}{\pi(y_l)\,\pi_{ref}(y_w)}
        - \frac{1}{2\beta}\Big)^2

  ``beta`` is the paper's tau. Unlike DPO the optimum is a finite margin, so
  the policy stays near the reference on deterministic preferences.

  Returns:
    ``[...]`` per-example losses.

  References:
    Azar et al., "A General Theoretical Paradigm to Understand Learning from
    Human Preferences", arXiv:2310.12036, Eq. 17.
  """
  h = log_ratio_margin(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  return jnp.square(h - 1.0 / (2.0 * beta))


def hinge_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  beta: float = 0.1,
) -> jax.Array:
  r"""SLiC's calibration hinge on the reference-normalised margin.

  .. math::
    L = \max\Big(0,\; 1 - \beta\Big[\log\frac{\pi(y_w)}{\pi_{ref}(y_w)}
                 - \log\frac{\pi(y_l)}{\pi_{ref}(y_l)}\Big]\Big)

  ``1 / beta`` is SLiC's margin delta. The reference terms make the loss zero
  at the same place as the reference-free SLiC form shifted by the reference
  margin, as in common DPO-family trainers.

  Returns:
    ``[...]`` per-example losses.

  References:
    Zhao et al., "SLiC-HF: Sequence Likelihood Calibration with Human
    Feedback", arXiv:2305.10425, Eq. 1.
  """
  h = log_ratio_margin(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  return jax.nn.relu(1.0 - beta * h)


def simpo_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  chosen_lengths: ArrayLike,
  rejected_lengths: ArrayLike,
  *,
  beta: float = 2.0,
  gamma: float = 0.5,
) -> jax.Array:
  r"""SimPO: length-normalised, reference-free, with a target margin.

  .. math::
    L = -\log\sigma\Big(\frac{\beta}{|y_w|}\log\pi(y_w)
                        - \frac{\beta}{|y_l|}\log\pi(y_l) - \gamma\Big)

  Args:
    policy_chosen_logps: ``[...]`` log pi(y_w | x) (summed over tokens).
    policy_rejected_logps: ``[...]`` log pi(y_l | x).
    chosen_lengths: ``[...]`` number of counted tokens of y_w (at least 1).
    rejected_lengths: ``[...]`` number of counted tokens of y_l (at least 1).
    beta: reward scale.
    gamma: target reward margin.

  Returns:
    ``[...]`` per-example losses.

  References:
    Meng et al., "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", arXiv:2405.14734, Eq. 6.
  """
  chosen_avg = jnp.asarray(policy_chosen_logps) / jnp.maximum(chosen_lengths, 1)
  rejected_avg = jnp.asarray(policy_rejected_logps) / jnp.maximum(
    rejected_lengths, 1
  )
  return -jax.nn.log_sigmoid(beta * (chosen_avg - rejected_avg) - gamma)


def orpo_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  chosen_lengths: ArrayLike,
  rejected_lengths: ArrayLike,
  *,
  beta: float = 0.1,
) -> jax.Array:
  r"""ORPO: the chosen response's NLL plus a log odds-ratio penalty.

  With the length-normalised probability ``P(y) = exp(log pi(y) / |y|)`` and
  ``odds(y) = P(y) / (1 - P(y))``:

  .. math::
    L = -\frac{\log\pi(y_w)}{|y_w|}
        - \beta \log\sigma\Big(\log\frac{odds(y_w)}{odds(y_l)}\Big)

  ``log(1 - P)`` is computed by :func:`log1mexp`, which stays finite and
  accurate as P approaches 1.

  Returns:
    ``[...]`` per-example losses.

  References:
    Hong et al., "ORPO: Monolithic Preference Optimization without Reference
    Model", arXiv:2403.07691, Eq. 6-7.
  """
  chosen_avg = jnp.asarray(policy_chosen_logps) / jnp.maximum(chosen_lengths, 1)
  rejected_avg = jnp.asarray(policy_rejected_logps) / jnp.maximum(
    rejected_lengths, 1
  )
  log_odds = (chosen_avg - log1mexp(chosen_avg)) - (
    rejected_avg - log1mexp(rejected_avg)
  )
  return -chosen_avg - beta * jax.nn.log_sigmoid(log_odds)

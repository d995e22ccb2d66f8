"""The DPO variants of TRL's ``DPOTrainer``, one pure function each.

They follow TRL 1.16's definitions (``tests/golden/make_trl_golden.py``
evaluates TRL's own code; ``tests/test_dpo_variants.py`` compares). With

  r_w = log pi(y_w) - log pi_ref(y_w),  r_l = log pi(y_l) - log pi_ref(y_l),
  h = beta (r_w - r_l),

every function takes per-example sequence log-probabilities and returns
per-example losses; hyperparameters are keyword-only.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from slpo_jax.losses import dpo_family
from slpo_jax.losses._common import log_ratio_margin
from slpo_jax.losses._common import log_ratios


def _check_smoothing(label_smoothing: float, low_open: bool = False) -> None:
  if low_open and not 0.0 < label_smoothing < 0.5:
    raise ValueError(
      f"label_smoothing must be in (0, 0.5), got {label_smoothing}"
    )
  if not 0.0 <= label_smoothing < 0.5:
    raise ValueError(
      f"label_smoothing must be in [0, 0.5), got {label_smoothing}"
    )


def sigmoid_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  beta: float = 0.1,
) -> jax.Array:
  r"""DPO as TRL's ``sigmoid`` loss computes it: no label smoothing.

  .. math:: L = -\log\sigma(h)

  From TRL 0.29 on, ``sigmoid`` ignores ``label_smoothing``; cDPO is
  :func:`slpo_jax.losses.dpo_loss` (the table's ``dpo``).

  References:
    Rafailov et al., "Direct Preference Optimization", arXiv:2305.18290,
    Eq. 7.
  """
  return dpo_family.dpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    beta=beta,
  )


def robust_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  beta: float = 0.1,
  label_smoothing: float = 0.0,
) -> jax.Array:
  r"""Robust DPO (rDPO): DPO debiased for labels flipped with probability eps.

  .. math::
    L = \frac{-(1-\epsilon)\log\sigma(h) + \epsilon\log\sigma(-h)}{1 - 2\epsilon}

  Unlike cDPO, whose expected loss under noise is smoothed, this loss is an
  unbiased estimate of the clean DPO loss.

  Args:
    policy_chosen_logps: ``[...]`` log pi(y_w | x).
    policy_rejected_logps: ``[...]`` log pi(y_l | x).
    reference_chosen_logps: ``[...]`` log pi_ref(y_w | x).
    reference_rejected_logps: ``[...]`` log pi_ref(y_l | x).
    beta: inverse temperature of the implicit reward.
    label_smoothing: eps, the flip probability, in [0, 0.5).

  Returns:
    ``[...]`` per-example losses.

  References:
    Chowdhury et al., "Provably Robust DPO: Aligning Language Models with
    Noisy Feedback", arXiv:2403.00409 (the rDPO loss).
  """
  _check_smoothing(label_smoothing)
  h = beta * log_ratio_margin(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  clean = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(h)
  flipped = -label_smoothing * jax.nn.log_sigmoid(-h)
  return (clean - flipped) / (1.0 - 2.0 * label_smoothing)


def exo_pair_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  beta: float = 0.1,
  label_smoothing: float = 1e-3,
) -> jax.Array:
  r"""EXO for pairs: reverse KL from the model's to the labels' distribution.

  With q = softmax over {y_w, y_l} of beta times the log-ratios, q_w =
  sigma(h), and the label distribution [1 - eps, eps]:

  .. math::
    L = q_w(\log q_w - \log(1-\epsilon)) + q_l(\log q_l - \log\epsilon)

  Args:
    policy_chosen_logps: ``[...]`` log pi(y_w | x).
    policy_rejected_logps: ``[...]`` log pi(y_l | x).
    reference_chosen_logps: ``[...]`` log pi_ref(y_w | x).
    reference_rejected_logps: ``[...]`` log pi_ref(y_l | x).
    beta: inverse temperature of the implicit reward.
    label_smoothing: eps in (0, 0.5); the KL is infinite at eps = 0.

  Returns:
    ``[...]`` per-example losses.

  References:
    Ji et al., "Towards Efficient Exact Optimization of Language Model
    Alignment", arXiv:2402.00856, Eq. 16.
  """
  _check_smoothing(label_smoothing, low_open=True)
  h = beta * log_ratio_margin(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  log_q_chosen = jax.nn.log_sigmoid(h)
  log_q_rejected = jax.nn.log_sigmoid(-h)
  return jnp.exp(log_q_chosen) * (
    log_q_chosen - jnp.log1p(-label_smoothing)
  ) + jnp.exp(log_q_rejected) * (log_q_rejected - jnp.log(label_smoothing))


def nca_pair_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  beta: float = 0.1,
) -> jax.Array:
  r"""NCA for pairs: absolute rewards, so the chosen likelihood cannot fall.

  With rewards s_w = beta r_w and s_l = beta r_l:

  .. math::
    L = -\log\sigma(s_w) - \tfrac12\log\sigma(-s_w) - \tfrac12\log\sigma(-s_l)

  References:
    Chen et al., "Noise Contrastive Alignment of Language Models with
    Explicit Rewards", arXiv:2402.05369 (the pairwise NCA loss, K = 2).
  """
  chosen, rejected = log_ratios(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  return (
    -jax.nn.log_sigmoid(beta * chosen)
    - 0.5 * jax.nn.log_sigmoid(-beta * chosen)
    - 0.5 * jax.nn.log_sigmoid(-beta * rejected)
  )


def sppo_hard_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  beta: float = 0.1,
) -> jax.Array:
  r"""SPPO with hard win probabilities (1 for y_w, 0 for y_l).

  .. math:: L = (r_w - \tfrac{1}{2\beta})^2 + (r_l + \tfrac{1}{2\beta})^2

  References:
    Wu et al., "Self-Play Preference Optimization for Language Model
    Alignment", arXiv:2405.00675, Eq. 4.7 (Algorithm 1) with P = 1 and 0.
  """
  chosen, rejected = log_ratios(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  margin = 0.5 / beta
  return jnp.square(chosen - margin) + jnp.square(rejected + margin)


def apo_zero_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  beta: float = 0.1,
) -> jax.Array:
  r"""APO-zero: raise the chosen likelihood, lower the rejected one.

  .. math:: L = 1 - \sigma(\beta r_w) + \sigma(\beta r_l)

  For chosen responses better than the model's own outputs.

  References:
    D'Oosterlinck et al., "Anchored Preference Optimization and Contrastive
    Revisions", arXiv:2408.06266, Eq. 7.
  """
  chosen, rejected = log_ratios(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  return 1.0 - jax.nn.sigmoid(beta * chosen) + jax.nn.sigmoid(beta * rejected)


def apo_down_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  beta: float = 0.1,
) -> jax.Array:
  r"""APO-down: lower both likelihoods, the rejected one more.

  .. math:: L = \sigma(\beta r_w) + 1 - \sigma(\beta (r_w - r_l))

  For chosen responses worse than the model's own outputs.

  References:
    D'Oosterlinck et al., "Anchored Preference Optimization and Contrastive
    Revisions", arXiv:2408.06266, Eq. 8.
  """
  chosen, rejected = log_ratios(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  return (
    jax.nn.sigmoid(beta * chosen)
    + 1.0
    - jax.nn.sigmoid(beta * (chosen - rejected))
  )


def discopop_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  beta: float = 0.1,
  discopop_tau: float = 0.05,
) -> jax.Array:
  r"""DiscoPOP: a blend of the logistic and exponential losses of h.

  .. math::
    m = \sigma(h / \tau), \quad L = (1 - m)(-\log\sigma(h)) + m e^{-h}

  Args:
    policy_chosen_logps: ``[...]`` log pi(y_w | x).
    policy_rejected_logps: ``[...]`` log pi(y_l | x).
    reference_chosen_logps: ``[...]`` log pi_ref(y_w | x).
    reference_rejected_logps: ``[...]`` log pi_ref(y_l | x).
    beta: inverse temperature of the implicit reward.
    discopop_tau: tau > 0, the temperature of the blend.

  Returns:
    ``[...]`` per-example losses.

  References:
    Chris Lu et al., "Discovering Preference Optimization Algorithms with
    and for Large Language Models", arXiv:2406.08414, Eq. 5.
  """
  if discopop_tau <= 0:
    raise ValueError(f"discopop_tau must be positive, got {discopop_tau}")
  h = beta * log_ratio_margin(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  blend = jax.nn.sigmoid(h / discopop_tau)
  return (1.0 - blend) * -jax.nn.log_sigmoid(h) + blend * jnp.exp(-h)


def sigmoid_norm_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  chosen_lengths: ArrayLike,
  rejected_lengths: ArrayLike,
  *,
  beta: float = 0.1,
) -> jax.Array:
  r"""DPO on log-ratios averaged per response token (TRL's ``sigmoid_norm``).

  .. math:: L = -\log\sigma\big(\beta (r_w / |y_w| - r_l / |y_l|)\big)

  Lengths below 1 count as 1.

  References:
    Rafailov et al., "Direct Preference Optimization", arXiv:2305.18290,
    Eq. 7, with per-token log-ratios.
  """
  chosen, rejected = log_ratios(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  chosen = chosen / jnp.maximum(jnp.asarray(chosen_lengths), 1)
  rejected = rejected / jnp.maximum(jnp.asarray(rejected_lengths), 1)
  return -jax.nn.log_sigmoid(beta * (chosen - rejected))


def sft_loss(
  policy_chosen_logps: ArrayLike,
  chosen_lengths: ArrayLike,
) -> jax.Array:
  r"""The negative log-likelihood of the chosen response, per token.

  .. math:: L = -\log\pi(y_w) / |y_w|

  The SFT term of RPO and MPO. TRL averages over all chosen tokens of the
  batch at once; this is the per-example token mean, which equals it when
  the responses of a batch have the same length, and keeps a pair's weight
  independent of the other pairs in its batch.

  References:
    Pang et al., "Iterative Reasoning Preference Optimization",
    arXiv:2404.19733 (the NLL term of its loss).
  """
  lengths = jnp.maximum(jnp.asarray(chosen_lengths), 1)
  return -jnp.asarray(policy_chosen_logps) / lengths

"""Options of the DPO family that change every term's inputs or weight.

TRL's ``DPOTrainer`` has three settings that are not losses of their own but
act on the log-probabilities every loss reads, or on its result:

* ``ld_alpha`` (LD-DPO): the response tokens beyond the shorter response's
  length count ``alpha`` times (:func:`length_desensitized_logps`);
* ``f_divergence_type`` (f-DPO): each response's log-ratio is replaced by
  the derivative of the chosen f-divergence at the probability ratio
  (:func:`f_divergence_scores`);
* ``use_weighting`` (WPO): each pair's loss is multiplied by the policy's
  length-normalised, aligned probability of both responses
  (:func:`wpo_weights`).

Each is a pure function here; :class:`DpoOptions` applies them around the
table's losses (:class:`slpo_jax.losses.WeightedLoss`), in TRL 1.16's order:
the log-probabilities are desensitised first, then turned into scores, the
losses computed, and each term's per-example loss weighted.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from slpo_jax.pair_stats import PairStats

F_DIVERGENCES = (
  "reverse_kl",
  "forward_kl",
  "js_divergence",
  "alpha_divergence",
)

# The table's losses that read each response's log-ratio (and its length)
# only, so that replacing the log-ratio by an f-divergence score is the f-DPO
# loss: TRL's list ('sigmoid', 'sigmoid_norm', 'hinge', 'ipo', 'exo_pair',
# 'robust', 'discopop', 'sft'), with the table's cDPO 'dpo'.
F_DIVERGENCE_LOSSES = frozenset(
  {
    "dpo",
    "sigmoid",
    "sigmoid_norm",
    "hinge",
    "ipo",
    "exo_pair",
    "robust",
    "discopop",
    "sft",
  }
)
# Losses that read the policy's plain log-probabilities whatever the options
# (TRL's 'sft' term is the mean of the raw per-token log-probs).
RAW_LOGPS_LOSSES = frozenset({"sft"})
# Losses that sort the batch: a per-pair weight would follow the wrong pair.
UNWEIGHTABLE_LOSSES = frozenset({"aot", "aot_unpaired"})
# What LD-DPO can desensitise: sequence log-probs and data fields. A loss
# that also reads complements or per-token values (the SLPO family) would
# see a log pi(y) inconsistent with them.
_LENGTH_DESENSITIZABLE = frozenset(
  {
    "chosen_logps",
    "rejected_logps",
    "chosen_lengths",
    "rejected_lengths",
    "counted",
  }
)
# exp(t) of the alpha-divergence score is capped at t = 80, as TRL caps it
# for float32 (exp(88.7) overflows there).
_ALPHA_EXPONENT_CAP = 80.0


@jax.custom_jvp
def _expm1(x: jax.Array) -> jax.Array:
  """``exp(x) - 1``, accurate near 0, with the derivative ``exp(x)``.

  ``jnp.expm1``'s derivative is computed as ``expm1(x) + 1``, which is 0 in
  float64 below x = -37 where ``exp(x)`` is not; the scores' gradients at
  large log-ratios need the latter.
  """
  return jnp.expm1(x)


@_expm1.defjvp
def _expm1_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return jnp.expm1(x), jnp.exp(x) * dx


def length_desensitized_logps(
  logps: ArrayLike, shared_logps: ArrayLike, *, ld_alpha: float
) -> jax.Array:
  r"""LD-DPO's log-probability: the tail beyond the shared length scaled.

  .. math::
    \log\hat\pi(y) = \sum_{t \le l_p} \log p_t(y_t)
      + \alpha \sum_{t > l_p} \log p_t(y_t), \quad l_p = \min(|y_w|, |y_l|)

  Args:
    logps: ``[...]`` ``log pi(y)`` over the whole response.
    shared_logps: ``[...]`` the sum over its first ``l_p`` tokens
      (``PairStats.chosen_shared_logps``).
    ld_alpha: the weight of the tail, in [0, 1]; 1 is plain DPO.

  Returns:
    ``[...]`` the desensitised log-probabilities.

  References:
    Liu et al., "Length Desensitization in Direct Preference Optimization",
    arXiv:2409.06411 (its desensitised likelihood).
  """
  shared_logps = jnp.asarray(shared_logps)
  return shared_logps + ld_alpha * (jnp.asarray(logps) - shared_logps)


def f_divergence_scores(
  log_ratio: ArrayLike,
  *,
  f_divergence_type: str = "reverse_kl",
  f_alpha_divergence_coef: float = 0.5,
) -> jax.Array:
  r"""f-DPO's score of a response: ``f'`` of its probability ratio.

  With :math:`u = \pi(y) / \pi_{ref}(y)` (``log_ratio`` = log u), the
  implicit reward of f-DPO is :math:`\beta f'(u)`:

  .. math::
    \text{reverse KL: } \log u, \quad
    \text{forward KL: } 1 - u^{-1}, \quad
    \text{JS: } \log\frac{2u}{1 + u}, \quad
    \alpha\text{: } \frac{u^{\alpha - 1} - 1}{\alpha - 1}

  (JS as ``log 2 + log_sigmoid(log u)``; alpha within 1e-6 of 1 is reverse
  KL; the alpha form's exponent is capped at 80 as TRL 1.16 caps it, where
  its value no longer moves.)

  Args:
    log_ratio: ``[...]`` ``log pi(y) - log pi_ref(y)``.
    f_divergence_type: one of :data:`F_DIVERGENCES`.
    f_alpha_divergence_coef: alpha of the alpha-divergence.

  Returns:
    ``[...]`` the scores.

  References:
    Wang et al., "Beyond Reverse KL: Generalizing Direct Preference
    Optimization with Diverse Divergence Constraints", arXiv:2309.16240
    (the reward beta f'(u) and the f' of each divergence).
  """
  log_ratio = jnp.asarray(log_ratio)
  if f_divergence_type == "reverse_kl":
    return log_ratio
  if f_divergence_type == "forward_kl":
    return -_expm1(-log_ratio)
  if f_divergence_type == "js_divergence":
    return math.log(2.0) + jax.nn.log_sigmoid(log_ratio)
  if f_divergence_type == "alpha_divergence":
    alpha = float(f_alpha_divergence_coef)
    if abs(alpha - 1.0) < 1e-6:
      return log_ratio
    exponent = jnp.minimum((alpha - 1.0) * log_ratio, _ALPHA_EXPONENT_CAP)
    return _expm1(exponent) / (alpha - 1.0)
  raise ValueError(
    f"unknown f_divergence_type {f_divergence_type!r}; choose one of"
    f" {list(F_DIVERGENCES)}"
  )


def wpo_weights(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  policy_chosen_log_sum_sq_probs: ArrayLike,
  policy_rejected_log_sum_sq_probs: ArrayLike,
  chosen_lengths: ArrayLike,
  rejected_lengths: ArrayLike,
) -> jax.Array:
  r"""WPO's pair weight: both responses' aligned, length-normalised probability.

  .. math::
    w(x, y) = \exp\Big(\frac{1}{|y|}\sum_t \big(\log p_t(y_t)
              - \log\textstyle\sum_v p_t(v)^2\big)\Big), \quad
    w_{pair} = w(x, y_w)\, w(x, y_l)

  The alignment term ``log sum_v p_t(v)^2`` makes the weight of a token the
  policy samples on-policy 1 on average. No gradient flows through it.

  Returns:
    ``[...]`` the weights.

  References:
    Zhou et al., "WPO: Enhancing RLHF with Weighted Preference
    Optimization", arXiv:2406.11827, Eq. 2 with its weight alignment.
  """

  def weight(logps, log_sum_sq, lengths):
    mean = (jnp.asarray(logps) - jnp.asarray(log_sum_sq)) / jnp.maximum(
      jnp.asarray(lengths), 1
    )
    return jnp.exp(mean)

  both = weight(
    policy_chosen_logps, policy_chosen_log_sum_sq_probs, chosen_lengths
  ) * weight(
    policy_rejected_logps, policy_rejected_log_sum_sq_probs, rejected_lengths
  )
  return jax.lax.stop_gradient(both)


def _desensitized(stats: PairStats | None, ld_alpha: float):
  if stats is None:
    return None
  if stats.chosen_shared_logps is None or stats.rejected_shared_logps is None:
    raise ValueError(
      "ld_alpha needs the shared-length log-probs (chosen_shared_logps,"
      " rejected_shared_logps) of every model"
    )
  return stats._replace(
    chosen_logps=length_desensitized_logps(
      stats.chosen_logps, stats.chosen_shared_logps, ld_alpha=ld_alpha
    ),
    rejected_logps=length_desensitized_logps(
      stats.rejected_logps, stats.rejected_shared_logps, ld_alpha=ld_alpha
    ),
  )


@dataclasses.dataclass(frozen=True)
class DpoOptions:
  """TRL's ``use_weighting``, ``ld_alpha`` and ``f_divergence_type``.

  The defaults change nothing: every loss is then exactly the table's.

  Attributes:
    use_weighting: WPO's pair weights (:func:`wpo_weights`).
    ld_alpha: LD-DPO's tail weight (:func:`length_desensitized_logps`);
      None for none.
    f_divergence_type: f-DPO's divergence (:func:`f_divergence_scores`).
    f_alpha_divergence_coef: alpha of ``alpha_divergence``.
  """

  use_weighting: bool = False
  ld_alpha: float | None = None
  f_divergence_type: str = "reverse_kl"
  f_alpha_divergence_coef: float = 0.5

  @property
  def scored(self) -> bool:
    """Whether the log-ratios become f-divergence scores."""
    return self.f_divergence_type != "reverse_kl"

  def check(self, specs) -> None:
    """Refuses what TRL refuses, and what the table cannot take.

    Args:
      specs: the :class:`~slpo_jax.losses.LossSpec` terms.

    Raises:
      ValueError: one line, naming the option and the losses.
    """
    names = [spec.name for spec in specs]
    if self.f_divergence_type not in F_DIVERGENCES:
      raise ValueError(
        f"f_divergence_type {self.f_divergence_type!r} is not one of"
        f" {list(F_DIVERGENCES)}"
      )
    if self.scored:
      others = sorted(set(names) - F_DIVERGENCE_LOSSES)
      if others:
        raise ValueError(
          f"f_divergence_type={self.f_divergence_type!r} works with the"
          f" losses {sorted(F_DIVERGENCE_LOSSES)} only (the others have no"
          f" f-divergence form), not {others}; use 'reverse_kl'"
        )
    if self.use_weighting:
      sorted_losses = sorted(set(names) & UNWEIGHTABLE_LOSSES)
      if sorted_losses:
        raise ValueError(
          f"use_weighting does not work with {sorted_losses}: they sort the"
          " batch's pairs, so a pair's weight would not follow its loss"
        )
    if self.ld_alpha is not None:
      if not 0.0 <= self.ld_alpha <= 1.0:
        raise ValueError(f"ld_alpha must be in [0, 1], got {self.ld_alpha}")
      others = sorted(
        spec.name
        for spec in specs
        if spec.name not in RAW_LOGPS_LOSSES
        and any(i.field not in _LENGTH_DESENSITIZABLE for i in spec.inputs)
      )
      if others:
        raise ValueError(
          f"ld_alpha does not work with {others}: they read the complements"
          " or token values of log pi(y), which LD-DPO does not define"
        )

  def length_desensitized(self, stats: PairStats | None) -> PairStats | None:
    """``stats`` with LD-DPO's log-probabilities (as they are without
    ``ld_alpha``): what the losses and TRL's reward metrics read."""
    if self.ld_alpha is None:
      return stats
    return _desensitized(stats, self.ld_alpha)

  def inputs(
    self, name: str, policy: PairStats, reference: PairStats | None
  ) -> tuple[PairStats, PairStats | None]:
    """The statistics the table's loss ``name`` reads under the options."""
    if name in RAW_LOGPS_LOSSES:
      return policy, reference
    policy = self.length_desensitized(policy)
    reference = self.length_desensitized(reference)
    if self.scored and reference is not None:
      # The losses that take f-DPO read r = log pi - log pi_ref only: a
      # score s in place of log pi and 0 in place of log pi_ref gives them
      # s for r.
      score = lambda log_ratio: f_divergence_scores(
        log_ratio,
        f_divergence_type=self.f_divergence_type,
        f_alpha_divergence_coef=self.f_alpha_divergence_coef,
      )
      policy = policy._replace(
        chosen_logps=score(policy.chosen_logps - reference.chosen_logps),
        rejected_logps=score(policy.rejected_logps - reference.rejected_logps),
      )
      reference = reference._replace(
        chosen_logps=jnp.zeros_like(reference.chosen_logps),
        rejected_logps=jnp.zeros_like(reference.rejected_logps),
      )
    return policy, reference

  def pair_weights(self, policy: PairStats) -> jax.Array | None:
    """WPO's per-pair weights of the policy's statistics, or None."""
    if not self.use_weighting:
      return None
    if policy.chosen_log_sum_sq_probs is None:
      raise ValueError(
        "use_weighting needs the policy's chosen_log_sum_sq_probs and"
        " rejected_log_sum_sq_probs (a head with distribution_stats)"
      )
    return wpo_weights(
      policy.chosen_logps,
      policy.rejected_logps,
      policy.chosen_log_sum_sq_probs,
      policy.rejected_log_sum_sq_probs,
      policy.chosen_lengths,
      policy.rejected_lengths,
    )

"""The losses compared by the experiments, as thin wrappers over the library.

Every objective maps the same bundle of teacher-forced quantities for a batch
of preference pairs to per-pair losses by calling one function of
:mod:`slpo_jax.losses`; the bundle itself is built by the library's
:func:`slpo_jax.sequence_logps` and :func:`slpo_jax.pair_not_logps`. Keeping
the experiments on this path means they measure the code users run.
"""

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

import slpo_jax
from slpo_jax import losses


class PairBatch(NamedTuple):
  """Labels and masks of a batch of pairs, each ``[..., T]``.

  Positions where a mask is False hold :data:`sequence_space.PAD`.
  """

  chosen_labels: jax.Array
  chosen_where: jax.Array
  rejected_labels: jax.Array
  rejected_where: jax.Array


class PairTerms(NamedTuple):
  """Sequence-level quantities of one model on a batch of pairs, ``[...]``."""

  chosen_logps: jax.Array
  rejected_logps: jax.Array
  chosen_not_logps: jax.Array
  rejected_not_logps: jax.Array
  pair_not_logps: jax.Array
  # Kept for the token-level form, which works on per-token distributions.
  chosen_logits: jax.Array


def pair_terms(
    chosen_logits: jax.Array, rejected_logits: jax.Array, batch: PairBatch
) -> PairTerms:
  """Scores a batch of pairs with the library's log-probability functions.

  Args:
    chosen_logits: ``[..., T, V]`` logits teacher-forced on y_w.
    rejected_logits: ``[..., T, V]`` logits teacher-forced on y_l.
    batch: the pairs' labels and masks.

  Returns:
    The :class:`PairTerms` of the model that produced the logits.
  """
  chosen_logps, chosen_not = slpo_jax.sequence_logps(
      chosen_logits, batch.chosen_labels, where=batch.chosen_where
  )
  rejected_logps, rejected_not = slpo_jax.sequence_logps(
      rejected_logits, batch.rejected_labels, where=batch.rejected_where
  )
  pair_not = slpo_jax.pair_not_logps(
      chosen_logits, batch.chosen_labels,
      rejected_logits, batch.rejected_labels,
      chosen_where=batch.chosen_where, rejected_where=batch.rejected_where,
  )
  return PairTerms(
      chosen_logps, rejected_logps, chosen_not, rejected_not, pair_not,
      chosen_logits,
  )


LossFn = Callable[[PairTerms, PairTerms, PairBatch], jax.Array]


@dataclasses.dataclass(frozen=True)
class Objective:
  """A named loss with its hyperparameter fixed.

  Attributes:
    family: ``dpo``, ``ipo``, ``slpo``, ``slpo_tempered``, ``slpo_soft`` or
      ``slpo_token``.
    hparam_name: name of the swept hyperparameter (``beta``, ``tau``, ``t``,
      ``alpha``), empty for none.
    hparam: its value, or None.
    loss: ``(policy, reference, batch) -> [...]`` per-pair losses.
  """

  family: str
  hparam_name: str
  hparam: float | None
  loss: LossFn = dataclasses.field(compare=False, repr=False)

  @property
  def label(self) -> str:
    if self.hparam is None:
      return self.family
    return f"{self.family} {self.hparam_name}={self.hparam:g}"


def dpo(beta: float) -> Objective:
  def loss(policy, reference, batch):
    del batch
    return losses.dpo_loss(
        policy.chosen_logps, policy.rejected_logps,
        reference.chosen_logps, reference.rejected_logps, beta=beta,
    )
  return Objective("dpo", "beta", beta, loss)


def ipo(tau: float) -> Objective:
  def loss(policy, reference, batch):
    del batch
    # The library names the IPO paper's tau ``beta``: the target margin is
    # 1 / (2 tau).
    return losses.ipo_loss(
        policy.chosen_logps, policy.rejected_logps,
        reference.chosen_logps, reference.rejected_logps, beta=tau,
    )
  return Objective("ipo", "tau", tau, loss)


def slpo(temperature: float = 1.0) -> Objective:
  """Hard SLPO (Eq. 8) at ``temperature`` 1, the tempered form above it."""
  def loss(policy, reference, batch):
    del batch
    return losses.slpo_loss(
        policy.chosen_logps, policy.chosen_not_logps,
        policy.rejected_not_logps,
        reference.chosen_logps, reference.rejected_logps,
        temperature=temperature, policy_rejected_logps=policy.rejected_logps,
    )
  if temperature == 1.0:
    return Objective("slpo", "", None, loss)
  return Objective("slpo_tempered", "t", temperature, loss)


def slpo_soft(alpha: float) -> Objective:
  """Soft SLPO (Eq. 7) with the pair complement of :func:`pair_not_logps`."""
  def loss(policy, reference, batch):
    del batch
    return losses.slpo_soft_loss(
        policy.chosen_logps, policy.rejected_logps, policy.pair_not_logps,
        reference.chosen_logps, reference.rejected_logps, alpha=alpha,
    )
  return Objective("slpo_soft", "alpha", alpha, loss)


def slpo_token() -> Objective:
  """The earlier draft's token-level form, targets ``w_t`` from the reference.

  Both the policy's and the reference's distributions are taken on y_w's
  prefixes, with y_l's token at the same position, as in the draft.
  """
  def loss(policy, reference, batch):
    weights = losses.slpo_token_weights(
        reference.chosen_logits, batch.chosen_labels, batch.rejected_labels
    )
    return losses.slpo_token_loss(
        policy.chosen_logits, batch.chosen_labels, batch.rejected_labels,
        jax.lax.stop_gradient(weights), where=batch.chosen_where,
    )
  return Objective("slpo_token", "", None, loss)


def objective_grid(
    *,
    dpo_betas=(0.1, 0.5, 1.0, 2.0),
    ipo_taus=(0.1, 0.5, 1.0, 2.0),
    temperatures=(2.0, 4.0, 8.0),
    alphas=(0.75, 0.9, 1.0),
    token_level: bool = True,
) -> list[Objective]:
  """The losses of the enumeration experiment, in table order."""
  grid = [dpo(beta) for beta in dpo_betas]
  grid += [ipo(tau) for tau in ipo_taus]
  grid.append(slpo())
  grid += [slpo(t) for t in temperatures]
  grid += [slpo_soft(alpha) for alpha in alphas]
  if token_level:
    grid.append(slpo_token())
  return grid


def mean_loss(
    objective: Objective, policy: PairTerms, reference: PairTerms,
    batch: PairBatch,
) -> jax.Array:
  """Mean of the per-pair losses over every leading axis."""
  return jnp.mean(objective.loss(policy, reference, batch))

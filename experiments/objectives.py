"""The losses compared by the experiments: entries of the library's table.

Every objective maps the library's :class:`slpo_jax.PairStats` of a batch of
preference pairs to per-pair losses through :data:`slpo_jax.losses.LOSSES`,
the table the training program uses; the statistics come from
:func:`slpo_jax.pair_stats_from_logits`. Keeping the experiments on this path
means they measure the code users run.
"""

import dataclasses
from typing import NamedTuple

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


def pair_terms(
  chosen_logits: jax.Array, rejected_logits: jax.Array, batch: PairBatch
) -> slpo_jax.PairStats:
  """Scores a batch of pairs with the library's statistics function.

  Args:
    chosen_logits: ``[..., T, V]`` logits teacher-forced on y_w.
    rejected_logits: ``[..., T, V]`` logits teacher-forced on y_l.
    batch: the pairs' labels and masks.

  Returns:
    The :class:`slpo_jax.PairStats` of the model that produced the logits,
    pair complement and token values included.
  """
  return slpo_jax.pair_stats_from_logits(
    chosen_logits,
    rejected_logits,
    batch.chosen_labels,
    batch.rejected_labels,
    chosen_where=batch.chosen_where,
    rejected_where=batch.rejected_where,
    pair_values=True,
  )


@dataclasses.dataclass(frozen=True)
class Objective:
  """A loss of the library's table with its hyperparameters fixed.

  Attributes:
    family: ``dpo``, ``ipo``, ``slpo``, ``slpo_tempered``, ``slpo_soft`` or
      ``slpo_token``.
    hparam_name: name of the swept hyperparameter as the experiments report
      it (``beta``, ``tau``, ``t``, ``alpha``), empty for none.
    hparam: its value, or None.
    loss_name: the entry of :data:`slpo_jax.losses.LOSSES`.
    hparams: the keyword arguments the entry is called with.
    sync_every: steps between reference syncs (the reference replaced by
      the policy, as ``reference.sync_every`` does in the program); 0 keeps
      the reference frozen.
  """

  family: str
  hparam_name: str
  hparam: float | None
  loss_name: str
  hparams: tuple[tuple[str, float], ...] = ()
  sync_every: int = 0

  @property
  def label(self) -> str:
    if self.hparam is None:
      return self.family
    return f"{self.family} {self.hparam_name}={self.hparam:g}"

  def loss(
    self, policy: slpo_jax.PairStats, reference: slpo_jax.PairStats
  ) -> jax.Array:
    """Per-pair losses, through the library's loss table."""
    return losses.LOSSES[self.loss_name](
      policy, reference, **dict(self.hparams)
    )


def dpo(beta: float) -> Objective:
  return Objective("dpo", "beta", beta, "dpo", (("beta", beta),))


def ipo(tau: float) -> Objective:
  # The library names the IPO paper's tau ``beta``: the target margin is
  # 1 / (2 tau).
  return Objective("ipo", "tau", tau, "ipo", (("beta", tau),))


def slpo(temperature: float = 1.0) -> Objective:
  """Hard SLPO (Eq. 8) at ``temperature`` 1, the tempered form above it."""
  hparams = (("temperature", temperature),)
  if temperature == 1.0:
    return Objective("slpo", "", None, "slpo", hparams)
  return Objective("slpo_tempered", "t", temperature, "slpo", hparams)


def slpo_soft(alpha: float) -> Objective:
  """Soft SLPO (Eq. 7) with the pair complement of :func:`pair_not_logps`."""
  return Objective(
    "slpo_soft", "alpha", alpha, "slpo_soft", (("alpha", alpha),)
  )


def slpo_token() -> Objective:
  """The earlier draft's token-level form, targets ``w_t`` from the reference.

  Both the policy's and the reference's distributions are taken on y_w's
  prefixes, with y_l's token at the same position, as in the draft.
  """
  return Objective("slpo_token", "", None, "slpo_token")


def slpo_normalized(sync_every: int = 0) -> Objective:
  """Eq. 8 divided by w; with ``sync_every``, the reference synced."""
  if sync_every:
    return Objective(
      "slpo_normalized_sync",
      "k",
      sync_every,
      "slpo_normalized",
      sync_every=sync_every,
    )
  return Objective("slpo_normalized", "", None, "slpo_normalized")


def slpo_length_tempered() -> Objective:
  return Objective("slpo_length_tempered", "", None, "slpo_length_tempered")


def slpo_diff(transfer: float) -> Objective:
  return Objective(
    "slpo_diff", "a", transfer, "slpo_diff", (("transfer", transfer),)
  )


def forms_grid(sync_every: int = 1000) -> list[Objective]:
  """The SLPO forms of docs/RESULTS.md section 4, with hard SLPO and DPO."""
  return [
    dpo(0.1),
    slpo(),
    slpo_normalized(),
    slpo_normalized(sync_every),
    slpo_length_tempered(),
    slpo_diff(0.5),
    slpo_token(),
  ]


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
  objective: Objective,
  policy: slpo_jax.PairStats,
  reference: slpo_jax.PairStats,
) -> jax.Array:
  """Mean of the per-pair losses over every leading axis."""
  return jnp.mean(objective.loss(policy, reference))

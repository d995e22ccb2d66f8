"""KTO's path from a batch of unpaired records to its loss and metrics.

The record rows and their mismatched rows (:class:`train.batch.UnpairedBatch`)
go through the same forward pass and loss head as a pair's two sides
(:func:`train.objective.batch_stats`, completions as ``chosen``, mismatched
rows as ``rejected``); the library's :func:`slpo_jax.losses.kto_loss` and
:func:`slpo_jax.losses.kto_reference_point` then give the per-record losses.

The reference point is the mean log-ratio over the counted mismatched rows
of the micro-batch a device pass sees; TRL averages each device's own mean
over devices instead. The two agree whenever the devices hold equally many
counted records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import slpo_jax
from slpo_jax.losses.kto import kto_loss
from slpo_jax.losses.kto import kto_reference_point
from train.batch import UnpairedBatch

NAME = "kto"
# Sums divided by their own count, not by the batch's weight
# (train.objective.metric_means): ``_n/<metric>`` holds that count.
COUNT_PREFIX = "_n/"


@dataclasses.dataclass(frozen=True)
class KtoLoss:
  """``loss.name=kto``: its hyperparameters, with the pair losses'
  interface the program reads (:class:`train.objective.Loss`)."""

  beta: float
  desirable_weight: float
  undesirable_weight: float

  unpaired = True
  needs_reference = True
  needs_reference_tokens = False
  ld_alpha = None

  def initial_state(self) -> None:
    return None


def build(loss_config: Any) -> KtoLoss:
  """The KTO loss of ``config.loss``."""
  return KtoLoss(
    beta=float(loss_config.beta),
    desirable_weight=float(loss_config.desirable_weight),
    undesirable_weight=float(loss_config.undesirable_weight),
  )


def batch_loss(
  stats_fn: Callable[..., slpo_jax.PairStats],
  params: Any,
  reference: Any,
  batch: UnpairedBatch,
  *,
  loss: KtoLoss,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], None]]:
  """The weighted KTO loss sum and ``(metric sums, None)``.

  Args:
    stats_fn: ``stats_fn(params, rows) -> PairStats`` of a padded batch
      (``objective.batch_stats`` with the model, head and mesh bound).
    params: the policy's parameters.
    reference: the frozen reference parameters.
    batch: the records.
    loss: the built KTO loss.
  """
  rows = batch.as_rows()
  policy = stats_fn(params, rows)
  ref = stats_fn(jax.lax.stop_gradient(reference), rows)
  weight = batch.example_weight.astype(jnp.float32)
  counted = weight > 0
  z = kto_reference_point(policy.rejected_logps, ref.rejected_logps, counted)
  per_record = kto_loss(
    policy.chosen_logps,
    ref.chosen_logps,
    batch.desirable,
    z,
    beta=loss.beta,
    desirable_weight=loss.desirable_weight,
    undesirable_weight=loss.undesirable_weight,
  )
  weighted = lambda value: jnp.where(counted, value * weight, 0.0)  # noqa: E731
  rewards = jax.lax.stop_gradient(
    loss.beta * (policy.chosen_logps - ref.chosen_logps)
  )
  logps = jax.lax.stop_gradient(policy.chosen_logps)
  desirable = batch.desirable & counted
  undesirable = ~batch.desirable & counted
  sums = {"loss": jnp.sum(weighted(per_record)), "kl": z * jnp.sum(weight)}
  # TRL's per-label means: rewards and log-probs of the desirable records
  # (``chosen``) and of the undesirable ones (``rejected``).
  for side, members in (("chosen", desirable), ("rejected", undesirable)):
    count = jnp.sum(jnp.where(members, weight, 0.0))
    for metric, value in (("rewards", rewards), ("logps", logps)):
      name = f"{metric}/{side}"
      sums[name] = jnp.sum(jnp.where(members, value * weight, 0.0))
      sums[COUNT_PREFIX + name] = count
  # Held-out pairs split into records: the share whose desirable half
  # the implicit reward ranks above its undesirable half, over the pairs
  # with both halves in the batch.
  partner = (
    (batch.pair_id[:, None] == batch.pair_id[None, :])
    & (batch.pair_id[:, None] >= 0)
    & desirable[:, None]
    & undesirable[None, :]
  )
  wins = partner & (rewards[:, None] > rewards[None, :])
  sums["rewards/accuracies"] = jnp.sum(wins).astype(jnp.float32)
  sums[COUNT_PREFIX + "rewards/accuracies"] = jnp.sum(partner).astype(
    jnp.float32
  )
  sums["weight"] = jnp.sum(weight)
  return sums["loss"], (sums, None)

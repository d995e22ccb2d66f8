"""Full-batch Adam on a logit table, for many reference draws at once.

The whole run is one ``jax.jit`` of a ``vmap`` over reference tables of a
``lax.scan`` over steps, so a grid of hundreds of runs costs mostly compile
time. The policy starts at the reference, as in preference fine-tuning.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import objectives
from experiments import preference_sets
from experiments.preference_sets import PreferenceSet


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How each run is optimised.

  Attributes:
    steps: Adam steps on the full data set.
    learning_rate: Adam's step size.
    record_every: steps between two records of the policy's distribution.
    dtype: ``float64`` (default) or ``float32``, for parameters and math.
  """

  steps: int = 10_000
  learning_rate: float = 0.01
  record_every: int = 10
  dtype: str = "float64"

  def __post_init__(self):
    if self.steps % self.record_every:
      raise ValueError(
        f"steps ({self.steps}) must be a multiple of record_every"
        f" ({self.record_every})"
      )

  @property
  def record_steps(self) -> np.ndarray:
    """Step of each record, starting with 0 (the reference)."""
    return np.arange(0, self.steps + 1, self.record_every)


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """Distributions over every response, per reference draw.

  Attributes:
    reference_log_probs: ``[seeds, responses]`` log pi_ref.
    log_probs: ``[seeds, records, responses]`` log pi at each record step,
      record 0 being the initial policy (the reference).
    final_loss: ``[seeds]`` training loss at the last step.
    record_steps: ``[records]`` step of each record.
  """

  reference_log_probs: np.ndarray
  log_probs: np.ndarray
  final_loss: np.ndarray
  record_steps: np.ndarray


def train(
  objective: objectives.Objective,
  sets: list[PreferenceSet],
  reference_tables: jax.Array,
  config: TrainConfig,
) -> list[TrainResult]:
  """Trains one policy per (data set, reference table), from that table.

  Every data set of one space and every reference table go through a single
  compiled program (``vmap`` over both): compiling, not stepping, is what
  costs time at this size.

  Args:
    objective: the loss.
    sets: data sets over one space; each is used whole at every step, its
      loss being the mean over its pairs.
    reference_tables: ``[seeds, num_nodes, vocab]`` reference logits.
    config: optimisation settings.

  Returns:
    One :class:`TrainResult` per data set, in order.
  """
  space = sets[0].space
  batch, chosen_nodes, rejected_nodes, weights = preference_sets.stack(sets)
  optimizer = optax.adam(config.learning_rate)
  dtype = jnp.dtype(config.dtype)

  def one_run(batch, chosen_nodes, rejected_nodes, weights, reference_table):
    def terms(table):
      return objectives.pair_terms(
        table[chosen_nodes], table[rejected_nodes], batch
      )

    def reference_terms(table):
      return jax.tree.map(jax.lax.stop_gradient, terms(table))

    # A frozen reference's terms are computed once, outside the steps.
    frozen = reference_terms(reference_table)

    def loss_fn(table, sync_table):
      reference = (
        reference_terms(sync_table) if objective.sync_every else frozen
      )
      per_pair = objective.loss(terms(table), reference)
      return jnp.sum(weights * per_pair) / jnp.sum(weights)

    def step(carry, _):
      # sync_table is the reference the loss sees: reference_table, or with
      # objective.sync_every the policy of the last sync.
      table, opt_state, sync_table, count = carry
      loss, grads = jax.value_and_grad(loss_fn)(table, sync_table)
      updates, opt_state = optimizer.update(grads, opt_state, table)
      table = optax.apply_updates(table, updates)
      count = count + 1
      if objective.sync_every:
        sync_table = jnp.where(
          count % objective.sync_every == 0, table, sync_table
        )
      return (table, opt_state, sync_table, count), loss

    def record(carry, _):
      carry, losses = jax.lax.scan(
        step, carry, None, length=config.record_every
      )
      return carry, (space.log_probs(carry[0]), losses[-1])

    init = (
      reference_table,
      optimizer.init(reference_table),
      reference_table,
      jnp.zeros((), jnp.int32),
    )
    _, (log_probs, losses) = jax.lax.scan(
      record, init, None, length=config.steps // config.record_every
    )
    initial = space.log_probs(reference_table)
    return initial, jnp.concatenate([initial[None], log_probs]), losses[-1]

  over_seeds = jax.vmap(one_run, in_axes=(None, None, None, None, 0))
  over_sets = jax.vmap(over_seeds, in_axes=(0, 0, 0, 0, None))
  # Float64 keeps the question about the losses, not about rounding: with
  # float32, Adam turns the ~1e-8 rounding noise of a gradient that is zero
  # in exact arithmetic (DPO on the contradictory set) into full-size steps.
  with jax.enable_x64(dtype == jnp.float64):
    outputs = jax.jit(over_sets)(
      batch,
      chosen_nodes,
      rejected_nodes,
      jnp.asarray(weights, dtype),
      jnp.asarray(reference_tables, dtype),
    )
    reference_log_probs, log_probs, final_loss = jax.tree.map(
      lambda x: np.asarray(x, np.float64), outputs
    )
  return [
    TrainResult(
      reference_log_probs[i], log_probs[i], final_loss[i], config.record_steps
    )
    for i in range(len(sets))
  ]

"""The loss section of the config, checked: names, hyperparameters, KTO's
records and reference sync, each refused in one line (see
:mod:`train.validate`, which calls these)."""

import jax
import jax.numpy as jnp

import slpo_jax
from slpo_jax import losses
from train import objective
from train import objective_kto
from train.data.unpaired import RECORD_SOURCES
from train.errors import ConfigError


def check_kto(config) -> None:
  """What KTO's unpaired records cannot go with, each in one line."""
  kto = objective_kto.NAME
  names = [name.strip() for name in config.loss.name.split(",")]
  if config.data.unpaired and names != [kto]:
    raise ConfigError(
      "data.unpaired records have one completion each, which only"
      f" loss.name='{kto}' reads; set loss.name='{kto}' or use pairs"
    )
  if kto not in names:
    return
  if names != [kto] or config.loss.weights:
    raise ConfigError(
      f"loss '{kto}' reads unpaired records, the pair losses read pairs;"
      f" it cannot be combined with others: set loss.name='{kto}' and"
      " loss.weights=()"
    )
  options = objective.dpo_options(config.loss)
  if (
    options.use_weighting
    or options.ld_alpha is not None
    or options.f_divergence_type != "reverse_kl"
  ):
    raise ConfigError(
      f"loss '{kto}' takes none of TRL's DPO options (as TRL's KTOTrainer):"
      " set loss.use_weighting=False, loss.ld_alpha=1 and"
      " loss.f_divergence_type='reverse_kl'"
    )
  if config.reference.mode == "precomputed":
    raise ConfigError(
      f"loss '{kto}' pairs each prompt with another record's completion of"
      " the same shuffled batch, so the reference cannot be precomputed;"
      " set reference.mode='online'"
    )
  if config.data.get("packing", False):
    raise ConfigError(
      f"loss '{kto}' reads one padded row per record (packed rows of"
      " unpaired records are not supported); set data.packing=False"
    )
  if config.data.unpaired and config.data.source not in RECORD_SOURCES:
    raise ConfigError(
      f"data.unpaired records are read from files: set data.source to one"
      f" of {list(RECORD_SOURCES)}, not {config.data.source!r} (or give"
      " pairs, which kto splits in two)"
    )
  per_micro = config.batch_size // max(config.grad_accum_steps, 1)
  if per_micro < 2:
    raise ConfigError(
      f"loss '{kto}' estimates its reference point from the other records of"
      f" a micro-batch, which holds {per_micro}; set batch_size to at least"
      " 2 * grad_accum_steps"
    )


def check_loss(config) -> objective.Loss:
  check_kto(config)
  if config.loss.name.strip() == objective_kto.NAME:
    return objective.build_loss(config.loss)
  unknown = [
    name.strip()
    for name in config.loss.name.split(",")
    if name.strip() not in losses.LOSSES
  ]
  if unknown:
    raise ConfigError(
      f"unknown loss {unknown[0]!r}; config.loss.name must be one of"
      f" {sorted(losses.LOSSES)}, or several joined by commas"
    )
  try:
    loss = objective.build_loss(config.loss)
  except ValueError as error:
    raise ConfigError(f"config.loss: {error}") from None
  # The loss functions check their own hyperparameters (a temperature below
  # 1, an alpha outside (1/2, 1]); tracing one call on abstract values runs
  # those checks now, with no data and no model.
  scalar = jax.ShapeDtypeStruct((1,), jnp.float32)
  tokens = jax.ShapeDtypeStruct((1, 2), jnp.float32)
  where = jax.ShapeDtypeStruct((1, 2), jnp.bool_)
  stats = slpo_jax.PairStats(
    *[scalar] * 7,
    chosen_token_logps=tokens,
    chosen_token_pair_not_logps=tokens,
    chosen_where=where,
    counted=jax.ShapeDtypeStruct((1,), jnp.bool_),
    chosen_shared_logps=scalar,
    rejected_shared_logps=scalar,
    chosen_log_sum_sq_probs=scalar,
    rejected_log_sum_sq_probs=scalar,
  )
  try:
    jax.eval_shape(
      lambda s: loss.apply(s, s, loss.terms.initial_state()), stats
    )
  except ValueError as error:
    raise ConfigError(f"config.loss ({config.loss.name}): {error}") from None
  return loss


def check_reference_sync(config, loss: objective.Loss) -> None:
  every = config.reference.sync_every
  if not isinstance(every, int) or every < 0:
    raise ConfigError(
      f"reference.sync_every is {every!r}; it must be an integer >= 0"
      " (0 keeps the reference frozen)"
    )
  if not every:
    return
  mix = config.reference.sync_mix
  if not isinstance(mix, (int, float)) or not 0.0 < mix <= 1.0:
    raise ConfigError(
      f"reference.sync_mix is {mix!r}; it must be in (0, 1] (1 copies the"
      " policy)"
    )
  if not loss.needs_reference:
    raise ConfigError(
      f"loss {config.loss.name!r} reads no reference model, so"
      " reference.sync_every has nothing to sync; set it to 0"
    )
  if config.reference.mode == "precomputed":
    raise ConfigError(
      "reference.sync_every moves the reference during training, so its"
      " log-probs cannot be precomputed; set reference.mode='online'"
    )

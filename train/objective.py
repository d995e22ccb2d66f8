"""From a batch of pairs to per-example sequence statistics and a loss.

The model is run once on chosen and rejected rows stacked together. The
per-token values come from the fused head (``hidden @ lm_head`` never
materialised) or from the plain logits; the sequence values and every loss
come from :mod:`slpo_jax`. This module only routes arguments: there is no loss
math here.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

import slpo_jax
from slpo_jax import fused
from slpo_jax import losses


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """How to call one loss: its function and what it needs."""

  fn: Callable[..., jax.Array]
  needs_reference: bool = True
  needs_pair: bool = False  # log pi(Y not in {y_w, y_l}).
  needs_tokens: bool = False  # per-token values (token-level SLPO).


def _dpo(p, r, c):
  return losses.dpo_loss(
      p["chosen_logps"], p["rejected_logps"],
      r["chosen_logps"], r["rejected_logps"],
      beta=c.beta, label_smoothing=c.label_smoothing,
  )


def _ref_margin_loss(loss_fn):
  def call(p, r, c):
    return loss_fn(
        p["chosen_logps"], p["rejected_logps"],
        r["chosen_logps"], r["rejected_logps"], beta=c.beta,
    )
  return call


def _length_normalised_loss(loss_fn, **hparams):
  def call(p, r, c):
    del r
    return loss_fn(
        p["chosen_logps"], p["rejected_logps"],
        p["chosen_lengths"], p["rejected_lengths"],
        **{name: getattr(c, key) for name, key in hparams.items()},
    )
  return call


def _slpo(p, r, c):
  return losses.slpo_loss(
      p["chosen_logps"], p["chosen_not_logps"], p["rejected_not_logps"],
      r["chosen_logps"], r["rejected_logps"],
      temperature=c.temperature, policy_rejected_logps=p["rejected_logps"],
  )


def _slpo_soft(p, r, c):
  return losses.slpo_soft_loss(
      p["chosen_logps"], p["rejected_logps"], p["pair_not_logps"],
      r["chosen_logps"], r["rejected_logps"],
      alpha=c.alpha, temperature=c.temperature,
  )


def _slpo_token(p, r, c):
  del c
  weights = -jnp.expm1(r["chosen_token_others_logps"])
  return losses.slpo_token_loss_from_token_logps(
      p["chosen_token_logps"], p["chosen_token_others_logps"], weights,
      where=p["token_where"],
  )


LOSSES: Mapping[str, LossSpec] = {
    "dpo": LossSpec(_dpo),
    "ipo": LossSpec(_ref_margin_loss(losses.ipo_loss)),
    "hinge": LossSpec(_ref_margin_loss(losses.hinge_loss)),
    "simpo": LossSpec(
        _length_normalised_loss(losses.simpo_loss, beta="beta", gamma="gamma"),
        needs_reference=False,
    ),
    "orpo": LossSpec(
        _length_normalised_loss(losses.orpo_loss, beta="beta"),
        needs_reference=False,
    ),
    "slpo": LossSpec(_slpo),
    "slpo_soft": LossSpec(_slpo_soft, needs_pair=True),
    "slpo_token": LossSpec(_slpo_token, needs_tokens=True),
}


def loss_spec(name: str) -> LossSpec:
  if name not in LOSSES:
    raise ValueError(
        f"unknown loss {name!r}; config.loss.name must be one of"
        f" {sorted(LOSSES)}."
    )
  return LOSSES[name]


@dataclasses.dataclass(frozen=True)
class HeadOptions:
  """How per-token values are computed from the model."""

  fused: bool = True
  vocab_chunk_size: int | None = None  # None: the fused head's default.
  token_chunk_size: int | None = None


def _token_logps(model, params, ids, mask, labels, head, also_exclude=None):
  if head.fused:
    hidden, lm_head = model.hidden_states(params, ids, mask)
    return fused.token_logps_from_hidden(
        hidden, lm_head, labels, also_exclude=also_exclude,
        vocab_chunk_size=head.vocab_chunk_size,
        token_chunk_size=head.token_chunk_size,
    )
  logits = model.apply(params, ids, mask)
  return slpo_jax.token_logps(logits, labels, also_exclude=also_exclude)


def sequence_stats(
    model: Any,
    params: Any,
    batch: Mapping[str, jax.Array],
    spec: LossSpec,
    head: HeadOptions,
) -> dict[str, jax.Array]:
  """Per-example sequence values of a model on a batch of pairs.

  Args:
    model: an object with ``apply(params, ids, mask) -> logits`` and
      ``hidden_states(params, ids, mask) -> (hidden, lm_head)``.
    params: the model's parameters.
    batch: the data pipeline's batch (``chosen_*``/``rejected_*`` arrays).
    spec: the loss being computed, which says what it needs.
    head: fused or plain per-token computation.

  Returns:
    A dict of ``[B]`` arrays: ``chosen_logps``, ``rejected_logps``,
    ``chosen_not_logps``, ``rejected_not_logps``, ``chosen_lengths``,
    ``rejected_lengths``, and when the loss needs them ``pair_not_logps`` and
    the ``[B, T]`` token values.
  """
  ids = jnp.concatenate([batch["chosen_input_ids"], batch["rejected_input_ids"]])
  mask = jnp.concatenate(
      [batch["chosen_attention_mask"], batch["rejected_attention_mask"]]
  )
  where = jnp.concatenate([batch["chosen_loss_mask"], batch["rejected_loss_mask"]])
  labels = jnp.where(
      where,
      jnp.concatenate([batch["chosen_labels"], batch["rejected_labels"]]),
      0,
  )
  tokens = _token_logps(model, params, ids, mask, labels, head)
  logps, not_logps = slpo_jax.sequence_logps_from_token_logps(
      *tokens, where=where
  )
  n = batch["chosen_input_ids"].shape[0]
  lengths = jnp.sum(where, axis=-1)
  stats = {
      "chosen_logps": logps[:n],
      "rejected_logps": logps[n:],
      "chosen_not_logps": not_logps[:n],
      "rejected_not_logps": not_logps[n:],
      "chosen_lengths": lengths[:n],
      "rejected_lengths": lengths[n:],
  }
  if spec.needs_pair or spec.needs_tokens:
    # The chosen rows once more, with the rejected token also excluded.
    both_out = _token_logps(
        model, params, ids[:n], mask[:n], labels[:n], head,
        also_exclude=labels[n:],
    )
    if spec.needs_pair:
      stats["pair_not_logps"] = slpo_jax.pair_not_logps_from_token_logps(
          jax.tree.map(lambda x: x[:n], tokens), both_out.not_logp,
          jax.tree.map(lambda x: x[n:], tokens), labels[:n], labels[n:],
          chosen_where=where[:n], rejected_where=where[n:],
      )
    if spec.needs_tokens:
      stats["chosen_token_logps"] = both_out.logp
      stats["chosen_token_others_logps"] = both_out.not_logp
      stats["token_where"] = where[:n]
  return stats


def compute_loss(
    spec: LossSpec,
    loss_config: Any,
    policy_stats: Mapping[str, jax.Array],
    reference_stats: Mapping[str, jax.Array] | None,
    example_weight: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sums of the loss and the metrics over one batch.

  Returns sums, not means, together with the total weight under ``"weight"``:
  accumulating micro-batches then divides once, so metrics are averaged by
  example weight and an accuracy never exceeds 1.
  """
  reference_stats = reference_stats or {}
  per_example = spec.fn(policy_stats, reference_stats, loss_config)
  weight = example_weight.astype(jnp.float32)
  # Padding rows (weight 0) may hold infinite values; they add exactly nothing.
  counted = weight > 0
  sums = {"loss": jnp.sum(jnp.where(counted, per_example * weight, 0.0))}
  if "chosen_logps" in reference_stats:
    metrics = slpo_jax.preference_metrics(
        policy_stats["chosen_logps"], policy_stats["rejected_logps"],
        reference_stats["chosen_logps"], reference_stats["rejected_logps"],
        beta=loss_config.beta,
        policy_chosen_not_logps=policy_stats["chosen_not_logps"],
        policy_rejected_not_logps=policy_stats["rejected_not_logps"],
    )
  else:
    metrics = {
        "logps/chosen": policy_stats["chosen_logps"],
        "logps/rejected": policy_stats["rejected_logps"],
    }
  for name, value in metrics.items():
    sums[name] = jnp.sum(jnp.where(counted, value * weight, 0.0))
  sums["weight"] = jnp.sum(weight)
  return sums["loss"], sums

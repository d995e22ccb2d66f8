"""Where a packed DPO step's time goes: each part compiled and timed alone.

On one batch of the benchmark: the reference pass (the frozen model's
forward and loss head), the policy's forward and backward (model and head),
the loss head alone (forward and backward from fixed hidden states), the
attention kernel alone (forward and backward on the layer's query, key and
value shapes and the batch's mask, times the layer count) and the AdamW
update. The trunk's matmuls and the rest of the layers (norms, rotary,
residuals) are what the policy pass spends outside the head and attention.
Parts timed alone do not add up exactly to the step (XLA fuses across them
in the step), so the shares are of their sum.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import optax

import slpo_jax
from slpo_jax import shared_prompt
from slpo_jax.models import attention as attention_lib
from train import objective

PARTS = (
  "reference pass",
  "trunk matmuls",
  "attention",
  "loss head",
  "optimizer",
)


def _seconds(fn, *args, repeats: int = 3) -> float:
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _mask_and_rows(batch):
  if batch.shares_prompt:
    mask = attention_lib.self_attention_mask(
      batch.segment_ids, batch.positions, batch.branch_ids
    )
    return mask, batch.input_ids.shape
  both = jnp.concatenate([batch.chosen_attention_mask] * 2)
  segments = jnp.concatenate([batch.segment_ids] * 2) * both
  mask = attention_lib.self_attention_mask(
    segments, jnp.concatenate([batch.positions] * 2)
  )
  return mask, segments.shape


def breakdown(model, policy, reference, batch, head) -> dict:
  """Seconds per part on ``batch`` (see the module doc)."""
  c = model.config

  def stats(params, batch):
    s = objective.batch_stats(
      model, params, batch, pair_values=False, head=head
    )
    weights = batch.pair_weights()
    return jnp.sum((s.chosen_logps - s.rejected_logps) * weights)

  seconds = {
    "reference pass": _seconds(stats, reference, batch),
    "policy forward and backward": _seconds(jax.grad(stats), policy, batch),
  }
  # The head alone, from the policy's hidden states.
  if batch.shares_prompt:
    hidden, lm_head = model.hidden_states(
      policy,
      batch.input_ids,
      segment_ids=batch.segment_ids,
      positions=batch.positions,
      branch_ids=batch.branch_ids,
    )

    def head_only(hidden, lm_head):
      s = shared_prompt.pair_stats_from_shared_hidden(
        hidden,
        lm_head,
        batch.labels,
        batch.rejected_labels,
        chosen_where=batch.chosen_loss_mask,
        rejected_where=batch.rejected_loss_mask,
        rejected_source=batch.rejected_source,
        prompt_ends=batch.prompt_ends,
        segment_ids=batch.segment_ids,
        num_segments=batch.per_pair_shape[1],
        head=head,
      )
      return jnp.sum(s.chosen_logps - s.rejected_logps)

  else:
    ids = jnp.concatenate([batch.chosen_input_ids, batch.rejected_input_ids])
    mask = jnp.concatenate(
      [batch.chosen_attention_mask, batch.rejected_attention_mask]
    )
    hidden, lm_head = model.hidden_states(
      policy,
      ids,
      segment_ids=jnp.concatenate([batch.segment_ids] * 2) * mask,
      positions=jnp.concatenate([batch.positions] * 2),
    )
    n = batch.chosen_input_ids.shape[0]

    def head_only(hidden, lm_head):
      s = slpo_jax.pair_stats_from_hidden(
        hidden[:n],
        hidden[n:],
        lm_head,
        batch.chosen_labels,
        batch.rejected_labels,
        chosen_where=batch.chosen_loss_mask,
        rejected_where=batch.rejected_loss_mask,
        head=head,
        segment_ids=batch.segment_ids,
        num_segments=batch.per_pair_shape[1],
      )
      return jnp.sum(s.chosen_logps - s.rejected_logps)

  seconds["loss head"] = _seconds(
    jax.grad(head_only, argnums=(0, 1)), hidden, lm_head
  )
  # One layer's attention, forward and backward, times the layers.
  mask, (rows, length) = _mask_and_rows(batch)
  key = jax.random.key(0)
  q = jax.random.normal(key, (rows, length, c.num_heads, c.head_dim))
  kv = jax.random.normal(key, (rows, length, c.num_kv_heads, c.head_dim))

  def attend(q, k, v):
    out = attention_lib.attention(
      q, k, v, mask, impl=c.attention_impl, block=c.attention_block
    )
    return jnp.sum(out)

  seconds["attention"] = c.num_layers * _seconds(
    jax.grad(attend, argnums=(0, 1, 2)), q, kv, kv
  )
  optimizer = optax.adamw(1e-4)
  state = optimizer.init(policy)
  seconds["optimizer"] = _seconds(
    lambda g, s, p: optimizer.update(g, s, p), policy, state, policy
  )
  seconds["trunk matmuls"] = max(
    seconds.pop("policy forward and backward")
    - seconds["loss head"]
    - seconds["attention"],
    0.0,
  )
  return {part: seconds[part] for part in PARTS}

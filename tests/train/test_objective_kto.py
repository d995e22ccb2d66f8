"""The program's KTO: records through the model to the loss, against float64.

KTO's formula is checked against TRL in tests/test_kto.py; here the
program's path is: ``config.loss`` to the built loss, the record and
mismatched rows through both loss heads, the reference point from the
mismatched rows (no gradient through it), the per-label metrics, the pair
accuracy of split pairs, and the one-line refusals.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slpo_jax
from slpo_jax import models
from tests.models import models_testing
from train import config_schema
from train import objective
from train import validate
from train import validate_loss
from train.data import encode
from train.data import unpaired
from train.errors import ConfigError

_LENGTH = 32
_KTO = {
  "loss.name": "kto",
  "loss.beta": 0.5,
  "loss.desirable_weight": 1.3,
  "loss.undesirable_weight": 0.7,
}


def _config(**changes):
  config = config_schema.get_config()
  for key, value in changes.items():
    *sections, name = key.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[name] = value
  return config


def _batch(weights=(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0)):
  rng = np.random.default_rng(0)
  pairs = []
  for i in range(len(weights) // 2):
    prompt = rng.integers(1, 500, rng.integers(2, 6)).astype(np.int32)
    chosen = rng.integers(1, 500, rng.integers(1, 8)).astype(np.int32)
    rejected = rng.integers(1, 500, rng.integers(1, 8)).astype(np.int32)
    pairs.append(encode.TokenizedPair(i, prompt, chosen, rejected))
  records = unpaired.split_pairs(pairs)
  return unpaired.collate_records(
    list(zip(records, weights)), buckets=(_LENGTH,), pad_id=0
  )


@functools.cache
def _setup():
  model = models.build(models.tiny_config("llama"))
  reference = models_testing.random_params(model, seed=0, scale=0.3)
  noise = models_testing.random_params(model, seed=1, scale=1.0)
  moved = jax.tree.map(lambda r, n: r + 0.05 * n, reference, noise)
  # In this order the mismatched rows' mean log-ratio is positive, so the
  # reference point is not clamped to 0 and its gradient would show.
  return model, moved, reference, _batch()


@functools.cache
def _run(fused: bool):
  model, reference, policy, batch = _setup()
  loss = objective.build_loss(_config(**_KTO).loss)
  head = slpo_jax.HeadOptions(fused=fused, vocab_chunk_size=128)

  def total(params):
    value, (sums, _) = objective.batch_loss(
      model, params, reference, batch, loss=loss, head=head
    )
    return value, sums

  step = jax.jit(
    jax.value_and_grad(total, has_aux=True),
    compiler_options={"xla_backend_optimization_level": 0},
  )
  (value, sums), grads = step(policy)
  return float(value), objective.metric_means(sums), grads


def _sequence_logps(model, params, ids, mask, labels, where):
  """float64 sum of the label log-probs over ``where``."""
  hidden, lm_head = model.hidden_states(params, jnp.asarray(ids), mask)
  logits = np.asarray(hidden, np.float64) @ np.asarray(lm_head, np.float64)
  logits -= logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  picked = np.take_along_axis(logp, labels[..., None], -1)[..., 0]
  return np.sum(picked * where, -1)


def _float64_kto(params):
  model, reference, _, batch = _setup()

  def logps(tree, side):
    return _sequence_logps(
      model,
      tree,
      getattr(batch, f"{side}_input_ids"),
      getattr(batch, f"{side}_attention_mask"),
      getattr(batch, f"{side}_labels"),
      getattr(batch, f"{side}_loss_mask"),
    )

  counted = batch.example_weight > 0
  ratio = logps(params, "completion") - logps(reference, "completion")
  kl_ratio = logps(params, "kl") - logps(reference, "kl")
  z = max(np.mean(kl_ratio[counted]), 0.0)
  beta = _KTO["loss.beta"]
  sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
  losses = np.where(
    batch.desirable,
    _KTO["loss.desirable_weight"] * (1 - sigmoid(beta * (ratio - z))),
    _KTO["loss.undesirable_weight"] * (1 - sigmoid(beta * (z - ratio))),
  )
  return losses, ratio, z, counted


@pytest.mark.parametrize("fused", [False, True])
def test_kto_loss_and_metrics_match_float64(fused):
  _, _, policy, batch = _setup()
  value, metrics, _ = _run(fused)
  losses, ratio, z, counted = _float64_kto(policy)
  np.testing.assert_allclose(value, np.sum(losses[counted]), rtol=1e-5)
  np.testing.assert_allclose(
    metrics["loss"], np.mean(losses[counted]), rtol=1e-5
  )
  np.testing.assert_allclose(metrics["kl"], z, rtol=1e-4, atol=1e-6)
  rewards = _KTO["loss.beta"] * ratio
  chosen = batch.desirable & counted
  rejected = ~batch.desirable & counted
  np.testing.assert_allclose(
    metrics["rewards/chosen"], np.mean(rewards[chosen]), rtol=1e-5
  )
  np.testing.assert_allclose(
    metrics["rewards/rejected"], np.mean(rewards[rejected]), rtol=1e-5
  )
  # Split pairs 0..3; pair 3's rejected record has weight 0, so 3 count.
  wins = [rewards[2 * i] > rewards[2 * i + 1] for i in range(3)]
  np.testing.assert_allclose(metrics["rewards/accuracies"], np.mean(wins))


def test_no_gradient_flows_through_the_reference_point():
  """The gradient is the float64 loss's with z held constant."""
  model, reference, policy, batch = _setup()
  _, _, grads = _run(False)
  losses, _, z, counted = _float64_kto(policy)
  loss = objective.build_loss(_config(**_KTO).loss)
  weight = jnp.asarray(batch.example_weight)

  def with_constant_z(params):
    head = slpo_jax.HeadOptions(fused=False)
    rows = batch.as_rows()
    stats = objective.batch_stats(
      model, params, rows, pair_values=False, head=head
    )
    ref = objective.batch_stats(
      model, reference, rows, pair_values=False, head=head
    )
    per = slpo_jax.losses.kto_loss(
      stats.chosen_logps,
      ref.chosen_logps,
      batch.desirable,
      z,
      beta=loss.beta,
      desirable_weight=loss.desirable_weight,
      undesirable_weight=loss.undesirable_weight,
    )
    return jnp.sum(per * weight)

  want = jax.grad(with_constant_z)(policy)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    scale = float(np.max(np.abs(w)))
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * scale)
  assert z > 1e-3
  assert np.all(np.isfinite(losses))


@pytest.mark.parametrize(
  "changes, words",
  [
    ({"loss.name": "kto,sft"}, "cannot be combined"),
    ({"loss.name": "kto", "loss.ld_alpha": 0.5}, "none of TRL's DPO options"),
    ({"loss.name": "kto", "reference.mode": "precomputed"}, "precomputed"),
    ({"loss.name": "kto", "data.packing": True}, "data.packing=False"),
    ({"loss.name": "kto", "batch_size": 1}, "at least 2 * grad_accum_steps"),
    ({"data.unpaired": True}, "only loss.name='kto' reads"),
    (
      {"loss.name": "kto", "data.unpaired": True, "data.source": "hh"},
      "not 'hh'",
    ),
    ({"loss.name": "kto", "loss.desirable_weight": 0.0}, "> 0"),
  ],
)
def test_what_kto_cannot_go_with_is_a_one_line_config_error(changes, words):
  config = _config(**changes)
  with pytest.raises(ConfigError) as error:
    validate._check_ranges(config)
    validate_loss.check_loss(config)
  assert words in str(error.value)
  assert "\n" not in str(error.value)

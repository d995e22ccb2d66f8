"""The program's loss under TRL's DPO options, and the entropy metric.

The options' formulas are checked against TRL in tests/test_dpo_options.py;
here the program's path is: ``config.loss`` keys to the built loss, both
loss heads, packed rows, the precomputed (cached) reference, one-line
config errors, and the ``entropy`` metric against float64 NumPy.
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
from train import reference as reference_lib
from train import validate
from train import validate_loss
from train.data import batching
from train.data import encode
from train.data import row_packing
from train.errors import ConfigError

_LENGTH = 32
_OPTIONS = {
  "loss.name": "sigmoid,sft",
  "loss.weights": (1.0, 0.5),
  "loss.ld_alpha": 0.5,
  "loss.use_weighting": True,
  "loss.f_divergence_type": "js_divergence",
}


def _pairs(count=6, seed=0):
  rng = np.random.default_rng(seed)
  pairs = []
  for i in range(count):
    prompt = rng.integers(1, 500, rng.integers(2, 6)).astype(np.int32)
    chosen = rng.integers(1, 500, rng.integers(1, 8)).astype(np.int32)
    rejected = rng.integers(1, 500, rng.integers(1, 8)).astype(np.int32)
    pairs.append(encode.TokenizedPair(i, prompt, chosen, rejected))
  return pairs


def _loss_config(**changes):
  config = config_schema.get_config()
  for key, value in changes.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


@functools.cache
def _setup():
  model = models.build(models.tiny_config("llama"))
  reference = models_testing.random_params(model, seed=0, scale=0.3)
  noise = models_testing.random_params(model, seed=1, scale=1.0)
  policy = jax.tree.map(lambda r, n: r + 0.05 * n, reference, noise)
  entries = [(pair, 1.0) for pair in _pairs()]
  unpacked = batching.collate_pairs(entries, buckets=(_LENGTH,), pad_id=0)
  rows, slots = row_packing.layout_shape([entries], _LENGTH)
  packed = row_packing.pack_pairs(
    entries, packed_length=_LENGTH, pad_id=0, num_rows=rows, num_slots=slots
  )
  return model, reference, policy, unpacked, packed


_PLAIN_DPO = {"loss.name": "sigmoid,sft", "loss.weights": (1.0, 0.5)}


@functools.cache
def _run(layout, *, fused, cached=False, options=True):
  """Loss, metric means and gradients of the policy on one batch layout.

  Cached: the tests share compilations (each is seconds on CPU).
  """
  model, reference, policy, unpacked, packed = _setup()
  config = _loss_config(**(_OPTIONS if options else _PLAIN_DPO))
  loss = objective.build_loss(config.loss)
  head = slpo_jax.HeadOptions(fused=fused, vocab_chunk_size=128)
  batch = {"unpacked": unpacked, "packed": packed}[layout]
  if cached:
    # What the precomputed reference's cache holds: the reference's
    # desensitised log-probs (train/reference.py).
    chosen, rejected = reference_lib._stats_fn(model, head, loss.ld_alpha)(
      reference, batch
    )
    batch = batch.with_reference(np.asarray(chosen), np.asarray(rejected))
    reference = None

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


def _assert_trees_close(got, want, rtol):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    scale = float(np.max(np.abs(w)))
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale)


def test_options_hold_with_the_cached_reference_and_both_heads():
  loss = objective.build_loss(_loss_config(**_OPTIONS).loss)
  assert loss.terms.options == slpo_jax.losses.DpoOptions(
    use_weighting=True, ld_alpha=0.5, f_divergence_type="js_divergence"
  )
  want, want_metrics, want_grads = _run("unpacked", fused=False)
  # With the cached (desensitised) reference the loss is the live one's,
  # and so are the rewards (TRL's, of the desensitised log-probs).
  got, metrics, grads = _run("unpacked", fused=False, cached=True)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  _assert_trees_close(grads, want_grads, 1e-5)
  for name in ("rewards/chosen", "rewards/margins", "logps/rejected"):
    np.testing.assert_allclose(
      metrics[name], want_metrics[name], rtol=1e-5, err_msg=name
    )
  got, metrics, grads = _run("unpacked", fused=True)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(
    metrics["entropy"], want_metrics["entropy"], rtol=1e-5
  )
  _assert_trees_close(grads, want_grads, 1e-4)
  # And the options matter: without them the loss differs.
  plain, _, _ = _run("unpacked", fused=False, options=False)
  assert abs(plain - want) > 1e-3 * abs(want)


@pytest.mark.slow
def test_options_hold_on_packed_rows():
  want, want_metrics, want_grads = _run("unpacked", fused=False)
  got, metrics, grads = _run("packed", fused=False)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(
    metrics["entropy"], want_metrics["entropy"], rtol=1e-5
  )
  _assert_trees_close(grads, want_grads, 1e-4)


def test_entropy_metric_is_trls_token_mean():
  model, _, policy, unpacked, _ = _setup()
  _, metrics, _ = _run("unpacked", fused=True)
  ids = np.concatenate([unpacked.chosen_input_ids, unpacked.rejected_input_ids])
  mask = np.concatenate(
    [unpacked.chosen_attention_mask, unpacked.rejected_attention_mask]
  )
  hidden, lm_head = model.hidden_states(policy, jnp.asarray(ids), mask)
  logits = np.asarray(hidden, np.float64) @ np.asarray(lm_head, np.float64)
  logits -= logits.max(-1, keepdims=True)
  p = np.exp(logits)
  p /= p.sum(-1, keepdims=True)
  entropy = -np.sum(p * np.log(p), -1)
  where = np.concatenate(
    [unpacked.chosen_loss_mask, unpacked.rejected_loss_mask]
  ).astype(bool)
  np.testing.assert_allclose(
    metrics["entropy"], np.sum(entropy * where) / np.sum(where), rtol=1e-5
  )
  rows = len(unpacked.chosen_input_ids)
  np.testing.assert_allclose(
    metrics["entropy/chosen"],
    np.sum(entropy[:rows] * where[:rows]) / np.sum(where[:rows]),
    rtol=1e-5,
  )


@pytest.mark.parametrize(
  "changes, words",
  [
    ({"loss.name": "bco_pair", "loss.f_divergence_type": "forward_kl"}, "no"),
    ({"loss.name": "aot", "loss.use_weighting": True}, "sort"),
    ({"loss.name": "slpo", "loss.ld_alpha": 0.5}, "ld_alpha"),
    ({"loss.ld_alpha": 1.5}, "loss.ld_alpha"),
    ({"loss.f_divergence_type": "kl"}, "'kl'"),
  ],
)
def test_options_a_loss_refuses_are_one_line_config_errors(changes, words):
  with pytest.raises(ConfigError) as error:
    validate._check_ranges(_loss_config(**changes))
    validate_loss.check_loss(_loss_config(**changes))
  assert words in str(error.value)
  assert "\n" not in str(error.value)

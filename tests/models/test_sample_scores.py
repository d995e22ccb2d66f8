"""``score_samples``: the KL and log-probs of samples against float64 NumPy."""

import jax
import numpy as np

from slpo_jax import models

from models_testing import random_params

EOS = 3


def _log_softmax64(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_kl_and_logps_match_float64_numpy():
  model = models.build(models.tiny_config("llama", vocab_size=32))
  policy = random_params(model, seed=1, scale=0.5)
  reference = random_params(model, seed=2, scale=0.5)
  # One left-padded prompt, one right-padded, one unpadded: the response
  # positions differ per row.
  prompts = np.array([[0, 0, 5, 6, 7], [8, 9, 10, 0, 0], [4, 5, 6, 7, 8]])
  mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
  out = models.generate(
    model,
    policy,
    prompts,
    mask,
    rng=jax.random.key(0),
    max_new_tokens=6,
    eos_id=EOS,
  )
  scores = jax.device_get(
    models.score_samples(model, policy, reference, out, mask)
  )
  tokens, lengths = jax.device_get((out.tokens, out.lengths))
  for row in range(len(prompts)):
    prompt = prompts[row][mask[row] == 1]
    response = tokens[row][: lengths[row]]
    sequence = np.concatenate([prompt, response])[None]
    # The logits predicting response token i sit at len(prompt) - 1 + i.
    window = slice(len(prompt) - 1, len(prompt) - 1 + len(response))
    p = _log_softmax64(model.apply(policy, sequence)[0, window])
    q = _log_softmax64(model.apply(reference, sequence)[0, window])
    kl = np.sum(np.exp(p) * (p - q))
    steps = np.arange(len(response))
    np.testing.assert_allclose(scores.kl[row], kl, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
      scores.policy_logps[row], p[steps, response].sum(), rtol=1e-5
    )
    np.testing.assert_allclose(
      scores.reference_logps[row], q[steps, response].sum(), rtol=1e-5
    )
  assert np.all(scores.kl > 0)


def test_kl_is_exactly_zero_against_itself():
  # The same shapes and options as above: the decoding loop is compiled once.
  model = models.build(models.tiny_config("llama", vocab_size=32))
  params = random_params(model, seed=1, scale=0.5)
  prompts, mask = np.full((3, 5), 5), np.ones((3, 5), np.int32)
  out = models.generate(
    model,
    params,
    prompts,
    mask,
    rng=jax.random.key(0),
    max_new_tokens=6,
    eos_id=EOS,
  )
  scores = jax.device_get(
    models.score_samples(model, params, params, out, mask)
  )
  np.testing.assert_array_equal(scores.kl, 0.0)
  np.testing.assert_array_equal(scores.policy_logps, scores.reference_logps)

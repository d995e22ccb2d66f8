"""The per-step entropy and ``log sum_v p_v^2`` of both heads, against NumPy.

The fused head sums them in its pass over the vocabulary tiles; the plain
head from the logits. Both are compared with a float64 NumPy softmax, per
token and as the per-response sums of :class:`slpo_jax.PairStats`,
including the tile that ends past the vocabulary (V not a multiple of the
chunk), excluded ids, soft-capped logits and logits near 1e4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slpo_jax
from slpo_jax import fused
from slpo_jax import logprobs


def _numpy_stats(logits):
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  p = np.exp(z)
  p /= p.sum(-1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    entropy = -np.sum(np.where(p > 0, p * np.log(p), 0.0), -1)
  return entropy, np.log(np.sum(p * p, -1))


@pytest.mark.parametrize("scale", [1.0, 8.0])
@pytest.mark.parametrize("excluded", [False, True])
def test_fused_tokens_match_numpy(scale, excluded):
  rng = np.random.default_rng(7)
  hidden = rng.standard_normal((3, 4, 16)).astype(np.float32) * scale
  lm_head = rng.standard_normal((16, 300)).astype(np.float32)
  labels = rng.integers(0, 300, (3, 4))
  exclude = np.roll(labels, 1) if excluded else None
  got = fused.token_logps_from_hidden(
    hidden,
    lm_head,
    labels,
    also_exclude=exclude,
    vocab_chunk_size=128,
    token_chunk_size=5,
    distribution_stats=True,
  )
  entropy, log_sum_sq = _numpy_stats(
    hidden.astype(np.float64) @ lm_head.astype(np.float64)
  )
  np.testing.assert_allclose(got.entropy, entropy, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(
    got.log_sum_sq_probs, log_sum_sq, rtol=2e-5, atol=1e-6
  )
  plain = logprobs.distribution_stats(hidden @ lm_head)
  np.testing.assert_allclose(plain[0], entropy, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(plain[1], log_sum_sq, rtol=2e-5, atol=1e-6)


def test_logits_near_1e4_and_a_dominant_label():
  # Rows whose mass sits on one id (the label, ahead by 40) and rows of
  # peers: the entropy stays accurate (to float32) next to logits of 1e4.
  rng = np.random.default_rng(8)
  logits = 1e4 + rng.standard_normal((4, 260))
  labels = np.array([0, 5, 130, 259])
  logits[[0, 1], labels[:2]] += 40.0
  # The identity as hidden states: row i of hidden @ lm_head is logits[i].
  hidden, lm_head = np.eye(4, dtype=np.float32), logits.astype(np.float32)
  got = fused.token_logps_from_hidden(
    hidden, lm_head, labels, vocab_chunk_size=128, distribution_stats=True
  )
  entropy, log_sum_sq = _numpy_stats(np.asarray(lm_head, np.float64))
  np.testing.assert_allclose(got.entropy, entropy, atol=1e-3)
  np.testing.assert_allclose(got.log_sum_sq_probs, log_sum_sq, atol=1e-3)


def test_no_gradient_flows_through_them():
  rng = np.random.default_rng(9)
  hidden = rng.standard_normal((5, 8)).astype(np.float32)
  lm_head = rng.standard_normal((8, 200)).astype(np.float32)
  labels = rng.integers(0, 200, 5)

  def total(h, w):
    out = fused.token_logps_from_hidden(
      h, w, labels, vocab_chunk_size=128, distribution_stats=True
    )
    return jnp.sum(out.logp) + jnp.sum(out.entropy + out.log_sum_sq_probs)

  def logp_only(h, w):
    out = fused.token_logps_from_hidden(h, w, labels, vocab_chunk_size=128)
    return jnp.sum(out.logp)

  got = jax.grad(total, argnums=(0, 1))(hidden, lm_head)
  want = jax.grad(logp_only, argnums=(0, 1))(hidden, lm_head)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("fused_head", [True, False])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_pair_stats_sum_over_each_response(fused_head, softcap):
  rng = np.random.default_rng(10)
  batch, steps, d, vocab = 2, 6, 8, 150
  chosen = rng.standard_normal((batch, steps, d)).astype(np.float32)
  rejected = rng.standard_normal((batch, steps, d)).astype(np.float32)
  lm_head = rng.standard_normal((d, vocab)).astype(np.float32) * 2
  labels_w = rng.integers(0, vocab, (batch, steps))
  labels_l = rng.integers(0, vocab, (batch, steps))
  where_w = np.array([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]], bool)
  where_l = np.array([[0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0]], bool)
  stats = slpo_jax.pair_stats_from_hidden(
    chosen,
    rejected,
    lm_head,
    labels_w,
    labels_l,
    chosen_where=where_w,
    rejected_where=where_l,
    head=slpo_jax.HeadOptions(
      fused=fused_head,
      vocab_chunk_size=128,
      logit_softcap=softcap,
      distribution_stats=True,
    ),
  )
  for hidden, where, entropy_sum, sq_sum in (
    (chosen, where_w, stats.chosen_entropy, stats.chosen_log_sum_sq_probs),
    (
      rejected,
      where_l,
      stats.rejected_entropy,
      stats.rejected_log_sum_sq_probs,
    ),
  ):
    logits = hidden.astype(np.float64) @ lm_head.astype(np.float64)
    if softcap is not None:
      logits = softcap * np.tanh(logits / softcap)
    entropy, log_sum_sq = _numpy_stats(logits)
    np.testing.assert_allclose(
      entropy_sum, np.sum(entropy * where, -1), rtol=1e-5
    )
    np.testing.assert_allclose(
      sq_sum, np.sum(log_sum_sq * where, -1), rtol=1e-5
    )
  # The shared-length log-probs: the first min(|y_w|, |y_l|) = (2, 3)
  # response tokens of each row.
  plain = slpo_jax.pair_stats_from_hidden(
    chosen,
    rejected,
    lm_head,
    labels_w,
    labels_l,
    chosen_where=np.array([[0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0]], bool),
    rejected_where=where_l,
    head=slpo_jax.HeadOptions(
      fused=fused_head, vocab_chunk_size=128, logit_softcap=softcap
    ),
  )
  np.testing.assert_allclose(
    stats.chosen_shared_logps, plain.chosen_logps, rtol=1e-6
  )
  np.testing.assert_allclose(
    stats.rejected_shared_logps, stats.rejected_logps, rtol=1e-6
  )
  assert plain.chosen_entropy is None

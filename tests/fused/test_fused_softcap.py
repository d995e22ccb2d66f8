"""The fused head with final-logit soft-capping against the plain path.

Gemma 2 caps its logits as ``c * tanh(z / c)`` before the softmax; the fused
head caps each vocabulary tile as it computes it. The contract is the one of
``fused_test.py`` with the capped logits as the plain path's input: values to
1e-5 and gradients for ``h`` and ``W`` to 1e-4, for log-probs, complements,
pair complements and token-level values, across ragged vocabulary tiles and
padded token rows. Logits reach about 4x the cap, so the cap bites.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slpo_jax
from slpo_jax import fused
from slpo_jax import logprobs

CAP = 5.0


def _present(got, want):
  """Pairs of the fields both hold (the distribution fields are None unless
  asked for)."""
  return [(g, w) for g, w in zip(got, want) if g is not None or w is not None]


def _inputs(leading, d, vocab, seed=0):
  rng = np.random.default_rng(seed)
  hidden = rng.standard_normal((*leading, d), np.float32)
  lm_head = (8.0 / np.sqrt(d)) * rng.standard_normal((d, vocab), np.float32)
  labels = rng.integers(0, vocab, leading).astype(np.int32)
  return hidden, lm_head, labels, rng


def _capped(hidden, lm_head):
  return CAP * jnp.tanh((hidden @ lm_head) / CAP)


def _assert_close(actual, expected, tol):
  np.testing.assert_allclose(
    np.asarray(actual, np.float64),
    np.asarray(expected, np.float64),
    rtol=tol,
    atol=tol,
  )


def _grads(f, hidden, lm_head):
  """Values and d(sum of the float outputs)/d(h, W), one compilation."""

  def total(h, w):
    values = f(h, w)
    summed = values
    if isinstance(values, slpo_jax.PairStats):
      # The mean-logit metric carries no gradient in the capped fused head.
      summed = values._replace(
        chosen_mean_logits=None, rejected_mean_logits=None
      )
    floats = [v for v in jax.tree.leaves(summed) if v.dtype != jnp.bool_]
    total = sum(jnp.sum(jnp.where(jnp.isfinite(v), v, 0.0)) for v in floats)
    return total, values

  return jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(
    hidden, lm_head
  )


def test_token_values_pair_complements_and_gradients():
  leading, d, vocab = (3, 7), 16, 300
  hidden, lm_head, labels, rng = _inputs(leading, d, vocab)
  exclude = rng.integers(0, vocab, leading).astype(np.int32)
  exclude[0, 0] = labels[0, 0]  # counted once

  def fused_fn(h, w):
    return fused.token_logps_from_hidden(
      h,
      w,
      labels,
      also_exclude=exclude,
      vocab_chunk_size=128,  # 300 = 2 * 128 + 44: a shifted last tile
      token_chunk_size=8,  # 21 tokens: a padded last token tile
      logit_softcap=CAP,
    )

  def plain_fn(h, w):
    return logprobs.token_logps(_capped(h, w), labels, also_exclude=exclude)

  (_, got), got_grads = _grads(fused_fn, hidden, lm_head)
  (_, want), want_grads = _grads(plain_fn, hidden, lm_head)
  _assert_close(got.logp, want.logp, 1e-5)
  _assert_close(got.not_logp, want.not_logp, 1e-5)
  np.testing.assert_array_equal(got.is_top1, want.is_top1)
  for value, expected in zip(got_grads, want_grads):
    _assert_close(value, expected, 1e-4)
  # The cap changes the answer: uncapped values differ by far more.
  uncapped = logprobs.token_logps(hidden @ lm_head, labels)
  assert np.max(np.abs(uncapped.logp - want.logp)) > 0.1


@pytest.mark.slow  # pair_stats below covers sequence values in the default run
def test_sequence_values_and_gradients():
  leading, d, vocab = (2, 3, 5), 8, 256
  hidden, lm_head, labels, rng = _inputs(leading, d, vocab, seed=1)
  where = rng.random(leading) < 0.75

  (_, got), got_grads = _grads(
    lambda h, w: fused.sequence_logps_from_hidden(
      h,
      w,
      labels,
      where=where,
      vocab_chunk_size=128,
      token_chunk_size=4,
      logit_softcap=CAP,
    ),
    hidden,
    lm_head,
  )
  (_, want), want_grads = _grads(
    lambda h, w: slpo_jax.sequence_logps(_capped(h, w), labels, where=where),
    hidden,
    lm_head,
  )
  for value, expected in _present(got, want):
    _assert_close(value, expected, 1e-5)
  for value, expected in zip(got_grads, want_grads):
    _assert_close(value, expected, 1e-4)


def test_pair_stats_fused_equals_plain():
  """The loss head as training calls it, with pair values and metrics."""
  batch, length, d, vocab = 2, 6, 8, 300
  rng = np.random.default_rng(2)
  chosen, rejected = (
    rng.standard_normal((batch, length, d), np.float32) for _ in range(2)
  )
  lm_head = (8.0 / np.sqrt(d)) * rng.standard_normal((d, vocab), np.float32)
  labels_w = rng.integers(0, vocab, (batch, length)).astype(np.int32)
  labels_l = labels_w.copy()
  labels_l[:, 3:] = rng.integers(0, vocab, (batch, 3))
  where_w = np.ones((batch, length), bool)
  where_w[1, 5:] = False
  where_l = np.ones((batch, length), bool)
  where_l[0, 4:] = False

  def stats(head):
    def f(h, w):
      return slpo_jax.pair_stats_from_hidden(
        h[0],
        h[1],
        w,
        labels_w,
        labels_l,
        chosen_where=where_w,
        rejected_where=where_l,
        pair_values=True,
        head=head,
      )

    return _grads(f, jnp.stack([chosen, rejected]), lm_head)

  fused_head = slpo_jax.HeadOptions(
    vocab_chunk_size=128, token_chunk_size=4, logit_softcap=CAP
  )
  plain_head = slpo_jax.HeadOptions(fused=False, logit_softcap=CAP)
  (_, got), got_grads = stats(fused_head)
  (_, want), want_grads = stats(plain_head)
  for name, value in got._asdict().items():
    expected = getattr(want, name)
    if value is None or expected is None:
      assert value is None and expected is None, name
    elif value.dtype == jnp.bool_ or jnp.issubdtype(value.dtype, jnp.integer):
      np.testing.assert_array_equal(value, expected, err_msg=name)
    else:
      _assert_close(value, expected, 1e-5)
  for value, expected in zip(got_grads, want_grads):
    _assert_close(value, expected, 1e-4)

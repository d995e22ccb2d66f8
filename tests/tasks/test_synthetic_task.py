"""Tests of the synthetic sentiment task (slpo_jax.tasks.synthetic)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slpo_jax.tasks import synthetic
from slpo_jax.tasks import vocab


def _ids(*words):
  tok = synthetic.synthetic_tokenizer()
  return tok.encode(" ".join(words))


def test_vocabulary_layout():
  tok = synthetic.synthetic_tokenizer()
  assert synthetic.VOCAB_SIZE == tok.vocab_size == 3 + 64
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert len(set(synthetic.WORDS)) == 64
  assert tok.decode([1, *_ids("good", "movie"), 2, 0]) == "good movie"
  sentiment = synthetic.WORD_SENTIMENT
  assert np.all(sentiment[:3] == 0)
  assert np.all(sentiment[_ids(*synthetic.POSITIVE_WORDS)] >= 0.5)
  assert np.all(sentiment[_ids(*synthetic.NEGATIVE_WORDS)] <= -0.5)
  assert np.all(np.abs(sentiment[_ids(*synthetic.NEUTRAL_WORDS)]) <= 0.1)
  # Distinct scores make ties between different responses rare.
  assert len(np.unique(sentiment[3:])) == 64


def test_word_tokenizer_rejects_unknown_words():
  with pytest.raises(ValueError, match="unknown word"):
    synthetic.synthetic_tokenizer().encode("good zebra")
  with pytest.raises(ValueError, match="duplicates"):
    vocab.WordTokenizer(["a", "a"])


def test_reward_is_mean_word_sentiment_ignoring_specials():
  great, awful, movie = _ids("great", "awful", "movie")
  s = synthetic.WORD_SENTIMENT
  tokens = np.array(
    [
      [great, awful, movie, 2, 0],
      [great, 2, 0, 0, 0],
      [2, 0, 0, 0, 0],  # Empty response: reward 0.
      [awful, awful, 2, great, great],  # Masked tail does not count.
    ]
  )
  where = np.array(
    [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]], bool
  )
  expected = np.array(
    [(s[great] + s[awful] + s[movie]) / 3, s[great], 0.0, s[awful]], np.float32
  )
  reward = synthetic.sentiment_reward(tokens, where)
  assert isinstance(reward, np.ndarray) and reward.dtype == np.float32
  np.testing.assert_allclose(reward, expected, rtol=1e-6)
  jax_reward = synthetic.sentiment_reward(
    jnp.asarray(tokens), jnp.asarray(where)
  )
  assert isinstance(jax_reward, jax.Array)
  jit_reward = jax.jit(synthetic.sentiment_reward)(tokens, where)
  np.testing.assert_allclose(jax_reward, expected, rtol=1e-6)
  np.testing.assert_allclose(jit_reward, expected, rtol=1e-6)


def test_reward_range():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, synthetic.VOCAB_SIZE, size=(256, 10))
  reward = synthetic.sentiment_reward(tokens, rng.random((256, 10)) < 0.7)
  assert np.all(reward >= -1.0) and np.all(reward <= 1.0)
  best = _ids(synthetic.POSITIVE_WORDS[0])
  all_best = synthetic.sentiment_reward(
    np.array([best * 3]), np.ones([1, 3], bool)
  )
  assert all_best[0] == 1.0


def test_base_language_is_seeded_and_stochastic():
  language = synthetic.make_base_language(3)
  np.testing.assert_allclose(language.sum(axis=-1), 1.0, rtol=1e-12)
  np.testing.assert_array_equal(language, synthetic.make_base_language(3))
  assert not np.array_equal(language, synthetic.make_base_language(4))
  assert language[vocab.BOS_ID, vocab.EOS_ID] == 0.0
  np.testing.assert_allclose(
    language[synthetic.FIRST_WORD_ID :, vocab.EOS_ID], 0.1
  )


def test_samples_are_well_formed():
  language = synthetic.make_base_language(0)
  rng = np.random.default_rng(0)
  prompts = synthetic.sample_prompts(language, rng, 500, 4)
  assert prompts.shape == (500, 4) and prompts.dtype == np.int32
  assert np.all(prompts >= synthetic.FIRST_WORD_ID)
  responses = synthetic.sample_continuations(
    language, prompts, rng, max_new_tokens=6, min_new_tokens=2
  )
  assert responses.shape == (500, 7)
  mask = synthetic.response_mask(responses)
  lengths = mask.sum(axis=-1)
  assert np.all((lengths >= 3) & (lengths <= 7))  # 2..6 words, then EOS.
  last = responses[np.arange(500), lengths - 1]
  assert np.all(last == vocab.EOS_ID)
  assert np.all(responses[~mask] == vocab.PAD_ID)
  assert np.all(responses[mask & (responses != vocab.EOS_ID)] >= 3)
  # Both length limits are reached at these settings.
  assert lengths.min() == 3 and lengths.max() == 7


def test_response_mask_stops_at_first_eos():
  responses = np.array([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 5, 0, 0, 0]])
  np.testing.assert_array_equal(
    synthetic.response_mask(responses),
    [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]],
  )


def test_preference_pairs_from_base_language():
  language = synthetic.make_base_language(0)
  rng = np.random.default_rng(1)
  prompts = synthetic.sample_prompts(language, rng, 300, 3)
  sampler = synthetic.base_language_sampler(language, max_new_tokens=8)
  pairs = synthetic.make_preference_pairs(
    prompts, sampler, synthetic.sentiment_reward, rng, batch_size=64
  )
  kept = len(pairs.prompt_index)
  assert kept + pairs.num_ties == 300
  assert kept > 290
  np.testing.assert_array_equal(pairs.prompts, prompts[pairs.prompt_index])
  assert np.all(pairs.chosen_reward > pairs.rejected_reward)
  np.testing.assert_allclose(
    synthetic.sentiment_reward(pairs.chosen, pairs.chosen_mask),
    pairs.chosen_reward,
  )
  np.testing.assert_allclose(
    synthetic.sentiment_reward(pairs.rejected, pairs.rejected_mask),
    pairs.rejected_reward,
  )
  assert pairs.chosen.shape == pairs.rejected.shape == (kept, 9)


def test_preference_pairs_with_a_custom_sampler():
  great, awful = _ids("great", "awful")
  calls = []

  def sample_fn(prompt_batch, rng):
    # Row i and row i + n are the two samples for prompt i.
    calls.append(prompt_batch.shape)
    n = len(prompt_batch) // 2
    out = np.full([2 * n, 4], 9, np.int32)  # Junk after EOS is ignored.
    out[:n, :2] = [awful, vocab.EOS_ID]
    out[n:, :2] = [great, vocab.EOS_ID]
    tie = np.flatnonzero(prompt_batch[:n, 0] == 3)  # Prompt 0 ties.
    out[tie, :2] = out[n + tie, :2]
    return out

  prompts = np.arange(10, dtype=np.int32).reshape(5, 2) + 3
  pairs = synthetic.make_preference_pairs(
    prompts,
    sample_fn,
    synthetic.sentiment_reward,
    np.random.default_rng(0),
    batch_size=2,
  )
  assert calls == [(4, 2), (4, 2), (2, 2)]
  assert pairs.num_ties == 1
  np.testing.assert_array_equal(pairs.prompt_index, [1, 2, 3, 4])
  np.testing.assert_array_equal(pairs.chosen[:, :2], [[great, 2]] * 4)
  np.testing.assert_array_equal(pairs.rejected[:, :2], [[awful, 2]] * 4)
  assert np.all(pairs.chosen[:, 2:] == vocab.PAD_ID)

"""Sections 5.7-5.9's pair regimes: tilted sampler, label noise, summed
reward."""

import jax
import numpy as np
import pytest

from experiments import pair_regimes
from slpo_jax import models
from slpo_jax.tasks import synthetic
from slpo_jax.tasks.vocab import EOS_ID
from slpo_jax.tasks.vocab import PAD_ID

MAX_NEW = 6


@pytest.fixture(scope="module")
def tiny_model():
  model = models.build(
    models.tiny_config("llama", vocab_size=synthetic.VOCAB_SIZE, max_len=32)
  )
  return model, model.init(jax.random.key(0))


def _prompts(count):
  rng = np.random.default_rng(0)
  return rng.integers(
    synthetic.FIRST_WORD_ID, synthetic.VOCAB_SIZE, (count, 3)
  ).astype(np.int32)


def _positive_share(responses):
  mask = synthetic.response_mask(responses)
  positive = pair_regimes.positive_word_mask()[responses] & mask
  return positive.sum() / max((mask & (responses != EOS_ID)).sum(), 1)


def test_tilt_raises_only_the_positive_words():
  logits = np.zeros((2, synthetic.VOCAB_SIZE), np.float32)
  tilted = np.asarray(pair_regimes.tilted_logits(logits, 1.5))
  positive = synthetic.WORD_SENTIMENT > 0.1
  assert positive.sum() == len(synthetic.POSITIVE_WORDS)
  np.testing.assert_array_equal(tilted[:, positive], 1.5)
  np.testing.assert_array_equal(tilted[:, ~positive], 0.0)


def test_tilted_sampler_writes_positive_words_and_stops_at_eos(tiny_model):
  model, params = tiny_model
  prompts = _prompts(64)
  strong = pair_regimes.tilted_sample_fn(
    model, params, max_new_tokens=MAX_NEW, delta=50.0, seed=0
  )(prompts, None)
  assert strong.shape == (64, MAX_NEW + 1)
  # With a tilt of 50 nats every token is a positive word (no EOS).
  assert pair_regimes.positive_word_mask()[strong].all()
  plain = pair_regimes.tilted_sample_fn(
    model, params, max_new_tokens=MAX_NEW, delta=0.0, seed=0
  )(prompts, None)
  # Padding after the first EOS only.
  after_eos = np.cumsum(plain == EOS_ID, 1) - (plain == EOS_ID) > 0
  assert (plain[after_eos] == PAD_ID).all()


def test_untilted_sampler_follows_the_model_token_by_token(tiny_model):
  model, params = tiny_model
  # Logits scaled 10,000x: sampling at temperature 1 is then the argmax almost
  # surely, so the sampler must reproduce the library's greedy decoding,
  # token by token (a wrong position or a missed EOS would not).
  sharp = jax.tree.map(lambda x: x, params)
  sharp["final_norm"]["scale"] = params["final_norm"]["scale"] * 1e4
  prompts = _prompts(64)
  ours = pair_regimes.tilted_sample_fn(
    model, sharp, max_new_tokens=MAX_NEW, delta=0.0, seed=1
  )(prompts, None)
  ids = np.concatenate([np.full((64, 1), 1), prompts], axis=1)
  greedy = models.generate(
    model,
    sharp,
    jax.numpy.asarray(ids),
    jax.numpy.ones(ids.shape, jax.numpy.int32),
    rng=jax.random.key(0),
    max_new_tokens=MAX_NEW + 1,
    temperature=0.0,
    eos_id=EOS_ID,
    pad_id=PAD_ID,
  )
  same = (ours == np.asarray(greedy.tokens)).all(1)
  assert same.mean() > 0.95
  tilted = pair_regimes.tilted_sample_fn(
    model, params, max_new_tokens=MAX_NEW, delta=2.0, seed=1
  )(np.repeat(prompts, 8, 0), None)
  plain = pair_regimes.tilted_sample_fn(
    model, params, max_new_tokens=MAX_NEW, delta=0.0, seed=1
  )(np.repeat(prompts, 8, 0), None)
  assert _positive_share(tilted) > _positive_share(plain) + 0.1


def test_tilted_pairs_put_the_tilted_response_first(tiny_model):
  model, params = tiny_model
  prompts = _prompts(32)
  out = pair_regimes.tilted_sampler(50.0)(
    model, params, max_new_tokens=MAX_NEW, seed=0
  )(np.concatenate([prompts, prompts]), None)
  assert pair_regimes.positive_word_mask()[out[:32]].all()
  assert not pair_regimes.positive_word_mask()[out[32:]].all()


def test_summed_reward_is_the_mean_times_the_words():
  first = synthetic.FIRST_WORD_ID
  words = np.array([[first, first + 30, first + 50, EOS_ID, first]])
  mask = synthetic.response_mask(words)
  mean = synthetic.sentiment_reward(words, mask)
  summed = pair_regimes.summed_sentiment_reward(words, mask)
  np.testing.assert_allclose(summed, mean * 3, rtol=1e-6)
  # Repeating a positive word pays twice, where the mean pays once.
  best = synthetic.FIRST_WORD_ID
  once = np.array([[best, EOS_ID, PAD_ID]])
  twice = np.array([[best, best, EOS_ID]])
  reward = lambda x: pair_regimes.summed_sentiment_reward(  # noqa: E731
    x, synthetic.response_mask(x)
  )
  assert reward(twice)[0] == pytest.approx(2 * reward(once)[0])
  jitted = jax.jit(pair_regimes.summed_sentiment_reward)(
    jax.numpy.asarray(twice), jax.numpy.asarray(synthetic.response_mask(twice))
  )
  assert float(jitted[0]) == pytest.approx(2.0)


def _pairs(margins):
  count = len(margins)
  chosen = np.arange(count)[:, None] * np.ones((1, 3), np.int64)
  return synthetic.PreferencePairs(
    prompt_index=np.arange(count),
    prompts=np.zeros((count, 2), np.int64),
    chosen=chosen,
    chosen_mask=np.ones((count, 3), bool),
    rejected=-chosen - 1,
    rejected_mask=np.zeros((count, 3), bool),
    chosen_reward=np.asarray(margins, np.float32),
    rejected_reward=np.zeros(count, np.float32),
    num_ties=0,
  )


def test_label_noise_follows_bradley_terry():
  rng = np.random.default_rng(0)
  margins = rng.uniform(0.0, 0.6, 20_000)
  pairs = _pairs(margins)
  noisy = pair_regimes.flip_labels(pairs, 0.1, np.random.default_rng(1))
  flipped = noisy.chosen_reward < noisy.rejected_reward
  expected = pair_regimes.flip_probability(margins, 0.1)
  assert flipped.mean() == pytest.approx(expected.mean(), abs=0.01)
  # Small margins flip more often than large ones.
  assert flipped[margins < 0.05].mean() > 0.4
  assert flipped[margins > 0.5].mean() < 0.01
  # A flipped pair swaps its responses and masks whole.
  np.testing.assert_array_equal(noisy.chosen[flipped], pairs.rejected[flipped])
  np.testing.assert_array_equal(
    noisy.rejected[~flipped], pairs.rejected[~flipped]
  )
  assert not noisy.chosen_mask[flipped].any()
  assert noisy.chosen_mask[~flipped].all()


def test_label_noise_limits():
  pairs = _pairs(np.full(1000, 0.3))
  cold = pair_regimes.flip_labels(pairs, 1e-4, np.random.default_rng(0))
  np.testing.assert_array_equal(cold.chosen, pairs.chosen)
  hot = pair_regimes.flip_labels(pairs, 1e4, np.random.default_rng(0))
  assert (hot.chosen_reward < hot.rejected_reward).mean() == pytest.approx(
    0.5, abs=0.05
  )
  assert pair_regimes.flip_probability(0.0, 0.1) == pytest.approx(0.5)


def test_regime_pairs_flip_training_labels_only():
  import ml_collections

  from configs import controlled_generation as cg_config

  data = cg_config.get_config("cpu").data
  data = ml_collections.ConfigDict(data.to_dict())
  data.synthetic.num_prompts = 64
  data.synthetic.num_eval_prompts = 64
  regime = pair_regimes.Regime("noisy", label_temperature=1e3)
  make = regime.make_pairs(data, seed=0)
  train, held_out = make("train", None), make("eval", None)
  assert (train.chosen_reward < train.rejected_reward).any()
  assert (held_out.chosen_reward > held_out.rejected_reward).all()
  assert pair_regimes.Regime("plain").make_pairs(data, 0) is None

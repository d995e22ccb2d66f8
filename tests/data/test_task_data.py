"""The built-in tasks as batches: synthetic pairs, SFT text, IPO bandits."""

import numpy as np
import pytest

from slpo_jax.tasks import synthetic
from train import config_schema
from train import data


@pytest.fixture
def synthetic_config():
  config = config_schema.data_defaults()
  config.source = "synthetic"
  config.synthetic.num_prompts = 200
  config.synthetic.num_eval_prompts = 20
  config.synthetic.num_sft_sequences = 64
  return config


def test_synthetic_pairs_from_the_base_language(synthetic_config):
  tok = data.make_tokenizer(synthetic_config)
  assert tok.vocab_size == synthetic.VOCAB_SIZE
  train = data.load_dataset(synthetic_config, tokenizer=tok, split="train")
  report = train.report
  assert report.num_records == 200
  assert report.num_loaded + report.skipped.get("tied_reward", 0) == 200
  prompts = data.synthetic_prompts(synthetic_config, "train")
  for pair in train.pairs[:50]:
    np.testing.assert_array_equal(pair.prompt[1:], prompts[pair.example_id])
    assert pair.prompt[0] == tok.bos_id
    assert pair.chosen[-1] == pair.rejected[-1] == tok.eos_id
    reward = lambda r: synthetic.sentiment_reward(
      r[None], np.ones([1, len(r)], bool)
    )[0]
    assert reward(pair.chosen) > reward(pair.rejected)
  # The same task seed gives the same data whatever the training seed.
  again = data.load_dataset(synthetic_config, tokenizer=tok, split="train")
  assert again.fingerprint == train.fingerprint
  held = data.load_dataset(synthetic_config, tokenizer=tok, split="eval")
  assert len(held) <= 20 and held.fingerprint != train.fingerprint
  batch = next(
    train.batches(
      batch_size=8, seed=0, shard_index=0, shard_count=1, repeat=True
    )
  )
  assert batch.chosen_input_ids.shape == (8, 32)  # The smallest bucket.


def test_synthetic_pairs_from_a_supplied_sampler(synthetic_config):
  tok = data.make_tokenizer(synthetic_config)
  great, awful = tok.encode("great awful")
  seen = []

  def sample_fn(prompts, rng):
    seen.append(prompts.shape)
    out = np.full([len(prompts), 3], tok.eos_id, np.int32)
    half = len(prompts) // 2
    out[:half, 0], out[half:, 0] = awful, great
    return out

  dataset = data.load_dataset(
    synthetic_config, tokenizer=tok, split="eval", sample_fn=sample_fn
  )
  assert seen == [(40, 4)]  # Every eval prompt twice, in one call.
  assert len(dataset) == 20
  for pair in dataset.pairs:
    assert pair.chosen.tolist() == [great, tok.eos_id]
    assert pair.rejected.tolist() == [awful, tok.eos_id]

  # Ready-made pairs are used as they are.
  pairs = synthetic.make_preference_pairs(
    data.synthetic_prompts(synthetic_config, "train")[:10],
    sample_fn,
    synthetic.sentiment_reward,
    np.random.default_rng(0),
  )
  dataset = data.load_dataset(
    synthetic_config, tokenizer=tok, split="train", pairs=pairs
  )
  assert [p.example_id for p in dataset.pairs] == list(range(10))


def test_synthetic_needs_its_own_tokenizer(synthetic_config):
  with pytest.raises(data.DataError, match="own vocabulary"):
    data.load_dataset(
      synthetic_config, tokenizer=data.ByteTokenizer(), split="train"
    )
  synthetic_config.tokenizer = "tokenizer.json"
  with pytest.raises(data.DataError, match="own word vocabulary"):
    data.make_tokenizer(synthetic_config)


def test_sft_batches(synthetic_config):
  batches = data.make_sft_pipeline(
    synthetic_config, batch_size=16, seed=0, shard_index=0, shard_count=1
  )
  batch = next(batches)
  ids, mask = batch["input_ids"], batch["attention_mask"]
  assert ids.shape == (16, 32) and ids.dtype == np.int32
  assert np.all(ids[:, 0] == synthetic.BOS_ID)
  lengths = mask.sum(axis=1)
  assert np.all(ids[np.arange(16), lengths - 1] == synthetic.EOS_ID)
  # Every token after BOS is a label in the loss.
  np.testing.assert_array_equal(batch["loss_mask"].sum(axis=1), lengths - 1)
  in_loss = batch["loss_mask"][:, :-1]
  np.testing.assert_array_equal(
    batch["labels"][:, :-1][in_loss], ids[:, 1:][in_loss]
  )
  state = batches.get_state()
  expected = next(batches)["example_id"]
  resumed = data.make_sft_pipeline(
    synthetic_config, batch_size=16, seed=0, shard_index=0, shard_count=1
  )
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["example_id"], expected)


@pytest.mark.parametrize(
  "source, expected",
  [
    ("bandit_transitive", [("a", "b"), ("b", "c"), ("a", "c")]),
    ("bandit_contradictory", [("a", "b"), ("b", "a")]),
  ],
)
def test_bandit_batches(source, expected):
  config = config_schema.data_defaults()
  config.source = source
  config.max_length, config.max_prompt_length = 4, 2
  config.length_buckets = [4]
  tok = data.make_tokenizer(config)
  batches = data.make_pipeline(
    config,
    tokenizer=tok,
    batch_size=4,
    seed=0,
    shard_index=0,
    shard_count=1,
    split="eval",
  )
  (batch,) = list(batches)
  n = len(expected)
  np.testing.assert_array_equal(
    batch.example_weight, [1.0] * n + [0.0] * (4 - n)
  )
  got = [
    (tok.decode(c[1:2]), tok.decode(r[1:2]))
    for c, r in zip(batch.chosen_input_ids[:n], batch.rejected_input_ids[:n])
  ]
  assert got == expected
  # One-token responses to an empty prompt: [BOS, action], one loss label.
  assert np.all(batch.chosen_input_ids[:, 0] == tok.bos_id)
  np.testing.assert_array_equal(batch.chosen_loss_mask[0], [1, 0, 0, 0])
  np.testing.assert_array_equal(batch.chosen_attention_mask[0], [1, 1, 0, 0])
  assert batch.chosen_labels[0, 0] == batch.chosen_input_ids[0, 1]
  # Training repeats the few pairs endlessly.
  train = data.make_pipeline(
    config,
    tokenizer=tok,
    batch_size=4,
    seed=0,
    shard_index=0,
    shard_count=1,
    split="train",
  )
  assert len([next(train) for _ in range(5)]) == 5

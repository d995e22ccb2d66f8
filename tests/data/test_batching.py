"""Batches: format, buckets, truncation rule, shuffling, resumption, shards."""

import json

import grain
import numpy as np
import pytest
from etils import epath

from train import config_schema
from train import data
from train.data import encode


def _pipeline(config, **overrides):
  kwargs = dict(
    tokenizer=data.ByteTokenizer(),
    batch_size=4,
    seed=0,
    shard_index=0,
    shard_count=1,
    split="train",
  )
  kwargs.update(overrides)
  return data.make_pipeline(config, **kwargs)


def _check_batch(batch, pairs_by_id, tok, buckets):
  """Checks every documented property of one batch."""
  size = len(batch.example_id)
  assert batch.example_weight.shape == (size,)
  assert batch.example_weight.dtype == np.float32
  assert batch.example_id.dtype == np.int32
  length = batch.chosen_input_ids.shape[1]
  assert length in buckets
  longest = max(pairs_by_id[int(i)].length for i in batch.example_id)
  assert length == min(b for b in buckets if b >= longest)
  for side in ("chosen", "rejected"):
    ids = getattr(batch, f"{side}_input_ids")
    mask = getattr(batch, f"{side}_attention_mask")
    labels = getattr(batch, f"{side}_labels")
    loss = getattr(batch, f"{side}_loss_mask")
    assert (
      ids.shape == mask.shape == labels.shape == loss.shape == (size, length)
    )
    assert ids.dtype == mask.dtype == labels.dtype == np.int32
    assert loss.dtype == bool
    for row, example_id in enumerate(batch.example_id):
      pair = pairs_by_id[int(example_id)]
      tokens = np.concatenate([pair.prompt, getattr(pair, side)])
      n, p = len(tokens), len(pair.prompt)
      np.testing.assert_array_equal(ids[row, :n], tokens)
      assert np.all(ids[row, n:] == tok.pad_id)  # Right padding.
      np.testing.assert_array_equal(mask[row], np.arange(length) < n)
      np.testing.assert_array_equal(labels[row, : n - 1], tokens[1:])
      assert np.all(labels[row, n - 1 :] == 0)
      # Exactly the labels that are response tokens.
      np.testing.assert_array_equal(
        loss[row], (np.arange(length) >= p - 1) & (np.arange(length) < n - 1)
      )
  # Chosen and rejected share the prompt tokens at the same positions.
  for row, example_id in enumerate(batch.example_id):
    p = len(pairs_by_id[int(example_id)].prompt)
    np.testing.assert_array_equal(
      batch.chosen_input_ids[row, :p], batch.rejected_input_ids[row, :p]
    )


def test_batch_format(jsonl_config):
  jsonl_config.length_buckets = [64, 96, 128]
  tok = data.ByteTokenizer()
  dataset = data.load_dataset(jsonl_config, tokenizer=tok, split="train")
  pairs_by_id = {p.example_id: p for p in dataset.pairs}
  batches = _pipeline(jsonl_config, batch_size=2)
  seen_lengths = set()
  for _ in range(20):
    batch = next(batches)
    _check_batch(batch, pairs_by_id, tok, jsonl_config.length_buckets)
    assert np.all(batch.example_weight == 1.0)
    seen_lengths.add(batch.chosen_input_ids.shape[1])
  assert seen_lengths == {64, 96}  # Batches come in more than one bucket.


def test_hh_batches(hh_rlhf_path):
  config = config_schema.data_defaults()
  config.source = "hh"
  config.train_path = str(hh_rlhf_path)
  config.on_bad_record = "skip"
  tok = data.ByteTokenizer()
  dataset = data.load_dataset(config, tokenizer=tok, split="train")
  pairs_by_id = {p.example_id: p for p in dataset.pairs}
  batches = dataset.batches(
    batch_size=8, seed=1, shard_index=0, shard_count=1, repeat=True
  )
  for _ in range(3):
    _check_batch(next(batches), pairs_by_id, tok, config.length_buckets)


def test_truncation_follows_the_reference_rule():
  cut = encode.truncate(
    [9, 1, 2, 3, 4, 5],
    [7] * 3 + [0],
    [8] * 2 + [0],
    max_length=10,
    max_prompt_length=5,
  )
  # 6 + 4 = 10 fits: nothing is cut.
  assert cut.prompt == [9, 1, 2, 3, 4, 5] and not cut.prompt_truncated
  cut = encode.truncate(
    [9, 1, 2, 3, 4, 5, 6], [7] * 6, [8] * 2, max_length=10, max_prompt_length=4
  )
  # Prompt keeps BOS + its last 3 tokens; responses get 10 - 4 = 6.
  assert cut.prompt == [9, 4, 5, 6] and cut.prompt_truncated
  assert cut.chosen == [7] * 6 and not cut.responses_truncated
  cut = encode.truncate(
    [9, 1, 2, 3, 4, 5, 6], [7] * 9, [8] * 9, max_length=10, max_prompt_length=3
  )
  assert cut.prompt == [9, 5, 6]
  assert cut.chosen == [7] * 7 and cut.responses_truncated
  # A short prompt is not cut even when the responses must be.
  cut = encode.truncate(
    [9, 1], [7] * 20, [8], max_length=10, max_prompt_length=5
  )
  assert cut.prompt == [9, 1] and cut.chosen == [7] * 8 and cut.rejected == [8]


def test_shuffling_is_deterministic_from_the_seed(jsonl_config):
  ids = lambda it: [next(it).example_id.tolist() for _ in range(10)]
  first = ids(_pipeline(jsonl_config, seed=3))
  assert first == ids(_pipeline(jsonl_config, seed=3))
  assert first != ids(_pipeline(jsonl_config, seed=4))
  # Each epoch is a permutation: 40 pairs, batch 4, epoch = 10 batches.
  assert sorted(sum(first, [])) == list(range(40))


def test_epochs_are_reshuffled(jsonl_config):
  batches = _pipeline(jsonl_config, batch_size=8)
  epochs = [
    sum((next(batches).example_id.tolist() for _ in range(5)), [])
    for _ in range(2)
  ]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(40))
  assert epochs[0] != epochs[1]


def test_resume_gives_the_same_batches(jsonl_config):
  batches = _pipeline(jsonl_config, batch_size=3, seed=7)
  for _ in range(5):
    next(batches)
  state = json.loads(json.dumps(batches.get_state()))  # As stored on disk.
  expected = [next(batches) for _ in range(3)]
  resumed = _pipeline(jsonl_config, batch_size=3, seed=7)
  resumed.set_state(state)
  for want in expected:
    got, want = next(resumed).arrays(), want.arrays()
    assert got.keys() == want.keys()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_resume_through_grain_checkpoint_handler(jsonl_config, tmp_path):
  batches = _pipeline(jsonl_config, batch_size=3, seed=7)
  for _ in range(5):
    next(batches)
  directory = epath.Path(tmp_path / "data_state")
  directory.mkdir()
  grain.checkpoint.CheckpointHandler().save(directory, batches)
  expected = next(batches).example_id
  resumed = _pipeline(jsonl_config, batch_size=3, seed=7)
  grain.checkpoint.CheckpointHandler().restore(directory, resumed)
  np.testing.assert_array_equal(next(resumed).example_id, expected)


def test_resume_refuses_a_state_of_other_data(jsonl_config):
  state = _pipeline(jsonl_config, seed=1).get_state()
  with pytest.raises(data.DataError, match="seed: saved 1, now 2"):
    _pipeline(jsonl_config, seed=2).set_state(state)
  jsonl_config.max_length = 64  # Truncation changes the tokens.
  jsonl_config.max_prompt_length = 32
  with pytest.raises(data.DataError, match="fingerprint"):
    _pipeline(jsonl_config, seed=1).set_state(state)


def test_two_shards_split_every_global_batch(jsonl_config):
  one_host = _pipeline(jsonl_config, batch_size=8, shard_index=0, shard_count=1)
  whole = [next(one_host).example_id.tolist() for _ in range(5)]
  halves = []
  for shard in range(2):
    batches = _pipeline(
      jsonl_config, batch_size=4, shard_index=shard, shard_count=2
    )
    assert batches.num_shard_examples == 20
    halves.append([next(batches).example_id.tolist() for _ in range(5)])
  # Host i holds rows [4i, 4i + 4) of the batch one host would see, so the
  # global batches do not depend on the number of hosts.
  for step in range(5):
    assert halves[0][step] + halves[1][step] == whole[step]
  assert sorted(sum(whole, [])) == list(range(40))


def test_eval_single_pass_pads_the_last_batch_on_every_shard(jsonl_config):
  jsonl_config.eval_fraction = 0.3  # 12 eval pairs.
  per_shard, weights_per_shard = [], []
  for shard in range(2):
    batches = _pipeline(
      jsonl_config, split="eval", batch_size=4, shard_index=shard, shard_count=2
    )
    assert batches.num_batches == 2  # ceil(12 / (2 * 4)) on both shards.
    got = list(batches)
    assert len(got) == 2
    weights = np.concatenate([b.example_weight for b in got])
    ids = np.concatenate([b.example_id for b in got])
    weights_per_shard.append(weights.tolist())
    per_shard.append((ids, weights))
  # 12 real rows then 4 fillers, split 4 + 4 per global batch.
  assert weights_per_shard == [[1] * 8, [1] * 4 + [0] * 4]
  real = [set(ids[w == 1].tolist()) for ids, w in per_shard]
  assert not real[0] & real[1]
  full = data.load_dataset(
    jsonl_config, tokenizer=data.ByteTokenizer(), split="eval"
  )
  assert real[0] | real[1] == {p.example_id for p in full.pairs}
  # Filler rows repeat a real pair of the split (finite losses, and a cache
  # indexed by example_id is written with a correct value).
  fillers = set(per_shard[1][0][per_shard[1][1] == 0].tolist())
  assert fillers <= real[0] | real[1]


def test_single_pass_over_training_data(jsonl_config):
  batches = _pipeline(jsonl_config, batch_size=16, single_pass=True)
  got = list(batches)
  assert len(got) == batches.num_batches == 3
  ids = np.concatenate([b.example_id for b in got])
  weights = np.concatenate([b.example_weight for b in got])
  assert sorted(ids[weights == 1]) == list(range(40))


def test_fingerprint(jsonl_config):
  tok = data.ByteTokenizer()
  first = data.dataset_fingerprint(jsonl_config, tokenizer=tok, split="train")
  batches = _pipeline(jsonl_config)
  assert data.fingerprint(batches) == first
  jsonl_config.max_length = 64  # Truncation changes the tokens.
  jsonl_config.max_prompt_length = 32
  assert (
    data.dataset_fingerprint(jsonl_config, tokenizer=tok, split="train")
    != first
  )


def test_sharding_and_batch_errors(jsonl_config):
  with pytest.raises(data.DataError, match="shard_index"):
    _pipeline(jsonl_config, shard_index=2, shard_count=2)
  with pytest.raises(data.DataError, match="batch_size"):
    _pipeline(jsonl_config, batch_size=0)
  with pytest.raises(data.DataError, match="cannot be sharded"):
    _pipeline(jsonl_config, shard_index=40, shard_count=41)

"""Packed batches (``data.packing``): layout, same pairs, resumption, shards."""

import json

import numpy as np
import pytest

from train import data
from train.data import row_packing


def _pipeline(config, **overrides):
  kwargs = dict(
    tokenizer=data.ByteTokenizer(),
    batch_size=8,
    seed=0,
    shard_index=0,
    shard_count=1,
    split="train",
  )
  kwargs.update(overrides)
  return data.make_pipeline(config, **kwargs)


def _packed(config, packed_length=0):
  config.packing = True
  config.packed_length = packed_length
  return config


def _pair_ids(batch):
  ids = batch.pair_example_id[batch.pair_example_weight > 0]
  return sorted(ids.tolist())


def _check_packed(batch, pairs_by_id, pad_id, length):
  rows, slots = batch.pair_example_weight.shape
  assert batch.pair_example_id.shape == (rows, slots)
  assert rows & (rows - 1) == 0 and slots & (slots - 1) == 0  # Powers of 2.
  for key in ("segment_ids", "positions"):
    array = getattr(batch, key)
    assert array.shape == (rows, length) and array.dtype == np.int32
  for r in range(rows):
    offset = 0
    for s in range(slots):
      example_id = int(batch.pair_example_id[r, s])
      if example_id < 0:
        assert batch.pair_example_weight[r, s] == 0
        assert not np.any(batch.segment_ids[r] == s + 1)
        continue
      pair = pairs_by_id[example_id]
      span = np.flatnonzero(batch.segment_ids[r] == s + 1)
      # Contiguous, in slot order, prompt + the longer response long.
      np.testing.assert_array_equal(span, offset + np.arange(pair.length))
      np.testing.assert_array_equal(
        batch.positions[r, span], np.arange(pair.length)
      )
      for side in ("chosen", "rejected"):
        tokens = np.concatenate([pair.prompt, getattr(pair, side)])
        n, p = len(tokens), len(pair.prompt)
        at = span[:n]
        np.testing.assert_array_equal(
          getattr(batch, f"{side}_input_ids")[r, at], tokens
        )
        tail = span[n:]  # The shorter response's padding.
        assert np.all(getattr(batch, f"{side}_input_ids")[r, tail] == pad_id)
        np.testing.assert_array_equal(
          getattr(batch, f"{side}_attention_mask")[r, span],
          np.arange(pair.length) < n,
        )
        np.testing.assert_array_equal(
          getattr(batch, f"{side}_labels")[r, at[:-1]], tokens[1:]
        )
        steps = np.arange(pair.length)
        np.testing.assert_array_equal(
          getattr(batch, f"{side}_loss_mask")[r, span],
          (steps >= p - 1) & (steps < n - 1),
        )
      offset += pair.length
    # Nothing after the last pair of the row.
    assert not np.any(batch.chosen_attention_mask[r, offset:])
    assert not np.any(batch.rejected_loss_mask[r, offset:])


def test_packed_batches_hold_the_unpacked_batches_pairs(jsonl_config):
  tok = data.ByteTokenizer()
  dataset = data.load_dataset(jsonl_config, tokenizer=tok, split="train")
  pairs_by_id = {p.example_id: p for p in dataset.pairs}
  unpacked = _pipeline(jsonl_config)
  packed = _pipeline(_packed(jsonl_config, packed_length=384))
  for _ in range(6):
    want, got = next(unpacked), next(packed)
    assert _pair_ids(got) == sorted(want.example_id.tolist())
    _check_packed(got, pairs_by_id, tok.pad_id, 384)
    for side in ("chosen", "rejected"):  # The same real tokens.
      mask = f"{side}_attention_mask"
      assert np.sum(getattr(got, mask)) == np.sum(getattr(want, mask))
  summary = packed.report.summary()
  assert "packed rows" in summary and "real tokens" in summary, summary
  packed_share, unpacked_share = packed.report.real_token_fraction
  assert 0 < unpacked_share < packed_share <= 1


def test_packed_batches_resume(jsonl_config):
  batches = _pipeline(_packed(jsonl_config))
  for _ in range(3):
    next(batches)
  state = json.loads(json.dumps(batches.get_state()))
  expected = [next(batches) for _ in range(4)]
  resumed = _pipeline(jsonl_config)
  resumed.set_state(state)
  for want in expected:
    got, want = next(resumed).arrays(), want.arrays()
    assert got.keys() == want.keys()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def _unpacked(config):
  config = config.copy_and_resolve_references()
  config.packing = False
  return config


def test_hosts_pack_their_own_pairs_into_one_shape(jsonl_config):
  packed_config = _packed(jsonl_config)
  unpacked_config = _unpacked(packed_config)
  hosts = []
  for i in range(2):
    shard = dict(batch_size=4, shard_index=i, shard_count=2)
    hosts.append(
      (_pipeline(packed_config, **shard), _pipeline(unpacked_config, **shard))
    )
  for _ in range(4):
    shapes = set()
    for packed, unpacked in hosts:
      got = next(packed)
      assert _pair_ids(got) == sorted(next(unpacked).example_id.tolist())
      shapes.add(got.chosen_input_ids.shape + got.pair_example_id.shape)
    assert len(shapes) == 1


def test_single_pass_leaves_the_filler_out(jsonl_config):
  batches = _pipeline(_packed(jsonl_config), batch_size=16, single_pass=True)
  seen = [_pair_ids(batch) for batch in batches]
  assert len(seen) == 3  # 40 pairs in batches of 16.
  assert sorted(sum(seen, [])) == list(range(40))


def test_first_fit_decreasing():
  rows = row_packing.first_fit_decreasing([5, 9, 3, 4, 6, 2], 10)
  assert rows == [[1], [4, 3], [0, 2, 5]]
  with pytest.raises(ValueError):
    row_packing.first_fit_decreasing([11], 10)


def test_packed_length_below_max_length_is_refused(jsonl_config):
  with pytest.raises(data.DataError, match="packed_length"):
    _pipeline(_packed(jsonl_config, packed_length=100))


@pytest.mark.parametrize("per_host", [1, 5, 16, 40, 64])
def test_row_counts_are_few_shapes_with_little_waste(per_host):
  """At most ROW_SHAPES row counts, each under one step above the exact."""
  rng = np.random.default_rng(per_host)
  step = -(-per_host // row_packing.ROW_SHAPES)
  counts = set()
  for _ in range(300):
    lengths = rng.integers(8, 200, per_host).tolist()
    exact = len(row_packing.first_fit_decreasing(lengths, 256))
    share = [(_Pair(n), 1.0) for n in lengths]
    rows, slots = row_packing.layout_shape([share], 256)
    assert exact <= rows < exact + step and rows <= per_host
    assert slots & (slots - 1) == 0 or slots == per_host
    counts.add(rows)
  assert len(counts) <= row_packing.ROW_SHAPES


class _Pair:
  def __init__(self, length):
    self.length = length


def test_real_token_share_counts_rows_as_the_devices_round_them():
  """The reported packed share is of the rows the batches really hold."""
  rng = np.random.default_rng(7)
  pairs = [_Pair(int(n)) for n in rng.integers(8, 120, 64)]
  for pair in pairs:  # Real tokens: the prompt twice, each response once.
    pair.prompt, pair.chosen, pair.rejected = [0] * 4, [0] * 3, [0] * 2
  for multiple in (1, 4):
    packed, _ = row_packing.real_token_fractions(
      pairs,
      batch_size=16,
      packed_length=256,
      buckets=[256],
      row_multiple=multiple,
    )
    rows = 0
    for start in range(0, 64, 16):
      lengths = [p.length for p in pairs[start : start + 16]]
      exact = len(row_packing.first_fit_decreasing(lengths, 256))
      rows += -(-exact // multiple) * multiple  # Steps of 1 and of 4.
    assert packed == pytest.approx(64 * 13 / (2 * rows * 256))

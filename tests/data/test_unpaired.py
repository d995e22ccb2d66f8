"""KTO's unpaired records: reading, bad records, splitting pairs, batches."""

import numpy as np
import pytest

from train import data
from train.data import chat
from train.data import unpaired


def unpaired_record(i: int) -> dict:
  """A valid text record; even indices desirable."""
  return {
    "prompt": f"Question {i}: what is {i} plus {i}?",
    "completion": f" It is {2 * i + i % 2}." + " yes" * (i % 5),
    "label": i % 2 == 0,
  }


@pytest.fixture
def records_config(jsonl_config, tmp_path, write_jsonl):
  path = write_jsonl(
    tmp_path / "records.jsonl", [unpaired_record(i) for i in range(12)]
  )
  jsonl_config.train_path = str(path)
  jsonl_config.unpaired = True
  return jsonl_config


def load(config, split="train"):
  return data.load_dataset(config, tokenizer=data.ByteTokenizer(), split=split)


def test_text_records_are_bos_prompt_and_eos_completion(records_config):
  dataset = load(records_config)
  tokenizer = data.ByteTokenizer()
  assert dataset.unpaired and len(dataset) == 12
  for i, record in enumerate(dataset.pairs):
    text = unpaired_record(i)
    assert record.example_id == i and record.pair_id == -1
    assert record.desirable == text["label"]
    assert record.prompt.tolist() == [
      tokenizer.bos_id,
      *tokenizer.encode(text["prompt"]),
    ]
    assert record.completion.tolist() == [
      *tokenizer.encode(text["completion"]),
      tokenizer.eos_id,
    ]
  summary = dataset.report.summary()
  assert summary.startswith("train data from ")
  assert ": 12 records (6 desirable, 6 not);" in summary


def test_conversation_records_go_through_the_chat_template(
  records_config, tmp_path, write_jsonl
):
  prompt = [{"role": "user", "content": "hi there"}]
  completion = [{"role": "assistant", "content": "hello"}]
  path = write_jsonl(
    tmp_path / "chat.jsonl",
    [{"prompt": prompt, "completion": completion, "label": False}],
  )
  records_config.train_path = str(path)
  records_config.chat_template = "chatml"
  (record,) = load(records_config).pairs
  template = chat.load_chat_template(records_config)
  prompt_text, completion_text = template.render_pair(prompt, completion)
  tokenizer = data.ByteTokenizer()
  assert record.prompt.tolist() == tokenizer.encode(prompt_text)
  assert record.completion.tolist() == tokenizer.encode(completion_text)
  assert not record.desirable


BAD_RECORDS = {
  "non_bool_label": '{"prompt": "p", "completion": "a", "label": 1}',
  "missing_field": '{"prompt": "p", "label": true}',
  "empty_response": '{"prompt": "p", "completion": " ", "label": true}',
  "malformed_json": '{"prompt": "p", "completion": ',
  "not_an_object": '["p", "a", true]',
  "no_assistant_turn": '{"prompt": [{"role": "user", "content": "q"}],'
  ' "completion": [{"role": "user", "content": "a"}], "label": true}',
}


@pytest.mark.parametrize("reason", sorted(BAD_RECORDS))
def test_a_bad_record_is_one_line_naming_file_and_line(
  reason, records_config, tmp_path, write_jsonl
):
  lines = [unpaired_record(0), BAD_RECORDS[reason], unpaired_record(2)]
  path = write_jsonl(tmp_path / "bad.jsonl", lines)
  records_config.train_path = str(path)
  with pytest.raises(data.DataError) as info:
    load(records_config)
  message = str(info.value)
  assert message.startswith(f"{path}:2: {reason}")
  assert "\n" not in message
  records_config.on_bad_record = "skip"
  dataset = load(records_config)
  assert len(dataset) == 2
  assert dataset.report.skipped == {reason: 1}


@pytest.mark.parametrize("source", ["parquet", "arrow"])
def test_parquet_and_arrow_records_equal_the_jsonl_ones(
  source, records_config, tmp_path
):
  from tests.data.test_hf_files import save_like_datasets
  from tests.data.test_hf_files import write_parquet

  rows = [unpaired_record(i) for i in range(12)]
  rows[3]["label"] = None  # A bad row, named by file and row.
  if source == "parquet":
    path = write_parquet(tmp_path / "records.parquet", rows[:3] + rows[4:])
    bad_path = write_parquet(tmp_path / "bad.parquet", rows)
  else:
    path = save_like_datasets(tmp_path / "records", rows[:3] + rows[4:])
    bad_path = save_like_datasets(tmp_path / "bad", rows)
  want = [r for r in load(records_config).pairs if r.example_id != 3]
  records_config.source = source
  records_config.train_path = str(path)
  got = load(records_config).pairs
  assert len(got) == len(want) == 11
  for mine, theirs in zip(got, want):
    assert mine.desirable == theirs.desirable
    np.testing.assert_array_equal(mine.prompt, theirs.prompt)
    np.testing.assert_array_equal(mine.completion, theirs.completion)
  records_config.train_path = str(bad_path)
  with pytest.raises(data.DataError) as info:
    load(records_config)
  assert ":row 3: non_bool_label: field 'label' is NoneType" in str(info.value)


def test_eval_fraction_holds_records_out(records_config):
  records_config.eval_fraction = 0.25
  train, held_out = load(records_config), load(records_config, "eval")
  assert (len(train), len(held_out)) == (9, 3)
  ids = lambda dataset: {r.example_id for r in dataset.pairs}  # noqa: E731
  assert not ids(train) & ids(held_out)


def test_pairs_split_into_two_records_each(jsonl_config):
  pairs = load(jsonl_config).pairs
  dataset = data.load_dataset(
    jsonl_config,
    tokenizer=data.ByteTokenizer(),
    split="train",
    unpaired=True,
  )
  assert len(dataset) == 2 * len(pairs)
  for pair, (chosen, rejected) in zip(
    pairs, zip(dataset.pairs[::2], dataset.pairs[1::2])
  ):
    assert (chosen.desirable, rejected.desirable) == (True, False)
    assert chosen.pair_id == rejected.pair_id == pair.example_id
    assert chosen.example_id == 2 * pair.example_id
    assert rejected.example_id == 2 * pair.example_id + 1
    np.testing.assert_array_equal(chosen.completion, pair.chosen)
    np.testing.assert_array_equal(rejected.completion, pair.rejected)
    np.testing.assert_array_equal(rejected.prompt, pair.prompt)


def _record(example_id, prompt, completion, desirable):
  return unpaired.TokenizedRecord(
    example_id,
    np.asarray(prompt, np.int32),
    np.asarray(completion, np.int32),
    desirable,
  )


def test_collate_rotates_completions_for_the_mismatched_rows():
  records = [
    _record(0, [1, 5], [6, 7, 2], True),
    _record(1, [1, 8, 9], [10, 2], False),
    _record(2, [1], [11, 12, 13, 2], True),
  ]
  batch = unpaired.collate_records(
    [(r, 1.0) for r in records], buckets=(6, 8), pad_id=0
  )
  # Row i of the mismatched side: prompt i, completion i - 1 (0 takes 2's).
  expected_kl = [[1, 5, 11, 12, 13, 2], [1, 8, 9, 6, 7, 2], [1, 10, 2]]
  expected = [[1, 5, 6, 7, 2], [1, 8, 9, 10, 2], [1, 11, 12, 13, 2]]
  assert batch.completion_input_ids.shape == (3, 6)
  for rows, side in ((expected, "completion"), (expected_kl, "kl")):
    ids = getattr(batch, f"{side}_input_ids")
    mask = getattr(batch, f"{side}_loss_mask")
    labels = getattr(batch, f"{side}_labels")
    for i, tokens in enumerate(rows):
      prompt_length = len(records[i].prompt)
      assert ids[i, : len(tokens)].tolist() == tokens
      assert not ids[i, len(tokens) :].any()
      # The loss reads the labels of the completion's tokens only.
      assert labels[i][mask[i]].tolist() == tokens[prompt_length:]
  assert batch.desirable.tolist() == [True, False, True]
  assert batch.pair_id.tolist() == [-1, -1, -1]
  assert batch.completion_input_ids.dtype == np.int32
  rows = batch.as_rows()
  assert rows.rejected_input_ids is batch.kl_input_ids


def test_collate_cuts_a_mismatched_row_to_the_largest_bucket():
  records = [
    _record(0, [1, 3, 3, 3], [4, 2], True),
    _record(1, [1], [5, 5, 5, 5, 2], False),
  ]
  batch = unpaired.collate_records(
    [(r, 1.0) for r in records], buckets=(6,), pad_id=0
  )
  assert batch.kl_input_ids[0].tolist() == [1, 3, 3, 3, 5, 5]


def test_record_fingerprint_covers_labels():
  a = [_record(0, [1, 5], [6, 2], True)]
  b = [_record(0, [1, 5], [6, 2], False)]
  tokenizer = data.ByteTokenizer()
  assert unpaired.fingerprint(a, tokenizer) != unpaired.fingerprint(
    b, tokenizer
  )

"""Each kind of bad input: a one-line DataError, or skipped and counted."""

import gzip

import pytest

from train import data

# One bad line of each kind, with the reason it is reported under.
BAD_LINES = {
  "malformed_json": '{"prompt": "p", "chosen": "a", ',
  "not_an_object": '["p", "a", "b"]',
  "missing_field": '{"prompt": "p", "chosen": "a"}',
  "non_string_field": '{"prompt": "p", "chosen": "a", "rejected": 3}',
  "empty_response": '{"prompt": "p", "chosen": "  ", "rejected": "b"}',
  "identical_responses": '{"prompt": "p", "chosen": "same", '
  '"rejected": "same"}',
  "invalid_utf8": b'{"prompt": "p\xff", "chosen": "a", "rejected": "b"}',
}


def _file_with_bad_line(tmp_path, write_jsonl, pair_record, bad_line):
  # The bad record is line 3 of 6.
  lines = [
    pair_record(0),
    pair_record(1),
    bad_line,
    pair_record(3),
    pair_record(4),
    pair_record(5),
  ]
  return write_jsonl(tmp_path / "bad.jsonl", lines)


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_bad_record_raises_with_file_and_line(
  reason, jsonl_config, tmp_path, write_jsonl, pair_record
):
  path = _file_with_bad_line(
    tmp_path, write_jsonl, pair_record, BAD_LINES[reason]
  )
  jsonl_config.train_path = str(path)
  with pytest.raises(data.DataError) as info:
    data.load_dataset(
      jsonl_config, tokenizer=data.ByteTokenizer(), split="train"
    )
  message = str(info.value)
  assert message.startswith(f"{path}:3: {reason}")
  assert "\n" not in message  # Printable as one line.


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_bad_record_is_counted_when_skipping(
  reason, jsonl_config, tmp_path, write_jsonl, pair_record
):
  path = _file_with_bad_line(
    tmp_path, write_jsonl, pair_record, BAD_LINES[reason]
  )
  jsonl_config.train_path = str(path)
  jsonl_config.on_bad_record = "skip"
  dataset = data.load_dataset(
    jsonl_config, tokenizer=data.ByteTokenizer(), split="train"
  )
  report = dataset.report
  assert report.skipped == {reason: 1}
  assert report.first_skipped == {reason: f"{path}:3"}
  assert report.num_records == 6 and report.num_loaded == 5
  assert [p.example_id for p in dataset.pairs] == [0, 1, 3, 4, 5]
  assert f"{reason}=1" in report.summary()


def test_lone_surrogate_escape_is_invalid_text(
  jsonl_config, tmp_path, write_jsonl, pair_record
):
  path = _file_with_bad_line(
    tmp_path,
    write_jsonl,
    pair_record,
    '{"prompt": "p", "chosen": "a\\ud800", "rejected": "b"}',
  )
  jsonl_config.train_path = str(path)
  with pytest.raises(data.DataError, match=":3: invalid_utf8"):
    data.load_dataset(
      jsonl_config, tokenizer=data.ByteTokenizer(), split="train"
    )


def test_blank_lines_are_not_records(
  jsonl_config, tmp_path, write_jsonl, pair_record
):
  path = write_jsonl(
    tmp_path / "b.jsonl", [pair_record(0), "", "   ", pair_record(1)]
  )
  jsonl_config.train_path = str(path)
  dataset = data.load_dataset(
    jsonl_config, tokenizer=data.ByteTokenizer(), split="train"
  )
  assert dataset.report.num_blank_lines == 2  # A final newline is not one.
  assert [p.example_id for p in dataset.pairs] == [0, 3]


def test_empty_file(jsonl_config, tmp_path):
  for name, payload in (
    ("e.jsonl", b""),
    ("e.jsonl.gz", gzip.compress(b"")),
    ("w.jsonl", b"\n \n"),
  ):
    (tmp_path / name).write_bytes(payload)
    jsonl_config.train_path = str(tmp_path / name)
    with pytest.raises(data.DataError, match="no records"):
      data.load_dataset(
        jsonl_config, tokenizer=data.ByteTokenizer(), split="train"
      )


def test_missing_file(jsonl_config, tmp_path):
  jsonl_config.train_path = str(tmp_path / "nope.jsonl")
  with pytest.raises(data.DataError, match="nope.jsonl: file not found"):
    data.load_dataset(
      jsonl_config, tokenizer=data.ByteTokenizer(), split="train"
    )


def test_corrupt_gzip(jsonl_config, tmp_path, jsonl_file):
  path = tmp_path / "c.jsonl.gz"
  path.write_bytes(gzip.compress(jsonl_file.read_bytes())[:100])
  jsonl_config.train_path = str(path)
  with pytest.raises(data.DataError, match="not a readable gzip file"):
    data.load_dataset(
      jsonl_config, tokenizer=data.ByteTokenizer(), split="train"
    )


def test_all_records_bad(jsonl_config, tmp_path, write_jsonl):
  path = write_jsonl(tmp_path / "a.jsonl", ["{", "[]"])
  jsonl_config.train_path = str(path)
  jsonl_config.on_bad_record = "skip"
  with pytest.raises(data.DataError, match="none of the 2 records is usable"):
    data.load_dataset(
      jsonl_config, tokenizer=data.ByteTokenizer(), split="train"
    )


def test_long_prompt_is_truncated_keeping_its_end(
  jsonl_config, tmp_path, write_jsonl
):
  # 300 prompt bytes with max_length 128: the prompt keeps BOS and its last
  # 63 bytes, the responses keep 128 - 64 = 64 tokens.
  prompt = "x" * 240 + "".join(f"{i:02d}" for i in range(30))
  chosen, rejected = "a" * 100, "a" * 99 + "b"
  path = write_jsonl(
    tmp_path / "l.jsonl",
    [
      {"prompt": prompt, "chosen": chosen, "rejected": rejected},
      {"prompt": prompt, "chosen": "short yes", "rejected": "short no"},
    ],
  )
  jsonl_config.train_path = str(path)
  jsonl_config.on_bad_record = "skip"
  tok = data.ByteTokenizer()
  dataset = data.load_dataset(jsonl_config, tokenizer=tok, split="train")
  # The first pair differs only in its 100th byte: after the cut to 64
  # response tokens nothing tells the responses apart.
  assert dataset.report.skipped == {"identical_after_truncation": 1}
  (pair,) = dataset.pairs
  assert pair.example_id == 1
  assert len(pair.prompt) == 64 and pair.prompt[0] == tok.bos_id
  assert tok.decode(pair.prompt) == prompt[-63:]
  assert tok.decode(pair.chosen) == "short yes"
  assert pair.chosen[-1] == tok.eos_id  # Untouched responses keep EOS.
  assert dataset.report.num_truncated_prompts == 1
  assert dataset.report.num_truncated_responses == 0


@pytest.mark.parametrize(
  "change, message",
  [
    (dict(max_prompt_length=128), "max_prompt_length"),
    (dict(length_buckets=[32, 64]), "largest length bucket"),
    (dict(on_bad_record="ignore"), "on_bad_record"),
    (dict(source="csv"), "source must be one of"),
    (dict(train_path=""), "needs train_path"),
    (dict(eval_fraction=1.5), "eval_fraction"),
  ],
)
def test_config_errors(jsonl_config, change, message):
  jsonl_config.update(change)
  with pytest.raises(data.DataError, match=message):
    data.load_dataset(
      jsonl_config, tokenizer=data.ByteTokenizer(), split="train"
    )


def test_eval_split_needs_a_source(jsonl_config, tmp_path):
  with pytest.raises(data.DataError, match="no evaluation data"):
    data.load_dataset(
      jsonl_config, tokenizer=data.ByteTokenizer(), split="eval"
    )
  jsonl_config.eval_path = str(tmp_path / "x.jsonl")
  jsonl_config.eval_fraction = 0.1
  with pytest.raises(data.DataError, match="set one"):
    data.load_dataset(
      jsonl_config, tokenizer=data.ByteTokenizer(), split="eval"
    )

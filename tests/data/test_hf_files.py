"""Hugging Face dataset files: Parquet shards and save_to_disk folders.

Rows read are compared with independent readers (``pyarrow.parquet`` tables,
``datasets.load_from_disk``), and pairs with the same records read as JSONL.
"""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from train import config_schema
from train import data
from train.data import hf_files

# Columns of every kind a record can hold: strings, a struct (read by 'a/b'
# field names), a list of structs (chat messages) and a number.
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
RICH_SCHEMA = pa.schema(
  [
    ("meta", pa.struct([("question", pa.string()), ("source", pa.string())])),
    ("chosen", pa.string()),
    ("rejected", pa.string()),
    ("messages", pa.list_(MESSAGE)),
    ("score", pa.int64()),
  ]
)


def rich_record(i: int) -> dict:
  return {
    "meta": {"question": f"What is {i} squared?", "source": f"s{i % 3}"},
    "chosen": f" {i * i}.",
    "rejected": f" {i * i + 1}, roughly." + " no" * (i % 4),
    "messages": [
      {"role": "user", "content": f"What is {i} squared?"},
      {"role": "assistant", "content": f"{i * i}"},
    ][: 1 + i % 2],
    "score": i,
  }


def write_parquet(path, records, schema=None, **options):
  pq.write_table(pa.Table.from_pylist(records, schema=schema), path, **options)
  return path


def save_like_datasets(folder, records, schema=None, num_shards=1):
  """What ``Dataset.save_to_disk`` writes: Arrow stream shards, state.json."""
  table = pa.Table.from_pylist(records, schema=schema)
  folder.mkdir(parents=True)
  names = []
  per_shard = -(-len(records) // num_shards)
  for shard in range(num_shards):
    names.append(f"data-{shard:05d}-of-{num_shards:05d}.arrow")
    part = table.slice(shard * per_shard, per_shard)
    with pa.ipc.new_stream(str(folder / names[-1]), table.schema) as writer:
      writer.write_table(part, max_chunksize=7)  # Several batches a shard.
  state = {"_data_files": [{"filename": name} for name in names]}
  (folder / "state.json").write_text(json.dumps(state))
  (folder / "dataset_info.json").write_text("{}")
  return folder


def file_config(source, path, **overrides):
  config = config_schema.data_defaults()
  config.source = source
  config.train_path = str(path)
  config.max_length = 128
  config.max_prompt_length = 64
  config.length_buckets = [32, 64, 128]
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def load(config, split="train"):
  return data.load_dataset(config, tokenizer=data.ByteTokenizer(), split=split)


def test_parquet_shards_read_in_name_order_as_the_table_holds_them(tmp_path):
  records = [rich_record(i) for i in range(10)]
  # Written out of name order: the glob must still read shard 0 first.
  second = write_parquet(tmp_path / "train-1.parquet", records[6:], RICH_SCHEMA)
  first = write_parquet(tmp_path / "train-0.parquet", records[:6], RICH_SCHEMA)
  files = hf_files.matching_files(str(tmp_path / "train-*.parquet"), ".parquet")
  assert files == [str(first), str(second)]
  rows = list(hf_files.parquet_rows(files))
  reference = [
    *pq.read_table(first).to_pylist(),
    *pq.read_table(second).to_pylist(),
  ]
  assert [row for _, _, row in rows] == reference == records
  assert [example_id for example_id, _, _ in rows] == list(range(10))
  assert rows[7][1] == f"{second}:row 1"
  # Chat messages come through as lists of dicts, for the chat records.
  assert rows[1][2]["messages"][1] == {"role": "assistant", "content": "1"}


def test_only_the_columns_of_the_field_map_are_read(tmp_path):
  path = write_parquet(tmp_path / "r.parquet", [rich_record(0)], RICH_SCHEMA)
  fields = [("prompt", "meta/question"), ("chosen", "chosen")]
  [(_, _, row)] = hf_files.parquet_rows([str(path)], fields)
  assert row == {"meta": rich_record(0)["meta"], "chosen": " 0."}


def test_parquet_pairs_equal_the_jsonl_pairs(
  tmp_path, jsonl_config, pair_record
):
  records = [pair_record(i) for i in range(40)]
  (tmp_path / "shards").mkdir()
  for shard in range(3):
    write_parquet(
      tmp_path / "shards" / f"train-{shard:05d}-of-00003.parquet",
      records[shard * 14 : (shard + 1) * 14],
    )
  from_jsonl = load(jsonl_config)
  for path in ("shards/train-*.parquet", "shards"):  # A glob, a folder.
    from_parquet = load(file_config("parquet", tmp_path / path))
    assert from_parquet.fingerprint == from_jsonl.fingerprint
    assert from_parquet.report.num_records == 40
    assert from_parquet.report.num_loaded == 40


def test_struct_fields_and_held_out_eval(tmp_path):
  records = [rich_record(i) for i in range(20)]
  path = write_parquet(tmp_path / "r.parquet", records, RICH_SCHEMA)
  field_map = dict(prompt="meta/question", chosen="chosen", rejected="rejected")
  config = file_config("parquet", path, field_map=field_map, eval_fraction=0.25)
  train, held = load(config), load(config, "eval")
  assert (len(train), len(held)) == (15, 5)
  tok = data.ByteTokenizer()
  pair = next(p for p in train.pairs if p.example_id == 3)
  assert tok.decode(pair.prompt) == "What is 3 squared?"
  assert tok.decode(pair.chosen) == " 9."


def test_parquet_batches_are_bounded(tmp_path, monkeypatch):
  # Many small row groups, read with a patched batch size: rows arrive in
  # order through batches of at most that many rows, never a whole table.
  records = [{**rich_record(i), "unused": "x" * 100} for i in range(20)]
  path = write_parquet(tmp_path / "r.parquet", records, row_group_size=4)
  monkeypatch.setattr(hf_files, "_BATCH_ROWS", 3)
  calls, sizes = [], []
  iter_batches = pq.ParquetFile.iter_batches

  def spy(self, **options):
    calls.append(options)
    for batch in iter_batches(self, **options):
      sizes.append(batch.num_rows)
      yield batch

  monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
  fields = [("chosen", "chosen"), ("rejected", "rejected")]
  rows = list(hf_files.parquet_rows([str(path)], fields))
  assert calls == [dict(batch_size=3, columns=["chosen", "rejected"])]
  assert sum(sizes) == 20 and max(sizes) <= 3
  assert [row["chosen"] for _, _, row in rows] == [r["chosen"] for r in records]


def test_arrow_folder_pairs_equal_the_jsonl_pairs(
  tmp_path, jsonl_config, pair_record
):
  folder = save_like_datasets(
    tmp_path / "saved", [pair_record(i) for i in range(40)], num_shards=2
  )
  from_arrow = load(file_config("arrow", folder))
  assert from_arrow.fingerprint == load(jsonl_config).fingerprint
  # Arrow stream files can also be named directly.
  from_files = load(file_config("arrow", folder / "data-*.arrow"))
  assert from_files.fingerprint == from_arrow.fingerprint


def test_datasets_save_to_disk_folders(tmp_path, pair_record, write_jsonl):
  datasets = pytest.importorskip("datasets", reason="reference writer")
  records = [rich_record(i) for i in range(30)]
  saved = tmp_path / "saved"
  datasets.Dataset.from_list(records).save_to_disk(str(saved), num_shards=3)
  where, files = hf_files.arrow_split_files(str(saved), "train")
  rows = [row for _, _, row in hf_files.arrow_rows(files)]
  assert rows == datasets.load_from_disk(str(saved)).to_list() == records

  explicit = [pair_record(i) for i in range(30)]
  both = datasets.DatasetDict(
    train=datasets.Dataset.from_list(explicit[:24]),
    test=datasets.Dataset.from_list(explicit[24:]),
  )
  both.save_to_disk(str(tmp_path / "dict"))
  config = file_config("arrow", tmp_path / "dict", hf_split_eval="test")
  train, test = load(config), load(config, "eval")
  assert train.report.source == str(tmp_path / "dict" / "train")
  assert test.report.source == str(tmp_path / "dict" / "test")
  for dataset, part in ((train, explicit[:24]), (test, explicit[24:])):
    jsonl = write_jsonl(tmp_path / "part.jsonl", part)
    assert dataset.fingerprint == load(file_config("jsonl", jsonl)).fingerprint
  # The eval split may also come from a folder of its own.
  config = file_config("arrow", saved, eval_path=str(tmp_path / "dict"))
  with pytest.raises(data.DataError, match="choose one with data.hf_split"):
    load(config, "eval")
  config.hf_split_eval = "test"
  assert load(config, "eval").fingerprint == test.fingerprint


BAD_ROW_REASONS = (
  "empty_response",
  "identical_responses",
  "invalid_utf8",
  "missing_field",
  "non_string_field",
)


def _file_with_bad_row(tmp_path, pair_record, reason):
  """Six rows, the third bad for ``reason``; returns path, rows, field map."""
  records = [pair_record(i) for i in range(6)]
  field_map = dict(prompt="prompt", chosen="chosen", rejected="rejected")
  schema = pa.schema([(name, pa.string()) for name in field_map])
  bad = {"prompt": "p", "chosen": "a", "rejected": "b"}
  if reason == "missing_field":  # A null struct has no nested field.
    records = [{"meta": {"prompt": r.pop("prompt")}, **r} for r in records]
    schema = pa.schema(
      [("meta", pa.struct([("prompt", pa.string())]))]
      + [(name, pa.string()) for name in ("chosen", "rejected")]
    )
    field_map["prompt"] = "meta/prompt"
    bad = {"meta": None, "chosen": "a", "rejected": "b"}
  elif reason == "non_string_field":
    bad["chosen"] = None
  elif reason == "empty_response":
    bad["rejected"] = "  "
  elif reason == "identical_responses":
    bad["rejected"] = "a"
  elif reason == "invalid_utf8":  # Binary columns hold bytes, decoded here.
    schema = pa.schema([(name, pa.binary()) for name in field_map])
    records = [{k: v.encode() for k, v in r.items()} for r in records]
    bad = {"prompt": b"p\xff", "chosen": b"a", "rejected": b"b"}
  records[2] = bad
  path = write_parquet(tmp_path / "bad.parquet", records, schema)
  return path, records, field_map


@pytest.mark.parametrize("reason", BAD_ROW_REASONS)
def test_bad_rows_raise_or_are_counted_as_in_jsonl(
  reason, tmp_path, pair_record, write_jsonl
):
  path, records, field_map = _file_with_bad_row(tmp_path, pair_record, reason)
  config = file_config("parquet", path, field_map=field_map)
  with pytest.raises(data.DataError) as info:
    load(config)
  assert str(info.value).startswith(f"{path}:row 2: {reason}")
  assert "\n" not in str(info.value)
  config.on_bad_record = "skip"
  report = load(config).report
  assert report.skipped == {reason: 1}
  assert report.first_skipped == {reason: f"{path}:row 2"}
  assert (report.num_records, report.num_loaded) == (6, 5)
  if reason != "invalid_utf8":  # JSON has no bytes.
    jsonl = write_jsonl(tmp_path / "bad.jsonl", records)
    config.source, config.train_path = "jsonl", str(jsonl)
    assert load(config).report.skipped == report.skipped


@pytest.mark.parametrize(
  "field, message",
  [
    (
      "answer",
      "no column 'answer' (field_map.chosen='answer'); columns: meta, "
      "chosen, rejected, messages, score",
    ),
    (
      "meta/answer",
      "field_map.chosen='meta/answer': struct 'meta' has no field 'answer'; "
      "its fields: question, source",
    ),
    (
      "score/value",
      "field_map.chosen='score/value': column 'score' is int64, not a struct",
    ),
  ],
)
def test_a_missing_column_is_one_error_for_the_file(tmp_path, field, message):
  records = [rich_record(i) for i in range(5)]
  parquet = write_parquet(tmp_path / "r.parquet", records, RICH_SCHEMA)
  saved = save_like_datasets(tmp_path / "saved", records, RICH_SCHEMA)
  field_map = dict(prompt="meta/question", chosen=field, rejected="rejected")
  for source, path, named_file in (
    ("parquet", parquet, parquet),
    ("arrow", saved, saved / "data-00000-of-00001.arrow"),
  ):
    # Even when skipping bad records: the whole column is absent.
    config = file_config(
      source, path, field_map=field_map, on_bad_record="skip"
    )
    with pytest.raises(data.DataError) as info:
      load(config)
    assert str(info.value) == f"{named_file}: {message}"


def test_unreadable_paths_are_one_line_errors(tmp_path, pair_record):
  good = write_parquet(tmp_path / "good.parquet", [pair_record(0)])
  payload = good.read_bytes()
  (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all" * 10)
  (tmp_path / "cut.parquet").write_bytes(payload[: len(payload) // 2])
  folder = save_like_datasets(tmp_path / "saved", [pair_record(0)])
  (folder / "data-00000-of-00001.arrow").write_bytes(b"\x00garbage" * 10)
  (tmp_path / "plain").mkdir()
  write_parquet(tmp_path / "empty.parquet", [], pq.read_schema(good))
  cases = {
    "nothing/*.parquet": "nothing/*.parquet: no .parquet file matches",
    "absent.parquet": "absent.parquet: file not found",
    "garbage.parquet": "garbage.parquet: cannot read: ",
    "cut.parquet": "cut.parquet: cannot read: ",
    "empty.parquet": "empty.parquet: no records",
    "saved": "saved/data-00000-of-00001.arrow: cannot read: ",
    "plain": "plain: not a save_to_disk folder",
  }
  for name, message in cases.items():
    source = "arrow" if name in ("saved", "plain") else "parquet"
    with pytest.raises(data.DataError) as info:
      load(file_config(source, tmp_path / name))
    assert str(info.value).startswith(f"{tmp_path}/{message}"), info.value
    assert "\n" not in str(info.value)


def test_split_settings(tmp_path, pair_record):
  records = [pair_record(i) for i in range(8)]
  dict_folder = tmp_path / "dict"
  save_like_datasets(dict_folder / "train", records)
  (dict_folder / "dataset_dict.json").write_text('{"splits": ["train"]}')
  single = save_like_datasets(tmp_path / "single", records)
  # (source, path, split read, setting, its value, the error it gives).
  cases = [
    (
      "arrow",
      dict_folder,
      "train",
      "hf_split_train",
      "validation",
      "no split 'validation'; splits: ['train']",
    ),
    (
      "arrow",
      single,
      "train",
      "hf_split_train",
      "test",
      "one dataset (no dataset_dict.json), read as split 'train'; "
      "split 'test' needs a DatasetDict folder",
    ),
    (
      "arrow",
      single,
      "eval",
      "hf_split_eval",
      "train",
      "hf_split_eval is the training split 'train'",
    ),
    (
      "arrow",
      single,
      "eval",
      "hf_split_train",
      "train",
      "no evaluation data: set eval_path or hf_split_eval or eval_fraction",
    ),
    (
      "parquet",
      single,
      "train",
      "hf_split_eval",
      "test",
      "hf_split_train and hf_split_eval are for source 'arrow'",
    ),
    (
      "arrow",
      dict_folder,
      "train",
      "eval_fraction",
      0.5,
      "both eval_path or hf_split_eval and eval_fraction are set",
    ),
  ]
  for source, path, split, key, value, message in cases:
    config = file_config(source, path)
    if key == "eval_fraction":
      config.hf_split_eval = "test"
    setattr(config, key, value)
    with pytest.raises(data.DataError) as info:
      load(config, split)
    assert message in str(info.value)


def test_hh_rlhf_as_parquet_and_arrow(hh_rlhf_path, tmp_path):
  with gzip.open(hh_rlhf_path, "rt") as file:
    records = [json.loads(line) for line in file]
  half = len(records) // 2
  write_parquet(tmp_path / "train-00000-of-00002.parquet", records[:half])
  write_parquet(tmp_path / "train-00001-of-00002.parquet", records[half:])
  save_like_datasets(tmp_path / "saved", records, num_shards=2)
  hh = file_config("hh", hh_rlhf_path, on_bad_record="skip")
  reference = load(hh)
  transcripts = dict(prompt="", chosen="chosen", rejected="rejected")
  for source, path in (
    ("parquet", tmp_path / "train-*.parquet"),
    ("arrow", tmp_path / "saved"),
  ):
    config = file_config(
      source, path, field_map=transcripts, on_bad_record="skip"
    )
    dataset = load(config)
    assert dataset.fingerprint == reference.fingerprint
    assert dataset.report.skipped == reference.report.skipped
    assert dataset.report.num_records == 2312


def test_conversations_in_parquet_equal_the_jsonl_ones(tmp_path, write_jsonl):
  # The implicit layout (no prompt column, as in many Hub preference sets):
  # list-of-struct columns of messages, rendered through a chat template.
  def conversation(i, answer):
    return [
      {"role": "user", "content": f"What is {i} squared?"},
      {"role": "assistant", "content": answer},
    ]

  records = [
    {"chosen": conversation(i, f"{i * i}."), "rejected": conversation(i, "?")}
    for i in range(12)
  ]
  path = write_parquet(tmp_path / "chat.parquet", records)
  from_parquet = load(file_config("parquet", path, chat_template="chatml"))
  jsonl = write_jsonl(tmp_path / "chat.jsonl", records)
  from_jsonl = load(file_config("jsonl", jsonl, chat_template="chatml"))
  assert from_parquet.report.num_loaded == 12
  assert from_parquet.fingerprint == from_jsonl.fingerprint
  prompt = bytes(from_parquet.pairs[3].prompt.tolist()).decode()
  assert prompt.endswith(
    "What is 3 squared?<|im_end|>\n<|im_start|>assistant\n"
  )

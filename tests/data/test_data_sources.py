"""Reading pairs: JSONL (plain, gzip, remapped), HH transcripts, splits."""

import gzip
import json

import pytest

from train import config_schema
from train import data
from train.data import sources


def _texts(dataset, tokenizer):
  return [
    (
      tokenizer.decode(p.prompt),
      tokenizer.decode(p.chosen),
      tokenizer.decode(p.rejected),
    )
    for p in dataset.pairs
  ]


def test_jsonl_plain_and_gzip_read_the_same(jsonl_config, jsonl_file, tmp_path):
  tok = data.ByteTokenizer()
  plain = data.load_dataset(jsonl_config, tokenizer=tok, split="train")
  gz_path = tmp_path / "pairs.jsonl.gz"
  gz_path.write_bytes(gzip.compress(jsonl_file.read_bytes()))
  jsonl_config.train_path = str(gz_path)
  zipped = data.load_dataset(jsonl_config, tokenizer=tok, split="train")
  assert len(plain) == 40 and plain.report.num_loaded == 40
  assert plain.fingerprint == zipped.fingerprint
  assert [p.example_id for p in plain.pairs] == list(range(40))
  prompt, chosen, rejected = _texts(plain, tok)[3]
  assert (prompt, chosen, rejected) == (
    "Question 3: what is 3 plus 3?",
    " It is 6.",
    " It is 7, I think. really really really",
  )


def test_a_utf8_byte_order_mark_is_accepted(jsonl_config, jsonl_file, tmp_path):
  tok = data.ByteTokenizer()
  plain = data.load_dataset(jsonl_config, tokenizer=tok, split="train")
  marked = tmp_path / "bom.jsonl"
  marked.write_bytes(b"\xef\xbb\xbf" + jsonl_file.read_bytes())
  jsonl_config.train_path = str(marked)
  with_bom = data.load_dataset(jsonl_config, tokenizer=tok, split="train")
  assert with_bom.report.num_loaded == 40 and not with_bom.report.skipped
  assert with_bom.fingerprint == plain.fingerprint


def test_remapped_and_nested_fields(jsonl_config, tmp_path, write_jsonl):
  records = [
    {"meta": {"question": f"q{i}"}, "good": f"yes {i}", "bad": f"no {i}"}
    for i in range(5)
  ]
  jsonl_config.train_path = str(write_jsonl(tmp_path / "r.jsonl", records))
  jsonl_config.field_map = dict(
    prompt="meta/question", chosen="good", rejected="bad"
  )
  tok = data.ByteTokenizer()
  dataset = data.load_dataset(jsonl_config, tokenizer=tok, split="train")
  assert _texts(dataset, tok)[2] == ("q2", "yes 2", "no 2")


def test_hh_prompt_is_up_to_the_last_assistant_turn():
  chosen = (
    "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke."
    "\n\nAssistant: Sure, here is one about cats."
  )
  rejected = (
    "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke."
    "\n\nAssistant: Sure, here is one about dogs."
  )
  prompt, c, r = sources.split_hh_transcripts(chosen, rejected)
  assert prompt == (
    "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke.\n\nAssistant:"
  )
  # Not the common prefix, which would swallow " Sure, here is one about ".
  assert c == " Sure, here is one about cats."
  assert r == " Sure, here is one about dogs."


def test_hh_rejected_must_share_the_prompt():
  with pytest.raises(sources._BadRecord) as info:
    sources.split_hh_transcripts(
      "\n\nHuman: A\n\nAssistant: x\n\nHuman: B\n\nAssistant: y",
      "\n\nHuman: A\n\nAssistant: z",
    )
  assert info.value.reason == "prompt_mismatch"
  with pytest.raises(sources._BadRecord) as info:
    sources.split_hh_transcripts("no turns here", "no turns there")
  assert info.value.reason == "no_assistant_turn"


def test_hh_rlhf_file(hh_rlhf_path):
  config = config_schema.data_defaults()
  config.source = "hh"
  config.train_path = str(hh_rlhf_path)
  config.on_bad_record = "skip"
  tok = data.ByteTokenizer()
  dataset = data.load_dataset(config, tokenizer=tok, split="train")
  report = dataset.report
  assert report.num_records == 2312
  # The shared file holds 4 pairs whose rejected transcript does not share
  # the chosen prompt and 4 with an empty response.
  assert report.skipped == {"prompt_mismatch": 4, "empty_response": 4}
  assert report.num_loaded == len(dataset) == 2304
  assert report.num_truncated_prompts > 0
  for pair in dataset.pairs[:200]:
    assert pair.prompt[0] == tok.bos_id
    assert pair.length <= config.max_length
    assert not (pair.chosen == tok.bos_id).any()
  # Untruncated prompts end with the assistant tag.
  short = [p for p in dataset.pairs if len(p.prompt) < config.max_prompt_length]
  assert all(tok.decode(p.prompt).endswith("\n\nAssistant:") for p in short)
  line = json.loads(gzip.open(hh_rlhf_path, "rt").readline())
  first = dataset.pairs[0]
  assert first.example_id == 0
  if len(first.prompt) < config.max_prompt_length:
    assert line["chosen"].startswith(tok.decode(first.prompt))


def test_hh_rlhf_file_in_error_mode_names_the_line(hh_rlhf_path):
  config = config_schema.data_defaults()
  config.source = "hh"
  config.train_path = str(hh_rlhf_path)
  with pytest.raises(data.DataError) as info:
    data.load_dataset(config, tokenizer=data.ByteTokenizer(), split="train")
  message = str(info.value)
  assert f"{hh_rlhf_path}:87: empty_response" in message
  assert "\n" not in message


def test_held_out_split(jsonl_config):
  jsonl_config.eval_fraction = 0.25
  tok = data.ByteTokenizer()
  train = data.load_dataset(jsonl_config, tokenizer=tok, split="train")
  held = data.load_dataset(jsonl_config, tokenizer=tok, split="eval")
  train_ids = {p.example_id for p in train.pairs}
  eval_ids = {p.example_id for p in held.pairs}
  assert len(eval_ids) == 10 and len(train_ids) == 30
  assert train_ids | eval_ids == set(range(40)) and not train_ids & eval_ids
  assert train.report.num_held_out == 10 and held.report.num_held_out == 30
  # Independent of the training seed and stable across loads.
  again = data.load_dataset(jsonl_config, tokenizer=tok, split="eval")
  assert again.fingerprint == held.fingerprint


def test_held_out_membership_is_stable_when_lines_are_added(
  jsonl_config, tmp_path, write_jsonl, pair_record
):
  text_pairs = lambda n: [
    sources.TextPair(i, **pair_record(i), location=str(i)) for i in range(n)
  ]
  small, _ = sources.split_held_out(text_pairs(200), 0.1, "eval")
  large, _ = sources.split_held_out(text_pairs(220), 0.1, "eval")
  # Adding lines moves only the boundary: most held-out pairs stay held out.
  overlap = {p.example_id for p in small} & {p.example_id for p in large}
  assert len(overlap) >= 18


def test_separate_eval_file(jsonl_config, tmp_path, write_jsonl, pair_record):
  jsonl_config.eval_path = str(
    write_jsonl(
      tmp_path / "eval.jsonl", [pair_record(100 + i) for i in range(6)]
    )
  )
  tok = data.ByteTokenizer()
  held = data.load_dataset(jsonl_config, tokenizer=tok, split="eval")
  assert len(held) == 6 and held.report.source == jsonl_config.eval_path
  assert tok.decode(held.pairs[0].prompt).startswith("Question 100")

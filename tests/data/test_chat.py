"""Conversational pairs through chat templates, against ``transformers``.

Tokenizer folders are built here: one byte-level BPE trained on the shared
HH text (a fixed corpus when the shared data is absent), saved with a ChatML
template in tokenizer_config.json, a Llama-3-style one as
chat_template.jinja, and none at all (the built-in Gemma template named by
``data.chat_template``). Every record of a conversational test file must
give exactly the ids ``AutoTokenizer.apply_chat_template`` gives.
"""

import gzip
import json
import pathlib

import numpy as np
import pytest
import tokenizers
import transformers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import trainers

from train import config_schema
from train import data
from train.data import chat

HH_FILE = (
  pathlib.Path(__file__).parents[3]
  / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
)
SPECIAL_TOKENS = [
  "<unk>",
  "<pad>",
  "<|im_start|>",
  "<|im_end|>",
  "<|begin_of_text|>",
  "<|start_header_id|>",
  "<|end_header_id|>",
  "<|eot_id|>",
  "<bos>",
  "<eos>",
  "<start_of_turn>",
  "<end_of_turn>",
]
# (tokenizer_config.json special tokens, where the template is saved).
FOLDERS = {
  "chatml": (
    {"eos_token": "<|im_end|>", "pad_token": "<pad>"},
    "tokenizer_config",
  ),
  "llama3": (
    {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "jinja_file",
  ),
  "gemma": (
    {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
    "none",
  ),
}


def _hh_messages(transcript: str) -> list[dict]:
  """An HH transcript as alternating user/assistant messages."""
  messages = []
  for turn in transcript.split("\n\nHuman: ")[1:]:
    human, *answers = turn.split("\n\nAssistant:")
    messages.append({"role": "user", "content": human.strip()})
    for answer in answers:
      messages.append({"role": "assistant", "content": answer.strip()})
  return messages


def _hh_records(count: int) -> list[dict]:
  if not HH_FILE.exists():
    return []
  lines = gzip.decompress(HH_FILE.read_bytes()).decode().splitlines()
  return [json.loads(line) for line in lines[:count]]


def _corpus() -> list[str]:
  texts = [r[k] for r in _hh_records(600) for k in ("chosen", "rejected")]
  rng = np.random.default_rng(0)
  words = "the cat sat on a mat and dogs ran far away why how yes no".split()
  return texts or [" ".join(rng.choice(words, 12)) for _ in range(400)]


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
  tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=1200,
    special_tokens=SPECIAL_TOKENS,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(_corpus(), trainer)
  path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
  tok.save(str(path))
  return path


def _folder(root: pathlib.Path, tokenizer_json, name: str) -> pathlib.Path:
  specials, where = FOLDERS[name]
  folder = root / name
  folder.mkdir()
  (folder / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
  config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials}
  if where == "tokenizer_config":
    config["chat_template"] = chat.BUILTIN_TEMPLATES[name]
  elif where == "jinja_file":
    (folder / "chat_template.jinja").write_text(chat.BUILTIN_TEMPLATES[name])
  (folder / "tokenizer_config.json").write_text(json.dumps(config))
  return folder


def _records(count: int) -> list[dict]:
  """Conversational records from HH: explicit and implicit layouts, some
  with a system message, multi-turn prompts where HH has them.
  """
  records = []
  for i, hh in enumerate(_hh_records(count)):
    chosen, rejected = _hh_messages(hh["chosen"]), _hh_messages(hh["rejected"])
    if (
      len(chosen) < 2
      or chosen[:-1] != rejected[:-1]
      or chosen[-1]["role"] != "assistant"
      or rejected[-1]["role"] != "assistant"
      or chosen == rejected
      or not chosen[-1]["content"]
      or not rejected[-1]["content"]
    ):
      continue
    if i % 3 == 0:
      system = {"role": "system", "content": f"You are assistant number {i}."}
      chosen, rejected = [system, *chosen], [system, *rejected]
    if i % 2:
      records.append({"chosen": chosen, "rejected": rejected})
    else:
      records.append(
        {
          "prompt": chosen[:-1],
          "chosen": chosen[-1:],
          "rejected": rejected[-1:],
        }
      )
  if not records:  # Without the shared data: a few hand-written ones.
    for i in range(12):
      prompt = [
        {"role": "user", "content": f"how are you {i}?"},
        {"role": "assistant", "content": "fine, and you"},
        {"role": "user", "content": "why " * (i % 4) + "so?"},
      ]
      records.append(
        {
          "prompt": prompt,
          "chosen": [{"role": "assistant", "content": "because it is."}],
          "rejected": [{"role": "assistant", "content": f"no {i}"}],
        }
      )
  return records


def _config(path, folder, **changes):
  config = config_schema.data_defaults()
  config.source = "jsonl"
  config.train_path = str(path)
  config.tokenizer = str(folder)
  config.max_length = 8192
  config.max_prompt_length = 4096
  config.length_buckets = [8192]
  for key, value in changes.items():
    setattr(config, key, value)
  return config


def _reference_ids(tok, record, template):
  """(prompt, chosen, rejected) ids from ``apply_chat_template``."""
  if "prompt" in record:
    prompt = record["prompt"]
    sides = [prompt + record["chosen"], prompt + record["rejected"]]
  else:
    shared = 0
    while record["chosen"][shared] == record["rejected"][shared]:
      shared += 1
    prompt = record["chosen"][:shared]
    sides = [record["chosen"], record["rejected"]]

  def ids(messages, **kwargs):
    out = tok.apply_chat_template(
      messages, tokenize=True, chat_template=template, **kwargs
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)

  prompt_ids = ids(prompt, add_generation_prompt=True)
  responses = []
  for side in sides:
    whole = ids(side)
    assert whole[: len(prompt_ids)] == prompt_ids
    responses.append(whole[len(prompt_ids) :])
  return prompt_ids, *responses


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_pairs_equal_apply_chat_template(
  name, tokenizer_json, tmp_path, write_jsonl
):
  folder = _folder(tmp_path, tokenizer_json, name)
  records = _records(160)
  path = write_jsonl(tmp_path / "chat.jsonl", records)
  override = name if FOLDERS[name][1] == "none" else ""
  config = _config(path, folder, chat_template=override)
  tokenizer = data.make_tokenizer(config)
  dataset = data.load_dataset(config, tokenizer=tokenizer, split="train")
  assert dataset.report.num_loaded == len(records) >= 12
  assert dataset.report.num_retokenized == 0
  tok = transformers.AutoTokenizer.from_pretrained(str(folder))
  template = chat.BUILTIN_TEMPLATES[name] if override else None
  for pair in dataset.pairs:
    want = _reference_ids(tok, records[pair.example_id], template)
    got = (pair.prompt, pair.chosen, pair.rejected)
    for want_ids, got_ids in zip(want, got):
      assert got_ids.tolist() == want_ids, (name, pair.example_id)
  # One BOS where the template puts one, none doubled; the end of turn once
  # per response, nothing appended after it (TRL #4481).
  bos = tok.convert_tokens_to_ids(tok.bos_token) if tok.bos_token else None
  end = tok.convert_tokens_to_ids(_end_token(name))
  for pair in dataset.pairs:
    for response in (pair.chosen.tolist(), pair.rejected.tolist()):
      whole = pair.prompt.tolist() + response
      if bos is not None and name != "chatml":
        assert whole.count(bos) == 1 and whole[0] == bos
      assert response.count(end) == 1
      # After the end of turn only the template's newline, if any.
      tail = tokenizer.decode(response[response.index(end) + 1 :])
      assert tail in ("", "\n")


def _end_token(name: str) -> str:
  return {
    "chatml": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "gemma": "<end_of_turn>",
  }[name]


def test_end_of_turn_of_each_builtin_template():
  for name, template in chat.BUILTIN_TEMPLATES.items():
    assert chat.ChatTemplate(template, {}, name).end_of_turn == _end_token(name)


def test_implicit_and_explicit_layouts_agree(
  tokenizer_json, tmp_path, write_jsonl
):
  folder = _folder(tmp_path, tokenizer_json, "chatml")
  prompt = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "Another?"},
  ]
  chosen = [{"role": "assistant", "content": "Blue."}]
  rejected = [{"role": "assistant", "content": "No."}]
  explicit = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
  implicit = {"chosen": prompt + chosen, "rejected": prompt + rejected}
  # UltraFeedback-binarized: a text prompt beside whole conversations, which
  # TRL ignores in favour of the shared messages.
  text_prompt = dict(implicit, prompt="Another?")
  loaded = []
  for record in (explicit, implicit, text_prompt):
    path = write_jsonl(tmp_path / "one.jsonl", [record])
    config = _config(path, folder)
    dataset = data.load_dataset(
      config, tokenizer=data.make_tokenizer(config), split="train"
    )
    loaded.append(dataset.pairs[0])
  for other in loaded[1:]:
    for field in ("prompt", "chosen", "rejected"):
      np.testing.assert_array_equal(
        getattr(loaded[0], field), getattr(other, field)
      )
  tokenizer = data.make_tokenizer(_config(path, folder))
  assert tokenizer.decode(loaded[0].chosen) == "Blue.\n"
  assert tokenizer.decode(loaded[0].prompt).endswith("assistant\n")


def _message(role, content):
  return {"role": role, "content": content}


BAD_RECORDS = [
  # (record, reason)
  ({"prompt": 5, "chosen": [_message("assistant", "a")],
    "rejected": [_message("assistant", "b")]}, "bad_messages"),
  ({"prompt": [_message("user", "q")], "chosen": [{"role": "assistant"}],
    "rejected": [_message("assistant", "b")]}, "bad_messages"),
  ({"prompt": [_message("user", "q")], "chosen": [_message("user", "a")],
    "rejected": [_message("assistant", "b")]}, "no_assistant_turn"),
  ({"chosen": [_message("user", "q"), _message("assistant", "a")],
    "rejected": [_message("user", "other"), _message("assistant", "a")]},
   "no_assistant_turn"),
  ({"prompt": [_message("user", "q")], "chosen": [_message("assistant", " ")],
    "rejected": [_message("assistant", "b")]}, "empty_response"),
  ({"chosen": [_message("user", "q"), _message("assistant", "a")],
    "rejected": [_message("user", "q"), _message("assistant", "a")]},
   "identical_responses"),
  # Gemma's template refuses two user turns in a row.
  ({"prompt": [_message("user", "q"), _message("user", "q2")],
    "chosen": [_message("assistant", "a")],
    "rejected": [_message("assistant", "b")]}, "template_error"),
]  # fmt: skip


def test_bad_conversations_are_counted_by_reason(
  tokenizer_json, tmp_path, write_jsonl
):
  folder = _folder(tmp_path, tokenizer_json, "gemma")
  good = {
    "prompt": [_message("user", "q")],
    "chosen": [_message("assistant", "yes")],
    "rejected": [_message("assistant", "no")],
  }
  records = [good] + [record for record, _ in BAD_RECORDS]
  path = write_jsonl(tmp_path / "bad.jsonl", records)
  config = _config(path, folder, chat_template="gemma", on_bad_record="skip")
  dataset = data.load_dataset(
    config, tokenizer=data.make_tokenizer(config), split="train"
  )
  assert dataset.report.num_loaded == 1
  want = {}
  for _, reason in BAD_RECORDS:
    want[reason] = want.get(reason, 0) + 1
  assert dataset.report.skipped == want
  config.on_bad_record = "error"
  with pytest.raises(data.DataError, match=r"bad\.jsonl:2: bad_messages"):
    data.load_dataset(
      config, tokenizer=data.make_tokenizer(config), split="train"
    )


def test_template_errors_are_one_line(tokenizer_json, tmp_path, write_jsonl):
  folder = _folder(tmp_path, tokenizer_json, "gemma")  # Has no template.
  record = {
    "prompt": [_message("user", "q")],
    "chosen": [_message("assistant", "yes")],
    "rejected": [_message("assistant", "no")],
  }
  path = write_jsonl(tmp_path / "c.jsonl", [record])
  config = _config(path, folder)
  tokenizer = data.make_tokenizer(config)
  with pytest.raises(data.DataError, match="no chat template.*chatml"):
    data.load_dataset(config, tokenizer=tokenizer, split="train")
  config.chat_template = "vicuna"
  with pytest.raises(data.DataError, match="neither a file nor one of"):
    data.load_dataset(config, tokenizer=tokenizer, split="train")
  broken = tmp_path / "broken.jinja"
  broken.write_text("{% for m in messages %}{{ m['content'] }")
  config.chat_template = str(broken)
  with pytest.raises(data.DataError, match="does not compile"):
    data.load_dataset(config, tokenizer=tokenizer, split="train")


def test_the_template_runs_sandboxed():
  escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
  template = chat.ChatTemplate(escape, {}, "test")
  with pytest.raises(chat.BadConversation, match="template_error"):
    template.render([_message("user", "q")])


def test_truncation_keeps_the_template_start_only_when_it_is_bos(
  tokenizer_json, tmp_path, write_jsonl
):
  record = {
    "prompt": [_message("user", "word " * 200)],
    "chosen": [_message("assistant", "yes")],
    "rejected": [_message("assistant", "no")],
  }
  path = write_jsonl(tmp_path / "long.jsonl", [record])
  for name in ("chatml", "llama3"):
    folder = _folder(tmp_path, tokenizer_json, name)
    config = _config(
      path, folder, max_length=64, max_prompt_length=32, length_buckets=[64]
    )
    tokenizer = data.make_tokenizer(config)
    (pair,) = data.load_dataset(
      config, tokenizer=tokenizer, split="train"
    ).pairs
    assert len(pair.prompt) == 32 and pair.prompt_truncated
    full = chat.load_chat_template(config).render(
      record["prompt"], add_generation_prompt=True
    )
    full_ids = tokenizer.encode(full)
    if name == "llama3":  # BOS kept, then the prompt's last 31 tokens.
      assert pair.prompt.tolist() == full_ids[:1] + full_ids[-31:]
    else:
      assert pair.prompt.tolist() == full_ids[-32:]

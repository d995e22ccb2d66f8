"""``python -m train.data.preview``: the pairs as training sees them."""

import json
import subprocess
import sys

import configs.default
from train import data
from train.data import preview

RECORDS = [
  {
    "prompt": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": f"Count to {i}."},
    ],
    "chosen": [{"role": "assistant", "content": " ".join("x" * i)}],
    "rejected": [{"role": "assistant", "content": "No."}],
  }
  for i in range(1, 6)
]


def _config(path, **data_changes):
  config = configs.default.get_config()
  config.data.source = "jsonl"
  config.data.train_path = str(path)
  config.data.chat_template = "chatml"
  config.data.max_length = 64
  config.data.max_prompt_length = 32
  config.data.length_buckets = (32, 64)
  for key, value in data_changes.items():
    setattr(config.data, key, value)
  return config


def test_json_lines_are_the_pairs_training_sees(tmp_path, write_jsonl, capsys):
  config = _config(write_jsonl(tmp_path / "c.jsonl", RECORDS))
  preview.preview(config, num=3, output_format="json")
  out, err = capsys.readouterr()
  lines = [json.loads(line) for line in out.splitlines()]
  dataset = data.load_dataset(
    config.data, tokenizer=data.make_tokenizer(config.data), split="train"
  )
  assert len(lines) == 3
  for line, pair in zip(lines, dataset.pairs):
    assert line["prompt_ids"] == pair.prompt.tolist()
    assert line["chosen_ids"] == pair.chosen.tolist()
    assert line["rejected_ids"] == pair.rejected.tolist()
    assert line["chosen_text"] == bytes(line["chosen_ids"]).decode()
    assert "".join(line["prompt_tokens"]) == line["prompt_text"]
  assert lines[0]["prompt_text"].endswith("<|im_start|>assistant\n")
  assert lines[0]["chosen_text"] == "x<|im_end|>\n"
  assert "5 pairs; 5 records read" in err


def test_text_marks_tokens_lengths_and_truncation(
  tmp_path, write_jsonl, capsys
):
  long = dict(RECORDS[0], prompt=[{"role": "user", "content": "w" * 80}])
  config = _config(
    write_jsonl(tmp_path / "c.jsonl", [long, *RECORDS]),
    max_length=128,
    length_buckets=(64, 128),
  )
  preview.preview(config, num=2, output_format="text")
  out = capsys.readouterr().out
  first, second, report = out.split("\n\n", 2)
  assert first.startswith("pair 1 of 6: example 0 at ")
  assert "truncation: prompt cut to its end" in first
  assert "prompt: 32 tokens, not in the loss" in first
  assert "[<][|][i][m][_][e][n][d][|][>][\\n]" in first
  assert "truncation: none" in second
  # One byte of content, then the template's end of turn: all in the loss.
  assert "chosen: 12 tokens, all 12 in the loss" in second
  assert "padded to 128" in second
  assert "6 pairs; 6 records read; 1 prompts truncated" in report


def test_packed_config_reports_the_real_token_share(
  tmp_path, write_jsonl, capsys
):
  config = _config(write_jsonl(tmp_path / "c.jsonl", RECORDS), packing=True)
  config.batch_size = 5
  preview.preview(config, num=1, output_format="json")
  err = capsys.readouterr().err
  assert "packed rows" in err and "real tokens" in err, err


def test_command_line(tmp_path, write_jsonl):
  path = write_jsonl(tmp_path / "c.jsonl", RECORDS)
  command = [
    sys.executable,
    "-m",
    "train.data.preview",
    "--config",
    "configs/default.py",
    "--config.data.source=jsonl",
    f"--config.data.train_path={path}",
    "--config.data.chat_template=nonexistent.jinja",
    "--num",
    "2",
  ]
  done = subprocess.run(command, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
    "error: data config: chat_template 'nonexistent.jinja' is neither a file"
    " nor one of the built-in templates ['chatml', 'gemma', 'llama3']"
  ]


def test_kto_previews_the_pairs_as_unpaired_records(
  tmp_path, write_jsonl, capsys
):
  config = _config(write_jsonl(tmp_path / "c.jsonl", RECORDS))
  config.loss.name = "kto"
  preview.preview(config, num=2, output_format="json")
  out, err = capsys.readouterr()
  chosen, rejected = [json.loads(line) for line in out.splitlines()]
  assert (chosen["label"], rejected["label"]) == (True, False)
  assert chosen["pair_id"] == rejected["pair_id"] == 0
  assert chosen["completion_text"] == "x<|im_end|>\n"
  assert rejected["completion_text"] == "No.<|im_end|>\n"
  assert rejected["prompt_ids"] == chosen["prompt_ids"]
  assert "10 records (5 desirable, 5 not); 5 records read" in err
  preview.preview(config, num=1, output_format="text")
  out, _ = capsys.readouterr()
  assert out.startswith("record 1 of 10: example 0 at ")
  assert "; desirable; " in out
  n = len(chosen["completion_ids"])
  assert f"completion: {n} tokens, all {n} in the loss" in out

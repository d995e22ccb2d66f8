"""``train.evaluate`` on a tiny run: the report against its own samples, the
win rate's pairing, the figure, and the one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from train import evaluate as evaluate_lib
from train import loop
from train.errors import ConfigError
from train.errors import NoCheckpointError

from train_testing import REPO_ROOT
from train_testing import make_tiny_config
from train_testing import write_chat_tokenizer

NUM_PROMPTS = 8


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A tiny synthetic run with checkpoints at steps 2 and 4."""
  config = make_tiny_config(**{"checkpoint_every": 2, "export.at_end": False})
  workdir = tmp_path_factory.mktemp("evaluated")
  loop.train_and_evaluate(config, workdir)
  return workdir


def _read(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_report_matches_its_samples(finished_run, tmp_path):
  samples_out, figure = tmp_path / "samples.jsonl", tmp_path / "frontier.png"
  report = evaluate_lib.evaluate(
    finished_run,
    num_prompts=NUM_PROMPTS,
    max_new_tokens=13,
    samples_out=samples_out,
    figure=figure,
  )
  assert [c["step"] for c in report["checkpoints"]] == [2, 4]
  assert report["baseline"]["of"] == "reference"
  assert report["baseline"]["kl"]["mean"] == 0.0
  rows = _read(samples_out)
  assert len(rows) == 3 * NUM_PROMPTS
  reference = [r for r in rows if r["model"] == "reference"]
  for checkpoint in report["checkpoints"]:
    policy = [r for r in rows if r["step"] == checkpoint["step"]]
    assert [r["index"] for r in policy] == list(range(NUM_PROMPTS))
    rewards = np.array([r["reward"] for r in policy])
    assert checkpoint["reward"]["mean"] == pytest.approx(np.mean(rewards))
    # The win rate, recomputed from the rows, paired by prompt.
    base = np.array([r["reward"] for r in reference])
    wins = np.mean(np.where(rewards > base, 1.0, 0.0) + 0.5 * (rewards == base))
    assert checkpoint["win_rate"]["mean"] == pytest.approx(wins)
    assert 0 <= checkpoint["win_rate"]["low"] <= wins
    assert checkpoint["kl"]["mean"] > 0
  for row in rows:
    assert row["prompt_ids"][0] == 1  # BOS
    assert len(row["response_ids"]) == row["length"]
  assert figure.read_bytes()[:4] == b"\x89PNG"


def test_a_run_against_itself_wins_half(finished_run):
  """The same policy, prompts and key on both sides: every prompt ties."""
  report = evaluate_lib.evaluate(
    finished_run,
    against=finished_run,
    steps="4",
    num_prompts=NUM_PROMPTS,
    max_new_tokens=13,
  )
  (checkpoint,) = report["checkpoints"]
  assert checkpoint["win_rate"]["mean"] == 0.5
  assert checkpoint["reward"] == report["baseline"]["reward"]


@pytest.mark.slow
def test_reward_model_scores_equal_transformers(finished_run, tmp_path):
  """A tiny random reward model with a byte-level tokenizer of its own: the
  scores in the samples file are transformers' scores of BOS + prompt +
  response."""
  transformers = pytest.importorskip("transformers")
  import tokenizers
  import torch

  folder = write_chat_tokenizer(tmp_path / "reward_model")
  tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
  config = transformers.LlamaConfig(
    vocab_size=tokenizer.get_vocab_size(),
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_labels=1,
    pad_token_id=tokenizer.token_to_id("<pad>"),
  )
  torch.manual_seed(0)
  hf_model = transformers.LlamaForSequenceClassification(config).eval()
  hf_model.save_pretrained(folder)
  samples_out = tmp_path / "samples.jsonl"
  report = evaluate_lib.evaluate(
    finished_run,
    reward_model=folder,
    steps="4",
    num_prompts=4,
    max_new_tokens=13,
    samples_out=samples_out,
    figure=tmp_path / "reward_model.png",
  )
  (checkpoint,) = report["checkpoints"]
  assert 0 <= checkpoint["reward_model/win_rate"]["mean"] <= 1
  bos = tokenizer.token_to_id("<s>")
  for row in _read(samples_out):
    ids = [bos] + tokenizer.encode(
      row["prompt"] + row["response"], add_special_tokens=False
    ).ids
    with torch.no_grad():
      want = hf_model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert row["reward_model"] == pytest.approx(want, abs=1e-4)
  # The same folder declared a causal LM: refused in one line.
  config_file = folder / "config.json"
  hf_config = json.loads(config_file.read_text())
  hf_config["architectures"] = ["LlamaForCausalLM"]
  config_file.write_text(json.dumps(hf_config))
  with pytest.raises(ConfigError, match="ForSequenceClassification"):
    evaluate_lib.evaluate(finished_run, reward_model=folder, steps="4")


def test_errors(finished_run, tmp_path):
  with pytest.raises(NoCheckpointError, match="no checkpoint"):
    evaluate_lib.evaluate(tmp_path / "empty")
  with pytest.raises(ConfigError, match="the workdir has steps 2, 4"):
    evaluate_lib.evaluate(finished_run, steps="3")
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "good film"}\n{"text": "bad"}\n')
  with pytest.raises(ConfigError, match=f"{prompts} line 2"):
    evaluate_lib.evaluate(finished_run, prompts_file=prompts)


def test_command_line_error_is_one_line(tmp_path):
  process = subprocess.run(
    [sys.executable, "-m", "train.evaluate", "--workdir", str(tmp_path)],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert process.returncode == 2
  assert process.stderr.strip().splitlines() == [
    f"error: no checkpoint in {tmp_path} (it has no checkpoints/ folder)"
  ]

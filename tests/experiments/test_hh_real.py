"""Sections 5.6 and 5.10: the split, the references' scoring, the shares."""

import dataclasses
import gzip
import pathlib
import random

import jax
import numpy as np

from experiments import hh_real
from experiments import hh_reference
from slpo_jax import models
from train.data import encode
from train.data import tokenization


def _record(i: int) -> dict:
  prompt = f"\n\nHuman: question {i}?\n\nAssistant:"
  return {"chosen": prompt + f" yes {i}", "rejected": prompt + f" no, {i}!"}


def test_split_is_disjoint_and_does_not_depend_on_file_order():
  records = [_record(i) for i in range(1400)]
  records.append({"chosen": "no assistant turn", "rejected": "x"})
  parts = hh_real.split_records(records)
  assert [len(parts[k]) for k in ("reference", "held_out", "train")] == [
    1000,
    300,
    100,
  ]
  texts = [{r["chosen"] for r in part} for part in parts.values()]
  assert sum(map(len, texts)) == len(set().union(*texts)) == 1400
  shuffled = records[:]
  random.Random(0).shuffle(shuffled)
  assert hh_real.split_records(shuffled) == parts


def test_response_logps_match_numpy_on_each_unpadded_sequence():
  model = models.build(models.tiny_config("llama", vocab_size=259, max_len=320))
  params = model.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  pairs = [
    encode.TokenizedPair(
      example_id=i,
      prompt=np.array([256, *rng.integers(0, 256, 3 + i)], np.int32),
      chosen=np.array([*rng.integers(0, 256, 2 + 2 * i), 257], np.int32),
      rejected=np.array([*rng.integers(0, 256, 5), 257], np.int32),
    )
    for i in range(3)
  ]
  got = hh_reference.response_logps(
    model, params, pairs, max_length=320, pad_id=258, batch=4
  )
  for i, pair in enumerate(pairs):
    for j, response in enumerate((pair.chosen, pair.rejected)):
      ids = np.concatenate([pair.prompt, response])[None]
      logits = np.asarray(
        model.apply(params, ids, np.ones_like(ids, bool)), np.float64
      )[0]
      shifted = logits - logits.max(-1, keepdims=True)
      log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
      positions = np.arange(len(pair.prompt) - 1, ids.shape[1] - 1)
      want = log_probs[positions, ids[0, positions + 1]].sum()
      np.testing.assert_allclose(got[i, j], want, rtol=1e-4, atol=1e-3)


def test_share_summary_counts_bins_and_lengths():
  # s = sigmoid(log pi(y_l) - log pi(y_w)): 0.047, 0.27, 0.73, 0.99.
  logps = np.array([[-1.0, -4.0], [-1.0, -2.0], [-2.0, -1.0], [-5.0, 0.0]])
  summary = hh_real.share_summary(
    logps, np.array([1, 2, 5, 3]), np.array([3, 2, 1, 3])
  )
  assert summary["share_bins"] == {
    "0-0.1": 0.25,
    "0.1-0.5": 0.25,
    "0.5-0.9": 0.25,
    "0.9-1": 0.25,
  }
  assert summary["chosen_shorter"] == 0.25
  assert summary["equal_length"] == 0.5
  assert summary["s_above_half_when_chosen_shorter"] == 0.0
  assert summary["s_above_half_when_chosen_longer"] == 1.0


def test_byte_reference_setting_is_section_5_6s_model():
  config = hh_reference.model_config(hh_reference.REFERENCES["byte0.45m"])
  params = models.build(config).init(jax.random.key(0))
  assert sum(np.size(x) for x in jax.tree.leaves(params)) == 435_584
  assert hh_real.setting(pathlib.Path("/nonexistent"))[0] == "byte0.45m"


def test_bpe_is_fitted_once_with_its_special_ids(tmp_path):
  reference = dataclasses.replace(
    hh_reference.REFERENCES["bpe4m"], vocab_size=300
  )
  texts = [f"Human: question {i}? Assistant: an answer {i}." for i in range(50)]
  tokenizer = hh_reference.make_tokenizer(reference, tmp_path, texts)
  assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
  assert tokenizer.decode(tokenizer.encode(texts[3])) == texts[3]
  assert len(tokenizer.encode(texts[3])) < len(texts[3].encode())
  again = hh_reference.make_tokenizer(reference, tmp_path)
  assert again.encode(texts[7]) == tokenizer.encode(texts[7])


def test_sft_rows_keep_the_end_between_bos_and_eos():
  tokenizer = tokenization.ByteTokenizer()
  rows = hh_reference.sft_rows(["abcdef", "xy"], tokenizer, max_length=5)
  assert rows == [[256, *b"def", 257], [256, *b"xy", 257]]
  batch = next(hh_reference.sft_batches(rows, 258, 5, batch=2, seed=0))
  assert batch["loss_mask"].sum() == (5 - 1) + (4 - 1)


def test_held_out_texts_cut_bytes_and_drop_split_characters():
  long_prompt = "\n\nHuman: " + "é" * 100 + "\n\nAssistant:"
  records = [
    {"chosen": long_prompt + " " + "ü" * 200, "rejected": long_prompt + " no"},
    {"chosen": "no assistant turn", "rejected": "x"},
  ]
  [(prompt, response)] = hh_reference.held_out_texts(records)
  assert prompt.endswith("\n\nAssistant:")
  assert len(prompt.encode()) <= hh_reference.SCORED_PROMPT_BYTES
  assert len(response.encode()) <= hh_reference.SCORED_RESPONSE_BYTES
  assert response == " " + "ü" * 95  # 191 bytes: the split half is dropped.


def test_nats_per_byte_of_an_untrained_byte_model_is_near_log_259():
  # Random small weights give logits near 0: about log(259) nats per byte.
  model = models.build(models.tiny_config("llama", vocab_size=259, max_len=64))
  params = model.init(jax.random.key(0))
  texts = [("Human: hi", "hello there"), ("Q", "ab")]
  got = hh_reference.nats_per_byte(
    model, params, tokenization.ByteTokenizer(), texts, max_length=64
  )
  assert abs(got - np.log(259)) < 0.3
  shifted = hh_reference.continuation_logps(
    model, params, [([256, 72], [104, 105])], max_length=64, pad_id=258
  )
  whole = hh_reference.continuation_logps(
    model, params, [([256], [72, 104, 105])], max_length=64, pad_id=258
  )
  assert shifted[0] > whole[0]  # One token fewer is scored.


def test_run_command_passes_the_references_tokenizer_and_lengths(tmp_path):
  (tmp_path / "setting.json").write_text('{"reference": "bpe4m"}')
  (tmp_path / "train.jsonl.gz").write_bytes(gzip.compress(b"{}\n" * 33))
  command = hh_real.run_command(tmp_path, "dpo_beta0.1", 1)
  assert (
    f"--config.data.tokenizer={tmp_path}/tokenizer/tokenizer.json" in command
  )
  assert "--config.data.max_length=160" in command
  assert "--config.data.max_prompt_length=64" in command
  assert "--config.steps=3" in command


def test_share_details_measure_how_decided_s_is():
  from experiments import hh_real_details

  # gaps log pi(y_l) - log pi(y_w): -3, 0.5, 4, -100.
  logps = np.array([[-1.0, -4.0], [-1.0, -0.5], [-5.0, -1.0], [0.0, -100.0]])
  got = hh_real_details.share_details(
    logps, np.array([2, 3, 3, 1]), np.array([1, 3, 3, 5])
  )
  assert got["median_abs_logp_gap"] == 3.5
  assert got["s_within_0p1_of_0_or_1"] == 0.75  # s = 0.047, 0.62, 0.98, ~0.
  assert got["equal_length_pairs"] == 2
  assert got["s_above_half_when_equal"] == 1.0

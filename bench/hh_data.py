"""HH-RLHF pairs for the packing benchmark, tokenized as training reads them.

A byte-level BPE is fitted to the file's own transcripts, so the pairs'
lengths in tokens are what a real tokenizer of that size gives HH text.
"""

from __future__ import annotations

import gzip
import json
import pathlib

import numpy as np

from configs import hh as hh_config
from train import config_schema
from train import data as data_lib
from train.data import TokenizedPair
from train.data import batching
from train.data import row_packing
from train.data import shared_rows
from train.data import tokenization

SPECIAL = tokenization.BPE_SPECIAL  # Ids 0, 1, 2.


def train_hh_tokenizer(hh_file: pathlib.Path, folder: pathlib.Path, size: int):
  """A byte-level BPE of ``size`` tokens fitted to the file's transcripts."""
  with gzip.open(hh_file, "rt", encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  texts = [r[k] for r in records for k in ("chosen", "rejected")]
  tokenization.fit_byte_bpe(texts, size, folder)


def hh_sample(hh_file, tokenizer_folder, setting) -> list:
  """A seeded sample of the file's pairs as the training program reads them.

  A response cut by truncation loses its EOS; its last token becomes EOS
  again, so that TRL, which appends one to a response without it, sees the
  same ids (the lengths, which are what is measured, do not change).
  """
  config = hh_config.get_config(str(hh_file)).data
  config.tokenizer = str(tokenizer_folder)
  config.eval_fraction = 0.0
  tokenizer = data_lib.make_tokenizer(config)
  pairs = data_lib.load_dataset(
    config, tokenizer=tokenizer, split="train"
  ).pairs
  rng = np.random.default_rng(setting.seed)
  chosen = rng.choice(
    len(pairs), setting.pairs * setting.batches, replace=False
  )
  eos = tokenizer.eos_id
  sample = []
  for k, i in enumerate(chosen):
    p = pairs[i]
    responses = [r.copy() for r in (p.chosen, p.rejected)]
    for r in responses:
      r[-1] = eos
    sample.append(TokenizedPair(k, p.prompt, *responses))
  return sample


def batches_of(pairs, setting):
  for start in range(0, len(pairs), setting.pairs):
    yield [(p, 1.0) for p in pairs[start : start + setting.pairs]]


def padded_batches(pairs, setting):
  buckets = config_schema.data_defaults().length_buckets
  return [
    batching.collate_pairs(entries, buckets=buckets, pad_id=0)
    for entries in batches_of(pairs, setting)
  ]


def packed_batches(pairs, setting):
  collate = row_packing.packed_collate(
    packed_length=setting.packed_length,
    pad_id=0,
    shard_index=0,
    shard_count=1,
  )
  return [collate(entries) for entries in batches_of(pairs, setting)]


def shared_batches(pairs, setting):
  """The same batches as shared-prompt rows (``data.share_prompt``)."""
  collate = shared_rows.shared_collate(
    packed_length=setting.shared_length,
    pad_id=0,
    shard_index=0,
    shard_count=1,
  )
  return [collate(entries) for entries in batches_of(pairs, setting)]


# The second length distribution: short prompts, long responses (prompt and
# response lengths in tokens, drawn uniformly). HH's sampled pairs have a
# median prompt of 98 tokens and responses of 29 and 38.
SHORT_PROMPT = {"prompt": (16, 48), "response": (96, 224)}


def short_prompt_sample(setting) -> list:
  """Random token pairs of ``SHORT_PROMPT`` lengths, BOS first, EOS last."""
  rng = np.random.default_rng(setting.seed)

  def tokens(low, high, first=None, last=None):
    ids = rng.integers(
      len(SPECIAL), setting.vocab_size, rng.integers(low, high)
    )
    if first is not None:
      ids[0] = first
    if last is not None:
      ids[-1] = last
    return ids.astype(np.int32)

  return [
    TokenizedPair(
      k,
      tokens(*SHORT_PROMPT["prompt"], first=1),
      tokens(*SHORT_PROMPT["response"], last=2),
      tokens(*SHORT_PROMPT["response"], last=2),
    )
    for k in range(setting.pairs * setting.batches)
  ]


def real_tokens(batch) -> int:
  return batch.count_tokens()

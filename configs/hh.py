"""Anthropic HH-RLHF pairs (for example the harmless-base test split) on a
tiny model.

  python -m train.main --workdir /tmp/hh \
    --config configs/hh.py:/path/to/harmless-base-test.jsonl.gz

The HH files are Anthropic's ``hh-rlhf`` dataset (MIT licence): the
``*.jsonl.gz`` files of https://github.com/anthropics/hh-rlhf or the
Hugging Face dataset ``Anthropic/hh-rlhf``; each line holds a ``chosen`` and
a ``rejected`` transcript. The path can also be given as
``--config.data.train_path=...``. Without one the program stops at start,
saying so.

Trains a tiny randomly initialised Llama-style model with the byte-level
tokenizer, holding out 10% of the pairs, on packed rows that hold each
prompt once (``data.share_prompt``). It exercises the real-data path end
to end on a CPU; a random tiny model says nothing about the quality of the
losses. For a real run point ``--config.model.checkpoint`` at a downloaded
Hugging Face folder and ``--config.data.tokenizer`` at its
``tokenizer.json``.
"""

from train import config_schema


def paired_rows(hh_file: str = ""):
  """The HH pairs on unpacked rows: what the presets built on this one
  (larger models, GPUs, TPUs) start from, each choosing its own layout."""
  config = config_schema.get_config()
  config.steps = 100
  config.batch_size = 8
  config.eval_every = 50
  config.eval_batches = 8
  config.checkpoint_every = 50
  config.data.source = "hh"
  config.data.train_path = hh_file
  config.data.eval_path = ""
  config.data.eval_fraction = 0.1
  # The HH files hold a few records with empty or identical responses.
  config.data.on_bad_record = "skip"
  config.data.tokenizer = "bytes"
  config.data.max_length = 512
  config.data.max_prompt_length = 384
  config.data.length_buckets = (256, 512)
  config.loss.name = "dpo"
  config.optimizer.learning_rate = 1e-3
  return config


def get_config(hh_file: str = ""):
  config = paired_rows(hh_file)
  # Pairs packed into 1,024-token rows, each prompt computed once for both
  # responses: 1.72x the pairs/s of paired packed rows on BPE-tokenized HH
  # pairs on a CPU (docs/data.md#sharing-the-prompt,
  # bench/results/packed_step.md).
  config.data.packing = True
  config.data.share_prompt = True
  # Blockwise attention in 128-token tiles skips other pairs' segments and
  # the other response: a third of the attention time at 512 on a CPU.
  config.model.attention_block = 128
  return config

"""Anthropic HH-RLHF (harmless-base test split, 2,312 pairs) on a tiny model.

  python -m train.main --config configs/hh.py --workdir /tmp/hh

Trains a tiny randomly initialised Llama-style model with the byte-level
tokenizer on the shared HH file, holding out 10% of the pairs. It exercises
the real-data path end to end on a CPU; a random tiny model says nothing about
the quality of the losses. For a real run point ``--config.model.checkpoint``
at a downloaded Hugging Face folder and ``--config.data.tokenizer`` at its
``tokenizer.json``.
"""

import pathlib

from configs import base

HH_FILE = (
  pathlib.Path(__file__).resolve().parents[1].parent
  / "shared"
  / "data"
  / "hh-rlhf"
  / "harmless-base-test.jsonl.gz"
)


def get_config():
  config = base.get_config()
  config.steps = 100
  config.batch_size = 8
  config.eval_every = 50
  config.eval_batches = 8
  config.checkpoint_every = 50
  config.data.source = "hh"
  config.data.train_path = str(HH_FILE)
  config.data.eval_path = ""
  config.data.eval_fraction = 0.1
  # The shared file holds a few records with empty or identical responses.
  config.data.on_bad_record = "skip"
  config.data.tokenizer = "bytes"
  config.data.max_length = 512
  config.data.max_prompt_length = 384
  config.data.length_buckets = (256, 512)
  config.loss.name = "dpo"
  config.optimizer.learning_rate = 1e-3
  return config

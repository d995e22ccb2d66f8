"""Checks of the data section of the config (``train.config_schema``).

The choices a data key may take are defined here, beside the checks that
enforce them; a bad setting stops the program before anything is loaded,
with a one-line ``DataError``.
"""

from __future__ import annotations

import ml_collections

from train.data.report import ON_BAD_RECORD
from train.data.report import DataError

# 'jsonl': explicit prompt/chosen/rejected records; 'hh': HH-RLHF transcripts;
# 'tfds': a TFDS dataset; 'parquet': Parquet files (Hugging Face Hub
# layout); 'arrow': a ``datasets`` save_to_disk folder (see hf_files); the
# rest are the built-in controlled tasks.
SOURCES = (
  "synthetic",
  "jsonl",
  "hh",
  "tfds",
  "parquet",
  "arrow",
  "bandit_transitive",
  "bandit_contradictory",
)
TEXT_SOURCES = ("jsonl", "hh", "tfds", "parquet", "arrow")
HF_FILE_SOURCES = ("parquet", "arrow")
SPLITS = ("train", "eval")
FIELD_ROLES = ("prompt", "chosen", "rejected")


def splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The splits the data config names: train, and eval if it has held-out
  data (the built-in tasks always do)."""
  if config.source not in TEXT_SOURCES:
    return SPLITS
  own_eval = (
    config.eval_path
    or config.tfds_split_eval
    or (config.source == "arrow" and config.hf_split_eval)
  )
  return SPLITS if own_eval or config.eval_fraction else ("train",)


def validate_data_config(config: ml_collections.ConfigDict, split: str) -> None:
  """Checks the settings that loading ``split`` depends on.

  Raises:
    DataError: with a one-line message naming the key.
  """

  def fail(message: str):
    raise DataError(f"data config: {message}")

  if split not in SPLITS:
    fail(f"split must be one of {SPLITS}, got {split!r}")
  if config.source not in SOURCES:
    fail(f"source must be one of {SOURCES}, got {config.source!r}")
  if config.on_bad_record not in ON_BAD_RECORD:
    fail(
      f"on_bad_record must be one of {ON_BAD_RECORD}, "
      f"got {config.on_bad_record!r}"
    )
  if not 0 < config.max_prompt_length < config.max_length:
    fail(
      f"need 0 < max_prompt_length ({config.max_prompt_length}) < "
      f"max_length ({config.max_length}), so every response keeps a token"
    )
  buckets = list(config.length_buckets)
  if not buckets or any(int(b) != b or b < 2 for b in buckets):
    fail(f"length_buckets must be integers >= 2, got {buckets}")
  if max(buckets) < config.max_length:
    fail(
      f"the largest length bucket ({max(buckets)}) is smaller than "
      f"max_length ({config.max_length})"
    )
  packed_length = config.get("packed_length", 0)
  if packed_length < 0 or int(packed_length) != packed_length:
    fail(f"packed_length must be an integer >= 0, got {packed_length}")
  if config.get("packing", False) and 0 < packed_length < config.max_length:
    fail(
      f"packed_length ({packed_length}) is smaller than max_length"
      f" ({config.max_length}); a pair must fit a packed row"
    )
  if config.get("share_prompt", False):
    if not config.get("packing", False):
      fail("share_prompt needs packing=True (it lays pairs out in packed rows)")
    longest = 2 * config.max_length - 1
    if 0 < packed_length < longest:
      fail(
        f"packed_length ({packed_length}) is smaller than 2 x max_length - 1"
        f" ({longest}); with share_prompt a pair (prompt + chosen + rejected)"
        " must fit a row"
      )
  if not 0.0 <= config.eval_fraction < 1.0:
    fail(f"eval_fraction must be in [0, 1), got {config.eval_fraction}")
  if config.source not in TEXT_SOURCES:
    return
  for role in FIELD_ROLES:
    if role not in config.field_map:
      fail(f"field_map has no {role!r} entry")
  if config.source == "tfds":
    if not config.tfds_name:
      fail("source 'tfds' needs tfds_name")
    own_eval = bool(config.tfds_split_eval)
    eval_key = "tfds_split_eval"
  else:
    if not config.train_path:
      fail(
        f"source {config.source!r} needs train_path: the file of pairs"
        " (--config.data.train_path=FILE, or configs/hh.py:FILE)"
      )
    if config.source == "jsonl" and not config.field_map.prompt:
      fail("field_map.prompt is empty; for HH transcripts use source 'hh'")
    own_eval = bool(config.eval_path)
    eval_key = "eval_path"
    if config.source in HF_FILE_SOURCES:
      own_eval, eval_key = _check_hf_splits(config, fail)
  if own_eval and config.eval_fraction:
    fail(f"both {eval_key} and eval_fraction are set; set one")
  if split == "eval" and not own_eval and not config.eval_fraction:
    fail(f"no evaluation data: set {eval_key} or eval_fraction")


def _check_hf_splits(
  config: ml_collections.ConfigDict, fail
) -> tuple[bool, str]:
  """Checks the split keys of 'parquet' and 'arrow'; returns (own_eval, key)."""
  if config.source == "parquet":
    if config.hf_split_train != "train" or config.hf_split_eval:
      fail(
        "hf_split_train and hf_split_eval are for source 'arrow'; for "
        "Parquet, name a split's shards with a glob in train_path/eval_path"
      )
    return bool(config.eval_path), "eval_path"
  if not config.hf_split_train:
    fail("hf_split_train is empty: name the training split")
  if config.hf_split_eval == config.hf_split_train and not config.eval_path:
    fail(
      f"hf_split_eval is the training split {config.hf_split_train!r}; "
      "evaluation needs other pairs"
    )
  return bool(config.eval_path or config.hf_split_eval), (
    "eval_path or hf_split_eval"
  )

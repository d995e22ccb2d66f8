"""The data section of the training config: defaults and validation.

``default_data_config()`` is embedded by ``configs/base.py`` as ``config.data``;
every key is documented there and below. Validation happens when a dataset is
loaded, so a bad setting stops the program before training with a one-line
``DataError``.
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


def default_data_config() -> ml_collections.ConfigDict:
  """The data config with its defaults (the synthetic task, no files)."""
  config = ml_collections.ConfigDict()
  # Where pairs come from: one of SOURCES.
  config.source = "synthetic"
  # JSONL file (plain or gzip) of training pairs, for 'jsonl' and 'hh'; for
  # 'parquet' a file, a glob of shards or a folder; for 'arrow' a folder.
  config.train_path = ""
  # Evaluation pairs, like train_path; '' to hold out ``eval_fraction`` of
  # train (or, for 'arrow', to read hf_split_eval of train_path).
  config.eval_path = ""
  # TFDS dataset name, e.g. 'local_preferences/my_pairs' (see tfds_builder).
  config.tfds_name = ""
  # TFDS data directory; '' for TFDS's default (~/tensorflow_datasets).
  config.tfds_data_dir = ""
  # TFDS split names; an empty eval split holds out ``eval_fraction`` of train.
  config.tfds_split_train = "train"
  config.tfds_split_eval = ""
  # 'arrow': the split of a DatasetDict folder to train on (a folder of one
  # Dataset is read as split 'train').
  config.hf_split_train = "train"
  # 'arrow': the DatasetDict split to evaluate on, from eval_path if set, else
  # train_path; '' for eval_path as a whole, or eval_fraction.
  config.hf_split_eval = ""
  # Record field names ('a/b' reads nested field b of a). For 'hh', chosen
  # and rejected name the transcripts and prompt is not read; for 'tfds',
  # 'parquet' and 'arrow', an empty prompt name means the records hold HH
  # transcripts.
  config.field_map = ml_collections.ConfigDict(
    dict(prompt="prompt", chosen="chosen", rejected="rejected")
  )
  # 'bytes' (built in), a tokenizer.json path, a SentencePiece .model path,
  # a directory holding either, or '' for the model checkpoint's own
  # tokenizer. The synthetic and bandit tasks use their own words and
  # require 'bytes' here (the default) so that no setting is silently unused.
  config.tokenizer = "bytes"
  # Chat template for records of messages: '' for the tokenizer folder's
  # own (chat_template.jinja or tokenizer_config.json), a built-in name
  # ('chatml', 'llama3', 'gemma') or a .jinja file. Text records ignore it.
  config.chat_template = ""
  # Most tokens of prompt + response, BOS and EOS included.
  config.max_length = 512
  # Most prompt tokens, BOS included, kept (from the end) when a pair is too
  # long; must be less than max_length.
  config.max_prompt_length = 256
  # Padded sequence lengths; the largest must be at least max_length.
  config.length_buckets = (32, 64, 128, 256, 512)
  # Pack the pairs of a batch into fixed-length rows, several pairs per row
  # (train.data.packing), instead of one padded row per pair.
  config.packing = False
  # Row length of packed batches; 0 for the largest length bucket. At least
  # max_length, so that every pair fits a row.
  config.packed_length = 0
  # A bad record raises DataError ('error') or is counted and skipped ('skip').
  config.on_bad_record = "error"
  # Fraction of a single source held out for evaluation when no eval file or
  # eval split is given; 0 means no evaluation data.
  config.eval_fraction = 0.0
  # A train split of fewer pairs than one batch is refused (each batch would
  # repeat pairs) unless this is True.
  config.allow_repeats = False

  # The synthetic sentiment task (slpo_jax.tasks.synthetic).
  config.synthetic = ml_collections.ConfigDict()
  # Seed of the task: the base language, the prompts of both splits and the
  # pairs sampled from the base language. Independent of the training seed.
  config.synthetic.language_seed = 0
  # Training and evaluation prompts; each gives one pair unless its two
  # samples tie on reward.
  config.synthetic.num_prompts = 4096
  config.synthetic.num_eval_prompts = 256
  # Words per prompt.
  config.synthetic.prompt_length = 4
  # Fewest and most words per sampled response (EOS comes after).
  config.synthetic.min_new_tokens = 2
  config.synthetic.max_new_tokens = 12
  # Base-language sequences for fine-tuning the reference model.
  config.synthetic.num_sft_sequences = 8192
  # Base language: probability of ending after a word, and the Dirichlet
  # concentration of each word's successor distribution.
  config.synthetic.eos_probability = 0.1
  config.synthetic.concentration = 0.3
  # Prompts per call of the sampler when pairs are drawn from a model.
  config.synthetic.sample_batch_size = 512
  return config


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

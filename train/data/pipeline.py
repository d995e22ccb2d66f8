"""Loading a preference dataset and iterating over its batches.

``load_dataset`` does all the work that can fail (reading, validating,
tokenizing) eagerly, so bad data stops the program before training starts.
Every host loads the whole source, so all hosts agree on errors, the report
and the fingerprint; each then iterates only over its own shard.
"""

from __future__ import annotations

import dataclasses
import functools

import ml_collections

from slpo_jax.tasks.synthetic import PreferencePairs
from slpo_jax.tasks.synthetic import SampleFn
from train.data import batching
from train.data import chat
from train.data import encode
from train.data import row_packing
from train.data import shared_rows
from train.data import sources
from train.data import task_pairs
from train.data import unpaired as unpaired_lib
from train.data.report import BadRecordPolicy
from train.data.report import DataError
from train.data.report import DataReport
from train.data.tokenization import Tokenizer
from train.data.tokenization import load_tokenizer
from train.data.validation import HF_FILE_SOURCES
from train.data.validation import validate_data_config


@dataclasses.dataclass(frozen=True)
class PreferenceDataset:
  """One split of a preference dataset, tokenized and in memory.

  Attributes:
    pairs: the pairs, in source order.
    report: what loading did (loaded, skipped by reason, truncated).
    fingerprint: hash of the tokenized pairs, a cache key (e.g. for
      reference log-probs indexed by ``example_id``).
    pad_id: the tokenizer's padding id.
    length_buckets: padded lengths batches may have.
    packed_length: row length of packed batches (``data.packing``); 0 for
      one row per pair.
    share_prompt: packed rows hold each prompt once (``data.share_prompt``,
      ``train.data.shared_rows``).
  """

  pairs: tuple[encode.TokenizedPair, ...]
  report: DataReport
  fingerprint: str
  pad_id: int
  length_buckets: tuple[int, ...]
  packed_length: int = 0
  # KTO's unpaired records (train.data.unpaired.TokenizedRecord) in
  # ``pairs``, batched as train.batch.UnpairedBatch.
  unpaired: bool = False
  share_prompt: bool = False

  def __len__(self) -> int:
    return len(self.pairs)

  def batches(
    self,
    *,
    batch_size: int,
    seed: int,
    shard_index: int,
    shard_count: int,
    repeat: bool,
    row_multiple: int = 1,
  ) -> batching.BatchIterator:
    """A checkpointable iterator of batches (see ``make_pipeline``).

    ``row_multiple``: packed batches only, the host's devices on the batch
    axes; the packed row count is a multiple of it.
    """
    packed = bool(self.packed_length)
    if packed:
      # The same pairs per batch as unpacked, packed into rows
      # (train.data.row_packing); the collate picks this host's rows itself.
      self.measure_packing(batch_size, row_multiple)
      make_collate = (
        shared_rows.shared_collate
        if self.share_prompt
        else row_packing.packed_collate
      )
      collate = make_collate(
        packed_length=self.packed_length,
        pad_id=self.pad_id,
        shard_index=shard_index,
        shard_count=shard_count,
        row_multiple=row_multiple,
      )
    elif self.unpaired:
      collate = functools.partial(
        unpaired_lib.collate_records,
        buckets=self.length_buckets,
        pad_id=self.pad_id,
      )
    else:
      collate = functools.partial(
        batching.collate_pairs, buckets=self.length_buckets, pad_id=self.pad_id
      )
    return batching.make_batch_iterator(
      self.pairs,
      collate,
      batch_size=batch_size,
      seed=seed,
      shard_index=shard_index,
      shard_count=shard_count,
      repeat=repeat,
      fingerprint=self.fingerprint,
      report=self.report,
      collate_selects_rows=packed,
      identity_extra=self._layout_identity() if packed else None,
    )

  def _layout_identity(self) -> dict:
    identity = dict(packed_length=self.packed_length)
    if self.share_prompt:
      identity["share_prompt"] = True
    return identity

  def measure_packing(self, batch_size: int, row_multiple: int = 1) -> None:
    """Puts the packed batches' real-token share in the report, once."""
    if self.packed_length and self.report.real_token_fraction is None:
      self.report.real_token_fraction = row_packing.real_token_fractions(
        self.pairs,
        batch_size=batch_size,
        packed_length=self.packed_length,
        buckets=self.length_buckets,
        row_multiple=row_multiple,
      )
    if self.share_prompt and self.report.shared_prompt is None:
      self.report.shared_prompt = shared_rows.position_shares(
        self.pairs,
        batch_size=batch_size,
        packed_length=self.packed_length,
        row_multiple=row_multiple,
      )


def make_tokenizer(
  data_config: ml_collections.ConfigDict, model_checkpoint: str = ""
) -> Tokenizer:
  """The tokenizer for ``data_config``.

  Args:
    data_config: the data config. Built-in tasks get their word tokenizer;
      otherwise ``data_config.tokenizer`` names it (see ``load_tokenizer``), and
      '' means the tokenizer saved with the model checkpoint.
    model_checkpoint: the model checkpoint directory, read when
      ``data_config.tokenizer`` is ''.

  Raises:
    DataError: no such tokenizer, or a tokenizer set for a built-in task.
  """
  spec = data_config.tokenizer
  if data_config.source in ("synthetic", *task_pairs.BANDIT_SOURCES):
    if spec != "bytes":
      raise DataError(
        f"data config: source {data_config.source!r} uses its own word "
        f"vocabulary; leave tokenizer at 'bytes', not {spec!r}"
      )
    return task_pairs.task_tokenizer(data_config.source)
  if not spec:
    if not model_checkpoint:
      raise DataError(
        "data config: tokenizer is '' (the model checkpoint's "
        "tokenizer) but no model checkpoint is set"
      )
    spec = str(model_checkpoint)
  return load_tokenizer(spec)


def _source_name(config: ml_collections.ConfigDict, split: str) -> str:
  if config.source == "tfds":
    return f"tfds {config.tfds_name}"
  if config.source in ("jsonl", "hh", *HF_FILE_SOURCES):
    if split == "eval" and config.eval_path:
      return config.eval_path
    return config.train_path
  return config.source


def _read_text_pairs(
  config: ml_collections.ConfigDict,
  split: str,
  policy: BadRecordPolicy,
  report: DataReport,
) -> list[sources.TextPair]:
  """Reads the text pairs of ``split``, holding out eval pairs if asked."""
  if config.source == "tfds":
    from train.data import tfds_builder

    own_eval = bool(config.tfds_split_eval)
    name = (
      config.tfds_split_eval
      if split == "eval" and own_eval
      else (config.tfds_split_train)
    )
    pairs = tfds_builder.read_tfds_pairs(
      config, name, policy=policy, report=report
    )
  elif config.source in HF_FILE_SOURCES:
    from train.data import hf_files

    own_eval = hf_files.has_own_eval(config)
    pairs = hf_files.read_config_pairs(
      config, split, policy=policy, report=report
    )
  else:
    own_eval = bool(config.eval_path)
    path = (
      config.eval_path if split == "eval" and own_eval else (config.train_path)
    )
    pairs = sources.read_jsonl_pairs(
      path,
      field_map=config.field_map,
      transcripts=config.source == "hh",
      policy=policy,
      report=report,
    )
  if not own_eval and config.eval_fraction:
    pairs, report.num_held_out = sources.split_held_out(
      pairs, config.eval_fraction, split
    )
  return pairs


def load_dataset(
  data_config: ml_collections.ConfigDict,
  *,
  tokenizer: Tokenizer,
  split: str,
  sample_fn: SampleFn | None = None,
  pairs: PreferencePairs | None = None,
  unpaired: bool = False,
) -> PreferenceDataset:
  """Reads, validates and tokenizes one split.

  Args:
    data_config: the data config (``train.config_schema.data_defaults()`` documents it).
    tokenizer: from ``make_tokenizer(data_config)``.
    split: 'train' or 'eval'.
    sample_fn: synthetic task only: the reference model's sampler, used to
      make pairs for the split's prompts (see
      ``train.data.task_pairs.synthetic_token_pairs``).
    pairs: synthetic task only: ready-made pairs for this split. With neither
      ``sample_fn`` nor ``pairs``, pairs are sampled from the base language.

  Raises:
    DataError: bad config, unreadable source, a bad record under
      ``on_bad_record='error'``, or no pairs.
  """
  validate_data_config(data_config, split)
  report = DataReport(source=_source_name(data_config, split), split=split)
  policy = BadRecordPolicy(data_config.on_bad_record, report)
  if data_config.source != "synthetic" and (
    sample_fn is not None or pairs is not None
  ):
    raise DataError(
      f"data config: sample_fn and pairs are for source "
      f"'synthetic', not {data_config.source!r}"
    )
  if data_config.source == "synthetic":
    task_pairs.check_tokenizer(data_config.source, tokenizer)
    token_pairs = task_pairs.synthetic_token_pairs(
      data_config,
      split,
      sample_fn=sample_fn,
      pairs=pairs,
      policy=policy,
      report=report,
    )
  elif data_config.source in task_pairs.BANDIT_SOURCES:
    task_pairs.check_tokenizer(data_config.source, tokenizer)
    # The bandit datasets are their own evaluation set.
    token_pairs = task_pairs.bandit_token_pairs(
      data_config, policy=policy, report=report
    )
  elif data_config.get("unpaired", False):
    return _load_records(data_config, split, tokenizer, policy, report)
  else:
    text_pairs = _read_text_pairs(data_config, split, policy, report)
    token_pairs = encode.encode_pairs(
      text_pairs,
      tokenizer,
      max_length=data_config.max_length,
      max_prompt_length=data_config.max_prompt_length,
      policy=policy,
      report=report,
      chat_template=chat.load_chat_template(data_config, tokenizer=tokenizer),
    )
  if unpaired:
    return _records_dataset(
      data_config, unpaired_lib.split_pairs(token_pairs), tokenizer, report
    )
  return PreferenceDataset(
    pairs=tuple(token_pairs),
    report=report,
    fingerprint=encode.fingerprint(token_pairs, tokenizer),
    pad_id=tokenizer.pad_id,
    length_buckets=tuple(sorted(int(b) for b in data_config.length_buckets)),
    packed_length=packed_row_length(data_config),
    share_prompt=bool(
      data_config.get("packing", False) and data_config.get("share_prompt")
    ),
  )


def _load_records(data_config, split, tokenizer, policy, report):
  """The unpaired records of the data config's files (``data.unpaired``)."""
  raw = unpaired_lib.read_records(
    data_config, split, policy=policy, report=report
  )
  records = unpaired_lib.encode_records(
    raw,
    tokenizer,
    max_length=data_config.max_length,
    max_prompt_length=data_config.max_prompt_length,
    policy=policy,
    report=report,
    chat_template=chat.load_chat_template(data_config, tokenizer=tokenizer),
  )
  if not records:
    raise DataError(f"{report.source}: no record is usable: {report.summary()}")
  return _records_dataset(data_config, records, tokenizer, report)


def _records_dataset(data_config, records, tokenizer, report):
  report.num_loaded = len(records)
  report.loaded_unit = "records"
  report.num_desirable = sum(record.desirable for record in records)
  return PreferenceDataset(
    pairs=tuple(records),
    report=report,
    fingerprint=unpaired_lib.fingerprint(records, tokenizer),
    pad_id=tokenizer.pad_id,
    length_buckets=tuple(sorted(int(b) for b in data_config.length_buckets)),
    unpaired=True,
  )


def packed_row_length(data_config: ml_collections.ConfigDict) -> int:
  """The packed row length, 0 without packing."""
  if not data_config.get("packing", False):
    return 0
  if data_config.get("share_prompt", False) and not data_config.packed_length:
    # Each prompt once, then both responses: up to 2 x max_length - 1.
    return 2 * max(data_config.length_buckets)
  return int(data_config.packed_length or max(data_config.length_buckets))


def make_pipeline(
  data_config: ml_collections.ConfigDict,
  *,
  tokenizer: Tokenizer,
  batch_size: int,
  seed: int,
  shard_index: int,
  shard_count: int,
  split: str,
  sample_fn: SampleFn | None = None,
  pairs: PreferencePairs | None = None,
  single_pass: bool | None = None,
) -> batching.BatchIterator:
  """Loads ``split`` and returns this host's iterator of preference batches.

  Args:
    data_config: the data config.
    tokenizer: from ``make_tokenizer(data_config)``.
    batch_size: pairs per batch on this host (the global batch divided by
      ``shard_count``).
    seed: shuffling seed; the batch sequence is a pure function of the data,
      the seed, the batch size and the shard.
    shard_index: this host's index (``jax.process_index()``).
    shard_count: number of hosts (``jax.process_count()``).
    split: 'train' or 'eval'.
    sample_fn: see ``load_dataset``.
    pairs: see ``load_dataset``.
    single_pass: False: shuffled, repeating forever (training). True: one
      pass in source order, the last batch filled with rows of
      ``example_weight`` 0 (evaluation, or precomputing reference log-probs).
      None: False for 'train', True for 'eval'.

  Returns:
    A ``grain.DatasetIterator`` of batch dicts with ``get_state()`` /
    ``set_state()``, plus ``fingerprint``, ``report``, ``num_examples`` and
    ``num_batches`` (eval) attributes.
  """
  dataset = load_dataset(
    data_config,
    tokenizer=tokenizer,
    split=split,
    sample_fn=sample_fn,
    pairs=pairs,
  )
  if single_pass is None:
    single_pass = split == "eval"
  return dataset.batches(
    batch_size=batch_size,
    seed=seed,
    shard_index=shard_index,
    shard_count=shard_count,
    repeat=not single_pass,
  )


def fingerprint(data) -> str:
  """The dataset fingerprint of a ``make_pipeline`` iterator or a dataset."""
  return data.fingerprint


def dataset_fingerprint(
  data_config: ml_collections.ConfigDict,
  *,
  tokenizer: Tokenizer,
  split: str,
) -> str:
  """The fingerprint of a split's tokenized pairs (loads the split)."""
  return load_dataset(data_config, tokenizer=tokenizer, split=split).fingerprint

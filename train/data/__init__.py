"""The preference data pipeline of the training program.

Sources (JSONL, HH-RLHF transcripts, TFDS, the synthetic sentiment task, the
IPO bandits) -> validated text pairs -> tokens with one BOS, EOS-terminated
responses and DPO-style truncation -> right-padded batches in length buckets,
shuffled, sharded and checkpointable through grain.

Typical use::

  tokenizer = make_tokenizer(config.data)
  train_iter = make_pipeline(
      config.data, tokenizer=tokenizer, batch_size=per_host_batch,
      seed=config.seed, shard_index=jax.process_index(),
      shard_count=jax.process_count(), split="train")
  logging.info(train_iter.report.summary())
  batch = next(train_iter)   # a train.batch.PaddedBatch of numpy arrays

A batch (:mod:`train.batch`) holds
``{chosen,rejected}_{input_ids,attention_mask,labels,loss_mask}`` ``[B, T]``,
``example_weight`` ``[B]`` and ``example_id`` ``[B]``; with ``data.packing`` a
``PackedBatch`` of several pairs per row.
"""

from train.data.batching import BatchIterator
from train.data.batching import collate_pairs
from train.data.encode import TokenizedPair
from train.data.pipeline import PreferenceDataset
from train.data.pipeline import dataset_fingerprint
from train.data.pipeline import fingerprint
from train.data.pipeline import load_dataset
from train.data.pipeline import make_pipeline
from train.data.pipeline import make_tokenizer
from train.data.report import DataError
from train.data.report import DataReport
from train.data.task_pairs import make_sft_pipeline
from train.data.task_pairs import synthetic_language
from train.data.task_pairs import synthetic_prompts
from train.data.tokenization import ByteTokenizer
from train.data.tokenization import HFTokenizer
from train.data.tokenization import SentencePieceTokenizer
from train.data.tokenization import Tokenizer
from train.data.tokenization import load_tokenizer
from train.data.validation import validate_data_config

__all__ = [
  "BatchIterator",
  "ByteTokenizer",
  "DataError",
  "DataReport",
  "HFTokenizer",
  "PreferenceDataset",
  "SentencePieceTokenizer",
  "TokenizedPair",
  "Tokenizer",
  "collate_pairs",
  "dataset_fingerprint",
  "fingerprint",
  "load_dataset",
  "load_tokenizer",
  "make_pipeline",
  "make_sft_pipeline",
  "make_tokenizer",
  "synthetic_language",
  "synthetic_prompts",
  "validate_data_config",
]

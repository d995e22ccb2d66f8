"""The controlled tasks as datasets: synthetic sentiment pairs and bandits.

Preference pairs of the synthetic task are two samples per prompt from the
reference model, the higher-reward one preferred. The training program passes
a ``sample_fn`` built from the reference model's ``generate``; without one, the
base language itself stands in for the reference model (what the reference
model is fine-tuned to imitate), so the pipeline runs and is tested alone.

Random streams are derived from ``data.synthetic.language_seed`` (not from the
shuffling seed), so the prompts and pairs are the same across training runs that
differ only in their seed.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from slpo_jax.tasks import bandits
from slpo_jax.tasks import synthetic
from slpo_jax.tasks.vocab import BOS_ID
from slpo_jax.tasks.vocab import WordTokenizer
from train.data import batching
from train.data.encode import TokenizedPair
from train.data.encode import make_token_pair
from train.data.encode import sequences_fingerprint
from train.data.report import BadRecordPolicy
from train.data.report import DataError
from train.data.report import DataReport

# One independent random stream per use.
_PROMPTS = {"train": 1, "eval": 2}
_SAMPLES = {"train": 3, "eval": 4}
_SFT = {"train": 5, "eval": 6}

BANDIT_SOURCES = {
  "bandit_transitive": "transitive",
  "bandit_contradictory": "contradictory",
}


def task_tokenizer(source: str) -> WordTokenizer:
  """The word tokenizer of a built-in task source."""
  if source == "synthetic":
    return synthetic.synthetic_tokenizer()
  if source in BANDIT_SOURCES:
    return bandits.bandit_tokenizer()
  raise ValueError(f"{source!r} is not a built-in task")


def check_tokenizer(source: str, tokenizer) -> None:
  """Refuses a tokenizer whose ids differ from the task vocabulary's."""
  expected = task_tokenizer(source)
  ids = lambda t: (t.vocab_size, t.bos_id, t.eos_id, t.pad_id)
  if ids(tokenizer) != ids(expected):
    raise DataError(
      f"source {source!r} has its own vocabulary; pass the tokenizer from "
      f"train.data.make_tokenizer (vocab_size, bos, eos, pad = "
      f"{ids(expected)}, got {ids(tokenizer)})"
    )


def _rng(config: ml_collections.ConfigDict, stream: int) -> np.random.Generator:
  return np.random.default_rng([config.synthetic.language_seed, stream])


def synthetic_language(config: ml_collections.ConfigDict) -> np.ndarray:
  """The base language's transition matrix, ``[V, V]``."""
  task = config.synthetic
  return synthetic.make_base_language(
    task.language_seed,
    concentration=task.concentration,
    eos_probability=task.eos_probability,
  )


def synthetic_prompts(
  config: ml_collections.ConfigDict, split: str
) -> np.ndarray:
  """The prompts of a split (word ids, no BOS), ``[N, prompt_length]``.

  Row i is the prompt of the pair with example_id i; evaluation uses these
  to sample from the trained policy and score it with ``sentiment_reward``.
  """
  task = config.synthetic
  num = task.num_prompts if split == "train" else task.num_eval_prompts
  return synthetic.sample_prompts(
    synthetic_language(config),
    _rng(config, _PROMPTS[split]),
    num,
    task.prompt_length,
  )


def synthetic_pairs(
  config: ml_collections.ConfigDict,
  split: str,
  sample_fn: synthetic.SampleFn | None = None,
  reward_fn: synthetic.RewardFn = synthetic.sentiment_reward,
) -> synthetic.PreferencePairs:
  """Two samples for each of the split's prompts, ranked by ``reward_fn``.

  The pairs ``synthetic_token_pairs`` makes when given no pairs; an
  experiment passes another ``reward_fn`` to rank the same samples another
  way. Without ``sample_fn`` the base language samples.
  """
  task = config.synthetic
  if sample_fn is None:
    sample_fn = synthetic.base_language_sampler(
      synthetic_language(config),
      max_new_tokens=task.max_new_tokens,
      min_new_tokens=task.min_new_tokens,
    )
  return synthetic.make_preference_pairs(
    synthetic_prompts(config, split),
    sample_fn,
    reward_fn,
    _rng(config, _SAMPLES[split]),
    batch_size=task.sample_batch_size,
  )


def synthetic_token_pairs(
  config: ml_collections.ConfigDict,
  split: str,
  *,
  sample_fn: synthetic.SampleFn | None = None,
  pairs: synthetic.PreferencePairs | None = None,
  policy: BadRecordPolicy,
  report: DataReport,
) -> list[TokenizedPair]:
  """The preference pairs of a split of the synthetic task, as tokens.

  Args:
    config: the data config.
    split: 'train' or 'eval'.
    sample_fn: ``sample_fn(prompts, rng) -> responses`` (see
      ``slpo_jax.tasks.synthetic.make_preference_pairs``) used on the split's
      prompts (``synthetic_prompts``); prompts are word ids without BOS, so a
      model-based sampler prepends ``BOS_ID``.
    pairs: pairs made by the caller, used as they are (their ``prompt_index``
      becomes ``example_id``). At most one of ``sample_fn`` and ``pairs``; with
      neither, pairs are sampled from the base language.
    policy: what to do with a bad pair.
    report: counts; prompts whose samples tied are 'tied_reward' skips.
  """
  if sample_fn is not None and pairs is not None:
    raise ValueError("pass sample_fn or pairs, not both")
  if pairs is None:
    pairs = synthetic_pairs(config, split, sample_fn)
  report.num_records = len(pairs.prompt_index) + pairs.num_ties
  if pairs.num_ties:
    report.skipped["tied_reward"] = pairs.num_ties
    report.first_skipped["tied_reward"] = "sampled pairs"
  token_pairs = []
  for i, prompt_index in enumerate(pairs.prompt_index):
    token_pair = make_token_pair(
      int(prompt_index),
      [BOS_ID, *pairs.prompts[i]],
      pairs.chosen[i][pairs.chosen_mask[i]],
      pairs.rejected[i][pairs.rejected_mask[i]],
      location=f"synthetic {split} prompt {prompt_index}",
      max_length=config.max_length,
      max_prompt_length=config.max_prompt_length,
      policy=policy,
      report=report,
    )
    if token_pair is not None:
      token_pairs.append(token_pair)
  return token_pairs


def bandit_token_pairs(
  config: ml_collections.ConfigDict,
  *,
  policy: BadRecordPolicy,
  report: DataReport,
) -> list[TokenizedPair]:
  """The pairs of a bandit source: prompt BOS, one action token each."""
  chosen, rejected = bandits.bandit_pairs(BANDIT_SOURCES[config.source])
  report.num_records = len(chosen)
  token_pairs = []
  for i, (win, lose) in enumerate(zip(chosen, rejected)):
    token_pairs.append(
      make_token_pair(
        i,
        [BOS_ID],
        [int(win)],
        [int(lose)],
        location=f"{config.source}[{i}]",
        max_length=config.max_length,
        max_prompt_length=config.max_prompt_length,
        policy=policy,
        report=report,
      )
    )
  return token_pairs


def synthetic_sft_sequences(
  config: ml_collections.ConfigDict, split: str = "train"
) -> list[batching.TokenSequence]:
  """Base-language texts (BOS, prompt words, response, EOS) for SFT.

  'train' has ``num_sft_sequences`` texts, 'eval' ``num_eval_prompts``.
  """
  task = config.synthetic
  num = task.num_sft_sequences if split == "train" else task.num_eval_prompts
  language = synthetic_language(config)
  rng = _rng(config, _SFT[split])
  prompts = synthetic.sample_prompts(language, rng, num, task.prompt_length)
  responses = synthetic.sample_continuations(
    language,
    prompts,
    rng,
    max_new_tokens=task.max_new_tokens,
    min_new_tokens=task.min_new_tokens,
  )
  masks = synthetic.response_mask(responses)
  sequences = []
  for i in range(num):
    tokens = np.concatenate([[BOS_ID], prompts[i], responses[i][masks[i]]])
    if len(tokens) > config.max_length:
      raise DataError(
        f"data config: synthetic texts reach {len(tokens)} tokens, more "
        f"than max_length ({config.max_length})"
      )
    sequences.append(batching.TokenSequence(i, tokens.astype(np.int32)))
  return sequences


def make_sft_pipeline(
  config: ml_collections.ConfigDict,
  *,
  batch_size: int,
  seed: int,
  shard_index: int,
  shard_count: int,
  split: str = "train",
) -> batching.BatchIterator:
  """Batches of base-language text for fine-tuning the reference model.

  Batches hold ``input_ids``, ``attention_mask``, ``labels``, ``loss_mask``
  (every token after BOS), ``example_weight`` and ``example_id``, with the same
  conventions as the preference batches; training repeats and shuffles,
  'eval' is one pass.
  """
  if config.source != "synthetic":
    raise DataError(
      f"data config: SFT data exists for source 'synthetic' "
      f"only, not {config.source!r}"
    )
  sequences = synthetic_sft_sequences(config, split)
  report = DataReport(
    source="synthetic base language",
    split=split,
    num_records=len(sequences),
    num_loaded=len(sequences),
  )
  digest = sequences_fingerprint(sequences)
  collate = lambda entries: batching.collate_sequences(
    entries, buckets=config.length_buckets, pad_id=synthetic.PAD_ID
  )
  return batching.make_batch_iterator(
    sequences,
    collate,
    batch_size=batch_size,
    seed=seed,
    shard_index=shard_index,
    shard_count=shard_count,
    repeat=split == "train",
    fingerprint=digest,
    report=report,
  )

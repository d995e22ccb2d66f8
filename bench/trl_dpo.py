"""TRL's ``DPOTrainer`` on one fixed batch: the PyTorch side of the benchmark.

`TrlDpoStep` builds a real ``trl.DPOTrainer`` around two
``transformers`` causal LM checkpoints (policy and reference) and a
``datasets.Dataset`` of text pairs, lets TRL tokenize and collate them, and
then runs exactly what ``transformers.Trainer`` runs for one optimizer step
(``Trainer._run_epoch`` with no gradient accumulation)::

  trainer.training_step(model, inputs)     # TRL's DPO forward, loss, backward
  accelerator.clip_grad_norm_(params, max_grad_norm)
  optimizer.step(); lr_scheduler.step(); model.zero_grad()

What is left out is what the JAX step leaves out too: the data loader, the
callbacks and the logging between steps.

The token ids are the benchmark's own random ids. A word-level tokenizer maps
id ``i`` to the word ``t{i}`` (and the special ids to ``<bos>``, ``<eos>``,
``<pad>``), so the text round trip through TRL's tokenization gives back
exactly the ids the JAX side trains on; `TrlDpoStep` checks that it does.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pathlib
import warnings
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import tokenizers
import torch
import transformers
import trl

SPECIAL_WORDS = {"bos": "<bos>", "eos": "<eos>", "pad": "<pad>"}


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """The ids of the special tokens in the benchmark's vocabulary."""

  bos: int
  eos: int
  pad: int


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
  """The hyperparameters the benchmark keeps equal on both sides."""

  beta: float
  learning_rate: float
  b1: float
  b2: float
  eps: float
  weight_decay: float
  grad_clip_norm: float
  precompute_reference: bool
  gradient_checkpointing: bool = False


def settings_from_config(
  loss_config, optimizer_config, *, precompute_reference: bool
) -> TrainerSettings:
  """The TRL settings equal to a slpo-jax config's DPO loss and AdamW."""
  return TrainerSettings(
    beta=loss_config.beta,
    learning_rate=optimizer_config.learning_rate,
    b1=optimizer_config.b1,
    b2=optimizer_config.b2,
    eps=optimizer_config.eps,
    weight_decay=optimizer_config.weight_decay,
    grad_clip_norm=optimizer_config.grad_clip_norm,
    precompute_reference=precompute_reference,
  )


def _word(token_id: int, special: SpecialIds) -> str:
  for kind, word in SPECIAL_WORDS.items():
    if token_id == getattr(special, kind):
      return word
  return f"t{token_id}"


def word_level_tokenizer(
  vocab_size: int, special: SpecialIds
) -> transformers.PreTrainedTokenizerFast:
  """A tokenizer whose words are the token ids: ``"t7 t9"`` -> ``[7, 9]``."""
  vocab = {_word(i, special): i for i in range(vocab_size)}
  model = tokenizers.models.WordLevel(vocab, unk_token=SPECIAL_WORDS["pad"])
  tokenizer = tokenizers.Tokenizer(model)
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tokenizer.add_special_tokens(list(SPECIAL_WORDS.values()))
  return transformers.PreTrainedTokenizerFast(
    tokenizer_object=tokenizer,
    bos_token=SPECIAL_WORDS["bos"],
    eos_token=SPECIAL_WORDS["eos"],
    pad_token=SPECIAL_WORDS["pad"],
  )


def ids_to_text(ids: Sequence[int], special: SpecialIds) -> str:
  return " ".join(_word(int(i), special) for i in ids)


def pairs_dataset(
  pairs: Sequence[Any], special: SpecialIds
) -> datasets.Dataset:
  """TRL's standard text format: ``prompt``, ``chosen``, ``rejected``.

  The prompt ends with a space so that ``prompt + chosen`` splits into the
  same words as the two parts; the responses already end with EOS, so TRL
  adds none.
  """
  return datasets.Dataset.from_dict(
    {
      "prompt": [ids_to_text(p.prompt, special) + " " for p in pairs],
      "chosen": [ids_to_text(p.chosen, special) for p in pairs],
      "rejected": [ids_to_text(p.rejected, special) for p in pairs],
    }
  )


def _checkpointing_argument(enabled: bool) -> dict[str, bool]:
  """``activation_checkpointing``, or its older name in older transformers."""
  names = {f.name for f in dataclasses.fields(trl.DPOConfig)}
  if "activation_checkpointing" in names:
    return {"activation_checkpointing": enabled}
  return {"gradient_checkpointing": enabled}


def load_causal_lm(
  folder: pathlib.Path | transformers.PreTrainedModel,
) -> transformers.PreTrainedModel:
  """The model of a ``save_pretrained`` folder (GPT-2, Llama, ...), float32;
  a model passed in is used as it is."""
  if isinstance(folder, transformers.PreTrainedModel):
    return folder
  return transformers.AutoModelForCausalLM.from_pretrained(
    folder, dtype=torch.float32
  )


class TrlDpoStep:
  """One ``DPOTrainer`` optimizer step on fixed batches, callable repeatedly.

  Each call steps on the next batch, cycling through them in order.

  Attributes:
    trainer: the ``trl.DPOTrainer``.
    batches: the collated batches (TRL's collator on TRL's tokenized
      dataset).
    inputs: the first batch.
  """

  def __init__(
    self,
    policy_dir: pathlib.Path,
    reference_dir: pathlib.Path,
    pairs: Sequence[Any],
    *,
    vocab_size: int,
    special: SpecialIds,
    settings: TrainerSettings,
    output_dir: pathlib.Path,
    threads: int | None = None,
    max_steps: int = 1000,
    batch_size: int | None = None,
    device: str = "cpu",
  ):
    """Builds the trainer, its optimizer and the batch.

    Args:
      policy_dir: ``save_pretrained``-style folder of the policy's weights,
        or the model itself.
      reference_dir: the same for the reference model.
      pairs: objects with ``prompt``, ``chosen``, ``rejected`` id arrays,
        batched in order.
      vocab_size: size of the vocabulary.
      special: the BOS, EOS and padding ids.
      settings: DPO and optimizer hyperparameters.
      output_dir: the trainer's (unused) output folder.
      threads: PyTorch intra-op threads during a step; every core if None.
      max_steps: length of the (constant) learning-rate schedule.
      batch_size: pairs per batch; every pair in one batch if None.
      device: ``"cpu"`` (float32), or ``"cuda"``: the trainer runs on the
        GPU in bfloat16 mixed precision, as TRL's GPU recipes do.
    """
    self.threads = threads or os.cpu_count() or 1
    batch_size = batch_size or len(pairs)
    quiet()
    args = trl.DPOConfig(
      output_dir=str(output_dir),
      report_to="none",
      use_cpu=device == "cpu",
      bf16=device != "cpu",
      fp16=False,
      seed=0,
      per_device_train_batch_size=batch_size,
      beta=settings.beta,
      loss_type=["sigmoid"],
      label_smoothing=0.0,
      learning_rate=settings.learning_rate,
      lr_scheduler_type="constant",
      warmup_steps=0,
      adam_beta1=settings.b1,
      adam_beta2=settings.b2,
      adam_epsilon=settings.eps,
      weight_decay=settings.weight_decay,
      max_grad_norm=settings.grad_clip_norm,
      precompute_ref_log_probs=settings.precompute_reference,
      **_checkpointing_argument(settings.gradient_checkpointing),
      max_length=None,
      save_strategy="no",
      logging_strategy="no",
      dataloader_num_workers=0,
      disable_tqdm=True,
    )
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      self.trainer = trl.DPOTrainer(
        model=load_causal_lm(policy_dir),
        ref_model=load_causal_lm(reference_dir),
        args=args,
        train_dataset=pairs_dataset(pairs, special),
        processing_class=word_level_tokenizer(vocab_size, special),
      )
    self.trainer.create_optimizer_and_scheduler(num_training_steps=max_steps)
    # Set by `Trainer._run_epoch` before each step: micro-batches per step.
    self.trainer.current_gradient_accumulation_steps = 1
    dataset = self.trainer.train_dataset
    self.batches = [
      self.trainer.data_collator(
        [dataset[i] for i in range(start, min(start + batch_size, len(pairs)))]
      )
      for start in range(0, len(pairs), batch_size)
    ]
    self.inputs = self.batches[0]
    self._next = 0
    for k, batch in enumerate(self.batches):
      _check_ids(batch, pairs[k * batch_size : (k + 1) * batch_size])

  def with_threads(self, threads: int) -> "TrlDpoStep":
    """The same trainer, stepped with another number of threads."""
    other = copy.copy(self)
    other.threads = threads
    return other

  @property
  def model(self) -> torch.nn.Module:
    return self.trainer.model

  @property
  def reference_logps(self) -> tuple[np.ndarray, np.ndarray] | None:
    """TRL's precomputed reference log-probs, or None in online mode."""
    if "ref_chosen_logps" not in self.inputs:
      return None
    return (
      self.inputs["ref_chosen_logps"].numpy(),
      self.inputs["ref_rejected_logps"].numpy(),
    )

  def __call__(self) -> float:
    """One optimizer step on the next batch; its DPO loss before the update."""
    trainer, model = self.trainer, self.trainer.model
    if torch.get_num_threads() != self.threads:
      torch.set_num_threads(self.threads)
    inputs = self.batches[self._next % len(self.batches)]
    self._next += 1
    loss = trainer.training_step(model, inputs)
    if trainer.args.max_grad_norm > 0:
      trainer.accelerator.clip_grad_norm_(
        model.parameters(), trainer.args.max_grad_norm
      )
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    model.zero_grad()
    return float(loss)


def _check_ids(batch, pairs):
  """The collated rows are the pairs' ids: chosen rows, then rejected."""
  ids = batch["input_ids"].numpy()
  mask = batch["attention_mask"].numpy().astype(bool)
  rows = [np.concatenate([p.prompt, p.chosen]) for p in pairs]
  rows += [np.concatenate([p.prompt, p.rejected]) for p in pairs]
  for row, expected, row_mask in zip(ids, rows, mask):
    if not np.array_equal(row[row_mask], expected):
      raise AssertionError(
        "TRL's tokenization changed the benchmark's token ids."
      )


def quiet() -> None:
  """No progress bars or info logs from datasets, transformers and TRL."""
  datasets.disable_progress_bars()
  datasets.logging.set_verbosity_error()
  transformers.logging.set_verbosity_error()
  transformers.logging.disable_progress_bar()
  # Deprecation notices of transformers that TRL's own code triggers.
  warnings.filterwarnings(
    "ignore", category=FutureWarning, module="transformers"
  )
  os.environ.setdefault("TQDM_DISABLE", "1")


def versions() -> dict[str, str]:
  return {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "trl": trl.__version__,
    "datasets": datasets.__version__,
  }

"""Everything a run needs before its first step: model, reference, data.

``build_run`` takes a config that :func:`train.validate.validate` has
accepted, and the mesh it returned.
"""

import dataclasses
import pathlib
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import slpo_jax
from slpo_jax import models
from slpo_jax import sharding
from train import data as data_lib
from train import lora_setup
from train import objective
from train import reference as reference_lib
from train import step as step_lib
from train import task_reference
from train import validate
from train.errors import ConfigError
from train.errors import DataError


@dataclasses.dataclass
class Run:
  """The assembled pieces of one training run."""

  config: Any
  mesh: jax.sharding.Mesh
  optimizer: optax.GradientTransformation
  model: Any
  initial_params: Any
  param_shardings: Any
  reference_params: Any  # None when reference log-probs are precomputed.
  train_iterator: Any  # Iterator of host-local batches with get/set_state.
  eval_batches: Callable[[], Iterator[dict]]
  head: slpo_jax.HeadOptions
  # With config.model.lora: the train state's params are the adapters,
  # reference_params the frozen base (also the policy's), and this merges.
  lora: lora_setup.LoraPolicy | None = None

  def policy_params(self, params):
    """The policy's parameters from the train state's ``params``."""
    if self.lora is None:
      return params
    return jax.jit(self.lora.policy_params)(self.reference_params, params)

  @staticmethod
  def count_tokens(batch: dict) -> int:
    """Real (non-padding) tokens of a host batch, chosen and rejected."""
    return int(
      np.sum(batch["chosen_attention_mask"])
      + np.sum(batch["rejected_attention_mask"])
    )

  def to_device(self, batch: dict) -> dict:
    """Host-local numpy batch -> global arrays sharded over data and fsdp."""
    return sharding.global_batch(batch, self.mesh)


def _layout(config) -> dict:
  return dict(
    dtype=config.model.dtype,
    param_dtype=config.model.param_dtype,
    remat=config.model.remat,
    remat_policy=config.model.remat_policy,
    scan_layers=config.model.scan_layers,
    attention_impl=config.model.attention_impl,
  )


def abstract_model(config, vocab_size: int | None):
  """The policy's model as ``config`` describes it, without weights.

  Args:
    config: the run's config.
    vocab_size: the tokenizer's vocabulary, which a built-in size takes;
      unused (may be None) with a checkpoint, whose ``config.json`` has its
      own.
  """
  if config.model.checkpoint:
    model, _ = models.load_hf_model(
      config.model.checkpoint, abstract=True, **_layout(config)
    )
    return model
  try:
    model_config = models.get_config(
      config.model.family,
      config.model.size,
      vocab_size=vocab_size,
      **_layout(config),
    )
  except ValueError as error:
    raise ConfigError(str(error)) from None
  return models.build(model_config)


def head_options(config, model=None) -> slpo_jax.HeadOptions:
  """The loss head ``config.model`` asks for (capped as ``model`` is)."""
  return slpo_jax.HeadOptions(
    fused=config.model.loss_head == "fused",
    # 0 selects the fused head's tuned default for the backend.
    vocab_chunk_size=config.model.vocab_chunk_size or None,
    token_chunk_size=config.model.token_chunk_size or None,
    # Gemma 2 caps its final logits; both heads must apply the same cap.
    logit_softcap=None if model is None else model.config.final_logit_softcap,
  )


def _model_and_params(config, tokenizer, mesh):
  """The policy's model and its initial parameters, placed on the mesh."""
  model = abstract_model(config, tokenizer.vocab_size)
  shardings = model.shardings(mesh, models.logical_axis_rules())
  if config.model.checkpoint:
    _, params = models.load_hf_model(
      config.model.checkpoint, shardings=shardings, **_layout(config)
    )
    if model.config.vocab_size < tokenizer.vocab_size:
      raise ConfigError(
        f"the checkpoint's vocabulary ({model.config.vocab_size}) is smaller"
        f" than the tokenizer's ({tokenizer.vocab_size}); use the"
        " checkpoint's own tokenizer.json"
      )
    return model, params, shardings
  params = jax.jit(model.init, out_shardings=shardings)(
    jax.random.key(config.seed)
  )
  return model, params, shardings


def starting_policy(config, workdir: pathlib.Path, tokenizer, mesh):
  """``(model, params, shardings)``: the policy at step 0, on ``mesh``.

  Without ``reference.checkpoint`` these parameters are also the frozen
  reference. On the synthetic task they are the reference fitted to the
  task's base language (read back from ``workdir/reference`` once fitted).
  """
  model, params, shardings = _model_and_params(config, tokenizer, mesh)
  if config.data.source == "synthetic":
    params = jax.device_put(
      task_reference.fitted_reference(config, workdir, model, params),
      shardings,
    )
  return model, params, shardings


def reference_checkpoint(config, shardings):
  """The parameters of ``reference.checkpoint``, placed in ``shardings``."""
  _, reference = models.load_hf_model(
    config.reference.checkpoint,
    dtype=config.model.dtype,
    param_dtype=config.model.param_dtype,
    shardings=shardings,
    scan_layers=config.model.scan_layers,
  )
  return reference


def _copy(tree, shardings):
  """Fresh buffers: the policy state is donated, the reference must not be."""
  return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)(
    tree
  )


def _check_train_size(config, num_pairs: int) -> None:
  if num_pairs < config.batch_size and not config.data.allow_repeats:
    raise DataError(
      f"the train split has {num_pairs} pairs, fewer than one batch of"
      f" {config.batch_size}: every batch would repeat pairs; lower"
      " batch_size, or set data.allow_repeats=True"
    )


def build_run(config, workdir: pathlib.Path, mesh: jax.sharding.Mesh) -> Run:
  """Build model, reference and data for a validated config on ``mesh``."""
  spec = objective.loss_of(config.loss)
  optimizer = step_lib.make_optimizer(config.optimizer, config.steps)
  workdir.mkdir(parents=True, exist_ok=True)
  tokenizer = data_lib.make_tokenizer(config.data, config.model.checkpoint)
  model, params, shardings = starting_policy(config, workdir, tokenizer, mesh)
  head = head_options(config, model)

  sample_fn = None
  if config.data.source == "synthetic":
    # The pairs are two reference samples ranked by the reward.
    sample_fn = task_reference.reference_sampler(
      model,
      params,
      max_new_tokens=config.data.synthetic.max_new_tokens,
      seed=config.seed,
    )
  lora = None
  if lora_setup.enabled(config):
    # The reference is the base itself: never donated, so never copied.
    reference = params = lora_setup.frozen_base(config, params, shardings)
    lora, adapters, adapter_shardings = lora_setup.prepare(
      config, model, params, mesh
    )
  elif config.reference.checkpoint:
    reference = reference_checkpoint(config, shardings)
  else:
    reference = _copy(params, shardings)

  # Loading validates and tokenizes everything up front: bad data stops the
  # run here, before any training step.
  datasets = {
    split: data_lib.load_dataset(
      config.data, tokenizer=tokenizer, split=split, sample_fn=sample_fn
    )
    for split in ("train", "eval")
    if split == "train" or validate.has_eval_split(config)
  }
  _check_train_size(config, datasets["train"].report.num_loaded)
  # Packed rows split over the host's devices on the batch axes.
  row_multiple = max(
    mesh.shape["data"] * mesh.shape["fsdp"] // jax.process_count(), 1
  )
  if jax.process_index() == 0:
    for dataset in datasets.values():
      dataset.measure_packing(
        config.batch_size // jax.process_count(), row_multiple
      )
      print(dataset.report.summary())
    pairs = config.steps * config.batch_size
    print(
      f"training sees {pairs / datasets['train'].report.num_loaded:.2f}"
      f" epochs of the train split ({config.steps} steps x"
      f" {config.batch_size} pairs)"
    )

  def batches(split: str, single_pass: bool):
    if split not in datasets:
      return iter(())
    return datasets[split].batches(
      batch_size=config.batch_size // jax.process_count(),
      seed=config.seed,
      shard_index=jax.process_index(),
      shard_count=jax.process_count(),
      repeat=not single_pass,
      row_multiple=row_multiple,
    )

  train_iterator = batches("train", single_pass=False)
  eval_batches = lambda: batches("eval", single_pass=True)  # noqa: E731
  if config.reference.mode == "precomputed" and spec.needs_reference:
    cache = reference_lib.ReferenceCache.build(
      workdir,
      config,
      model,
      reference,
      batches,
      mesh,
      dataset_fingerprint="/".join(d.fingerprint for d in datasets.values()),
      head=head,
    )
    train_iterator = cache.attach(train_iterator)
    eval_batches = lambda: cache.attach_all(batches("eval", True))  # noqa: E731
    # A LoRA policy still needs the base: only its forward pass is skipped.
    reference = None if lora is None else reference
  return Run(
    config=config,
    mesh=mesh,
    optimizer=optimizer,
    model=model,
    initial_params=params if lora is None else adapters,
    param_shardings=shardings if lora is None else adapter_shardings,
    reference_params=reference,
    train_iterator=train_iterator,
    eval_batches=eval_batches,
    head=head,
    lora=lora,
  )

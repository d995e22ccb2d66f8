"""Everything a run needs before its first step: mesh, model, reference, data.

``build_run`` validates the config against the machine first, so a config that
cannot work fails before any expensive work, with a message saying what to
change.
"""

import dataclasses
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax import models
from slpo_jax import sharding
from train import data as data_lib
from train import objective
from train import reference as reference_lib
from train import synthetic_setup
from train.errors import ConfigError


@dataclasses.dataclass
class Run:
  """The assembled pieces of one training run."""

  config: Any
  mesh: jax.sharding.Mesh
  model: Any
  initial_params: Any
  param_shardings: Any
  reference_params: Any  # None when reference log-probs are precomputed.
  train_iterator: Any  # Iterator of host-local batches with get/set_state.
  eval_batches: Callable[[], Iterator[dict]]
  head: objective.HeadOptions

  @staticmethod
  def count_tokens(batch: dict) -> int:
    """Real (non-padding) tokens of a host batch, chosen and rejected."""
    return int(np.sum(batch["chosen_attention_mask"])
               + np.sum(batch["rejected_attention_mask"]))

  def to_device(self, batch: dict) -> dict:
    """Host-local numpy batch -> global arrays sharded over data and fsdp."""
    spec = sharding.batch_sharding(self.mesh)
    return {
        name: jax.make_array_from_process_local_data(spec, np.asarray(value))
        for name, value in batch.items()
    }


def validate(config) -> None:
  """Checks that need no data or model; raises ConfigError."""
  spec = _loss_spec(config)
  if config.model.loss_head not in ("fused", "plain"):
    raise ConfigError(
        f"model.loss_head is {config.model.loss_head!r}; use 'fused' or 'plain'."
    )
  if config.reference.mode not in ("online", "precomputed"):
    raise ConfigError(
        f"reference.mode is {config.reference.mode!r}; use 'online' or"
        " 'precomputed'."
    )
  if config.reference.mode == "precomputed" and (
      spec.needs_pair or spec.needs_tokens
  ):
    raise ConfigError(
        f"loss {config.loss.name!r} needs per-token reference values; set"
        " reference.mode='online'."
    )
  if config.grad_accum_steps < 1 or config.batch_size % config.grad_accum_steps:
    raise ConfigError(
        f"batch_size={config.batch_size} is not divisible by"
        f" grad_accum_steps={config.grad_accum_steps}."
    )
  try:
    mesh = make_mesh(config)
  except ValueError as error:
    raise ConfigError(str(error)) from None
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  micro = config.batch_size // config.grad_accum_steps
  if micro % shards:
    raise ConfigError(
        f"the micro-batch of {micro} pairs (batch_size / grad_accum_steps)"
        f" cannot be split over mesh.data x mesh.fsdp = {shards} devices;"
        f" make batch_size a multiple of {shards * config.grad_accum_steps}."
    )
  if config.batch_size % jax.process_count():
    raise ConfigError(
        f"batch_size={config.batch_size} is not divisible by the"
        f" {jax.process_count()} processes."
    )


def _loss_spec(config) -> objective.LossSpec:
  try:
    return objective.loss_spec(config.loss.name)
  except ValueError as error:
    raise ConfigError(str(error)) from None


def make_mesh(config) -> jax.sharding.Mesh:
  return sharding.make_mesh(
      config.mesh.data, config.mesh.fsdp, config.mesh.tensor
  )


def state_shardings(abstract_state, param_shardings, mesh):
  """Shardings of a TrainState: parameters and optimizer moments alike.

  Optimizer leaves with a parameter's shape follow that parameter's sharding
  (Adam's moments mirror the tree); scalars such as counts are replicated.
  """
  by_shape = {}
  for leaf, spec in zip(
      jax.tree.leaves(abstract_state.params), jax.tree.leaves(param_shardings)
  ):
    by_shape.setdefault(leaf.shape, spec)
  replicated = sharding.replicated(mesh)
  opt = jax.tree.map(
      lambda x: by_shape.get(x.shape, replicated) if x.ndim else replicated,
      abstract_state.opt_state,
  )
  return abstract_state.replace(
      step=replicated, params=param_shardings, opt_state=opt
  )


def _model_and_params(config, tokenizer, mesh):
  """The policy's model and its initial parameters, placed on the mesh."""
  rules = models.logical_axis_rules()
  if config.model.checkpoint:
    model, _ = models.load_hf_model(
        config.model.checkpoint, dtype=config.model.dtype, abstract=True
    )
    shardings = model.shardings(mesh, rules)
    _, params = models.load_hf_model(
        config.model.checkpoint, dtype=config.model.dtype, shardings=shardings
    )
    if model.config.vocab_size < tokenizer.vocab_size:
      raise ConfigError(
          f"the checkpoint's vocabulary ({model.config.vocab_size}) is smaller"
          f" than the tokenizer's ({tokenizer.vocab_size}); use the"
          " checkpoint's own tokenizer.json."
      )
    return model, params, shardings
  try:
    model_config = models.get_config(
        config.model.family, config.model.size,
        vocab_size=tokenizer.vocab_size, dtype=config.model.dtype,
    )
  except ValueError as error:
    raise ConfigError(str(error)) from None
  model = models.build(model_config)
  shardings = model.shardings(mesh, rules)
  params = jax.jit(model.init, out_shardings=shardings)(
      jax.random.key(config.seed)
  )
  return model, params, shardings


def _has_eval_split(config) -> bool:
  data = config.data
  if data.source in ("synthetic", "bandit_transitive", "bandit_contradictory"):
    return True
  return bool(data.eval_path or data.tfds_split_eval or data.eval_fraction)


def _copy(tree, shardings):
  """Fresh buffers: the policy state is donated, the reference must not be."""
  return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)(
      tree
  )


def build_run(config, workdir: pathlib.Path) -> Run:
  """Validate the config, then build mesh, model, reference and data."""
  validate(config)
  spec = _loss_spec(config)
  mesh = make_mesh(config)
  workdir.mkdir(parents=True, exist_ok=True)
  tokenizer = data_lib.make_tokenizer(config.data, config.model.checkpoint)
  model, params, shardings = _model_and_params(config, tokenizer, mesh)
  head = objective.HeadOptions(
      fused=config.model.loss_head == "fused",
      # 0 selects the fused head's tuned default for the backend.
      vocab_chunk_size=config.model.vocab_chunk_size or None,
      token_chunk_size=config.model.token_chunk_size or None,
  )

  sample_fn = None
  if config.data.source == "synthetic":
    # The reference is fitted to the task's base language, the policy starts
    # from it, and the pairs are two reference samples ranked by the reward.
    params = jax.device_put(
        synthetic_setup.fitted_reference(config, workdir, model, params),
        shardings,
    )
    sample_fn = synthetic_setup.reference_sampler(
        model, params, max_new_tokens=config.data.synthetic.max_new_tokens,
        seed=config.seed,
    )
  if config.reference.checkpoint:
    _, reference = models.load_hf_model(
        config.reference.checkpoint, dtype=config.model.dtype,
        shardings=shardings,
    )
  else:
    reference = _copy(params, shardings)

  # Loading validates and tokenizes everything up front: bad data stops the
  # run here, before any training step.
  datasets = {
      split: data_lib.load_dataset(
          config.data, tokenizer=tokenizer, split=split, sample_fn=sample_fn
      )
      for split in ("train", "eval")
      if split == "train" or _has_eval_split(config)
  }
  if jax.process_index() == 0:
    for dataset in datasets.values():
      print(dataset.report.summary())

  def batches(split: str, single_pass: bool):
    if split not in datasets:
      return iter(())
    return datasets[split].batches(
        batch_size=config.batch_size // jax.process_count(),
        seed=config.seed, shard_index=jax.process_index(),
        shard_count=jax.process_count(), repeat=not single_pass,
    )

  train_iterator = batches("train", single_pass=False)
  eval_batches = lambda: batches("eval", single_pass=True)  # noqa: E731
  if config.reference.mode == "precomputed" and spec.needs_reference:
    cache = reference_lib.ReferenceCache.build(
        workdir, config, model, reference, batches, mesh,
        dataset_fingerprint="/".join(d.fingerprint for d in datasets.values()),
        head=head,
    )
    train_iterator = cache.attach(train_iterator)
    eval_batches = lambda: cache.attach_all(batches("eval", True))  # noqa: E731
    reference = None
  return Run(
      config=config, mesh=mesh, model=model, initial_params=params,
      param_shardings=shardings, reference_params=reference,
      train_iterator=train_iterator, eval_batches=eval_batches,
      head=head,
  )


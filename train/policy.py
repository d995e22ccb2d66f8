"""What trains, and what stays frozen: full fine-tuning or LoRA, behind one
seam.

The train state's ``params`` are a policy's *trainable* tree; the step also
receives one *frozen* tree, never donated or optimized:

* :class:`FullPolicy`: every weight trains; the frozen tree is the
  reference (None when its log-probs are precomputed into the batch).
* :class:`LoraPolicy`: the adapters train; the frozen tree is the base,
  which is also the reference (the policy with its adapters off), so the
  program holds one copy of the weights.

The step, the state, the loop and the export ask the policy
(``step_params`` for the step, ``merged`` for exports and sampling,
``step_reference``, ``identity``) and never which kind it is; the
functions below build either from a config, and are the one place that
asks which kind a config trains.
"""

import dataclasses
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

from slpo_jax import models
from slpo_jax import sharding
from train import lora_setup
from train.lora_setup import LoraPolicy


@dataclasses.dataclass(frozen=True)
class FullPolicy:
  """Every weight trains; the frozen tree is the reference.

  Attributes:
    reference_in_batch: the reference log-probs are precomputed, so the
      step receives no frozen tree.
  """

  reference_in_batch: bool = False
  # Merging ignores the frozen tree: the trainable one is the policy.
  merge_reads_frozen = False

  @property
  def identity(self) -> dict:
    """Nothing beyond the run's own settings must match on resume."""
    return {}

  def merged(self, trainable, frozen):
    """The policy's parameters: the trainable tree itself (traceable)."""
    del frozen
    return trainable

  def step_params(self, trainable, frozen, rng=None):
    """What the step runs the model on: the trainable tree itself."""
    del frozen, rng
    return trainable

  def training_rng(self, step, micro_batch):
    """No randomness in the step."""
    del step, micro_batch

  def reference(self, frozen):
    """The reference's parameters, from the frozen tree."""
    return frozen

  def step_reference(self, frozen):
    """The reference the loss reads: None when its log-probs come with the
    batch."""
    return None if self.reference_in_batch else self.reference(frozen)

  def frozen_in_step(self, frozen):
    """The frozen tree the step needs once the reference is cached."""
    return None if self.reference_in_batch else frozen


Policy = FullPolicy | LoraPolicy


class Prepared(NamedTuple):
  """A policy and its starting trees, placed on the mesh."""

  policy: Policy
  trainable: Any
  trainable_shardings: Any
  frozen: Any


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


def prepare(config, model, params, shardings, mesh) -> Prepared:
  """The config's policy, from the starting parameters ``params``."""
  precomputed = config.reference.mode == "precomputed"
  if lora_setup.enabled(config):
    # The reference is the base itself: never donated, so never copied.
    base = lora_setup.frozen_base(config, model, params, shardings)
    policy, adapters, adapter_shardings = lora_setup.prepare(
      config, model, base, mesh
    )
    return Prepared(policy, adapters, adapter_shardings, base)
  if config.reference.checkpoint:
    reference = reference_checkpoint(config, shardings)
  else:
    reference = _copy(params, shardings)
  return Prepared(FullPolicy(precomputed), params, shardings, reference)


def abstract(config, model, shardings, mesh) -> Prepared:
  """:func:`prepare` without weights, as sharded ``jax.ShapeDtypeStruct``
  trees, for ahead-of-time compiles and memory benchmarks."""
  if lora_setup.enabled(config):
    return Prepared(
      *lora_setup.abstract_prepare(config, model, shardings, mesh)
    )
  params = sharding.placed_shapes(model.abstract_params(), shardings)
  precomputed = config.reference.mode == "precomputed"
  return Prepared(FullPolicy(precomputed), params, shardings, params)


def frozen_as_held(config, model, params, shardings):
  """The starting parameters as a run holds them frozen: a LoRA run's base
  in ``lora.base_dtype`` (cast or quantized), else as they are."""
  if lora_setup.enabled(config):
    return lora_setup.frozen_base(config, model, params, shardings)
  return params


def checkpointed(config, model, reader, step: int, mesh, shardings):
  """``(policy, trainable tree)`` of checkpoint ``step`` (a
  ``CheckpointReader``), on the one-device ``mesh``."""
  if lora_setup.enabled(config):
    return lora_setup.checkpointed_adapters(config, model, reader, step, mesh)
  abstract = sharding.placed_shapes(model.abstract_params(), shardings)
  return FullPolicy(), reader.params(step, abstract)

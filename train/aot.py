"""Compile a config's exact train step for a Cloud TPU topology, on a CPU.

  python -m train.aot --config configs/llama8b_tpu_pod.py --topology v5p:4x4x2
  python -m train.aot --config configs/default.py --topology v5e:2x2 --json

The step is the one ``train.main`` runs (model, loss, reference mode, mesh,
remat, batch, fused head, donation; with LoRA the adapters as the state and
the frozen base as the reference), lowered from abstract parameters (no
weights are read or allocated: a checkpoint folder needs only its
``config.json``) and compiled by TPU XLA for the topology's abstract
devices. It prints, per chip, the compiled argument, output, temporary and
total bytes against the chip's HBM, XLA's FLOPs and bytes accessed per step,
the analytic model FLOPs (6 x parameters x tokens for the policy, 4 x with
LoRA, 2 x for the reference's forward pass, plus attention), and a roofline
step time and MFU from the chip's published peak bf16 FLOP/s and HBM
bandwidth. The
roofline is a lower bound on the step time (an upper bound on MFU): it
assumes compute and memory traffic overlap perfectly.

With splash attention (``model.attention_impl`` auto or splash) XLA sees
each Pallas kernel as one custom call: its FLOPs and bytes are not in XLA's
counts (the roofline then rests on the analytic FLOPs), and no compile can
say how fast the kernel runs. The memory figures do include the kernels'
inputs, outputs and residuals.

Needs ``libtpu`` (``pip install -e ".[tpu-aot]"``); nothing else of a TPU.
"""

import dataclasses
import re
import sys
from typing import Any

import jax
import numpy as np

import slpo_jax
from slpo_jax import models
from train import batch as batch_lib
from train import data as data_lib
from train import policy as policy_lib
from train import setup as setup_lib
from train import state as state_lib
from train import step as step_lib
from train import validate
from train.data import batching


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures (Google Cloud TPU documentation)."""

  hbm_bytes: int
  peak_bf16_flops: float
  hbm_bytes_per_second: float


GIB = 1024**3
# Per chip: HBM, peak bf16 dense FLOP/s, HBM bandwidth.
CHIPS = {
  "v4": Chip(32 * GIB, 275e12, 1228e9),
  "v5e": Chip(16 * GIB, 197e12, 819e9),
  "v5p": Chip(95 * GIB, 459e12, 2765e9),
  "v6e": Chip(32 * GIB, 918e12, 1640e9),
}
# Chips whose two TensorCores act as one device ("megacore").
_MEGACORE = ("v4", "v5p")


def topology_devices(name: str, num_slices: int = 1) -> list:
  """Abstract TPU devices of a topology such as ``v5p:4x4x2``.

  Raises:
    ValueError: for an unknown chip, or when libtpu is missing.
  """
  chip = name.split(":")[0]
  if chip not in CHIPS:
    raise ValueError(
      f"unknown TPU generation {chip!r} in {name!r}; use one of"
      f" {sorted(CHIPS)}, e.g. v5p:4x4x2"
    )
  try:
    import libtpu  # noqa: F401
  except ImportError:
    raise ValueError(
      "compiling for TPU needs libtpu: pip install -e '.[tpu-aot]'"
    ) from None
  from jax.experimental import topologies

  bounds = (2, 2, 1)  # Four chips per host, as on every Cloud TPU VM here.
  topology = topologies.get_topology_desc(
    platform="tpu",
    topology_name=name,
    chip_config_name="megacore" if chip in _MEGACORE else "default",
    chips_per_host_bounds=bounds,
    num_slices=num_slices,
  )
  return list(topology.devices)


def _model(config, platform: str):
  # A built-in size takes the tokenizer's vocabulary, as in the program; a
  # checkpoint's config.json has its own (and the folder may hold nothing
  # else).
  vocab_size = None
  if not config.model.checkpoint:
    vocab_size = data_lib.make_tokenizer(config.data, "").vocab_size
  return setup_lib.abstract_model(config, vocab_size, platform)


def parameter_count(model) -> int:
  return sum(
    int(np.prod(x.shape)) for x in jax.tree.leaves(model.abstract_params())
  )


@dataclasses.dataclass(frozen=True)
class PackedLayout:
  """The shape of a packed batch (``data.packing``), global.

  The pipeline picks the row count from the pairs' lengths, so a compile
  names one: ``rows`` 0 means ``batch_size`` (every pair in a row of its
  own), the largest the pipeline ever builds, hence the memory bound.
  """

  rows: int = 0
  slots: int = 8

  def resolved(self, config) -> tuple[int, int]:
    return self.rows or config.batch_size, self.slots


def sequence_length(config) -> int:
  """The longest padded length a batch can have: its largest bucket, or the
  packed row length with ``data.packing``."""
  if config.data.get("packing", False):
    return data_lib.pipeline.packed_row_length(config.data)
  return batching.bucket_length(
    config.data.max_length, config.data.length_buckets
  )


def batch_rows(config, layout: PackedLayout) -> int:
  """Rows per side of the global batch."""
  if config.data.get("packing", False):
    return layout.resolved(config)[0]
  return config.batch_size


def abstract_batch(
  config, mesh, needs_reference_logps: bool, layout=PackedLayout()
) -> batch_lib.Batch | batch_lib.UnpairedBatch:
  """The global batch as the pipeline builds it, as sharded shapes."""
  if config.loss.name.strip() == "kto":
    # KTO's records: one row each and its mismatched row.
    return batch_lib.abstract_unpaired(
      rows=config.batch_size,
      length=sequence_length(config),
      sharding=slpo_jax.sharding.batch_sharding(mesh),
    )
  packed = config.data.get("packing", False)
  return batch_lib.abstract(
    rows=batch_rows(config, layout),
    length=sequence_length(config),
    sharding=slpo_jax.sharding.batch_sharding(mesh),
    slots=layout.resolved(config)[1] if packed else 0,
    with_reference=needs_reference_logps,
    share_prompt=setup_lib.shares_prompt(config),
  )


def model_flops(model, config, loss, layout=PackedLayout()) -> float:
  """Analytic FLOPs of one step over the whole batch.

  Matmul FLOPs are 2 per multiply-add: 6 N per token for the policy's
  forward and backward passes (4 N with LoRA, whose frozen base gets no
  weight gradient), 2 N for the reference's forward pass (when it runs), with N the parameters outside the embedding lookup; attention adds
  ``4 T d`` per token and layer forward (scores and values), three times that
  with the backward pass. Rematerialisation's recomputed forward is not
  counted (MFU counts useful work only).
  """
  c = model.config
  params = parameter_count(model)
  embedding = c.vocab_size * c.d_model
  # The head's matmul is counted: tied or not, the logits are computed.
  dense = params - embedding + (embedding if c.tie_embeddings else 0)
  # Every position of both rows (packing's padding included). Attention is
  # counted over whole rows; a packed pair attends within its segment only,
  # so for packed batches this term is an upper bound.
  sides = 1 if setup_lib.shares_prompt(config) else 2  # One block shared.
  tokens = sides * batch_rows(config, layout) * sequence_length(config)
  attention = 4 * sequence_length(config) * c.num_heads * c.head_dim
  attention *= c.num_layers
  if config.model.lora.rank:
    # LoRA: the base's weights get no gradient (4 N per token), the
    # adapters' matmuls are negligible; attention's backward stays.
    policy = (2 * 2 * dense + 3 * attention) * tokens
  else:
    policy = 3 * (2 * dense + attention) * tokens
  reference = (
    (2 * dense + attention) * tokens
    if loss.needs_reference and config.reference.mode == "online"
    else 0.0
  )
  return float(policy + reference)


def compile_step(config, devices, layout=PackedLayout()):
  """``(compiled, spec)``: the config's train step, compiled."""
  lowered, spec = lower_step(config, devices, layout)
  return lowered.compile(), spec


def lower_step(config, devices, layout=PackedLayout()):
  """``(lowered, spec)``: the config's train step, lowered."""
  step = abstract_step(config, devices, layout)
  return step.train_fn.lower(step.state, step.frozen, step.batch), step.spec


@dataclasses.dataclass(frozen=True)
class AbstractStep:
  """A config's jitted train step and its arguments as sharded shapes."""

  spec: step_lib.StepSpec
  train_fn: Any
  state: step_lib.TrainState
  frozen: Any
  batch: batch_lib.Batch


def abstract_step(config, devices, layout=PackedLayout()) -> AbstractStep:
  """The step ``train.main`` would run for ``config`` on ``devices``, from
  abstract parameters: no weight is read or allocated."""
  checked = validate.validate(config, devices)
  model = _model(config, devices[0].platform)
  shardings = model.shardings(checked.mesh, models.logical_axis_rules())
  prepared = policy_lib.abstract(config, model, shardings, checked.mesh)
  spec = setup_lib.step_spec(config, checked, model, prepared.policy)
  loss_state = spec.loss.initial_state()
  state_shardings = state_lib.state_shardings(
    spec.optimizer,
    prepared.trainable,
    prepared.trainable_shardings,
    spec.mesh,
    loss_state,
  )
  state = slpo_jax.sharding.placed_shapes(
    jax.eval_shape(
      lambda p: state_lib.initial_state(
        spec.optimizer, p, state_shardings, loss_state
      ),
      prepared.trainable,
    ),
    state_shardings,
  )
  frozen = prepared.policy.frozen_in_step(prepared.frozen)
  train_fn, _ = state_lib.jit_steps(spec, state_shardings, frozen)
  batch = abstract_batch(
    config, spec.mesh, prepared.policy.reference_in_batch, layout
  )
  return AbstractStep(spec, train_fn, state, frozen, batch)


class DoesNotFit(ValueError):
  """TPU XLA refused the step: it needs more HBM than a chip has."""


_OOM = re.compile(
  r"Ran out of memory in memory space hbm|Ran out of memory on HBM"
)


def analyse(
  config, topology: str, num_slices: int = 1, layout=PackedLayout()
) -> dict:
  """Compiles the step and returns the per-chip figures.

  Raises:
    DoesNotFit: with XLA's own account of the shortfall.
  """
  devices = topology_devices(topology, num_slices)
  try:
    compiled, spec = compile_step(config, devices, layout)
    model = spec.model
  except jax.errors.JaxRuntimeError as error:
    if not _OOM.search(str(error)):
      raise
    first = str(error).strip().splitlines()[0]
    raise DoesNotFit(
      f"the step does not fit {topology}: {first.split(': ', 1)[-1]}"
    ) from None
  chip = CHIPS[topology.split(":")[0]]
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  total = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    + memory.temp_size_in_bytes
    - memory.alias_size_in_bytes
  )
  count = len(devices)
  flops = float(cost.get("flops", 0.0))
  accessed = float(cost.get("bytes accessed", 0.0))
  analytic = model_flops(model, config, spec.loss, layout) / count
  rows = batch_rows(config, layout)
  # XLA's cost analysis counts a while loop's body once: a scanned stack,
  # the fused head's tiles and collective-matmul loops are undercounted.
  # The roofline takes the larger of the two counts.
  scanned = bool(config.model.scan_layers)
  step_flops = max(flops, analytic)
  seconds = max(
    step_flops / chip.peak_bf16_flops, accessed / chip.hbm_bytes_per_second
  )
  return {
    "topology": topology,
    "devices": count,
    "device_kind": devices[0].device_kind,
    "parameters": parameter_count(model),
    "attention": model.config.attention_impl,
    "global_batch_pairs": config.batch_size,
    "rows_per_side": rows,
    "packed_slots": (
      layout.resolved(config)[1] if config.data.get("packing", False) else None
    ),
    "sequence_length": sequence_length(config),
    "shared_prompt": setup_lib.shares_prompt(config),
    "argument_bytes": memory.argument_size_in_bytes,
    "output_bytes": memory.output_size_in_bytes,
    "temp_bytes": memory.temp_size_in_bytes,
    "alias_bytes": memory.alias_size_in_bytes,
    "total_bytes": total,
    "hbm_bytes": chip.hbm_bytes,
    "hbm_fraction": total / chip.hbm_bytes,
    "flops": flops,
    "flops_counts_one_scanned_layer": scanned,
    "model_flops": analytic,
    "compiled_over_model_flops": flops / analytic if analytic else None,
    "bytes_accessed": accessed,
    "roofline_step_seconds": seconds,
    "estimated_tokens_per_second_per_chip": (
      2 * rows * sequence_length(config) / count / seconds
    ),
    "estimated_mfu": analytic / (seconds * chip.peak_bf16_flops),
  }


def report(figures: dict) -> str:
  """The figures as lines a person reads."""
  gib = 1024**3
  f = figures
  lines = [
    f"{f['topology']}: {f['devices']} x {f['device_kind']},"
    f" {f['parameters'] / 1e9:.2f}B parameters, {f['attention']} attention,"
    f" {f['global_batch_pairs']} pairs"
    + (
      f" packed into {f['rows_per_side']} rows x {f['sequence_length']}"
      f" tokens ({f['packed_slots']} pair slots per row"
      + (", prompts shared" if f.get("shared_prompt") else "")
      + ")"
      if f["packed_slots"]
      else f" x {f['sequence_length']} tokens"
    ),
    "per chip:",
    f"  arguments   {f['argument_bytes'] / gib:8.2f} GiB",
    f"  outputs     {f['output_bytes'] / gib:8.2f} GiB"
    f" ({f['alias_bytes'] / gib:.2f} GiB aliased to donated arguments)",
    f"  temporaries {f['temp_bytes'] / gib:8.2f} GiB",
    f"  total       {f['total_bytes'] / gib:8.2f} GiB of"
    f" {f['hbm_bytes'] / gib:.0f} GiB HBM ({100 * f['hbm_fraction']:.0f}%)",
    f"  XLA FLOPs {f['flops']:.3e}"
    + (
      " (one scanned layer's loop body)"
      if f["flops_counts_one_scanned_layer"]
      else ""
    )
    + f", model FLOPs {f['model_flops']:.3e}, bytes accessed"
    f" {f['bytes_accessed']:.3e}",
    f"  roofline step {f['roofline_step_seconds'] * 1e3:.1f} ms,"
    f" {f['estimated_tokens_per_second_per_chip']:.0f} tokens/s,"
    f" MFU at most {100 * f['estimated_mfu']:.0f}%",
  ]
  return "\n".join(lines)


if __name__ == "__main__":
  from train import cli

  # TPU XLA compiles here for abstract devices; the host runs on its CPU.
  jax.config.update("jax_platforms", "cpu")
  cli.run("aot", sys.modules[__name__])

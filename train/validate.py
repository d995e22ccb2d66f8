"""The whole config, checked once, before any data is read or model loaded.

:func:`validate` raises a :class:`~train.errors.ConfigError` (or, for the
data section, a :class:`~train.errors.DataError`) with a one-line message
naming the key and what to change. Everything a later stage would reject
for a reason visible in the config alone is rejected here: a misspelt loss,
optimizer or schedule, a hyperparameter the loss refuses, a batch the mesh
cannot split.
"""

import dataclasses
import math

import jax
import optax

from slpo_jax import models
from slpo_jax import sharding
from train import config_schema as schema
from train import lora_setup
from train import objective
from train import step as step_lib
from train import validate_loss
from train.data import validation as data_validation
from train.errors import ConfigError


def _one_of(key: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(f"{key} is {value!r}; use one of {list(choices)}")


def _positive(config, *keys: str) -> None:
  for key in keys:
    value = config[key]
    if not isinstance(value, int) or value < 1:
      raise ConfigError(f"{key} is {value!r}; it must be a positive integer")


def _non_negative(config, *keys: str) -> None:
  for key in keys:
    value = config[key]
    if not isinstance(value, int) or value < 0:
      raise ConfigError(f"{key} is {value!r}; it must be an integer >= 0")


def _get(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


def _is_real(value) -> bool:
  return (
    isinstance(value, (int, float))
    and not isinstance(value, bool)
    and math.isfinite(value)
  )


# Numeric settings not checked elsewhere: (key, test, what it must be).
# Loss hyperparameters that only some losses read (temperature, alpha, ...)
# are checked by those losses' functions (validate_loss.check_loss).
_REAL_RANGES = (
  ("optimizer.learning_rate", lambda v: v > 0, "> 0"),
  ("optimizer.weight_decay", lambda v: v >= 0, ">= 0"),
  ("optimizer.b1", lambda v: 0 <= v < 1, "in [0, 1)"),
  ("optimizer.b2", lambda v: 0 <= v < 1, "in [0, 1)"),
  ("optimizer.eps", lambda v: v > 0, "> 0"),
  ("optimizer.grad_clip_norm", lambda v: v >= 0, ">= 0 (0 turns it off)"),
  ("loss.beta", lambda v: v > 0, "> 0"),
  ("loss.label_smoothing", lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
  ("loss.ld_alpha", lambda v: 0 <= v <= 1, "in [0, 1] (1 turns it off)"),
  ("loss.desirable_weight", lambda v: v > 0, "> 0"),
  ("loss.undesirable_weight", lambda v: v > 0, "> 0"),
  (
    "loss.f_alpha_divergence_coef",
    lambda v: True,
    "(alpha-divergence's alpha)",
  ),
  ("reference.sft_learning_rate", lambda v: v > 0, "> 0"),
  ("eval.temperature", lambda v: v >= 0, ">= 0 (0 decodes greedily)"),
  ("eval.top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
  ("reward_model.margin", lambda v: True, ""),
  ("reward_model.center_rewards_coefficient", lambda v: v >= 0, ">= 0"),
)
_INT_RANGES = (
  ("seed", lambda v: True, "an integer"),
  ("optimizer.warmup_steps", lambda v: v >= 0, "an integer >= 0"),
  ("reference.sft_steps", lambda v: v >= 0, "an integer >= 0"),
  ("reference.sft_batch_size", lambda v: v >= 1, "a positive integer"),
  ("eval.num_samples", lambda v: v >= 0, "an integer >= 0 (0 = no samples)"),
  ("eval.max_new_tokens", lambda v: v >= 1, "a positive integer"),
)


def _check_ranges(config) -> None:
  for key, test, wanted in _REAL_RANGES:
    value = _get(config, key)
    if not _is_real(value) or not test(value):
      raise ConfigError(f"{key} is {value!r}; it must be a number {wanted}")
  for key, test, wanted in _INT_RANGES:
    value = _get(config, key)
    if not isinstance(value, int) or isinstance(value, bool) or not test(value):
      raise ConfigError(f"{key} is {value!r}; it must be {wanted}")
  weights = config.loss.weights
  if not isinstance(weights, (tuple, list)) or not all(
    _is_real(w) and w >= 0 for w in weights
  ):
    raise ConfigError(
      f"loss.weights is {weights!r}; it must be a tuple of numbers >= 0,"
      " one per loss of loss.name (() = 1 each)"
    )


@dataclasses.dataclass(frozen=True)
class Validated:
  """What checking the config built, so that what was checked is what runs.

  Attributes:
    mesh: the (data, fsdp, tensor) mesh of ``config.mesh``.
    loss: the loss of ``config.loss``.
    optimizer: the optimizer of ``config.optimizer``.
    schedule: the learning-rate schedule it follows.
  """

  mesh: jax.sharding.Mesh
  loss: objective.Loss
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule


def make_mesh(config, devices=None) -> jax.sharding.Mesh:
  """The (data, fsdp, tensor) mesh of ``config.mesh``, as a ConfigError."""
  try:
    return sharding.make_mesh(
      config.mesh.data,
      config.mesh.fsdp,
      config.mesh.tensor,
      devices=devices,
    )
  except ValueError as error:
    raise ConfigError(str(error)) from None


def _check_batch(config, mesh: jax.sharding.Mesh) -> None:
  if config.batch_size % config.grad_accum_steps:
    raise ConfigError(
      f"batch_size={config.batch_size} is not divisible by"
      f" grad_accum_steps={config.grad_accum_steps}"
    )
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  micro = config.batch_size // config.grad_accum_steps
  if micro % shards:
    raise ConfigError(
      f"the micro-batch of {micro} pairs (batch_size / grad_accum_steps)"
      f" cannot be split over mesh.data x mesh.fsdp = {shards} devices;"
      f" make batch_size a multiple of {shards * config.grad_accum_steps}"
    )
  if config.batch_size % jax.process_count():
    raise ConfigError(
      f"batch_size={config.batch_size} is not divisible by the"
      f" {jax.process_count()} processes"
    )
  if config.data.get("packing", False) and config.grad_accum_steps > 1:
    # Micro-batches of a packed batch would be groups of rows, not the
    # unpacked step's groups of pairs; not supported yet.
    raise ConfigError(
      f"data.packing needs grad_accum_steps=1, got {config.grad_accum_steps}"
    )


def _check_model(config) -> None:
  _one_of("model.loss_head", config.model.loss_head, schema.LOSS_HEADS)
  _one_of("model.dtype", config.model.dtype, schema.COMPUTE_DTYPES)
  _one_of("model.param_dtype", config.model.param_dtype, schema.COMPUTE_DTYPES)
  _one_of(
    "model.remat_policy", config.model.remat_policy, models.REMAT_POLICIES
  )
  _one_of(
    "model.attention_impl", config.model.attention_impl, models.ATTENTION_IMPLS
  )
  # The model's own features are checked once its config is read (setup).
  reason = models.unsupported_attention(
    config.model.attention_impl,
    softcap=False,
    window=False,
    packed=bool(config.data.packing),
    branched=bool(config.data.packing and config.data.get("share_prompt")),
  )
  if reason:
    raise ConfigError(reason)
  _non_negative(
    config.model, "vocab_chunk_size", "token_chunk_size", "attention_block"
  )
  if not config.model.checkpoint:
    try:
      models.get_config(config.model.family, config.model.size)
    except ValueError as error:
      raise ConfigError(f"config.model: {error}") from None


def _check_lora(config) -> None:
  """LoRA settings, against the base's shapes (its config.json only)."""
  lora = config.model.lora
  if lora.rank == 0 or not isinstance(lora.rank, int):
    lora_setup.check(config, None)  # Only the rank itself to check.
    return
  layout = dict(scan_layers=config.model.scan_layers)
  if config.model.checkpoint:
    model_config = models.load_hf_config(config.model.checkpoint, **layout)
  else:
    model_config = models.get_config(
      config.model.family, config.model.size, **layout
    )
  lora_setup.check(config, models.build(model_config))


def _check_export(config) -> None:
  export = config.export
  if not isinstance(export.at_end, bool):
    raise ConfigError(
      f"export.at_end is {export.at_end!r}; it must be True or False"
    )
  _one_of("export.dtype", export.dtype, schema.EXPORT_DTYPES)
  size = export.max_shard_size
  if not isinstance(size, int) or isinstance(size, bool) or size < 0:
    raise ConfigError(
      f"export.max_shard_size is {size!r}; it must be a number of bytes"
      " >= 0 (0 writes one file)"
    )


def _check_reward_model(config) -> None:
  """What a reward model's training does not take (train/reward_training.py)."""
  if not isinstance(config.reward_model.train, bool):
    raise ConfigError(
      f"reward_model.train is {config.reward_model.train!r}; use True or False"
    )
  if not config.reward_model.train:
    return
  refused = {
    "model.lora.rank": config.model.lora.rank != 0,
    "data.packing": config.data.packing,
    "grad_accum_steps": config.grad_accum_steps != 1,
    "reference.sync_every": config.reference.sync_every != 0,
  }
  for key, set_ in refused.items():
    if set_:
      raise ConfigError(
        f"{key} is set, which a reward model's training does not take"
        " (reward_model.train=True); leave it at its default"
      )


def validate(config, devices=None) -> Validated:
  """Checks the whole config; returns what it built doing so.

  Args:
    config: the run's config (see train/config_schema.py).
    devices: the devices of the mesh; all of them when None.

  Returns:
    The mesh, the loss, the optimizer and its schedule, so that what was
    checked is what runs.

  Raises:
    ConfigError: for the first setting that cannot work.
    DataError: for a data setting that cannot work.
  """
  _positive(
    config,
    "steps",
    "batch_size",
    "grad_accum_steps",
    "log_every",
    "keep_checkpoints",
  )
  _non_negative(config, "eval_every", "eval_batches", "checkpoint_every")
  _check_ranges(config)
  loss = validate_loss.check_loss(config)
  _check_model(config)
  _check_lora(config)
  _one_of("reference.mode", config.reference.mode, schema.REFERENCE_MODES)
  if config.reference.mode == "precomputed" and not loss.needs_reference:
    raise ConfigError(
      f"loss {config.loss.name!r} reads no reference model, so there is"
      " nothing to precompute; set reference.mode='online'"
    )
  if config.reference.mode == "precomputed" and loss.needs_reference_tokens:
    raise ConfigError(
      f"loss {config.loss.name!r} needs per-token reference values; set"
      " reference.mode='online'"
    )
  validate_loss.check_reference_sync(config, loss)
  _check_export(config)
  _check_reward_model(config)
  try:
    optimizer, schedule = step_lib.optimizer_and_schedule(
      config.optimizer, config.steps
    )
  except ValueError as error:
    raise ConfigError(str(error)) from None
  for split in data_validation.splits(config.data):
    data_validation.validate_data_config(config.data, split)
  mesh = make_mesh(config, devices)
  _check_batch(config, mesh)
  return Validated(mesh, loss, optimizer, schedule)

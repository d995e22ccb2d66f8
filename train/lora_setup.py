"""LoRA runs (``config.model.lora``): their checks, adapters and files.

With ``rank > 0`` the train state's ``params`` are the adapters (so only
they get gradients and optimizer state, and only they are donated and
checkpointed), and the base is the step's frozen tree: the reference *is*
the base with the adapters off, so the program holds one copy of the
weights. :class:`LoraPolicy` is what the step sees, through the seam of
:mod:`train.policy`.
"""

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax import fingerprint
from slpo_jax import lora
from slpo_jax import lora_peft
from slpo_jax import lora_sites
from slpo_jax import models
from slpo_jax import quantize
from slpo_jax import sharding
from train import config_schema
from train.errors import ConfigError

# The folder a LoRA run's final adapters are exported to, beside WORKDIR/hf.
PEFT_FOLDER = "peft"


def enabled(config) -> bool:
  """Whether ``config`` trains LoRA adapters."""
  return config.model.lora.rank != 0


def lora_config(config) -> lora.LoraConfig:
  """``config.model.lora`` as the library's config, as a ConfigError."""
  settings = config.model.lora
  try:
    return lora.LoraConfig(
      rank=settings.rank,
      alpha=settings.alpha,
      dropout=settings.dropout,
      targets=tuple(settings.targets),
      rslora=settings.rslora,
    )
  except lora.LoraError as error:
    raise ConfigError(f"config.model.lora: {error}") from None


def select_sites(config, model) -> list[lora.Site]:
  """The sites the config's targets select on ``model``, checked."""
  try:
    return lora_sites.select_sites(model, lora_config(config))
  except lora.LoraError as error:
    raise ConfigError(f"config.model.lora.targets: {error}") from None


def check(config, model) -> None:
  """Every LoRA setting, against the (abstract) base ``model``.

  Raises:
    ConfigError: one line naming the key, before any weight is read.
  """
  settings = config.model.lora
  rank = settings.rank
  if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
    raise ConfigError(
      f"config.model.lora.rank is {rank!r}; it must be an integer >= 0 (0"
      " trains the whole model)"
    )
  if not rank:
    return
  if settings.base_dtype not in config_schema.LORA_BASE_DTYPES:
    raise ConfigError(
      f"config.model.lora.base_dtype is {settings.base_dtype!r}; use one of"
      f" {list(config_schema.LORA_BASE_DTYPES)}"
    )
  if quantized_format(config):
    _check_quantizable(config, model)
  if config.reference.sync_every:
    raise ConfigError(
      "reference.sync_every would copy the policy into the reference, which"
      " with LoRA is the frozen base itself; set it to 0"
    )
  if config.reference.checkpoint:
    raise ConfigError(
      "with LoRA the reference is the base with the adapters off;"
      " reference.checkpoint would load a second model: set it to ''"
    )
  sites = select_sites(config, model)
  if settings.init_from:
    folder = pathlib.Path(settings.init_from)
    try:
      stored = lora_peft.read_config(folder)
      stored_config, stored_sites, _ = lora_peft.load_adapters(folder, model)
    except lora.LoraError as error:
      raise ConfigError(f"config.model.lora.init_from: {error}") from None
    mine = lora_config(config)
    if (stored_config.rank, stored_config.scale) != (mine.rank, mine.scale):
      raise ConfigError(
        f"config.model.lora.init_from {folder} has r={stored['r']},"
        f" lora_alpha={stored.get('lora_alpha')}, use_rslora="
        f"{stored.get('use_rslora', False)}; set rank, alpha and rslora to"
        " match"
      )
    if [s.path for s in stored_sites] != [s.path for s in sites]:
      raise ConfigError(
        f"config.model.lora.init_from {folder} adapts"
        f" {stored_config.targets}, not what config.model.lora.targets"
        " selects; set targets to match"
      )


def _check_quantizable(config, model) -> None:
  fmt = config.model.lora.base_dtype
  if config.mesh.tensor != 1:
    raise ConfigError(
      f"config.model.lora.base_dtype={fmt} with mesh.tensor="
      f"{config.mesh.tensor}: quantized kernels are stored per block (NF4"
      " flat, int8 per channel) and split over data x fsdp only; set"
      " mesh.tensor=1"
    )
  try:
    quantize.check(model, fmt, config.model.lora.double_quant)
  except quantize.QuantizeError as error:
    raise ConfigError(
      f"config.model.lora.base_dtype={fmt} cannot quantize this"
      f" {model.config.family} model: {error}"
    ) from None


@dataclasses.dataclass(frozen=True)
class LoraPolicy:
  """Adapters train over a frozen base (``config.model.lora``).

  Attributes:
    config: rank, scale, targets.
    sites: the adapted matrices.
    dtype: dtype of the merged kernels (the compute dtype).
    reference_in_batch: the reference log-probs are precomputed.
    identity: the base's source and weights hash, which a checkpoint must
      match to be resumed.
    dropout_seed: the seed of the adapters' dropout.
    base_model: the model, when the base is quantized (to dequantize it
      for a merged export); else None.
  """

  config: lora.LoraConfig
  sites: tuple[lora.Site, ...]
  dtype: str
  reference_in_batch: bool
  identity: dict
  dropout_seed: int = 0
  base_model: Any = None
  # The adapters merge into the frozen base.
  merge_reads_frozen = True

  def merged(self, trainable, frozen):
    """The base with the adapters merged in (traceable): for exports and
    sampling; the step never forms it. A quantized base is dequantized
    first: the merged kernels are ``dequantized W + scale * A @ B``."""
    if self.base_model is not None:
      frozen = quantize.dequantize_params(frozen, self.base_model)
    return lora.policy_params(
      frozen, trainable, list(self.sites), self.config, dtype=self.dtype
    )

  def step_params(self, trainable, frozen, rng=None):
    """The base with each adapter beside its kernel, run inside the layers
    (traceable); ``rng`` draws the adapters' dropout."""
    return lora.layer_params(
      frozen,
      trainable,
      list(self.sites),
      self.config,
      dropout_key=rng,
      dtype=self.dtype,
    )

  def training_rng(self, step, micro_batch):
    """The dropout key of one micro-batch of one step (None without
    dropout): the same on a resumed run."""
    if not self.config.dropout:
      return None
    key = jax.random.fold_in(jax.random.key(self.dropout_seed), step)
    return jax.random.fold_in(key, micro_batch)

  def reference(self, frozen):
    """The reference's parameters: the base with its adapters off."""
    return lora.base_params(frozen)

  def step_reference(self, frozen):
    """The reference the loss reads: None when its log-probs come with the
    batch."""
    return None if self.reference_in_batch else self.reference(frozen)

  def frozen_in_step(self, frozen):
    """The policy needs the base even when the reference is cached."""
    return frozen


def quantized_format(config) -> str:
  """'int8' or 'nf4' when the base's projections are quantized, else ''."""
  base_dtype = config.model.lora.base_dtype
  return base_dtype if base_dtype in quantize.FORMATS else ""


def _float_dtype(config):
  """The dtype of the base's leaves that are not quantized: with a
  quantized base, the compute dtype (norms, embeddings, the head)."""
  if quantized_format(config):
    return jnp.dtype(config.model.dtype)
  return jnp.dtype(config.model.lora.base_dtype)


def frozen_base(config, model, params, shardings):
  """The base in ``lora.base_dtype``, in place of the loaded tree: cast, or
  its projections quantized kernel by kernel, placed on the mesh."""
  dtype = _float_dtype(config)
  if any(leaf.dtype != dtype for leaf in jax.tree.leaves(params)):
    # Not donated: the synthetic task's sampler may still hold the original.
    params = jax.jit(
      lambda p: jax.tree.map(lambda x: x.astype(dtype), p),
      out_shardings=shardings,
    )(params)
  fmt = quantized_format(config)
  if not fmt:
    return params
  return quantize.quantize_params(
    params,
    model,
    fmt,
    double_quant=config.model.lora.double_quant,
    shardings=shardings,
  )


def base_source(config) -> str:
  """Where the base comes from, for the run's identity."""
  return config.model.checkpoint or f"{config.model.family}/{config.model.size}"


def _adapter_shardings(config, sites, mesh):
  return lora.shardings(
    sites, config.model.lora.rank, mesh, models.logical_axis_rules()
  )


def _policy(config, model, sites, identity: dict, **changes) -> LoraPolicy:
  settings = dict(
    config=lora_config(config),
    sites=tuple(sites),
    dtype=config.model.dtype,
    reference_in_batch=config.reference.mode == "precomputed",
    identity=identity,
    dropout_seed=config.seed,
    base_model=model if quantized_format(config) else None,
  )
  return LoraPolicy(**(settings | changes))


def abstract_prepare(config, model, base_shardings, mesh):
  """:func:`prepare` without weights, for ahead-of-time compiles.

  Returns:
    ``(policy, adapters, adapter_shardings, base)``: the adapters and the
    base (in ``lora.base_dtype``, placed in ``base_shardings``) as sharded
    ``jax.ShapeDtypeStruct`` trees; the policy has no identity.
  """
  sites = select_sites(config, model)
  adapter_shardings = _adapter_shardings(config, sites, mesh)
  adapters = sharding.placed_shapes(
    lora.abstract_adapters(sites, config.model.lora.rank), adapter_shardings
  )
  dtype = _float_dtype(config)
  fmt = quantized_format(config)
  if fmt:
    double_quant = config.model.lora.double_quant
    base = sharding.placed_shapes(
      quantize.abstract_params(model, fmt, dtype, double_quant),
      quantize.stored_shardings(base_shardings, model, fmt, double_quant),
    )
  else:
    base = sharding.placed_shapes(
      model.abstract_params(), base_shardings, dtype
    )
  policy = _policy(config, model, sites, {})
  return policy, adapters, adapter_shardings, base


def prepare(config, model, base, mesh) -> tuple[LoraPolicy, Any, Any]:
  """The policy wiring, the initial adapters and their shardings.

  Args:
    config: the run's config, LoRA enabled.
    model: the base model.
    base: the frozen base parameters (from :func:`frozen_base`).
    mesh: the run's mesh.
  """
  sites = select_sites(config, model)
  settings = config.model.lora
  adapter_shardings = _adapter_shardings(config, sites, mesh)
  if settings.init_from:
    _, _, host = lora_peft.load_adapters(settings.init_from, model)
    adapters = jax.device_put(host, adapter_shardings)
  else:
    adapters = jax.jit(
      lambda key: lora.init_adapters(sites, settings.rank, key),
      out_shardings=adapter_shardings,
    )(jax.random.fold_in(jax.random.key(config.seed), 1))
  identity = {
    "lora_base": base_source(config),
    "lora_base_weights": fingerprint.params_fingerprint(base),
  }
  if quantized_format(config):
    # Named on its own so that a refusal says what changed; a float base's
    # dtype is in its weights' hash (and older checkpoints lack the key).
    identity["lora_base_dtype"] = config.model.lora.base_dtype
  policy = _policy(config, model, sites, identity)
  if jax.process_index() == 0:
    count = lora.trainable_count(adapters)
    total = sum(np.prod(x.shape) for x in jax.tree.leaves(base))
    print(
      f"LoRA: {count} trainable parameters ({100 * count / total:.3f}% of"
      f" the base's {total}) in {len(sites)} matrices"
    )
  return policy, adapters, adapter_shardings


def save_peft(config, model, policy: LoraPolicy, adapters, out) -> pathlib.Path:
  """Writes ``adapters`` as a PEFT folder ``out``; returns it."""
  out = pathlib.Path(out)
  lora_peft.save_adapters(
    out,
    model,
    list(policy.sites),
    policy.config,
    jax.device_get(adapters),
    base_model_name_or_path=config.model.checkpoint,
  )
  return out


def checkpointed_adapters(config, model, reader, step: int, mesh):
  """``(policy, adapters)`` of checkpoint ``step`` (a ``CheckpointReader``),
  on ``mesh``."""
  sites = select_sites(config, model)
  rank = config.model.lora.rank
  placed = lora.shardings(sites, rank, mesh, models.logical_axis_rules())
  abstract = sharding.placed_shapes(lora.abstract_adapters(sites, rank), placed)
  # Exports merge in float32: the export dtype rounds once, at the end.
  policy = _policy(
    config, model, sites, {}, dtype="float32", reference_in_batch=False
  )
  return policy, reader.params(step, abstract)

"""A workdir's checkpoint brought back as a model, for export and sampling.

The config is rebuilt from the settings the checkpoint stored (the whole
config, flattened: ``train/resume.py``), not from a config file, so the
model is the one that was trained whatever the config files say now. The
tokenizer comes from the data config alone: no training data is read, and
of the state only the parameters are (no optimizer moments).
"""

import dataclasses
import pathlib
from typing import Any

import jax
import ml_collections

from slpo_jax import models
from slpo_jax import sharding
from train import checkpoint as checkpoint_lib
from train import config_schema
from train import data as data_lib
from train import policy as policy_lib
from train import setup as setup_lib
from train.errors import ConfigError
from train.errors import NoCheckpointError


def config_from_settings(settings: dict) -> ml_collections.ConfigDict:
  """The base config with every stored ``{"a.b.c": value}`` set, locked.

  A stored key the base config no longer declares (a checkpoint of another
  version of the program) is skipped; a key declared since keeps its
  default.

  Raises:
    ConfigError: a stored value the declared key cannot take.
  """
  config = config_schema.get_config()
  for dotted, value in settings.items():
    *parents, leaf = dotted.split(".")
    node = config
    for name in parents:
      node = (
        node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
      )
    if (
      not isinstance(node, ml_collections.ConfigDict)
      or leaf not in node
      or isinstance(node[leaf], ml_collections.ConfigDict)
    ):
      continue
    try:
      node[leaf] = value
    except (TypeError, ValueError) as error:
      raise ConfigError(
        f"the checkpoint's setting {dotted}={value!r} does not fit this"
        f" version's config: {error}"
      ) from None
  config.lock()
  return config


@dataclasses.dataclass
class CheckpointedRun:
  """One checkpoint of a workdir: its config, tokenizer and model.

  Parameters are read on request (:meth:`policy_params`,
  :meth:`reference_params`), onto one device.
  """

  workdir: pathlib.Path
  step: int
  config: ml_collections.ConfigDict
  tokenizer: data_lib.Tokenizer
  model: models.DecoderLM
  reader: checkpoint_lib.CheckpointReader

  def _shardings(self, device: jax.Device):
    mesh = sharding.make_mesh(1, 1, 1, devices=[device])
    return mesh, self.model.shardings(mesh, models.logical_axis_rules())

  def _abstract_params(self, shardings) -> Any:
    return sharding.placed_shapes(self.model.abstract_params(), shardings)

  def policy_params(self, device: jax.Device) -> Any:
    """The policy's parameters at this checkpoint, on ``device``; a LoRA
    run's adapters merged into its base."""
    policy, trainable = self.trainable(device)
    frozen = (
      self.reference_params(device) if policy.merge_reads_frozen else None
    )
    return jax.jit(policy.merged)(trainable, frozen)

  def trainable(self, device: jax.Device) -> tuple[Any, Any]:
    """``(policy, trainable tree)`` at this checkpoint: the weights, or a
    LoRA run's adapters."""
    mesh, shardings = self._shardings(device)
    return policy_lib.checkpointed(
      self.config, self.model, self.reader, self.step, mesh, shardings
    )

  def reference_params(self, device: jax.Device) -> Any:
    """The reference the run trained against, as the program builds it.

    A moving reference (``reference.sync_every``) is read from this
    checkpoint; a frozen one is ``reference.checkpoint``, else the policy's
    start (``model.checkpoint``, the seeded initialisation, or the synthetic
    task's fitted reference, from ``WORKDIR/reference`` once fitted), as the
    run held it (a LoRA run's base in its ``base_dtype``).
    """
    config = self.config
    mesh, shardings = self._shardings(device)
    if config.reference.sync_every:
      abstract = self._abstract_params(shardings)
      return self.reader.reference(self.step, abstract)
    if config.reference.checkpoint:
      return policy_lib.reference_checkpoint(config, shardings)
    _, params, _ = setup_lib.starting_policy(
      config, self.workdir, self.tokenizer, mesh
    )
    return policy_lib.frozen_as_held(config, self.model, params, shardings)

  def close(self) -> None:
    self.reader.close()


def open_checkpoint(
  workdir: str | pathlib.Path, step: int | None = None
) -> CheckpointedRun:
  """Checkpoint ``step`` of ``workdir`` (its latest when None).

  Raises:
    NoCheckpointError: no checkpoint, none of ``step``, or one that stored
      no settings (an older version wrote it).
    ConfigError: settings this version's config cannot take.
    DataError: the run's tokenizer cannot be loaded.
  """
  workdir = pathlib.Path(workdir)
  reader = checkpoint_lib.CheckpointReader(workdir)
  try:
    step = reader.step(step)
    settings = reader.settings(step)
    if not settings:
      raise NoCheckpointError(
        f"checkpoint {reader.directory / str(step)} holds no settings (an"
        " older version wrote it), so its model cannot be rebuilt"
      )
    config = config_from_settings(settings)
    tokenizer = data_lib.make_tokenizer(config.data, config.model.checkpoint)
    model = setup_lib.abstract_model(config, tokenizer.vocab_size)
  except BaseException:
    reader.close()
    raise
  return CheckpointedRun(workdir, step, config, tokenizer, model, reader)

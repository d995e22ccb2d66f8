"""Orbax checkpoints of the policy state, the data position and the run's key.

A checkpoint holds the :class:`~train.step.TrainState` (step, policy
parameters, optimizer state, loss state), the data iterator's state as JSON,
counters (``num_tokens``), and a small JSON record identifying the run. A
frozen reference is not written: it is rebuilt from its own source on
restart; one that ``reference.sync_every`` moves is written beside the state.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a checkpoint directory is whole or absent. One that is whole
but damaged afterwards (a truncated or deleted file) fails to read; restoring
moves it aside to ``checkpoints-damaged/`` and falls back to the one before.
"""

import dataclasses
import json
import pathlib
import shutil
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from train import orbax_noise
from train.errors import DamagedCheckpointsError
from train.errors import DiskFullError
from train.errors import IncompatibleCheckpointError
from train.errors import NoCheckpointError
from train.errors import disk_full

_CHECKPOINTS = "checkpoints"
_STATE = "state"
_DATA = "data"
_RUN = "run"
_PROGRESS = "progress"
_REFERENCE = "reference"
_SETTINGS = "settings"


@dataclasses.dataclass
class Restored:
  """What a checkpoint brings back."""

  step: int
  state: Any
  data_state: dict
  progress: dict  # Counters such as num_tokens; empty in old checkpoints.
  reference: Any  # The moving reference, or None when not asked for.
  settings: dict  # The config it was written under; {} in old checkpoints.


class Checkpointer:
  """Saves and restores the training program's checkpoints in a workdir."""

  def __init__(
    self,
    workdir: str | pathlib.Path,
    *,
    keep: int,
    run_identity: dict,
    settings: dict | None = None,
  ):
    self._directory = pathlib.Path(workdir).absolute() / _CHECKPOINTS
    self._identity = run_identity
    self._settings = settings or {}
    self._manager = ocp.CheckpointManager(
      self._directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max(keep, 1),
        create=True,
        # A save cut short (a kill, a full disk) leaves a temporary
        # directory, never a checkpoint; the next run removes it.
        cleanup_tmp_directories=True,
        enable_async_checkpointing=False,
      ),
    )

  @property
  def directory(self) -> pathlib.Path:
    return self._directory

  @property
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(
    self,
    step: int,
    state: Any,
    data_state: dict,
    progress: dict | None = None,
    *,
    reference: Any = None,
  ) -> None:
    """Writes the state, the data position and ``progress`` (counters such
    as ``num_tokens``) at ``step``, and ``reference`` unless None."""
    items = {
      _STATE: ocp.args.StandardSave(_fields(state)),
      _DATA: ocp.args.JsonSave(data_state),
      _RUN: ocp.args.JsonSave(self._identity),
      _PROGRESS: ocp.args.JsonSave(progress or {}),
      _SETTINGS: ocp.args.JsonSave(self._settings),
    }
    if reference is not None:
      items[_REFERENCE] = ocp.args.StandardSave(reference)
    try:
      with orbax_noise.held(fatal=True):
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()
    except Exception as error:
      if disk_full(error) is None:
        raise
      raise DiskFullError(
        f"no space left on device while writing checkpoint {step} into"
        f" {self._directory}; free some space and rerun the same command:"
        " it resumes from the last complete checkpoint"
      ) from None

  def restore_latest(
    self, abstract_state: Any, abstract_reference: Any = None
  ) -> Restored | None:
    """The newest checkpoint that reads back whole; None if there is none.

    A checkpoint that fails to read (a truncated or missing file) is moved
    to ``checkpoints-damaged/`` beside ``checkpoints/``, with a one-line
    warning saying why, and the next older one is tried.

    Args:
      abstract_state: the state's shapes, dtypes and shardings.
      abstract_reference: the moving reference's, when it is checkpointed.

    Raises:
      IncompatibleCheckpointError: the newest readable checkpoint is of a
        different run (it is left where it is).
      DamagedCheckpointsError: there were checkpoints and none could be read.
    """
    orbax_noise.drop_unretrieved_read_failures()
    set_aside = []
    while (step := self.latest_step) is not None:
      try:
        with orbax_noise.held():
          stored = self._manager.restore(
            step, args=ocp.args.Composite(**{_RUN: ocp.args.JsonRestore()})
          )[_RUN]
        failure = None
      except Exception as error:  # noqa: BLE001 (any failure to read is damage)
        stored, failure = None, error
      if _all_processes_agree(failure is None):
        self._check_compatible(stored)
        try:
          with orbax_noise.held():
            restored = self._read(step, abstract_state, abstract_reference)
        except Exception as error:  # noqa: BLE001
          restored, failure = None, error
        if _all_processes_agree(failure is None):
          return restored
      set_aside.append(self._set_aside(step, failure))
    if set_aside:
      raise DamagedCheckpointsError(
        f"no checkpoint in {self._directory} can be read (moved to"
        f" {', '.join(set_aside)}); use a new --workdir to start again"
      )
    return None

  def _check_compatible(self, stored: dict) -> None:
    differing = sorted(
      key
      for key in set(stored) | set(self._identity)
      if stored.get(key) != self._identity.get(key)
    )
    if differing:
      details = "; ".join(
        f"{k}: checkpoint has {json.dumps(stored.get(k))}, config has"
        f" {json.dumps(self._identity.get(k))}"
        for k in differing
      )
      raise IncompatibleCheckpointError(
        f"{self._directory} holds a checkpoint of a different run ({details})."
        " Use a new --workdir, or restore the original settings"
      )

  def _read(self, step: int, abstract_state, abstract_reference) -> Restored:
    items = {
      _STATE: ocp.args.StandardRestore(_fields(abstract_state)),
      _DATA: ocp.args.JsonRestore(),
    }
    if abstract_reference is not None:
      items[_REFERENCE] = ocp.args.StandardRestore(abstract_reference)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    progress = self._optional_json(step, _PROGRESS)
    return Restored(
      settings=self._optional_json(step, _SETTINGS),
      step=step,
      state=abstract_state.replace(**restored[_STATE]),
      data_state=restored[_DATA],
      progress=progress,
      reference=restored.get(_REFERENCE),
    )

  def _optional_json(self, step: int, item: str) -> dict:
    """A JSON item that checkpoints of older versions lack ({} then)."""
    try:
      return self._manager.restore(
        step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()})
      )[item]
    except (FileNotFoundError, KeyError, ValueError):
      return {}

  def _set_aside(self, step: int, error: BaseException | None) -> str:
    """Moves checkpoint ``step`` out of the manager's sight; returns where."""
    source = self._directory / str(step)
    destination = self._directory.parent / "checkpoints-damaged" / str(step)
    suffix = 1
    while destination.exists():
      destination = destination.with_name(f"{step}.{suffix}")
      suffix += 1
    if jax.process_index() == 0:
      destination.parent.mkdir(exist_ok=True)
      shutil.move(source, destination)
      why = "another process cannot read it" if error is None else error
      print(
        f"warning: checkpoint {source} cannot be read ({_first_line(why)});"
        f" moved to {destination}, trying the one before it",
        file=sys.stderr,
        flush=True,
      )
    _barrier(f"checkpoint_set_aside_{step}")
    self._manager.reload()
    return str(destination)

  def close(self) -> None:
    self._manager.close()


class CheckpointReader:
  """Reads a workdir's checkpoints and changes nothing in it.

  Exporting or sampling may run while a training run writes to the same
  workdir: unlike :class:`Checkpointer`, this creates no folder and removes
  no temporary one (it may be that run's save in progress). Only the
  parameters are read, never the optimizer state.

  Raises:
    NoCheckpointError: the workdir holds no checkpoint.
  """

  def __init__(self, workdir: str | pathlib.Path):
    self.directory = pathlib.Path(workdir).absolute() / _CHECKPOINTS
    if not self.directory.is_dir():
      raise NoCheckpointError(
        f"no checkpoint in {workdir} (it has no {_CHECKPOINTS}/ folder)"
      )
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        create=False, enable_async_checkpointing=False
      ),
    )
    self.steps = sorted(self._manager.all_steps())
    if not self.steps:
      raise NoCheckpointError(f"no checkpoint in {self.directory}")

  def step(self, wanted: int | None = None) -> int:
    """``wanted`` if there is a checkpoint of it; the latest when None."""
    if wanted is None:
      return self.steps[-1]
    if wanted not in self.steps:
      raise NoCheckpointError(
        f"no checkpoint of step {wanted} in {self.directory}; its steps are"
        f" {', '.join(map(str, self.steps))}"
      )
    return wanted

  def settings(self, step: int) -> dict:
    """The flattened config checkpoint ``step`` was written under; {} for
    a checkpoint of a version that did not store it."""
    try:
      return self._manager.restore(
        step, args=ocp.args.Composite(**{_SETTINGS: ocp.args.JsonRestore()})
      )[_SETTINGS]
    except (FileNotFoundError, KeyError, ValueError):
      return {}

  def params(self, step: int, abstract_params: Any) -> Any:
    """The policy parameters of checkpoint ``step``, placed as
    ``abstract_params`` (ShapeDtypeStructs with shardings) says."""
    state = {"params": abstract_params}
    restored = self._read(step, {_STATE: _partial_restore(state)})
    return restored[_STATE]["params"]

  def reference(self, step: int, abstract_params: Any) -> Any:
    """The moving reference (``reference.sync_every``) of checkpoint
    ``step``."""
    restored = self._read(step, {_REFERENCE: _partial_restore(abstract_params)})
    return restored[_REFERENCE]

  def _read(self, step: int, items: dict) -> Any:
    try:
      with orbax_noise.held():
        return self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:  # noqa: BLE001 (any failure to read is damage)
      raise DamagedCheckpointsError(
        f"checkpoint {self.directory / str(step)} cannot be read"
        f" ({_first_line(error)}); choose another step"
      ) from None

  def close(self) -> None:
    self._manager.close()


def _partial_restore(abstract_tree: Any) -> ocp.args.PyTreeRestore:
  """Restores the entries of ``abstract_tree`` and skips the item's others
  (the optimizer state beside the parameters)."""
  return ocp.args.PyTreeRestore(
    item=abstract_tree,
    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_tree),
    partial_restore=True,
  )


def _fields(state: Any) -> dict[str, Any]:
  """The state's fields as a dict, those that are None left out: a state
  without a loss state is stored exactly as before the field existed."""
  return {
    field.name: getattr(state, field.name)
    for field in dataclasses.fields(state)
    if getattr(state, field.name) is not None
  }


def _first_line(error: BaseException | str) -> str:
  if isinstance(error, str):
    return error
  lines = str(error).strip().splitlines()
  first = lines[0] if lines else ""
  if len(first) > 160:  # tensorstore's messages carry a whole JSON spec.
    first = first[:157] + "..."
  return f"{type(error).__name__}: {first}"


def _all_processes_agree(ok: bool) -> bool:
  """True when ``ok`` holds on every process: all restore, or none does."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs with shardings, as orbax needs for restoring."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
    state,
  )

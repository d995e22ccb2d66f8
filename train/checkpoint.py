"""Orbax checkpoints of the policy state, the data position and the run's key.

A checkpoint holds the :class:`~train.step.TrainState` (step, policy
parameters, optimizer state), the data iterator's state as JSON, and a small
JSON record identifying the run. A frozen reference is not written: it is
rebuilt from its own source on restart; one that ``reference.sync_every``
moves is written beside the state.
"""

import dataclasses
import json
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from train.errors import IncompatibleCheckpointError

_STATE = "state"
_DATA = "data"
_RUN = "run"
_PROGRESS = "progress"
_REFERENCE = "reference"


class Checkpointer:
  """Saves and restores the training program's checkpoints in a workdir."""

  def __init__(
    self, workdir: str | pathlib.Path, *, keep: int, run_identity: dict
  ):
    self._directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self._identity = run_identity
    self._manager = ocp.CheckpointManager(
      self._directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max(keep, 1),
        create=True,
        enable_async_checkpointing=False,
      ),
    )

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
    }
    if reference is not None:
      items[_REFERENCE] = ocp.args.StandardSave(reference)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    self._manager.wait_until_finished()

  def check_compatible(self) -> None:
    """Raise if the latest checkpoint was written by an incompatible run."""
    step = self.latest_step
    if step is None:
      return
    stored = self._manager.restore(
      step, args=ocp.args.Composite(**{_RUN: ocp.args.JsonRestore()})
    )[_RUN]
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

  def restore(self, abstract_state: Any) -> tuple[Any, dict]:
    """The latest state (placed like ``abstract_state``) and data state."""
    step = self.latest_step
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        **{
          _STATE: ocp.args.StandardRestore(_fields(abstract_state)),
          _DATA: ocp.args.JsonRestore(),
        }
      ),
    )
    return abstract_state.replace(**restored[_STATE]), restored[_DATA]

  def restore_reference(self, abstract_reference: Any) -> Any:
    """The latest checkpoint's moving reference, placed like the abstract."""
    return self._manager.restore(
      self.latest_step,
      args=ocp.args.Composite(
        **{_REFERENCE: ocp.args.StandardRestore(abstract_reference)}
      ),
    )[_REFERENCE]

  def restore_progress(self) -> dict:
    """The latest checkpoint's counters; empty if it has none."""
    step = self.latest_step
    if step is None:
      return {}
    try:
      return self._manager.restore(
        step, args=ocp.args.Composite(**{_PROGRESS: ocp.args.JsonRestore()})
      )[_PROGRESS]
    except (FileNotFoundError, KeyError, ValueError):
      return {}  # Written before the counters were kept.

  def close(self) -> None:
    self._manager.close()


def _fields(state: Any) -> dict[str, Any]:
  """The state's fields as a dict, those that are None left out: a state
  without a loss state is stored exactly as before the field existed."""
  return {
    field.name: getattr(state, field.name)
    for field in dataclasses.fields(state)
    if getattr(state, field.name) is not None
  }


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs with shardings, as orbax needs for restoring."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
    state,
  )

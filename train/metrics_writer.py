"""Metrics to ``metrics.jsonl`` and TensorBoard, written by process 0 only."""

import json
import math
import pathlib
from collections.abc import Mapping

import jax


class MetricsWriter:
  """Appends one JSON object per record and mirrors it to TensorBoard.

  Records are appended, so a resumed run continues the same file; a restart
  from an earlier checkpoint first drops records past that step, keeping one
  record per step.
  """

  def __init__(self, workdir: str | pathlib.Path, *, resume_step: int = 0):
    self._enabled = jax.process_index() == 0
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tensorboard = None
    if not self._enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if self.path.exists():
      kept = [
          line for line in self.path.read_text().splitlines()
          if line.strip() and json.loads(line)["step"] <= resume_step
      ]
      self.path.write_text("".join(line + "\n" for line in kept))
    from tensorboardX import SummaryWriter  # Only process 0 needs it.

    self._tensorboard = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    record = {"step": int(step)}
    for name, value in metrics.items():
      value = float(value)
      record[name] = value if math.isfinite(value) else str(value)
      if math.isfinite(value):
        self._tensorboard.add_scalar(name, value, int(step))
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()

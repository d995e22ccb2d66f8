"""Training metrics: accumulated off the device, written to ``metrics.jsonl``
and TensorBoard by process 0 only."""

import errno
import json
import math
import pathlib
import time
from collections.abc import Mapping

import jax

from train.errors import DiskFullError
from train.errors import NonFiniteError


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
        line
        for line in self.path.read_text().splitlines()
        if _step_of(line) is not None and _step_of(line) <= resume_step
      ]
      self.path.write_text("".join(line + "\n" for line in kept))
    from tensorboardX import SummaryWriter  # Only process 0 needs it.

    self._tensorboard = SummaryWriter(
      str(pathlib.Path(workdir) / "tensorboard")
    )

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    record = {"step": int(step)}
    for name, value in metrics.items():
      value = float(value)
      record[name] = value if math.isfinite(value) else str(value)
      if math.isfinite(value):
        self._tensorboard.add_scalar(name, value, int(step))
    try:
      with self.path.open("a") as f:
        f.write(json.dumps(record) + "\n")
      self._tensorboard.flush()
    except OSError as error:
      if error.errno == errno.ENOSPC:
        raise DiskFullError(
          f"no space left on device while writing the metrics of step {step}"
          f" into {self.path.parent}; free some space and rerun the same"
          " command: it resumes from the last complete checkpoint"
        ) from None
      raise

  def text(self, step: int, tag: str, text: str) -> None:
    """Markdown shown in TensorBoard's text tab at ``step``."""
    if not self._enabled:
      return
    self._tensorboard.add_text(tag, text, int(step))
    self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def _step_of(line: str) -> int | None:
  """A record's step; None for a blank line or one cut short (a write that
  a kill or a full disk interrupted: its step is trained again)."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


class TrainMetrics:
  """Training metrics from the device to the writer, one step behind.

  :meth:`push` queues a step's metrics, still on the device, and only then
  brings the previous step's to the host, so the host never waits for the
  device between steps. Each record is the mean of the steps since the
  previous record, with the token throughput over them; evaluation results
  join the record of their step. A non-finite loss or gradient raises
  :class:`~train.errors.NonFiniteError` when its step reaches the host.
  """

  def __init__(
    self,
    writer: MetricsWriter,
    *,
    log_every: int,
    total_steps: int,
    bar=None,
    learning_rate=None,
    num_tokens: int = 0,
  ):
    self._writer = writer
    self._log_every = log_every
    self._total_steps = total_steps
    self._bar = bar
    # The schedule, logged as TRL logs it: the rate of the record's step.
    self._learning_rate = learning_rate
    # Tokens trained on since the run began, over restarts.
    self.num_tokens = num_tokens
    self._pending = None  # (step, metrics) still on the device.
    self._records: dict[int, dict[str, float]] = {}  # Not yet written.
    self._start_window()

  def _start_window(self) -> None:
    self._window_start = time.perf_counter()
    self._window_tokens = 0
    self._window_steps = 0
    self._window_sums: dict[str, float] = {}

  def push(
    self, step: int, metrics: Mapping[str, jax.Array], tokens: int
  ) -> None:
    """Queues ``step``'s metrics; settles and writes the earlier steps."""
    self._window_tokens += tokens
    self.settle()
    self._write(before=step)
    self._pending = (step, metrics)

  def settle(self) -> None:
    """Brings the queued step's metrics to the host (checks them finite)."""
    if self._pending is None:
      return
    step, metrics = self._pending
    self._pending = None
    host = jax.device_get(metrics)
    if not bool(host.pop("finite")):
      raise NonFiniteError(
        f"non-finite loss or gradient at step {step} (loss ="
        f" {float(host['loss'])}, grad_norm = {float(host['grad_norm'])})."
        " The state was not updated and no checkpoint was written; lower"
        " optimizer.learning_rate or check the data"
      )
    self._window_steps += 1
    self.num_tokens += int(host.pop("tokens"))
    for name, value in host.items():
      self._window_sums[name] = self._window_sums.get(name, 0.0) + float(value)
    rate = self._window_tokens / max(
      time.perf_counter() - self._window_start, 1e-9
    )
    if self._bar is not None:
      self._bar.set_postfix(
        loss=f"{float(host['loss']):.4f}", tok_s=f"{rate:,.0f}"
      )
    if step % self._log_every == 0 or step == self._total_steps:
      record = {k: v / self._window_steps for k, v in self._window_sums.items()}
      record["tokens_per_second"] = rate
      record["num_tokens"] = self.num_tokens
      if self._learning_rate is not None:
        # optax counts updates from 0: step s used the rate at s - 1.
        record["learning_rate"] = float(self._learning_rate(step - 1))
      self.add(step, record)
      if self._bar is not None:
        self._bar.record(step, record)
      self._start_window()

  def add(self, step: int, values: Mapping[str, float]) -> None:
    """Adds values (an evaluation's, say) to the record of ``step``."""
    self._records.setdefault(step, {}).update(values)

  def _write(self, before: int | None = None) -> None:
    for step in sorted(self._records):
      if before is None or step < before:
        self._writer.write(step, self._records.pop(step))

  def write_all(self) -> None:
    """Settles the queued step and writes every record."""
    self.settle()
    self._write()

"""What a resumed run may change, and what it is told.

A checkpoint stores the run's settings (the whole config, flattened). On
resume:

* settings that make it another run (the loss, model, data, batch, seed:
  :func:`train.loop.run_identity`) are refused by the checkpointer;
* a change of ``steps``, ``optimizer.warmup_steps`` or ``optimizer.decay``
  that changes the learning-rate schedule over the steps still to run is
  refused: the schedule would jump mid-run (a cosine over 30 steps stretched
  to 60 goes from about 0 back to mid-peak). Finishing the schedule, or a
  new workdir, are the ways on;
* any other change (beta, the peak learning rate, logging) is allowed and
  listed in one line.
"""

import json
import math
from typing import Any

import numpy as np

from train import step as step_lib
from train.errors import ConfigError

_SCHEDULE_KEYS = ("steps", "optimizer.warmup_steps", "optimizer.decay")
# Settings that may differ without meaning anything for the run.
_IGNORED = ("distributed.",)


def settings(config) -> dict[str, Any]:
  """The config flattened to ``{"loss.beta": 0.1, ...}``, JSON values."""
  flat = {}

  def walk(node, prefix):
    for key, value in node.items():
      if hasattr(value, "items"):
        walk(value, f"{prefix}{key}.")
      else:
        flat[f"{prefix}{key}"] = json.loads(json.dumps(value, default=str))

  walk(config.to_dict(), "")
  return flat


def _relative_schedule(stored: dict, config, start: int) -> np.ndarray:
  """The schedule over steps ``start..config.steps``, peak 1, as stored."""
  optimizer = config.optimizer.copy_and_resolve_references()
  optimizer.learning_rate = 1.0
  optimizer.warmup_steps = stored.get(
    "optimizer.warmup_steps", optimizer.warmup_steps
  )
  optimizer.decay = stored.get("optimizer.decay", optimizer.decay)
  total = stored.get("steps", config.steps)
  schedule = step_lib.learning_rate_schedule(optimizer, total)
  return np.asarray(schedule(np.arange(start, config.steps + 1)))


def check(stored: dict, config, step: int) -> str | None:
  """Refuses a schedule change; returns the line listing other changes.

  Args:
    stored: the checkpoint's settings ({} for one written before they were
      stored: nothing is checked).
    config: this run's config.
    step: the checkpoint's step.

  Returns:
    ``"resuming with changed settings: ..."``, or None if nothing changed.

  Raises:
    ConfigError: the learning-rate schedule would change.
  """
  if not stored:
    return None
  now = settings(config)
  changed = sorted(
    key
    for key in set(stored) | set(now)
    if stored.get(key) != now.get(key) and not key.startswith(_IGNORED)
  )
  if any(key in _SCHEDULE_KEYS for key in changed):
    before = _relative_schedule(stored, config, step)
    after = _relative_schedule({}, config, step)
    if not np.allclose(before, after, rtol=1e-6, atol=1e-9):
      keys = [key for key in changed if key in _SCHEDULE_KEYS]
      was = ", ".join(f"{key}={stored.get(key)!r}" for key in keys)
      raise ConfigError(
        f"the checkpoint of step {step} was trained on a learning-rate"
        f" schedule with {was}; changing {', '.join(keys)} would make the"
        " rate jump mid-run. Rerun with the original settings to finish that"
        " schedule, or use a new --workdir for a new one"
      )
  if not changed:
    return None
  return "resuming with changed settings: " + ", ".join(
    f"{key} {_show(stored.get(key))} -> {_show(now.get(key))}"
    for key in changed
  )


def _show(value) -> str:
  if isinstance(value, float) and math.isfinite(value):
    return f"{value:g}"
  return json.dumps(value)

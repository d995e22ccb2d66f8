"""The training loop: sharded initialisation, steps, evaluation, checkpoints."""

import dataclasses
import functools
import json
import pathlib
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from tqdm import tqdm

from slpo_jax import sharding
from train import checkpoint as checkpoint_lib
from train import setup as setup_lib
from train import step as step_lib
from train.metrics_writer import MetricsWriter


class NonFiniteError(RuntimeError):
  """The loss or the gradient became NaN or infinite."""


@dataclasses.dataclass
class TrainResult:
  """The final training state and the last evaluation's metrics."""

  state: step_lib.TrainState
  eval_metrics: dict[str, float]


@dataclasses.dataclass
class _Preemption:
  """Set by SIGTERM; the loop checkpoints and exits at the next step."""

  requested: bool = False

  def install(self):
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
      del signum, frame
      self.requested = True

    signal.signal(signal.SIGTERM, handler)
    return previous


def run_identity(config) -> dict:
  """What must match for a checkpoint in the workdir to be resumed."""
  return {
      "loss": config.loss.name,
      "model": f"{config.model.family}/{config.model.size}",
      "checkpoint": config.model.checkpoint,
      "batch_size": config.batch_size,
      "seed": config.seed,
      "data": config.data.source,
  }


def _host_batch_to_global(batch: dict, batch_sharding) -> dict:
  """Assemble each process's share into global arrays on the mesh."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding, x),
      batch,
  )


def _to_host_means(sums: dict) -> dict[str, float]:
  weight = max(float(sums["weight"]), 1e-9)
  return {k: float(v) / weight for k, v in sums.items() if k != "weight"}


def evaluate(run: "setup_lib.Run", params, eval_fn) -> dict[str, float]:
  """Weighted means of the eval metrics over the held-out split."""
  totals: dict[str, float] = {}
  for index, batch in enumerate(run.eval_batches()):
    if run.config.eval_batches and index >= run.config.eval_batches:
      break
    sums = eval_fn(params, run.reference_params, run.to_device(batch))
    for name, value in jax.device_get(sums).items():
      totals[name] = totals.get(name, 0.0) + float(value)
  if not totals:
    return {}
  return {f"eval/{k}": v for k, v in _to_host_means(totals).items()}


def train_and_evaluate(
    config,
    workdir: str | pathlib.Path,
    *,
    eval_callback: Callable[[int, Any, Any], dict[str, float]] | None = None,
) -> TrainResult:
  """Train the policy described by ``config`` in ``workdir``.

  Rerunning with the same workdir resumes from its latest checkpoint.

  Args:
    config: the run's config (see configs/base.py).
    workdir: checkpoints, metrics and caches.
    eval_callback: optional ``callback(step, params, run)`` called at every
      evaluation; the metrics it returns are logged with the ``eval/`` ones
      (for example the true reward of samples on a synthetic task).

  Returns:
    The final state and the last evaluation's metrics (empty if evaluation
    is off).
  """
  workdir = pathlib.Path(workdir)
  run = setup_lib.build_run(config, workdir)
  head = run.head
  optimizer = step_lib.make_optimizer(config.optimizer, config.steps)
  mesh = run.mesh

  def init_state(params):
    return step_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        opt_state=optimizer.init(params),
    )

  # Shapes first, then shardings, then one jitted initialisation that writes
  # every array directly in its final layout.
  abstract = jax.eval_shape(init_state, run.initial_params)
  state_shardings = setup_lib.state_shardings(abstract, run.param_shardings, mesh)
  state = jax.jit(init_state, out_shardings=state_shardings)(run.initial_params)

  checkpointer = checkpoint_lib.Checkpointer(
      workdir, keep=config.keep_checkpoints, run_identity=run_identity(config)
  )
  checkpointer.check_compatible()
  if checkpointer.latest_step is not None:
    state, data_state = checkpointer.restore(checkpoint_lib.abstract_like(state))
    run.train_iterator.set_state(data_state)
    if jax.process_index() == 0:
      print(f"Resumed from the checkpoint of step {int(state.step)}.")
  start_step = int(state.step)

  batch_spec = sharding.batch_sharding(mesh)
  reference_shardings = (
      None if run.reference_params is None
      else jax.tree.map(lambda x: x.sharding, run.reference_params)
  )
  # The state is donated (updated in place); the reference never is, and is
  # passed with its own sharding so it stays exactly as loaded.
  train_fn = jax.jit(
      functools.partial(
          step_lib.train_step, model=run.model, optimizer=optimizer,
          loss_config=config.loss, head=head,
          grad_accum_steps=config.grad_accum_steps,
      ),
      in_shardings=(state_shardings, reference_shardings, batch_spec),
      out_shardings=(state_shardings, None),
      donate_argnums=(0,),
  )
  eval_fn = jax.jit(
      functools.partial(
          step_lib.eval_step, model=run.model, loss_config=config.loss,
          head=head,
      ),
      in_shardings=(state_shardings.params, reference_shardings, batch_spec),
  )

  writer = MetricsWriter(workdir, resume_step=start_step)
  preemption = _Preemption()
  previous_handler = preemption.install()
  last_eval: dict[str, float] = {}
  pending = None  # (step, metrics) of the step whose metrics are still on device.
  records: dict[int, dict] = {}  # Logged steps not yet written.
  window = {"start": time.perf_counter(), "tokens": 0, "steps": 0, "sums": {}}
  bar = tqdm(
      total=config.steps, initial=start_step, disable=jax.process_index() != 0,
      dynamic_ncols=True, desc="train", mininterval=1.0,
  )

  def flush(pending_step, metrics):
    """Bring one step's metrics to the host; stop on non-finite values."""
    host = jax.device_get(metrics)
    if not bool(host.pop("finite")):
      raise NonFiniteError(
          f"non-finite loss or gradient at step {pending_step} (loss ="
          f" {float(host['loss'])}, grad_norm = {float(host['grad_norm'])})."
          " The state was not updated and no checkpoint was written; lower"
          " optimizer.learning_rate or check the data."
      )
    window["steps"] += 1
    for name, value in host.items():
      window["sums"][name] = window["sums"].get(name, 0.0) + float(value)
    elapsed = time.perf_counter() - window["start"]
    rate = window["tokens"] / max(elapsed, 1e-9)
    bar.set_postfix(loss=f"{float(host['loss']):.4f}", tok_s=f"{rate:,.0f}")
    if pending_step % config.log_every == 0 or pending_step == config.steps:
      # Training metrics are means over the steps since the last record.
      record = {k: v / window["steps"] for k, v in window["sums"].items()}
      record["tokens_per_second"] = rate
      records.setdefault(pending_step, {}).update(record)
      window.update(start=time.perf_counter(), tokens=0, steps=0, sums={})

  def write_records(before: int | None = None):
    for logged in sorted(records):
      if before is None or logged < before:
        writer.write(logged, records.pop(logged))

  try:
    for step in range(start_step + 1, config.steps + 1):
      host_batch = next(run.train_iterator)
      window["tokens"] += run.count_tokens(host_batch)
      state, metrics = train_fn(
          state, run.reference_params, run.to_device(host_batch)
      )
      # Pull the previous step's metrics only after dispatching this one, so
      # the host never waits on the device between steps.
      if pending is not None:
        flush(*pending)
        write_records(before=step)
      pending = (step, metrics)
      bar.update(1)
      at_end = step == config.steps
      if config.eval_every and (step % config.eval_every == 0 or at_end):
        flush(*pending)
        pending = None
        last_eval = evaluate(run, state.params, eval_fn)
        if eval_callback is not None:
          last_eval.update(eval_callback(step, state.params, run))
        records.setdefault(step, {}).update(last_eval)
        bar.write(f"step {step}: " + json.dumps(
            {k: round(v, 4) for k, v in last_eval.items()}))
      checkpoint_due = (
          (config.checkpoint_every and step % config.checkpoint_every == 0)
          or at_end or preemption.requested
      )
      if checkpoint_due:
        if pending is not None:
          flush(*pending)  # Never checkpoint a state not known to be finite.
          pending = None
        write_records()
        checkpointer.save(step, state, run.train_iterator.get_state())
      if preemption.requested:
        bar.write(f"SIGTERM received: checkpoint written at step {step}.")
        break
    if pending is not None:
      flush(*pending)
    write_records()
  finally:
    bar.close()
    writer.close()
    checkpointer.close()
    signal.signal(signal.SIGTERM, previous_handler)
  return TrainResult(state=state, eval_metrics=last_eval)


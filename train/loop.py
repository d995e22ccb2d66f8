"""The training loop: validate, build, restore, step, evaluate, checkpoint.

:func:`train_and_evaluate` reads top to bottom as the run happens; each
stage is a function of its own module (``validate``, ``setup``, ``state``,
``metrics_writer``, ``checkpoint``).
"""

import contextlib
import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax

from train import checkpoint as checkpoint_lib
from train import export as export_lib
from train import objective
from train import progress
from train import resume
from train import samples as samples_lib
from train import setup as setup_lib
from train import state as state_lib
from train import step as step_lib
from train import stopping
from train import validate
from train import workdir as workdir_lib
from train.metrics_writer import MetricsWriter
from train.metrics_writer import TrainMetrics

# Where the policy is exported at the end (config.export).
EXPORT_FOLDER = "hf"


@dataclasses.dataclass
class TrainResult:
  """The final training state and the last evaluation's metrics."""

  state: step_lib.TrainState
  eval_metrics: dict[str, float]
  # "SIGTERM" or "SIGINT" when a signal stopped the run early (after a
  # checkpoint); None when it ran to its last step.
  stopped_by: str | None = None


def run_identity(config) -> dict:
  """What must match for a checkpoint in the workdir to be resumed."""
  identity = {
    "loss": config.loss.name,
    "model": f"{config.model.family}/{config.model.size}",
    "checkpoint": config.model.checkpoint,
    "batch_size": config.batch_size,
    "seed": config.seed,
    "data": config.data.source,
  }
  if config.reference.sync_every:
    identity["reference_sync"] = (
      f"every {config.reference.sync_every} steps,"
      f" mix {config.reference.sync_mix:g}"
    )
  return identity


def evaluate(
  run: setup_lib.Run, params, reference, eval_fn, loss_state=None
) -> dict[str, float]:
  """Weighted means of the eval metrics over the held-out split."""
  totals: dict[str, float] = {}
  for index, batch in enumerate(run.eval_batches()):
    if run.config.eval_batches and index >= run.config.eval_batches:
      break
    sums = eval_fn(params, reference, run.to_device(batch), loss_state)
    for name, value in jax.device_get(sums).items():
      totals[name] = totals.get(name, 0.0) + float(value)
  if not totals:
    return {}
  means = objective.metric_means(totals)
  return {f"eval/{k}": float(v) for k, v in means.items()}


def train_and_evaluate(
  config,
  workdir: str | pathlib.Path,
  *,
  devices=None,
  run: setup_lib.Run | None = None,
  eval_callback: Callable[[int, Any, Any], dict[str, float]] | None = None,
) -> TrainResult:
  """Train the policy described by ``config`` in ``workdir``.

  Rerunning with the same workdir resumes from its latest checkpoint.

  Args:
    config: the run's config (see train/config_schema.py).
    workdir: checkpoints, metrics and caches.
    devices: the devices of the mesh; all of them when None.
    run: an already built run (from :func:`train.setup.build_run`), for
      callers that inspect it; built from ``config`` when None.
    eval_callback: optional ``callback(step, params, run)`` called at every
      evaluation; the metrics it returns are logged with the ``eval/`` ones
      (for example the true reward of samples on a synthetic task).

  Returns:
    The final state and the last evaluation's metrics (empty if evaluation
    is off).
  """
  workdir = pathlib.Path(workdir)
  checked = validate.validate(config, devices) if run is None else None
  with workdir_lib.WorkdirLock(workdir):
    if run is None:
      run = setup_lib.build_run(config, workdir, checked)
    return _train(config, workdir, run, eval_callback)


def _train(config, workdir, run, eval_callback) -> TrainResult:
  """The loop itself, in a workdir this run holds."""
  checkpointer = checkpoint_lib.Checkpointer(
    workdir,
    keep=config.keep_checkpoints,
    # A LoRA run's adapters only fit the base they were trained on.
    run_identity=run_identity(config) | run.spec.policy.identity,
    settings=resume.settings(config),
  )
  state, shardings, restored = state_lib.restore_or_init(run, checkpointer)
  if restored is not None:
    changes = resume.check(restored.settings, config, restored.step)
    if changes and jax.process_index() == 0:
      print(changes)
  train_fn, eval_fn = state_lib.jit_steps(
    run.spec, shardings, run.reference_params
  )
  reference, sync_fn = state_lib.reference_sync(run, restored)
  sync_every = config.reference.sync_every
  start_step = int(state.step)

  last_eval: dict[str, float] = {}
  writer = MetricsWriter(workdir, resume_step=start_step)
  bar = progress.progress(
    total=config.steps,
    initial=start_step,
    disable=jax.process_index() != 0,
    dynamic_ncols=True,
    desc="train",
    mininterval=1.0,
  )
  metrics = TrainMetrics(
    writer,
    log_every=config.log_every,
    total_steps=config.steps,
    bar=bar,
    learning_rate=run.schedule,
    num_tokens=restored.progress.get("num_tokens", 0) if restored else 0,
  )
  sampling = _Sampling.start(run, workdir, writer, start_step)
  with stopping.StopRequests() as stop, contextlib.ExitStack() as cleanup:
    for resource in (bar, writer, checkpointer):
      cleanup.callback(resource.close)
    if sampling is not None and start_step == 0:
      # The reference's own samples: where the policy's are read from.
      metrics.add(0, sampling.reference_samples(reference, sync_fn))
    for step in range(start_step + 1, config.steps + 1):
      host_batch = next(run.train_iterator)
      state, step_metrics = train_fn(
        state, reference, run.to_device(host_batch)
      )
      if sync_fn is not None and step % sync_every == 0:
        reference = sync_fn(reference, state.params)
      metrics.push(step, step_metrics, tokens=host_batch.count_tokens())
      bar.update(1)
      at_end = step == config.steps
      if config.eval_every and (step % config.eval_every == 0 or at_end):
        metrics.settle()
        last_eval = evaluate(
          run, state.params, reference, eval_fn, state.loss_state
        )
        if sampling is not None:
          last_eval.update(
            sampling.policy_samples(
              step, run.policy_params(state.params), reference, sync_fn
            )
          )
        if eval_callback is not None:
          last_eval.update(
            eval_callback(step, run.policy_params(state.params), run)
          )
        metrics.add(step, last_eval)
        bar.write(
          f"step {step}: "
          + json.dumps({k: round(v, 4) for k, v in last_eval.items()})
        )
      every = config.checkpoint_every
      if (every and step % every == 0) or at_end or stop.signal:
        # Never checkpoint a state not known to be finite.
        metrics.write_all()
        checkpointer.save(
          step,
          state,
          run.train_iterator.get_state(),
          {"num_tokens": metrics.num_tokens},
          reference=reference if sync_fn is not None else None,
        )
      if stop.signal:
        bar.write(f"{stop.signal} received: checkpoint written at step {step}.")
        break
    metrics.write_all()
  exported = None
  if config.export.at_end and stop.signal is None:
    # The final checkpoint's parameters; a run stopped early exports
    # nothing, so WORKDIR/hf is always a finished run's policy.
    exported = export_lib.export_policy(
      config,
      run.spec.model,
      run.policy_params(state.params),
      workdir / EXPORT_FOLDER,
    )
  if jax.process_index() == 0:
    _print_outputs(workdir, checkpointer, exported, sampling)
  return TrainResult(
    state=state, eval_metrics=last_eval, stopped_by=stop.signal
  )


def _print_outputs(
  workdir: pathlib.Path,
  checkpointer,
  exported: pathlib.Path | None,
  sampling: "_Sampling | None",
) -> None:
  """Where the run's results are, for the user to pick up."""
  workdir = workdir.absolute()
  if sampling is not None:
    shown = samples_lib.summary(sampling.log.path)
    if shown is not None:
      print(shown)
    print(f"samples: {sampling.log.path}")
  print(f"metrics: {workdir / 'metrics.jsonl'}")
  print(
    f"checkpoints: {checkpointer.directory} (latest step"
    f" {checkpointer.latest_step})"
  )
  if exported is not None:
    print(f"Hugging Face folder: {exported}")
  print(f"TensorBoard: tensorboard --logdir {workdir / 'tensorboard'}")


@dataclasses.dataclass
class _Sampling:
  """The held-out samples of every evaluation (train/samples.py)."""

  run: setup_lib.Run
  sampler: samples_lib.Sampler
  log: samples_lib.SamplesLog

  @classmethod
  def start(cls, run, workdir, writer, start_step: int) -> "_Sampling | None":
    if run.sample_prompts is None:
      return None
    sampler = samples_lib.Sampler(
      run.config, run.spec.model, run.spec.mesh, run.sample_prompts
    )
    log = samples_lib.SamplesLog(workdir, writer, resume_step=start_step)
    return cls(run, sampler, log)

  def _reference(self, reference, sync_fn):
    # A moving reference is the loop's; a frozen one was kept at build.
    if sync_fn is not None:
      return self.run.spec.policy.reference(reference)
    return self.run.sample_reference

  def _sample(self, step, model, params, reference) -> dict[str, float]:
    samples = self.sampler(step, params, reference)
    self.log.write(
      step,
      list(samples_lib.records(step, model, samples, self.sampler.prompts)),
    )
    return samples_lib.metrics(samples)

  def reference_samples(self, reference, sync_fn) -> dict[str, float]:
    reference = self._reference(reference, sync_fn)
    return self._sample(0, "reference", reference, reference)

  def policy_samples(self, step, params, reference, sync_fn):
    return self._sample(
      step, "policy", params, self._reference(reference, sync_fn)
    )

"""A Bradley-Terry reward model, trained on the run's preference pairs.

With ``reward_model.train=True`` the program trains a reward model instead
of a policy: the model the config describes (a built-in size, or
``model.checkpoint``; on the synthetic task the reference fitted to its
base language) with a scalar head on its last real token, on the same
pairs, mesh, optimizer, checkpoints and resumption as a policy run. Each
pair's loss is TRL ``RewardTrainer``'s,

  -log sigmoid(r(x, y_w) - r(x, y_l) - margin)
    + center_rewards_coefficient * (r(x, y_w) + r(x, y_l))^2,

with ``margin`` one number for every pair (TRL reads a ``margin`` column of
the data instead). The metrics are ``loss``, ``rewards/accuracies`` (the
chosen response scored higher), ``rewards/margins``, ``rewards/chosen`` and
``rewards/rejected``, also on the held-out pairs (``eval/...``). At the end
the model is written to ``WORKDIR/hf`` as a one-label
``*ForSequenceClassification`` folder (with the run's tokenizer files, when
it has any), which ``transformers`` and ``train.evaluate --reward_model``
load.
"""

import contextlib
import dataclasses
import functools
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import optax

from slpo_jax import models
from slpo_jax import sharding
from train import checkpoint as checkpoint_lib
from train import data as data_lib
from train import export as export_lib
from train import loop
from train import progress
from train import resume
from train import setup as setup_lib
from train import state as state_lib
from train import stopping
from train import validate
from train import workdir as workdir_lib
from train.metrics_writer import MetricsWriter
from train.metrics_writer import TrainMetrics

_METRICS = (
  "loss",
  "rewards/accuracies",
  "rewards/margins",
  "rewards/chosen",
  "rewards/rejected",
)


def pair_losses(chosen, rejected, *, margin: float, center_coefficient: float):
  """Per-pair Bradley-Terry losses of the chosen and rejected rewards."""
  losses = -jax.nn.log_sigmoid(chosen - rejected - margin)
  return losses + center_coefficient * (chosen + rejected) ** 2


def _weighted_sums(reward_model, params, batch, config):
  """Sums over the batch's pairs, each weighted by its example weight."""
  ids = jnp.concatenate([batch.chosen_input_ids, batch.rejected_input_ids])
  mask = jnp.concatenate(
    [batch.chosen_attention_mask, batch.rejected_attention_mask]
  )
  chosen, rejected = jnp.split(reward_model.scores(params, ids, mask), 2)
  weight = batch.example_weight.astype(jnp.float32)
  losses = pair_losses(
    chosen,
    rejected,
    margin=config.margin,
    center_coefficient=config.center_rewards_coefficient,
  )
  values = {
    "loss": losses,
    "rewards/accuracies": (chosen > rejected).astype(jnp.float32),
    "rewards/margins": chosen - rejected,
    "rewards/chosen": chosen,
    "rewards/rejected": rejected,
  }
  sums = {name: jnp.sum(weight * value) for name, value in values.items()}
  sums["weight"] = jnp.sum(weight)
  return sums


def _means(sums):
  weight = jnp.maximum(sums["weight"], 1e-9)
  return {name: sums[name] / weight for name in _METRICS}


def train_step(state, batch, *, reward_model, optimizer, config):
  """One optimizer step; a non-finite loss or gradient leaves the state."""

  def loss_fn(params):
    sums = _weighted_sums(reward_model, params, batch, config)
    return sums["loss"] / jnp.maximum(sums["weight"], 1e-9), sums

  (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.global_norm(grads)
  metrics = _means(sums)
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  stepped = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    opt_state=opt_state,
  )
  state = jax.tree.map(
    lambda new, old: jnp.where(finite, new, old), stepped, state
  )
  tokens = jnp.sum(batch.chosen_attention_mask) + jnp.sum(
    batch.rejected_attention_mask
  )
  return state, metrics | {
    "grad_norm": grad_norm,
    "finite": finite,
    "tokens": tokens,
  }


def _start(config, workdir, checked):
  """The run's data and backbone (as a policy run builds them), and the
  reward model's parameters: the backbone and a zero head."""
  # The pairs and the starting weights of a policy run; no reference cache
  # and no samples.
  as_policy = config.copy_and_resolve_references()
  as_policy.reference.mode = "online"
  as_policy.eval.num_samples = 0
  run = setup_lib.build_run(as_policy, workdir, checked)
  mesh = run.spec.mesh
  replicated = sharding.replicated(mesh)
  d_model = run.spec.model.config.d_model
  score = jax.device_put(
    jnp.zeros((d_model,), config.model.param_dtype), replicated
  )
  # The policy run's frozen copy of the weights is not needed.
  run = dataclasses.replace(
    run,
    initial_params={"backbone": run.initial_params, "score": score},
    param_shardings={"backbone": run.param_shardings, "score": replicated},
    reference_params=None,
  )
  return run, models.RewardModel(run.spec.model)


def _evaluate(run, params, eval_fn) -> dict[str, float]:
  totals = {}
  for index, batch in enumerate(run.eval_batches()):
    if run.config.eval_batches and index >= run.config.eval_batches:
      break
    sums = jax.device_get(eval_fn(params, run.to_device(batch)))
    for name, value in sums.items():
      totals[name] = totals.get(name, 0.0) + float(value)
  if not totals:
    return {}
  return {f"eval/{k}": float(v) for k, v in _means(totals).items()}


def train(config, workdir, *, devices=None) -> loop.TrainResult:
  """Trains the reward model ``config`` describes in ``workdir``."""
  workdir = pathlib.Path(workdir)
  checked = validate.validate(config, devices)
  with workdir_lib.WorkdirLock(workdir):
    run, reward_model = _start(config, workdir, checked)
    return _train(config, workdir, run, reward_model)


def _train(config, workdir, run, reward_model) -> loop.TrainResult:
  checkpointer = checkpoint_lib.Checkpointer(
    workdir,
    keep=config.keep_checkpoints,
    run_identity=loop.run_identity(config) | {"trains": "reward model"},
    settings=resume.settings(config),
  )
  state, shardings, restored = state_lib.restore_or_init(run, checkpointer)
  if restored is not None:
    changes = resume.check(restored.settings, config, restored.step)
    if changes and jax.process_index() == 0:
      print(changes)
  mesh = run.spec.mesh
  settings = dict(
    reward_model=reward_model,
    optimizer=run.spec.optimizer,
    config=config.reward_model,
  )
  train_fn = state_lib.OnMesh(
    jax.jit(
      functools.partial(train_step, **settings),
      out_shardings=(shardings, sharding.replicated(mesh)),
      donate_argnums=(0,),
    ),
    mesh,
  )
  eval_fn = state_lib.OnMesh(
    jax.jit(
      lambda params, batch: _weighted_sums(
        reward_model, params, batch, config.reward_model
      ),
      out_shardings=sharding.replicated(mesh),
    ),
    mesh,
  )
  start_step = int(state.step)
  last_eval = {}
  writer = MetricsWriter(workdir, resume_step=start_step)
  bar = progress.progress(
    total=config.steps,
    initial=start_step,
    disable=jax.process_index() != 0,
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
  with stopping.StopRequests() as stop, contextlib.ExitStack() as cleanup:
    for resource in (bar, writer, checkpointer):
      cleanup.callback(resource.close)
    for step in range(start_step + 1, config.steps + 1):
      host_batch = next(run.train_iterator)
      state, step_metrics = train_fn(state, run.to_device(host_batch))
      metrics.push(step, step_metrics, tokens=host_batch.count_tokens())
      bar.update(1)
      at_end = step == config.steps
      if config.eval_every and (step % config.eval_every == 0 or at_end):
        metrics.settle()
        last_eval = _evaluate(run, state.params, eval_fn)
        metrics.add(step, last_eval)
        bar.write(
          f"step {step}: "
          + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items())
        )
      every = config.checkpoint_every
      if (every and step % every == 0) or at_end or stop.signal:
        metrics.write_all()
        checkpointer.save(
          step,
          state,
          run.train_iterator.get_state(),
          {"num_tokens": metrics.num_tokens},
        )
      if stop.signal:
        bar.write(f"{stop.signal} received: checkpoint written at step {step}.")
        break
    metrics.write_all()
  if config.export.at_end and stop.signal is None:
    out = export_reward_model(
      config, reward_model, state.params, workdir / loop.EXPORT_FOLDER
    )
    if jax.process_index() == 0:
      print(f"reward model (Hugging Face folder): {out}")
  return loop.TrainResult(
    state=state, eval_metrics=last_eval, stopped_by=stop.signal
  )


def export_reward_model(config, reward_model, params, out) -> pathlib.Path:
  """``out`` as a one-label sequence-classification folder, whole or absent.

  The backbone is written as a policy is (weights, config, tokenizer files,
  ``generation_config.json``), then given its score head, beside ``out``;
  the finished folder replaces ``out``.
  """
  out = pathlib.Path(out).absolute()
  partial = out.with_name(out.name + ".reward_model")
  export_lib.export_policy(
    config, reward_model.backbone, params["backbone"], partial
  )
  if jax.process_index() == 0:
    pad_id = data_lib.make_tokenizer(
      config.data, config.model.checkpoint
    ).pad_id
    models.write_score_head(
      partial, jax.device_get(params["score"]), pad_token_id=pad_id
    )
    if out.exists():
      shutil.rmtree(out)
    os.replace(partial, out)
  return out

"""Supervised pre-training of a reference model on plain sequences.

The synthetic task's reference model is a tiny LM fitted to its base language
(the analogue of the DPO paper's SFT step); this is that fit: next-token
cross-entropy with AdamW, cached in the workdir as a Hugging Face folder so a
rerun, or another run pointed at it, reuses it.
"""

import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from train import progress
from train import stopping


def _nll(model, params, batch):
  logits = model.apply(params, batch["input_ids"], batch["attention_mask"])
  per_token = optax.softmax_cross_entropy_with_integer_labels(
    logits, batch["labels"]
  )
  counted = batch["loss_mask"].astype(jnp.float32)
  return jnp.sum(per_token * counted) / jnp.maximum(jnp.sum(counted), 1.0)


@functools.partial(jax.jit, static_argnames=("model", "optimizer"))
def _sft_step(params, opt_state, batch, *, model, optimizer):
  loss, grads = jax.value_and_grad(functools.partial(_nll, model))(
    params, batch
  )
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def fit(
  model,
  params,
  batches,
  *,
  steps: int,
  learning_rate: float,
  show_progress: bool = True,
  progress_file: pathlib.Path | None = None,
):
  """Fit ``params`` to next-token prediction on ``batches``.

  With ``progress_file`` the fit is resumable: its parameters, optimizer
  state and step are saved there every tenth of the fit and when SIGTERM
  or SIGINT arrives (then :class:`~train.stopping.Stopped` is raised), and a
  fit that finds the file continues from it, skipping the batches it used.

  Args:
    model: the model object.
    params: initial parameters.
    batches: an iterator of dicts with ``input_ids``, ``attention_mask``,
      ``labels`` and ``loss_mask``, each ``[B, T]``; the same sequence on
      every call (a seeded pipeline).
    steps: optimizer steps.
    learning_rate: peak AdamW learning rate (cosine decay, 5% warm-up).
    show_progress: draw a progress bar.
    progress_file: where the partial fit is kept (an ``.npz``), or None.

  Returns:
    ``(params, final_loss)``.
  """
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, learning_rate, max(steps // 20, 1), max(steps, 2)
  )
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule))
  opt_state = optimizer.init(params)
  start = 0
  if progress_file is not None and progress_file.exists():
    start, (params, opt_state) = _load_progress(
      progress_file, (params, opt_state)
    )
    for _ in range(start):
      next(batches)
  every = max(steps // 10, 1)
  loss = float("nan")
  bar = progress.progress(
    total=steps, initial=start, desc="sft reference", disable=not show_progress
  )
  keys = ("input_ids", "attention_mask", "labels", "loss_mask")
  with stopping.StopRequests() as stop:
    for step in range(start + 1, steps + 1):
      batch = next(batches)
      params, opt_state, loss = _sft_step(
        params,
        opt_state,
        {k: jnp.asarray(batch[k]) for k in keys},
        model=model,
        optimizer=optimizer,
      )
      bar.update(1)
      bar.set_postfix(nll=f"{float(loss):.3f}")
      if progress_file is not None and step < steps:
        if stop.signal or step % every == 0:
          _save_progress(progress_file, step, (params, opt_state))
      if stop.signal and step < steps:
        bar.close()
        raise stopping.Stopped(
          stop.signal,
          f"{stop.signal} received during the SFT reference fit: step"
          f" {step} of {steps} saved"
          + (f" in {progress_file}" if progress_file else " nowhere")
          + "; rerun the same command to continue",
        )
  bar.close()
  return params, float(loss)


def _save_progress(path: pathlib.Path, step: int, tree) -> None:
  """Writes the partial fit whole or not at all (a rename at the end)."""
  if jax.process_index() != 0:
    return
  leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + ".tmp")
  with partial.open("wb") as file:
    np.savez(file, step=step, **{f"leaf_{i}": x for i, x in enumerate(leaves)})
  os.replace(partial, path)


def _load_progress(path: pathlib.Path, like):
  with np.load(path) as stored:
    leaves = [stored[f"leaf_{i}"] for i in range(len(jax.tree.leaves(like)))]
    step = int(stored["step"])
  treedef = jax.tree.structure(like)
  return step, jax.tree.unflatten(treedef, [jnp.asarray(x) for x in leaves])


def cached_fit(directory: pathlib.Path, model, params, batches, **kwargs):
  """:func:`fit`, or the result of an earlier fit saved in ``directory``.

  An interrupted fit is continued from ``<directory>.partial.npz``.
  """
  from slpo_jax import models

  if (directory / "config.json").exists():
    _, loaded = models.load_hf_model(directory)
    return loaded
  partial = directory.with_name(directory.name + ".partial.npz")
  params, _ = fit(model, params, batches, progress_file=partial, **kwargs)
  if jax.process_index() == 0:
    models.save_hf_checkpoint(model, jax.device_get(params), directory)
    partial.unlink(missing_ok=True)
  return params

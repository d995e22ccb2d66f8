"""Supervised pre-training of a reference model on plain sequences.

The synthetic task's reference model is a tiny LM fitted to its base language
(the analogue of the DPO paper's SFT step); this is that fit: next-token
cross-entropy with AdamW, cached in the workdir as a Hugging Face folder so a
rerun, or another run pointed at it, reuses it.
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import optax

from train import progress


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
):
  """Fit ``params`` to next-token prediction on ``batches``.

  Args:
    model: the model object.
    params: initial parameters.
    batches: an iterator of dicts with ``input_ids``, ``attention_mask``,
      ``labels`` and ``loss_mask``, each ``[B, T]``.
    steps: optimizer steps.
    learning_rate: peak AdamW learning rate (cosine decay, 5% warm-up).
    show_progress: draw a progress bar.

  Returns:
    ``(params, final_loss)``.
  """
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, learning_rate, max(steps // 20, 1), max(steps, 2)
  )
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule))
  opt_state = optimizer.init(params)
  loss = float("nan")
  bar = progress.progress(
    range(steps), desc="sft reference", disable=not show_progress
  )
  keys = ("input_ids", "attention_mask", "labels", "loss_mask")
  for _ in bar:
    batch = next(batches)
    params, opt_state, loss = _sft_step(
      params,
      opt_state,
      {k: jnp.asarray(batch[k]) for k in keys},
      model=model,
      optimizer=optimizer,
    )
    bar.set_postfix(nll=f"{float(loss):.3f}")
  return params, float(loss)


def cached_fit(directory: pathlib.Path, model, params, batches, **kwargs):
  """:func:`fit`, or the result of an earlier fit saved in ``directory``."""
  from slpo_jax import models

  if (directory / "config.json").exists():
    _, loaded = models.load_hf_model(directory)
    return loaded
  params, _ = fit(model, params, batches, **kwargs)
  if jax.process_index() == 0:
    models.save_hf_checkpoint(model, jax.device_get(params), directory)
  return params

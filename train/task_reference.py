"""The synthetic task's reference model and its sampler.

As in the DPO paper's controlled-sentiment experiment, the reference is a
model fitted to the base language (SFT), and each preference pair is two
samples of that reference for one prompt, the higher true reward preferred
(the data pipeline ranks them with ``sentiment_reward``).
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax import models
from slpo_jax.tasks.vocab import BOS_ID
from slpo_jax.tasks.vocab import EOS_ID
from slpo_jax.tasks.vocab import PAD_ID
from train import data as data_lib
from train import sft


def fitted_reference(config, workdir: pathlib.Path, model, params):
  """The SFT reference: fitted now, or loaded from ``workdir/reference``."""
  if config.reference.sft_steps <= 0:
    return params
  batches = data_lib.make_sft_pipeline(
    config.data,
    batch_size=config.reference.sft_batch_size,
    seed=config.seed,
    shard_index=0,
    shard_count=1,
  )
  return sft.cached_fit(
    pathlib.Path(workdir) / "reference",
    model,
    jax.device_get(params),
    batches,
    steps=config.reference.sft_steps,
    learning_rate=config.reference.sft_learning_rate,
    show_progress=jax.process_index() == 0,
  )


def reference_sampler(model, params, *, max_new_tokens: int, seed: int):
  """``sample_fn(prompts, rng)`` drawing responses from the model.

  Prompts are word ids without BOS, all of one length. The randomness comes
  from a JAX key seeded by ``seed`` (the numpy generator the pipeline passes
  is not used), so the same reference and seed give the same pairs on every
  run, a resumed one included.
  """
  key = jax.random.key(seed)

  def sample_fn(prompts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    del rng
    nonlocal key
    key, subkey = jax.random.split(key)
    ids = np.concatenate(
      [np.full((len(prompts), 1), BOS_ID), prompts], axis=1
    ).astype(np.int32)
    out = models.generate(
      model,
      params,
      jnp.asarray(ids),
      jnp.ones(ids.shape, jnp.int32),
      rng=subkey,
      max_new_tokens=max_new_tokens + 1,
      temperature=1.0,
      eos_id=EOS_ID,
      pad_id=PAD_ID,
    )
    return np.asarray(out.tokens)

  return sample_fn

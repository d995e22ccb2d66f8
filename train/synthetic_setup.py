"""The synthetic task's reference model and preference pairs, cached.

As in the DPO paper's controlled-sentiment experiment: the reference is a
model fitted to the base language (SFT), and each pair is two samples of the
reference for one prompt, the higher true reward preferred.
"""

import dataclasses
import hashlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax import models
from slpo_jax.tasks import synthetic
from slpo_jax.tasks.vocab import BOS_ID, EOS_ID, PAD_ID
from train import reference as reference_lib
from train import sft


def _base_language(config) -> np.ndarray:
  return synthetic.make_base_language(config.data.synthetic.language_seed)


def sft_sequences(config, rng: np.random.Generator, count: int):
  """``[BOS, prompt, response (EOS included)]`` rows of the base language."""
  task = config.data.synthetic
  language = _base_language(config)
  prompts = synthetic.sample_prompts(language, rng, count, task.prompt_length)
  responses = synthetic.sample_continuations(
      language, prompts, rng, max_new_tokens=task.max_new_tokens
  )
  mask = synthetic.response_mask(responses)
  ids = np.concatenate(
      [np.full((count, 1), BOS_ID), prompts, np.where(mask, responses, PAD_ID)],
      axis=1,
  ).astype(np.int32)
  real = np.concatenate(
      [np.ones((count, 1 + task.prompt_length), bool), mask], axis=1
  )
  return ids, real.astype(np.int32)


def fitted_reference(config, workdir: pathlib.Path, model, params):
  """The SFT reference, fitted now or loaded from ``workdir/reference``."""
  steps = config.reference.sft_steps
  if steps <= 0:
    return params
  batch = config.reference.sft_batch_size
  return sft.cached_fit(
      pathlib.Path(workdir) / "reference", model, jax.device_get(params),
      lambda rng: sft_sequences(config, rng, batch),
      steps=steps, learning_rate=config.reference.sft_learning_rate,
      seed=config.seed, show_progress=jax.process_index() == 0,
  )


def reference_sampler(model, params, *, max_new_tokens: int, seed: int):
  """A ``sample_fn(prompts, rng)`` drawing responses from the model."""
  key = jax.random.key(seed)

  def sample_fn(prompts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    nonlocal key
    key, subkey = jax.random.split(key)
    ids = np.concatenate(
        [np.full((len(prompts), 1), BOS_ID), prompts], axis=1
    ).astype(np.int32)
    out = models.generate(
        model, params, jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32),
        rng=subkey, max_new_tokens=max_new_tokens + 1, temperature=1.0,
        eos_id=EOS_ID, pad_id=PAD_ID,
    )
    del rng  # Randomness comes from the JAX key, which is seeded.
    return np.asarray(out.tokens)

  return sample_fn


def preference_pairs(config, workdir: pathlib.Path, model, params):
  """Pairs from reference samples, cached by reference and task settings."""
  task = config.data.synthetic
  key = hashlib.sha256(json.dumps({
      "reference": reference_lib.params_fingerprint(params),
      "task": task.to_dict(),
      "seed": config.seed,
  }, sort_keys=True, default=str).encode()).hexdigest()[:16]
  path = pathlib.Path(workdir) / f"synthetic_pairs_{key}.npz"
  if path.exists():
    stored = dict(np.load(path))
    num_ties = int(stored.pop("num_ties"))
    return synthetic.PreferencePairs(num_ties=num_ties, **stored)
  rng = np.random.default_rng(config.seed)
  prompts = synthetic.sample_prompts(
      _base_language(config), rng, task.num_prompts, task.prompt_length
  )
  pairs = synthetic.make_preference_pairs(
      prompts,
      reference_sampler(model, params, max_new_tokens=task.max_new_tokens,
                        seed=config.seed),
      synthetic.sentiment_reward, rng, batch_size=256,
  )
  if jax.process_index() == 0:
    np.savez(path, **dataclasses.asdict(pairs))
  return pairs

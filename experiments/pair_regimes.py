"""Pair regimes where SLPO could win (docs/RESULTS.md, sections 5.7-5.9).

Each regime changes how section 4's pairs are made or scored, and nothing
else:

* *tilted* (5.7): the first response of every pair comes from a
  reward-tilted sampler, the reference with the logits of the positive
  words raised by ``delta``, the second is a plain reference sample; the
  higher true reward is preferred. The chosen response is then mostly one
  the reference finds unlikely, so s = pi_ref(y_l) / (pi_ref(y_w) +
  pi_ref(y_l)) is near 1: the off-policy regime of real preference data.
* *noisy* (5.8): section 4's pairs with Bradley-Terry labels, P(first
  preferred) = sigmoid((r1 - r2) / T); the held-out pairs keep the true
  order.
* *summed* (5.9): the reward is the sum, not the mean, of the words'
  sentiment (a reward that pays for length), for the pairs' ranking and
  for the evaluation.

A regime is given to ``train.setup.build_run`` through its ``sampler`` and
``make_pairs`` arguments, and to the evaluator through ``reward_fn``.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax.tasks import synthetic
from slpo_jax.tasks.vocab import BOS_ID
from slpo_jax.tasks.vocab import EOS_ID
from slpo_jax.tasks.vocab import PAD_ID
from train import task_reference
from train.data import task_pairs

# The label noise's and the tilted sampler's own random streams, apart
# from the reference samples' streams.
LABEL_STREAM = 29
TILT_STREAM = 30
# Draws of the second response per prompt when pairs are length-matched.
LENGTH_MATCH_DRAWS = 8
# Chosen by the rules of sections 5.7 and 5.8 before any of their runs
# (``python -m experiments.pair_regimes_report choose``).
TILT_DELTA = 2.0
LABEL_TEMPERATURE = 0.2


def positive_word_mask() -> np.ndarray:
  """``[vocab]`` bool: the task's positive words (sentiment above 0.1)."""
  return synthetic.WORD_SENTIMENT > 0.1


def tilted_logits(logits, delta: float):
  """``logits`` with the positive words' raised by ``delta``."""
  return logits + delta * jnp.asarray(positive_word_mask(), logits.dtype)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _tilted_generate(model, params, prompt_ids, rng, delta, *, max_new_tokens):
  """Samples ``max_new_tokens`` tokens per row from the tilted model.

  No KV cache: every step runs the whole (short) window, whose later
  positions hold padding that the causal mask hides from the current one.
  """
  batch, prompt_length = prompt_ids.shape
  ids = jnp.concatenate(
    [prompt_ids, jnp.full((batch, max_new_tokens), PAD_ID, jnp.int32)], 1
  )

  def body(step, carry):
    ids, done = carry
    logits = model.apply(params, ids, jnp.ones_like(ids))
    logits = jax.lax.dynamic_index_in_dim(
      logits, prompt_length - 1 + step, axis=1, keepdims=False
    )
    token = jax.random.categorical(
      jax.random.fold_in(rng, step), tilted_logits(logits, delta)
    ).astype(jnp.int32)
    token = jnp.where(done, PAD_ID, token)
    ids = jax.lax.dynamic_update_index_in_dim(
      ids, token, prompt_length + step, axis=1
    )
    return ids, done | (token == EOS_ID)

  ids, _ = jax.lax.fori_loop(
    0, max_new_tokens, body, (ids, jnp.zeros((batch,), bool))
  )
  return ids[:, prompt_length:]


def tilted_sample_fn(model, params, *, max_new_tokens: int, delta, seed):
  """``sample_fn(prompts, rng)``: every row from the tilted reference."""
  key = jax.random.fold_in(jax.random.key(seed), TILT_STREAM)

  def sample_fn(prompts: np.ndarray, rng) -> np.ndarray:
    del rng  # As the reference sampler: its own JAX key, for repeatability.
    nonlocal key
    key, subkey = jax.random.split(key)
    ids = np.concatenate(
      [np.full((len(prompts), 1), BOS_ID), prompts], axis=1
    ).astype(np.int32)
    out = _tilted_generate(
      model,
      params,
      jnp.asarray(ids),
      subkey,
      jnp.float32(delta),
      max_new_tokens=max_new_tokens + 1,  # EOS included, as the reference's.
    )
    return np.asarray(out)

  return sample_fn


def tilted_sampler(delta: float):
  """A ``reference_sampler``-like maker: first halves tilted, second plain.

  The pipeline asks for every prompt of a chunk twice (first halves, then
  second halves); the first responses come from the tilted reference, the
  second ones from the reference itself.
  """

  def make(model, params, *, max_new_tokens, seed):
    tilted = tilted_sample_fn(
      model, params, max_new_tokens=max_new_tokens, delta=delta, seed=seed
    )
    plain = task_reference.reference_sampler(
      model, params, max_new_tokens=max_new_tokens, seed=seed
    )

    def sample_fn(prompts, rng):
      half = len(prompts) // 2
      first, second = tilted(prompts[:half], rng), plain(prompts[half:], rng)
      width = max(first.shape[1], second.shape[1])
      pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])))  # noqa: E731
      return np.concatenate([pad(first), pad(second)])

    return sample_fn

  return make


def summed_sentiment_reward(token_ids, where):
  """The sum of a response's words' sentiment: a reward that pays for
  length. ``sentiment_reward`` times the number of words counted."""
  xp = (
    jnp
    if isinstance(token_ids, jax.Array) or isinstance(where, jax.Array)
    else np
  )
  token_ids = xp.asarray(token_ids)
  scores = xp.asarray(synthetic.WORD_SENTIMENT)[token_ids]
  is_word = (token_ids >= synthetic.FIRST_WORD_ID) & xp.asarray(
    where, dtype=bool
  )
  return xp.sum(xp.where(is_word, scores, 0.0), axis=-1).astype(xp.float32)


def flip_probability(margin, temperature: float) -> np.ndarray:
  """Bradley-Terry: the chance that the lower-reward response is preferred,
  sigmoid(-margin / T) for a true margin r_w - r_l."""
  scaled = np.asarray(margin, np.float64) / temperature
  return np.exp(-np.logaddexp(0.0, scaled))  # No overflow at small T.


def flip_labels(
  pairs: synthetic.PreferencePairs,
  temperature: float,
  rng: np.random.Generator,
) -> synthetic.PreferencePairs:
  """``pairs`` with Bradley-Terry labels: each pair's order is swapped with
  probability ``flip_probability(chosen_reward - rejected_reward, T)``.

  The rewards move with their responses, so a swapped pair has
  ``chosen_reward < rejected_reward`` (the rewards that ranked it are the
  noisy ones).
  """
  margin = pairs.chosen_reward - pairs.rejected_reward
  flip = rng.random(len(margin)) < flip_probability(margin, temperature)
  swap = lambda a, b: np.where(  # noqa: E731
    flip.reshape((-1,) + (1,) * (a.ndim - 1)), b, a
  )
  return dataclasses.replace(
    pairs,
    chosen=swap(pairs.chosen, pairs.rejected),
    chosen_mask=swap(pairs.chosen_mask, pairs.rejected_mask),
    rejected=swap(pairs.rejected, pairs.chosen),
    rejected_mask=swap(pairs.rejected_mask, pairs.chosen_mask),
    chosen_reward=swap(pairs.chosen_reward, pairs.rejected_reward),
    rejected_reward=swap(pairs.rejected_reward, pairs.chosen_reward),
  )


@dataclasses.dataclass(frozen=True)
class Regime:
  """How a condition makes its pairs and scores its samples.

  Attributes:
    name: the regime's name (arm suffix and CSV stem).
    sampler: a ``reference_sampler``-like maker, or None for the reference.
    label_temperature: T of the training pairs' Bradley-Terry labels, or
      None for the true order.
    reward_fn: the true reward, for the pairs' ranking and the evaluation.
  """

  name: str
  sampler: Callable | None = None
  label_temperature: float | None = None
  reward_fn: Callable = synthetic.sentiment_reward

  def make_pairs(self, data_config, seed: int):
    """``build_run``'s ``make_pairs`` for seed ``seed``, or None when the
    program's own ranking applies."""
    if (
      self.label_temperature is None
      and self.reward_fn is synthetic.sentiment_reward
    ):
      return None
    rng = np.random.default_rng([seed, LABEL_STREAM])

    def make(split, sample_fn):
      pairs = task_pairs.synthetic_pairs(
        data_config, split, sample_fn, reward_fn=self.reward_fn
      )
      if split == "train" and self.label_temperature is not None:
        pairs = flip_labels(pairs, self.label_temperature, rng)
      return pairs

    return make


def response_lengths(tokens: np.ndarray) -> np.ndarray:
  """Tokens up to and including the first EOS (all of them if none)."""
  is_eos = tokens == EOS_ID
  return np.where(is_eos.any(1), is_eos.argmax(1) + 1, tokens.shape[1])


def length_matched_sampler(base_sampler):
  """Wraps ``task_reference.reference_sampler``: second responses matched.

  The pipeline asks for every prompt twice (first halves, then second
  halves). The first responses are drawn as usual; each second one is the
  first of ``LENGTH_MATCH_DRAWS`` draws with the first response's length,
  or the closest in length when none has it.
  """

  def make(model, params, *, max_new_tokens, seed):
    sample = base_sampler(
      model, params, max_new_tokens=max_new_tokens, seed=seed
    )

    def sample_fn(prompts, rng):
      half = len(prompts) // 2
      first = sample(prompts[:half], rng)
      draws = sample(np.tile(prompts[half:], (LENGTH_MATCH_DRAWS, 1)), rng)
      draws = draws.reshape((LENGTH_MATCH_DRAWS, half) + draws.shape[1:])
      target = response_lengths(first)
      distance = np.stack([np.abs(response_lengths(d) - target) for d in draws])
      pick = distance.argmin(0)  # The first draw at the least distance.
      second = draws[pick, np.arange(half)]
      width = max(first.shape[1], second.shape[1])
      pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])))  # noqa: E731
      return np.concatenate([pad(first), pad(second)])

    return sample_fn

  return make


def best_of_n_sampler(base_sampler, n: int):
  """Wraps ``task_reference.reference_sampler``: first responses best of n.

  The first half of every request (one response per prompt) is the
  highest-reward of ``n`` reference draws, the second half a plain draw.
  """

  def make(model, params, *, max_new_tokens, seed):
    sample = base_sampler(
      model, params, max_new_tokens=max_new_tokens, seed=seed
    )

    def sample_fn(prompts, rng):
      half = len(prompts) // 2
      draws = sample(np.tile(prompts[:half], (n, 1)), rng)
      draws = draws.reshape((n, half) + draws.shape[1:])
      rewards = np.stack(
        [
          synthetic.sentiment_reward(d, synthetic.response_mask(d))
          for d in draws
        ]
      )
      best = draws[rewards.argmax(0), np.arange(half)]
      second = sample(prompts[half:], rng)
      width = max(best.shape[1], second.shape[1])
      pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])))  # noqa: E731
      return np.concatenate([pad(best), pad(second)])

    return sample_fn

  return make

"""A controlled sentiment-generation task with a ground-truth reward.

A CPU-sized mirror of the IMDb controlled-sentiment experiment of the DPO paper
(Rafailov et al. 2023, arXiv:2305.18290, section 6.1): a reference model is
fine-tuned on text from a "base language", preference pairs are two samples of
the reference model for the same prompt with the higher-reward one preferred,
and the reward is known exactly, so a trained policy can be scored by its mean
reward against its KL divergence from the reference.

* Vocabulary: ``<pad>``, ``<bos>``, ``<eos>`` and 64 words, 16 positive, 16
  negative and 32 nearly neutral (``WORDS``, ``WORD_SENTIMENT``).
* Base language: a seeded random bigram Markov chain over the words with a
  fixed end-of-sequence probability (``make_base_language``).
* Reward: the mean sentiment of the response's words, in [-1, 1]
  (``sentiment_reward``); it accepts NumPy and JAX arrays and is jit-safe.
* Pairs: ``make_preference_pairs(prompts, sample_fn, reward_fn, rng)`` with any
  sampler; ``base_language_sampler`` is a pure-NumPy stand-in for the reference
  model.

Everything here is pure: no files, no configs. The training program turns it
into batches (``train/data/synthetic.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax.tasks.vocab import BOS_ID
from slpo_jax.tasks.vocab import EOS_ID
from slpo_jax.tasks.vocab import NUM_SPECIAL
from slpo_jax.tasks.vocab import PAD_ID
from slpo_jax.tasks.vocab import WordTokenizer

POSITIVE_WORDS = (
  "good",
  "great",
  "love",
  "happy",
  "wonderful",
  "excellent",
  "fun",
  "brilliant",
  "enjoy",
  "beautiful",
  "best",
  "delight",
  "superb",
  "charming",
  "fine",
  "nice",
)
NEGATIVE_WORDS = (
  "bad",
  "awful",
  "hate",
  "sad",
  "terrible",
  "boring",
  "worst",
  "poor",
  "ugly",
  "dull",
  "horrible",
  "weak",
  "annoying",
  "mess",
  "waste",
  "fail",
)
NEUTRAL_WORDS = (
  "the",
  "a",
  "movie",
  "film",
  "plot",
  "actor",
  "scene",
  "story",
  "it",
  "was",
  "is",
  "and",
  "but",
  "with",
  "this",
  "that",
  "of",
  "to",
  "in",
  "very",
  "quite",
  "ending",
  "music",
  "director",
  "cast",
  "show",
  "time",
  "really",
  "so",
  "character",
  "some",
  "script",
)
WORDS = POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS
FIRST_WORD_ID = NUM_SPECIAL
VOCAB_SIZE = NUM_SPECIAL + len(WORDS)


def _word_sentiment() -> np.ndarray:
  # Distinct scores for every word so that two different responses rarely
  # tie: positive words score 1.0 down to 0.5, negative words -1.0 up to -0.5,
  # neutral words spread over [-0.1, 0.1]. Special tokens score 0 and are
  # never counted.
  scores = np.zeros([VOCAB_SIZE], np.float32)
  n_pos, n_neg = len(POSITIVE_WORDS), len(NEGATIVE_WORDS)
  start = FIRST_WORD_ID
  scores[start : start + n_pos] = np.linspace(1.0, 0.5, n_pos)
  start += n_pos
  scores[start : start + n_neg] = -np.linspace(1.0, 0.5, n_neg)
  start += n_neg
  scores[start:] = np.linspace(-0.1, 0.1, len(NEUTRAL_WORDS))
  return scores


WORD_SENTIMENT = _word_sentiment()
WORD_SENTIMENT.setflags(write=False)

# Given to ``make_preference_pairs``: (prompts [N, P], rng) -> responses [N, R].
SampleFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]
RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def synthetic_tokenizer() -> WordTokenizer:
  """The tokenizer of the task vocabulary (``decode`` gives the words)."""
  return WordTokenizer(WORDS)


def sentiment_reward(token_ids, where):
  """Mean sentiment of a response's words, the task's ground-truth reward.

  .. math::
    r(y) = \\frac{\\sum_t m_t s(y_t)}{\\max(1, \\sum_t m_t)},\\quad
    m_t = \\mathrm{where}_t \\cdot [y_t \\text{ is a word}]

  Special tokens (EOS in particular) are not counted, so a response's reward
  does not depend on whether it was cut off; an empty response scores 0.

  Args:
    token_ids: integer response tokens, ``[batch, length]`` (NumPy or JAX).
    where: boolean mask of the response tokens, ``[batch, length]``.

  Returns:
    Rewards in [-1, 1], ``[batch]`` float32, of the same array kind as
    ``token_ids`` (a ``jax.Array`` under jit).
  """
  xp = (
    jnp
    if isinstance(token_ids, jax.Array) or isinstance(where, jax.Array)
    else np
  )
  token_ids = xp.asarray(token_ids)
  scores = xp.asarray(WORD_SENTIMENT)[token_ids]
  is_word = (token_ids >= FIRST_WORD_ID) & xp.asarray(where, dtype=bool)
  total = xp.sum(xp.where(is_word, scores, 0.0), axis=-1)
  count = xp.sum(is_word, axis=-1)
  return (total / xp.maximum(count, 1)).astype(xp.float32)


def make_base_language(
  seed: int, *, concentration: float = 0.3, eos_probability: float = 0.1
) -> np.ndarray:
  """The base language: a random bigram Markov chain over the words.

  Each word's successor distribution is a Dirichlet(``concentration``) draw over
  the words, scaled by ``1 - eos_probability``, plus ``eos_probability`` on EOS;
  a small concentration gives peaked, learnable bigrams. BOS never goes to
  EOS; EOS and PAD go to PAD, so sampling past the end yields padding.

  Args:
    seed: seed of the chain.
    concentration: Dirichlet concentration of each row.
    eos_probability: probability of ending after each word.

  Returns:
    Row-stochastic transition matrix, ``[VOCAB_SIZE, VOCAB_SIZE]`` float64,
    indexed ``[current, next]``.
  """
  if not 0.0 < eos_probability < 1.0:
    raise ValueError(
      f"eos_probability must be in (0, 1), got {eos_probability}"
    )
  rng = np.random.default_rng(seed)
  num_words = len(WORDS)
  transition = np.zeros([VOCAB_SIZE, VOCAB_SIZE])
  transition[PAD_ID, PAD_ID] = 1.0
  transition[EOS_ID, PAD_ID] = 1.0
  transition[BOS_ID, FIRST_WORD_ID:] = rng.dirichlet(
    np.full(num_words, concentration)
  )
  words = rng.dirichlet(np.full(num_words, concentration), size=num_words)
  transition[FIRST_WORD_ID:, FIRST_WORD_ID:] = (1.0 - eos_probability) * words
  transition[FIRST_WORD_ID:, EOS_ID] = eos_probability
  return transition


def _sample_step(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  # Inverse-CDF sampling of every row at once; rows need not be normalised.
  cdf = np.cumsum(probs, axis=-1)
  u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
  return np.minimum((cdf < u).sum(axis=-1), probs.shape[-1] - 1)


def sample_prompts(
  transition: np.ndarray,
  rng: np.random.Generator,
  num_prompts: int,
  prompt_length: int,
) -> np.ndarray:
  """Prompts: ``prompt_length`` words of the base language after BOS.

  Returns:
    Word ids (no BOS, no EOS), ``[num_prompts, prompt_length]`` int32.
  """
  prompts = np.zeros([num_prompts, prompt_length], np.int32)
  state = np.full([num_prompts], BOS_ID)
  for t in range(prompt_length):
    probs = transition[state].copy()
    probs[:, EOS_ID] = 0.0  # A prompt is a beginning, never a whole text.
    state = _sample_step(probs, rng)
    prompts[:, t] = state
  return prompts


def sample_continuations(
  transition: np.ndarray,
  prompts: np.ndarray,
  rng: np.random.Generator,
  *,
  max_new_tokens: int,
  min_new_tokens: int = 1,
) -> np.ndarray:
  """Continues each prompt in the base language until EOS.

  EOS is not allowed before ``min_new_tokens`` words and is forced after
  ``max_new_tokens`` words, so every response ends with EOS; positions after it
  are PAD.

  Args:
    transition: the base language, from ``make_base_language``.
    prompts: word ids, ``[batch, prompt_length]`` (may be empty along length).
    rng: NumPy random generator.
    max_new_tokens: most words in a response.
    min_new_tokens: fewest words in a response.

  Returns:
    Responses, ``[batch, max_new_tokens + 1]`` int32.
  """
  if not 0 <= min_new_tokens <= max_new_tokens:
    raise ValueError("need 0 <= min_new_tokens <= max_new_tokens")
  prompts = np.asarray(prompts)
  batch = prompts.shape[0]
  state = prompts[:, -1] if prompts.shape[1] else np.full([batch], BOS_ID)
  responses = np.full([batch, max_new_tokens + 1], PAD_ID, np.int32)
  for t in range(max_new_tokens + 1):
    probs = transition[state].copy()
    if t < min_new_tokens:
      probs[:, EOS_ID] = 0.0
    if t == max_new_tokens:
      # Rows still open must end here; rows that ended continue as PAD.
      probs = np.where(
        state[:, None] >= FIRST_WORD_ID, np.eye(VOCAB_SIZE)[EOS_ID], probs
      )
    state = _sample_step(probs, rng)
    responses[:, t] = state
  return responses


def response_mask(responses: np.ndarray) -> np.ndarray:
  """True for a response's tokens up to and including its first EOS.

  Tokens after the first EOS and PAD tokens are excluded, so samplers may
  return anything after EOS. A response without EOS (cut at the sampler's
  length limit) keeps all its non-PAD tokens.
  """
  responses = np.asarray(responses)
  is_eos = responses == EOS_ID
  ended_before = np.cumsum(is_eos, axis=-1) - is_eos > 0
  return ~ended_before & (responses != PAD_ID)


def base_language_sampler(
  transition: np.ndarray, *, max_new_tokens: int, min_new_tokens: int = 1
) -> SampleFn:
  """A ``sample_fn`` that samples from the base language itself.

  The stand-in for the reference model (which is fine-tuned on the base
  language), so that pair generation runs without a trained model.
  """

  def sample_fn(prompts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return sample_continuations(
      transition,
      prompts,
      rng,
      max_new_tokens=max_new_tokens,
      min_new_tokens=min_new_tokens,
    )

  return sample_fn


@dataclasses.dataclass(frozen=True)
class PreferencePairs:
  """Preference pairs over prompts, with the rewards that ranked them.

  Attributes:
    prompt_index: index of each pair's prompt in the prompts given, ``[M]``.
    prompts: word ids, ``[M, prompt_length]``.
    chosen: response ids, ``[M, R]``, PAD after the response.
    chosen_mask: response tokens (EOS included), ``[M, R]`` bool.
    rejected: response ids, ``[M, R]``.
    rejected_mask: ``[M, R]`` bool.
    chosen_reward: ``[M]`` float32, greater than ``rejected_reward``.
    rejected_reward: ``[M]`` float32.
    num_ties: prompts whose two responses had equal reward (identical
      responses included); they carry no preference and are not in the pairs.
  """

  prompt_index: np.ndarray
  prompts: np.ndarray
  chosen: np.ndarray
  chosen_mask: np.ndarray
  rejected: np.ndarray
  rejected_mask: np.ndarray
  chosen_reward: np.ndarray
  rejected_reward: np.ndarray
  num_ties: int


def _pad_to(responses: np.ndarray, length: int) -> np.ndarray:
  pad = length - responses.shape[1]
  return np.pad(responses, [(0, 0), (0, pad)], constant_values=PAD_ID)


def make_preference_pairs(
  prompts: np.ndarray,
  sample_fn: SampleFn,
  reward_fn: RewardFn,
  rng: np.random.Generator,
  *,
  batch_size: int | None = None,
) -> PreferencePairs:
  """Samples two responses per prompt and prefers the higher reward.

  Args:
    prompts: word ids, ``[N, prompt_length]``.
    sample_fn: ``sample_fn(prompt_batch, rng) -> responses`` with responses
      ``[batch, R]`` integer ids; tokens after the first EOS are ignored. Each
      call gets a batch holding every prompt of a chunk twice (two samples per
      prompt), so it must sample rows independently.
    reward_fn: ``reward_fn(responses, mask) -> [batch]``, e.g.
      ``sentiment_reward``.
    rng: NumPy random generator passed on to ``sample_fn``.
    batch_size: prompts per ``sample_fn`` call; all at once when None.

  Returns:
    The pairs with distinct rewards, in prompt order.
  """
  prompts = np.asarray(prompts)
  num_prompts = prompts.shape[0]
  chunk = batch_size or max(num_prompts, 1)
  firsts, seconds = [], []
  for start in range(0, num_prompts, chunk):
    part = prompts[start : start + chunk]
    responses = np.asarray(sample_fn(np.concatenate([part, part]), rng))
    firsts.append(responses[: len(part)])
    seconds.append(responses[len(part) :])
  length = max([r.shape[1] for r in firsts] or [1])
  first = np.concatenate(
    [_pad_to(r, length) for r in firsts] or [np.zeros([0, length], np.int32)]
  ).astype(np.int32)
  second = np.concatenate(
    [_pad_to(r, length) for r in seconds] or [np.zeros([0, length], np.int32)]
  ).astype(np.int32)
  first_mask, second_mask = response_mask(first), response_mask(second)
  # Zero what lies outside the response so the arrays are canonical.
  first = np.where(first_mask, first, PAD_ID)
  second = np.where(second_mask, second, PAD_ID)
  first_reward = np.asarray(reward_fn(first, first_mask), np.float32)
  second_reward = np.asarray(reward_fn(second, second_mask), np.float32)
  keep = first_reward != second_reward
  first_wins = (first_reward > second_reward)[:, None]
  index = np.flatnonzero(keep)
  pick = lambda a, b: np.where(first_wins, a, b)[keep]
  return PreferencePairs(
    prompt_index=index.astype(np.int64),
    prompts=prompts[keep],
    chosen=pick(first, second),
    chosen_mask=pick(first_mask, second_mask),
    rejected=pick(second, first),
    rejected_mask=pick(second_mask, first_mask),
    chosen_reward=np.maximum(first_reward, second_reward)[keep],
    rejected_reward=np.minimum(first_reward, second_reward)[keep],
    num_ties=int(num_prompts - keep.sum()),
  )

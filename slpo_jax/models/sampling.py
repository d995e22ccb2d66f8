"""Autoregressive sampling with a KV cache, compiled as one ``while_loop``.

Cache layout: the prompt occupies slots ``0..P-1`` exactly as it was given
(left-, right- or un-padded), and generated token ``i`` is written to slot
``P + i`` in every row. Padding slots are masked out, and each token gets
the position it would have in its row without padding (``L_b + i`` for the
``i``-th generated token of a row with ``L_b`` real prompt tokens), so the
result does not depend on how the prompt batch was padded.
"""

from __future__ import annotations

import functools
from typing import NamedTuple
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax.models.attention import AttentionMask
from slpo_jax.models.model import DecoderLM
from slpo_jax.models.model import Params
from slpo_jax.models.model import position_ids

Array = jax.Array
_EOS_CAPACITY = 4


class SampleOutput(NamedTuple):
  """Result of ``generate``.

  Attributes:
    tokens: ``[B, max_new_tokens]`` generated ids; ``pad_id`` after EOS.
    mask: ``[B, max_new_tokens]`` int32, 1 for real generated tokens (the
      EOS token included), 0 for padding after it.
    lengths: ``[B]`` number of real generated tokens.
    sequences: ``[B, P + max_new_tokens]`` each row's real prompt tokens
      followed by its real generated tokens, right-padded with ``pad_id``.
    sequence_mask: ``[B, P + max_new_tokens]`` int32 mask of ``sequences``.
  """

  tokens: Array
  mask: Array
  lengths: Array
  sequences: Array
  sequence_mask: Array


def _filter_logits(logits: Array, top_k: Array, top_p: Array) -> Array:
  """Sets the logits outside the top-k and the nucleus to -inf.

  Both limits are traced values (so changing them does not recompile): the
  k-th largest logit is read from a sorted copy instead of ``lax.top_k``,
  whose k must be static.
  """
  sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
  kth = jnp.take(sorted_logits, top_k - 1, axis=-1)[:, None]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  # Keep a token if the mass strictly before it is below top_p, so the
  # most likely token is always kept.
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  nucleus = jnp.min(
    jnp.where(mass_before < top_p, sorted_logits, jnp.inf),
    axis=-1,
    keepdims=True,
  )
  # Ties with the threshold are kept, as in other implementations.
  return jnp.where(logits < jnp.maximum(kth, nucleus), -jnp.inf, logits)


def _sample(
  logits: Array,
  rng: Array,
  temperature: Array,
  limits: tuple[Array, Array] | None,
) -> Array:
  """Draws one token per row from float32 ``logits [B, V]``.

  Args:
    logits: ``[B, V]`` float32.
    rng: PRNG key.
    temperature: scalar; 0 selects the argmax.
    limits: ``(top_k, top_p)`` scalars, or None to sample from the full
      distribution (and skip the sort).
  """
  greedy = jnp.argmax(logits, axis=-1)
  safe_temperature = jnp.where(temperature > 0, temperature, 1.0)
  scaled = logits / safe_temperature
  if limits is not None:
    scaled = _filter_logits(scaled, *limits)
  sampled = jax.random.categorical(rng, scaled, axis=-1)
  return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


def _compact(
  prompt_ids: Array,
  prompt_mask: Array,
  tokens: Array,
  mask: Array,
  pad_id: Array,
) -> tuple[Array, Array]:
  """Real prompt tokens then real generated tokens, right-padded."""
  batch, prompt_len = prompt_ids.shape
  total = prompt_len + tokens.shape[1]
  lengths = jnp.sum(prompt_mask, axis=-1, keepdims=True)
  # Padding entries are sent past the end and dropped by the scatter.
  prompt_slots = jnp.where(prompt_mask, position_ids(prompt_mask), total)
  new_slots = jnp.where(mask, lengths + jnp.arange(tokens.shape[1]), total)
  slots = jnp.concatenate([prompt_slots, new_slots], axis=1)
  values = jnp.concatenate([prompt_ids, tokens], axis=1)
  rows = jnp.arange(batch)[:, None]
  sequences = jnp.full((batch, total), pad_id, jnp.int32)
  sequences = sequences.at[rows, slots].set(values, mode="drop")
  sequence_mask = jnp.zeros((batch, total), jnp.int32)
  sequence_mask = sequence_mask.at[rows, slots].set(1, mode="drop")
  return sequences, sequence_mask


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _generate(
  model: DecoderLM,
  params: Params,
  prompt_ids: Array,
  prompt_mask: Array,
  rng: Array,
  temperature: Array,
  limits: tuple[Array, Array] | None,
  eos_ids: Array,
  pad_id: Array,
  *,
  max_new_tokens: int,
) -> SampleOutput:
  batch, prompt_len = prompt_ids.shape
  cache_len = prompt_len + max_new_tokens
  prompt_mask = prompt_mask.astype(bool)
  prompt_positions = position_ids(prompt_mask)
  prompt_lengths = jnp.sum(prompt_mask, axis=-1).astype(jnp.int32)
  lm_head = model.lm_head(params)

  def is_eos(token: Array) -> Array:
    return jnp.any(token[..., None] == eos_ids, axis=-1)

  key_valid = (
    jnp.zeros((batch, cache_len), bool).at[:, :prompt_len].set(prompt_mask)
  )
  key_positions = (
    jnp.zeros((batch, cache_len), jnp.int32)
    .at[:, :prompt_len]
    .set(prompt_positions)
  )

  # Prefill: the whole prompt in one pass, then the next-token logits at
  # each row's last real prompt token.
  # Cache slots are segment 1 once written, 0 before; each query sees the
  # written slots at positions up to its own.
  mask = AttentionMask(
    prompt_mask.astype(jnp.int32),
    prompt_positions,
    key_valid.astype(jnp.int32),
    key_positions,
  )
  hidden, cache = model.decode(
    params, prompt_ids, mask, model.init_cache(batch, cache_len), 0
  )
  last = prompt_len - 1 - jnp.argmax(prompt_mask[:, ::-1], axis=-1)
  last_hidden = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  logits = model.logits(last_hidden, lm_head)

  def cond(state):
    step, *_, done = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(state):
    # Samples token ``step`` from the carried logits, then feeds it (slot
    # P + step) to get the logits of token step + 1. Sampling in one place
    # keeps a single copy of the random-number code in the program.
    step, logits, tokens, cache, key_valid, key_positions, done = state
    token = _sample(logits, jax.random.fold_in(rng, step), temperature, limits)
    token = jnp.where(done, pad_id, token)
    tokens = tokens.at[:, step].set(token)
    done = done | is_eos(token)
    slot = prompt_len + step
    position = prompt_lengths + step
    key_valid = key_valid.at[:, slot].set(True)
    key_positions = key_positions.at[:, slot].set(position)
    mask = AttentionMask(
      jnp.ones((batch, 1), jnp.int32),
      position[:, None],
      key_valid.astype(jnp.int32),
      key_positions,
    )
    hidden, cache = model.decode(params, token[:, None], mask, cache, slot)
    logits = model.logits(hidden[:, 0], lm_head)
    return step + 1, logits, tokens, cache, key_valid, key_positions, done

  tokens = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
  state = (
    jnp.int32(0),
    logits,
    tokens,
    cache,
    key_valid,
    key_positions,
    jnp.zeros((batch,), bool),
  )
  tokens = jax.lax.while_loop(cond, body, state)[2]

  # A token is real if no EOS came strictly before it; this also holds when
  # pad_id equals an EOS id.
  eos_seen = jnp.cumsum(is_eos(tokens).astype(jnp.int32), axis=-1)
  out_mask = (eos_seen - is_eos(tokens) == 0).astype(jnp.int32)
  tokens = jnp.where(out_mask == 1, tokens, pad_id)
  sequences, sequence_mask = _compact(
    prompt_ids.astype(jnp.int32), prompt_mask, tokens, out_mask, pad_id
  )
  return SampleOutput(
    tokens, out_mask, jnp.sum(out_mask, axis=-1), sequences, sequence_mask
  )


def generate(
  model: DecoderLM,
  params: Params,
  prompt_ids: Array,
  prompt_mask: Array,
  *,
  rng: Array,
  max_new_tokens: int,
  temperature: float = 1.0,
  top_k: int | None = None,
  top_p: float | None = None,
  eos_id: int | Sequence[int] | None = None,
  pad_id: int = 0,
) -> SampleOutput:
  """Samples continuations of a batch of prompts.

  The loop is compiled once per (model, shapes, max_new_tokens, whether
  top_k/top_p are used); temperature, top_k, top_p, up to four EOS ids and
  pad_id are traced values, so changing them does not recompile. Rows
  stop at their first EOS; the loop exits early when all rows have stopped.

  Args:
    model: the ``DecoderLM``.
    params: its parameters.
    prompt_ids: ``[B, P]`` int prompt tokens, padded on either side.
    prompt_mask: ``[B, P]``, 1 for real tokens; every row needs at least one.
    rng: PRNG key; the same key gives the same samples.
    max_new_tokens: number of tokens to generate per row (the output width).
    temperature: softmax temperature; 0 means greedy decoding.
    top_k: if set, sample among the ``top_k`` most likely tokens.
    top_p: if set, sample from the smallest set of most likely tokens whose
      probability reaches ``top_p`` (nucleus sampling).
    eos_id: id or ids that end a row; None to always generate
      ``max_new_tokens``.
    pad_id: id written after EOS and in padded ``sequences`` entries.

  Returns:
    A ``SampleOutput``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from slpo_jax import models
    >>> model = models.build(models.tiny_config("llama"))
    >>> params = model.init(jax.random.key(0))
    >>> out = models.generate(model, params, jnp.array([[5, 6, 0]]),
    ...                       jnp.array([[1, 1, 0]]), rng=jax.random.key(1),
    ...                       max_new_tokens=4, temperature=0.0)
    >>> out.tokens.shape
    (1, 4)
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if top_k is not None and not 1 <= top_k <= model.config.vocab_size:
    raise ValueError(f"top_k must be in [1, vocab_size], got {top_k}")
  if top_p is not None and not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  prompt_len = prompt_ids.shape[1]
  if (
    model.config.family == "gpt2"
    and prompt_len + max_new_tokens > model.config.max_len
  ):
    raise ValueError(
      f"prompt length {prompt_len} + max_new_tokens {max_new_tokens} "
      f"exceeds the {model.config.max_len} learned positions"
    )
  limits = None
  if top_k is not None or top_p is not None:
    # Defaults that filter nothing: all tokens, and a mass bound above 1.
    limits = (
      jnp.asarray(
        model.config.vocab_size if top_k is None else top_k, jnp.int32
      ),
      jnp.asarray(2.0 if top_p is None else top_p, jnp.float32),
    )
  eos_ids = [] if eos_id is None else list(np.atleast_1d(eos_id))
  # Padded with -1 (never a token) to a fixed capacity, so that any eos_id
  # up to _EOS_CAPACITY ids reuses one compiled loop.
  capacity = max(_EOS_CAPACITY, len(eos_ids))
  eos_ids = eos_ids + [-1] * (capacity - len(eos_ids))
  return _generate(
    model,
    params,
    jnp.asarray(prompt_ids),
    jnp.asarray(prompt_mask),
    rng,
    jnp.asarray(temperature, jnp.float32),
    limits,
    jnp.asarray(eos_ids, jnp.int32),
    jnp.asarray(pad_id, jnp.int32),
    max_new_tokens=max_new_tokens,
  )

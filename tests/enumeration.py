"""A tiny autoregressive model whose every response can be listed.

Exact values of ``log pi(y)``, ``log pi(Y != y)`` and
``log pi(Y not in {y_w, y_l})`` are sums over an explicit list of sequences
here, so they check the closed forms of :mod:`slpo_jax.logprobs` (and anything
built on them) without sharing any of their code.

Example::

  model = TreeModel(seed=0)
  assert abs(sum(map(model.probability, model.all_sequences())) - 1) < 1e-12
  logits = model.logits_for((7, 7), (1, 2, model.eos), length=8)
  labels, where = model.labels_and_where((7, 7), (1, 2, model.eos), length=8)
"""

import itertools
from collections.abc import Sequence

import numpy as np

# Label written at padding positions; any value is allowed where where=False.
PAD_LABEL = -100


class TreeModel:
  """A random table of next-token logits, one row per response prefix.

  Tokens ``0 .. num_tokens - 1`` are ordinary and ``eos = num_tokens`` ends a
  response. A response has at most ``max_length`` tokens, its EOS included: in
  the rows of prefixes of length ``max_length - 1`` every logit but EOS's is
  -inf, so the EOS-terminated responses are finitely many and their
  probabilities sum to 1.

  Attributes:
    num_tokens: number of ordinary tokens.
    max_length: longest response, EOS included.
    vocab_size: ``num_tokens + 1``.
    eos: the id of EOS.
    prefixes: every response prefix that is continued (no EOS, shorter than
      ``max_length``), shortest first; row ``i`` of ``table`` holds the
      logits that follow ``prefixes[i]``.
    table: ``[len(prefixes), vocab_size]`` float64 logits, -inf where EOS is
      forced.
  """

  def __init__(
    self,
    seed: int = 0,
    *,
    num_tokens: int = 4,
    max_length: int = 4,
    scale: float = 1.0,
  ):
    """Draws the table.

    Args:
      seed: seed of the table (and of the junk logits outside responses).
      num_tokens: number of ordinary tokens.
      max_length: longest response, EOS included (at least 1).
      scale: standard deviation of the logits; larger values give peaked
        distributions, where the likeliest responses exceed probability 1/2.
    """
    if max_length < 1:
      raise ValueError(f"max_length must be at least 1, got {max_length}.")
    self.num_tokens = num_tokens
    self.max_length = max_length
    self.vocab_size = num_tokens + 1
    self.eos = num_tokens
    self.prefixes = tuple(
      prefix
      for length in range(max_length)
      for prefix in itertools.product(range(num_tokens), repeat=length)
    )
    self._row = {prefix: i for i, prefix in enumerate(self.prefixes)}
    rng = np.random.default_rng(seed)
    table = scale * rng.standard_normal((len(self.prefixes), self.vocab_size))
    for i, prefix in enumerate(self.prefixes):
      if len(prefix) == max_length - 1:
        table[i, : self.eos] = -np.inf
    self.table = table
    self._junk_rng = np.random.default_rng([seed, 1])

  def prefix_index(self, prefix: Sequence[int]) -> int:
    """Row of ``table`` that follows ``prefix`` (no EOS in it)."""
    return self._row[tuple(prefix)]

  def next_log_probs(self, prefix: Sequence[int]) -> np.ndarray:
    """``[vocab_size]`` float64 log-probabilities of the token after ``prefix``."""
    row = self.table[self.prefix_index(prefix)]
    peak = np.max(row)
    return row - peak - np.log(np.sum(np.exp(row - peak)))

  def all_sequences(self) -> list[tuple[int, ...]]:
    """Every EOS-terminated response, shortest first."""
    return [prefix + (self.eos,) for prefix in self.prefixes]

  def log_probability(self, sequence: Sequence[int]) -> float:
    """``log pi(sequence)`` in float64.

    For a sequence that does not end in EOS this is the probability that a
    response starts with it (the mass of the whole subtree), which is what
    teacher forcing on an unterminated sequence measures.
    """
    total = 0.0
    for t, token in enumerate(sequence):
      if t > 0 and sequence[t - 1] == self.eos:
        raise ValueError(f"{tuple(sequence)} continues after EOS.")
      if t >= self.max_length:
        return -np.inf
      total += self.next_log_probs(sequence[:t])[token]
    return float(total)

  def probability(self, sequence: Sequence[int]) -> float:
    """``pi(sequence)`` in float64 (see :meth:`log_probability`)."""
    return float(np.exp(self.log_probability(sequence)))

  def junk_logits(self, rows: int) -> np.ndarray:
    """``[rows, vocab_size]`` large random logits for positions not counted."""
    return 30.0 * self._junk_rng.standard_normal((rows, self.vocab_size))

  def logits_for(
    self,
    prompt_tokens: Sequence[int],
    response: Sequence[int],
    *,
    length: int | None = None,
    table=None,
  ):
    """Teacher-forced logits laid out as ``[prompt, response, padding]``.

    Row ``len(prompt_tokens) + t`` predicts ``response[t]`` from the table;
    prompt and padding rows hold junk logits (fresh on every call), which a
    correct implementation never reads because they are masked.

    Args:
      prompt_tokens: prompt ids; only their number matters.
      response: response ids (EOS-terminated or not).
      length: total number of rows; defaults to prompt plus response.
      table: optional ``[len(prefixes), vocab_size]`` array to read instead of
        ``self.table``, for example a JAX array being trained; the result is
        then a JAX array differentiable with respect to it.

    Returns:
      ``[length, vocab_size]`` logits: float64 NumPy, or a JAX array when
      ``table`` is given.
    """
    num_prompt = len(prompt_tokens)
    length = num_prompt + len(response) if length is None else length
    num_pad = length - num_prompt - len(response)
    if num_pad < 0:
      raise ValueError(
        f"length {length} is shorter than prompt plus response"
        f" ({num_prompt} + {len(response)})."
      )
    rows = [self.prefix_index(response[:t]) for t in range(len(response))]
    junk_before = self.junk_logits(num_prompt)
    junk_after = self.junk_logits(num_pad)
    if table is None:
      return np.concatenate([junk_before, self.table[rows], junk_after])
    import jax.numpy as jnp

    table = jnp.asarray(table)
    return jnp.concatenate(
      [
        jnp.asarray(junk_before, table.dtype),
        jnp.take(table, jnp.asarray(rows, dtype=jnp.int32), axis=0),
        jnp.asarray(junk_after, table.dtype),
      ]
    )

  def labels_and_where(
    self,
    prompt_tokens: Sequence[int],
    response: Sequence[int],
    *,
    length: int | None = None,
  ) -> tuple[np.ndarray, np.ndarray]:
    """Labels and response mask matching :meth:`logits_for`.

    Returns:
      ``(labels, where)``, each ``[length]``: labels are the prompt ids, the
      response ids and :data:`PAD_LABEL`; ``where`` is True on the response.
    """
    num_prompt = len(prompt_tokens)
    length = num_prompt + len(response) if length is None else length
    num_pad = length - num_prompt - len(response)
    labels = np.array(
      list(prompt_tokens) + list(response) + [PAD_LABEL] * num_pad,
      dtype=np.int32,
    )
    where = np.zeros(length, dtype=bool)
    where[num_prompt : num_prompt + len(response)] = True
    return labels, where

  def complement_log_probability(
    self, covered: Sequence[Sequence[int]]
  ) -> float:
    """``log pi(Y not in covered)`` by summing over every listed response.

    Each entry of ``covered`` is a response, or an unterminated sequence that
    stands for every response starting with it.
    """
    covered = [tuple(c) for c in covered]

    def is_covered(sequence):
      return any(sequence[: len(c)] == c for c in covered)

    total = sum(
      self.probability(s) for s in self.all_sequences() if not is_covered(s)
    )
    return float(np.log(total)) if total > 0 else -np.inf

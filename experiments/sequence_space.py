"""Policies whose whole distribution over responses can be listed exactly.

A policy here is a table of free logits with one row per response prefix: the
row of prefix ``y_<t`` is the next-token distribution after it. Teacher-forced
logits for any response are rows of that table, so the library's
:func:`slpo_jax.sequence_logps` and :func:`slpo_jax.pair_not_logps` score
responses exactly as they would score a language model's, while the
probability of every response, the mass on responses outside a data set and
``KL(pi || pi_ref)`` are finite sums that can be listed.

Two shapes are used:

* the bandit: one step, no end token, so a response is one of ``num_tokens``
  actions and the table is a single softmax;
* a tiny autoregressive model: up to ``max_length`` content tokens followed by
  an end token (forced once ``max_length`` tokens are out), so responses have
  different lengths and share prefixes.
"""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

import slpo_jax

# Label value for positions past the end of a response. The library ignores
# labels where ``where`` is False; -1 also matches no token, so the token-level
# SLPO form sees "no rejected token here" rather than token 0.
PAD = -1

Response = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class SequenceSpace:
  """All responses of at most ``max_length`` content tokens.

  Attributes:
    num_tokens: content tokens are ``0 .. num_tokens - 1``.
    max_length: the most content tokens a response holds.
    has_eos: whether responses end with an end token (id ``num_tokens``), so
      that every length from 0 to ``max_length`` occurs; without it every
      response has exactly ``max_length`` tokens.
  """

  num_tokens: int
  max_length: int
  has_eos: bool

  @property
  def vocab_size(self) -> int:
    return self.num_tokens + int(self.has_eos)

  @property
  def eos_id(self) -> int:
    if not self.has_eos:
      raise ValueError("this space has no end token")
    return self.num_tokens

  @property
  def num_nodes(self) -> int:
    """Number of prefixes that choose a next token (rows of the table)."""
    return sum(self.num_tokens**depth for depth in range(self.max_length))

  def node_id(self, prefix: Response) -> int:
    """Row of the logit table that holds the distribution after ``prefix``."""
    if len(prefix) >= self.max_length:
      raise ValueError(f"prefix {prefix} is too long to choose a next token")
    offset = sum(self.num_tokens**depth for depth in range(len(prefix)))
    value = 0
    for token in prefix:
      value = value * self.num_tokens + token
    return offset + value

  @functools.cached_property
  def responses(self) -> tuple[Response, ...]:
    """Every response as a tuple of content tokens, shortest first."""
    lengths = range(self.max_length + 1) if self.has_eos else [self.max_length]
    return tuple(
      response
      for length in lengths
      for response in itertools.product(range(self.num_tokens), repeat=length)
    )

  def index(self, response: Response) -> int:
    """Position of ``response`` in :attr:`responses`."""
    return self.responses.index(tuple(response))

  def encode(self, response: Response) -> tuple[np.ndarray, ...]:
    """Labels, mask and table rows of one response, each ``[max_length]``.

    Returns:
      ``(labels, where, node_ids)``: ``labels[t]`` is the token emitted at
      step t (the end token after the content, if it fits), ``where`` marks
      the steps that exist, and ``node_ids[t]`` is the table row that predicts
      step t (0 where ``where`` is False).
    """
    response = tuple(response)
    tokens = list(response)
    if self.has_eos and len(response) < self.max_length:
      tokens.append(self.eos_id)
    elif len(response) != self.max_length:
      raise ValueError(f"response {response} does not fit this space")
    labels = np.full(self.max_length, PAD, dtype=np.int32)
    where = np.zeros(self.max_length, dtype=bool)
    node_ids = np.zeros(self.max_length, dtype=np.int32)
    for step, token in enumerate(tokens):
      labels[step] = token
      where[step] = True
      node_ids[step] = self.node_id(response[:step])
    return labels, where, node_ids

  @functools.cached_property
  def encoded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:meth:`encode` of every response, stacked to ``[num_responses, T]``."""
    rows = [self.encode(response) for response in self.responses]
    return tuple(np.stack(column) for column in zip(*rows))

  def name(self, response: Response) -> str:
    """Readable name: ``"0 1 $"`` for tokens 0, 1 then the end token."""
    labels, where, _ = self.encode(response)
    return " ".join(
      "$" if self.has_eos and token == self.eos_id else str(token)
      for token in labels[where]
    )

  def log_probs(self, table: jax.Array) -> jax.Array:
    """``log pi(y)`` of every response, ``[num_responses]``, in list order.

    Scored with :func:`slpo_jax.sequence_logps` on teacher-forced rows, the
    same path the losses use; the values sum to 1 after ``exp``.

    Args:
      table: ``[num_nodes, vocab_size]`` logits.
    """
    labels, where, node_ids = self.encoded
    logps, _ = slpo_jax.sequence_logps(table[node_ids], labels, where=where)
    return logps

  def random_table(self, key: jax.Array, scale: float = 1.0) -> jax.Array:
    """A table of i.i.d. ``N(0, scale^2)`` logits."""
    return scale * jax.random.normal(key, (self.num_nodes, self.vocab_size))

  def uniform_table(self) -> jax.Array:
    """Zero logits: every next token equally likely at every prefix."""
    return jnp.zeros((self.num_nodes, self.vocab_size))


BANDIT = SequenceSpace(num_tokens=3, max_length=1, has_eos=False)
"""Three actions a, b, c (ids 0, 1, 2): the setting of the IPO paper, sec. 5.1."""

TINY_LM = SequenceSpace(num_tokens=3, max_length=3, has_eos=True)
"""Vocabulary 3 + end token, up to 3 tokens: 40 responses, 13 table rows."""

"""Log-probabilities straight from hidden states, never holding ``[B, T, V]``.

The plain path, ``sequence_logps(hidden @ lm_head, labels)``, materialises the
logits, and its backward pass holds a second array of the same size. At a
vocabulary of 128k and a few thousand tokens that is gigabytes, more than the
model's activations. The functions here compute the same per-token quantities

* ``log p_t(y_t)`` and
* ``log(1 - p_t(y_t))`` (optionally ``log(1 - p_t(y_t) - p_t(z_t))``)

by streaming over vocabulary chunks (and, for long inputs, token chunks) with
an online logsumexp, and a :func:`jax.custom_vjp` that recomputes each chunk's
logits in the backward pass. What is saved between the passes is a handful of
float32 scalars per token, so neither pass ever holds more than one
``[token_chunk, vocab_chunk]`` tile of logits.

The tiled computation and its custom VJP live in
:mod:`slpo_jax.fused_tiles`.
"""

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from slpo_jax import fused_tiles as _tiles
from slpo_jax import logprobs as _logprobs

# Chunk sizes by backend. CPU: the best of a grid timed with
# ``python -m bench.loss_head --tune`` (all of 256..2048 were within 10%: the
# tiles are matmul-bound). GPU and TPU: tiles big enough to keep the matrix
# units busy at d >= 512 while a float32 tile stays at 64 MiB; not yet timed
# on either (see bench/README.md). Vocabulary chunks are multiples of 128, the
# lane width of TPUs and a multiple of every GPU MMA tile.
_DEFAULT_CHUNKS = {
  # backend: (vocab_chunk_size, token_chunk_size)
  "cpu": (1024, 512),
  "gpu": (4096, 4096),
  "tpu": (4096, 4096),
}


def _default_chunks() -> tuple[int, int]:
  return _DEFAULT_CHUNKS.get(jax.default_backend(), _DEFAULT_CHUNKS["cpu"])


def _sanitize_ids(ids, vocab: int) -> jax.Array:
  ids = jnp.asarray(ids)
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise TypeError(f"token ids must be integers, got {ids.dtype}")
  ids = ids.astype(jnp.int32)
  return jnp.where((ids >= 0) & (ids < vocab), ids, _tiles.NO_ID)


def _check_shapes(hidden, lm_head, labels) -> None:
  if (
    jnp.ndim(hidden) < 2
    or jnp.ndim(lm_head) != 2
    or jnp.shape(hidden)[:-1] != jnp.shape(labels)
    or jnp.shape(hidden)[-1] != jnp.shape(lm_head)[0]
  ):
    raise ValueError(
      f"hidden has shape {jnp.shape(hidden)}, lm_head {jnp.shape(lm_head)}"
      f" and labels {jnp.shape(labels)}; expected hidden [..., T, d],"
      " lm_head [d, V] and labels [..., T]"
    )


def token_logps_from_hidden(
  hidden: ArrayLike,
  lm_head: ArrayLike,
  labels: ArrayLike,
  *,
  also_exclude: ArrayLike | None = None,
  vocab_chunk_size: int | None = None,
  token_chunk_size: int | None = None,
  logit_softcap: float | None = None,
  distribution_stats: bool = False,
) -> _logprobs.TokenLogps:
  r"""Per-token ``log p_t(y_t)`` and ``log(1 - p_t(y_t))`` from hidden states.

  Equal to ``logprobs.token_logps(hidden @ lm_head, labels,
  also_exclude=also_exclude)`` without materialising the logits:

  .. math::
    \ell_t = h_t W, \quad
    \log p_t(y_t) = \ell_{t,y_t} - \operatorname{lse}(\ell_t), \quad
    \log(1 - p_t(y_t)) = \operatorname{lse}_{v \notin E_t}(\ell_{t,v})
      - \operatorname{lse}(\ell_t)

  with :math:`E_t = \{y_t\}` or :math:`\{y_t, z_t\}`. Differentiable in
  ``hidden`` and ``lm_head``; the backward pass recomputes the logits tile by
  tile. Matmuls run in the inputs' dtype (bfloat16 stays bfloat16) with
  float32 accumulation; the softmax arithmetic is float32.

  Args:
    hidden: ``[..., T, d]`` final hidden states (after the last norm).
    lm_head: ``[d, V]`` output projection (the transposed embedding when tied).
    labels: ``[..., T]`` integer ids in ``[0, V)``; ``hidden[..., t, :]``
      predicts ``labels[..., t]``. An id outside the range matches no column
      and gives finite values, meant only for positions the caller ignores.
    also_exclude: optional ``[..., T]`` ids also left out of the complement,
      giving ``log(1 - p_t(y_t) - p_t(z_t))`` (counted once when equal to the
      label, ignored when out of range).
    vocab_chunk_size: columns of the head per tile (a multiple of 128 suits
      every backend); V need not be a multiple of it. None picks the
      backend's default: 1024 on CPU, 4096 on GPU and TPU.
    token_chunk_size: tokens per tile; the leading dims are flattened to N
      tokens, padded to a multiple of it. None picks the backend's default:
      512 on CPU, 4096 on GPU and TPU. Scratch memory is a few float32 tiles
      of ``[token_chunk_size, vocab_chunk_size]``, whatever N and V are.
    logit_softcap: if set, the logits are ``c * tanh(h_t W / c)`` (Gemma 2's
      final-logit soft-capping), applied to each tile before the softmax:
      equal to ``token_logps(c * tanh(hidden @ lm_head / c), labels)``.
    distribution_stats: also fill ``entropy`` and ``log_sum_sq_probs``
      (equal to :func:`slpo_jax.logprobs.distribution_stats` of the logits),
      in the same pass over the vocabulary tiles; no gradient flows through
      them.

  Returns:
    A :class:`~slpo_jax.logprobs.TokenLogps` of ``[..., T]`` float32 arrays
    (float64 for float64 inputs under x64).

  Raises:
    ValueError: when the shapes disagree or a chunk size is not positive.
    TypeError: when the ids are not integers or the arrays not floating.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from slpo_jax import token_logps
    >>> hidden = jax.random.normal(jax.random.key(0), (2, 5, 16))
    >>> lm_head = jax.random.normal(jax.random.key(1), (16, 300))
    >>> labels = jnp.arange(10).reshape(2, 5)
    >>> fused = token_logps_from_hidden(hidden, lm_head, labels,
    ...                                 vocab_chunk_size=128)
    >>> plain = token_logps(hidden @ lm_head, labels)
    >>> bool(jnp.allclose(fused.not_logp, plain.not_logp, atol=1e-5))
    True
  """
  _check_shapes(hidden, lm_head, labels)
  if also_exclude is not None and jnp.shape(also_exclude) != jnp.shape(labels):
    raise ValueError(
      f"also_exclude has shape {jnp.shape(also_exclude)} but labels have"
      f" shape {jnp.shape(labels)}; they must be equal"
    )
  default_vocab_chunk, default_token_chunk = _default_chunks()
  vocab_chunk = vocab_chunk_size or default_vocab_chunk
  token_chunk = token_chunk_size or default_token_chunk
  if vocab_chunk <= 0 or token_chunk <= 0:
    raise ValueError(
      f"chunk sizes must be positive, got vocab_chunk_size={vocab_chunk}"
      f" and token_chunk_size={token_chunk}"
    )
  if logit_softcap is not None and not logit_softcap > 0:
    raise ValueError(f"logit_softcap must be positive, got {logit_softcap}")
  hidden = jnp.asarray(hidden)
  lm_head = jnp.asarray(lm_head)
  dtype = jnp.result_type(hidden, lm_head)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"hidden and lm_head must be floating, got {dtype}")
  d, vocab = lm_head.shape
  batch_shape = jnp.shape(labels)
  n = math.prod(batch_shape)

  vocab_chunk = min(vocab_chunk, vocab)
  token_chunk = min(token_chunk, max(n, 1))
  padded = _tiles.num_chunks(n, token_chunk) * token_chunk
  pad = lambda x, value: jnp.pad(
    x, [(0, padded - n)] + [(0, 0)] * (x.ndim - 1), constant_values=value
  )
  flat_hidden = pad(hidden.astype(dtype).reshape(n, d), 0)
  flat_labels = pad(_sanitize_ids(labels, vocab).reshape(n), _tiles.NO_ID)
  flat_exclude = None
  if also_exclude is not None:
    flat_exclude = pad(
      _sanitize_ids(also_exclude, vocab).reshape(n), _tiles.NO_ID
    )
  outputs = _tiles.tiled_token_logps(
    flat_hidden,
    lm_head.astype(dtype),
    flat_labels,
    flat_exclude,
    vocab_chunk,
    token_chunk,
    None if logit_softcap is None else float(logit_softcap),
    bool(distribution_stats),
  )
  return _logprobs.TokenLogps(*(x[:n].reshape(batch_shape) for x in outputs))


def sequence_logps_from_hidden(
  hidden: ArrayLike,
  lm_head: ArrayLike,
  labels: ArrayLike,
  *,
  where: ArrayLike | None = None,
  vocab_chunk_size: int | None = None,
  token_chunk_size: int | None = None,
  logit_softcap: float | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""``sequence_logps(hidden @ lm_head, labels)`` without the logits.

  .. math::
    \log \pi(y) = \sum_t m_t \log p_t(y_t), \qquad
    \log \pi(Y \ne y) = \log \sum_{t: m_t} \exp\Big(
      \sum_{s<t} m_s \log p_s(y_s) + \log(1 - p_t(y_t))\Big)

  The per-token values come from :func:`token_logps_from_hidden`; the
  reduction is :func:`slpo_jax.logprobs.sequence_logps_from_token_logps`.

  Args:
    hidden: ``[..., T, d]`` final hidden states.
    lm_head: ``[d, V]`` output projection.
    labels: ``[..., T]`` integer ids; entries where ``where`` is False may
      hold anything (for example -100).
    where: optional ``[..., T]`` bool marking the response tokens that count.
    vocab_chunk_size: see :func:`token_logps_from_hidden`.
    token_chunk_size: see :func:`token_logps_from_hidden`.
    logit_softcap: see :func:`token_logps_from_hidden`.

  Returns:
    ``(logp, not_logp)``, each ``[...]`` float32. A row with nothing counted
    gives ``logp = 0`` and ``not_logp = -inf``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from slpo_jax import sequence_logps
    >>> hidden = jax.random.normal(jax.random.key(0), (2, 5, 16))
    >>> lm_head = jax.random.normal(jax.random.key(1), (16, 300))
    >>> labels = jnp.array([[-100, -100, 3, 4, 5], [-100, 7, 8, 9, -100]])
    >>> where = labels >= 0
    >>> fused = sequence_logps_from_hidden(hidden, lm_head, labels, where=where)
    >>> plain = sequence_logps(hidden @ lm_head, labels, where=where)
    >>> bool(jnp.allclose(fused[1], plain[1], atol=1e-5))
    True

  References:
    Ho, "Supervised Learning Preference Optimization", section 6.
  """
  _check_shapes(hidden, lm_head, labels)
  where = _logprobs._check_where(where, jnp.shape(labels))
  per_token = token_logps_from_hidden(
    hidden,
    lm_head,
    _logprobs.masked_ids(labels, where, fill=0),
    vocab_chunk_size=vocab_chunk_size,
    token_chunk_size=token_chunk_size,
    logit_softcap=logit_softcap,
  )
  return _logprobs.sequence_logps_from_token_logps(
    per_token.logp, per_token.not_logp, where=where
  )

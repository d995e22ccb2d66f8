"""Tile loops and the custom VJP behind :mod:`slpo_jax.fused` (the per-token
values are combined from the pass's sums in :mod:`slpo_jax.fused_combine`).

Inputs are flat: ``hidden [N, d]`` with N a multiple of the token chunk,
``lm_head [d, V]``, and integer ids ``[N]`` already mapped into ``[0, V)`` or
to ``NO_ID``. The vocabulary is the outer loop and token chunks the inner one,
so a ``[d, vocab_chunk]`` slice of the head stays in cache while token tiles
stream past it, and the backward pass finishes that slice's gradient before it
moves on (the head's gradient is written once per slice, never accumulated
across the whole vocabulary in a second buffer).

How the sums stay exact: one online accumulator (running max ``m_rest`` and
running sum ``s_rest``) covers the vocabulary *minus* the excluded ids (the
label, and ``also_exclude`` if given); the excluded logits are gathered in the
same pass. The full normaliser is then the logsumexp of at most three terms,
each shifted by the overall maximum, which gives

* one ``exp`` per logit (a separate accumulator for the full normaliser would
  need two), and
* ``log(1 - p)`` as a sum of positive terms, never a difference: accurate to
  float32 relative precision for p = 1 - 1e-7, and for logits of magnitude
  1e4 when all the mass sits on the label (the rest keeps its own maximum).

The backward pass uses the same factorisation: for an id v outside the
excluded set, ``d/dz_v = e_v * k`` with ``e_v = exp(z_v - m_rest)`` and ``k``
a per-token scalar, so it too costs one ``exp`` per logit; the label's own
derivative uses ``1 - p(y)`` from the forward pass rather than ``1 - exp(..)``.
"""

import functools

import jax
import jax.numpy as jnp

from slpo_jax import fused_combine as _combine
from slpo_jax import logprobs as _logprobs

# Marks an id that matches no column (an invalid label or exclusion) and a
# column already covered by an earlier chunk; distinct so that never match.
NO_ID = -1
_STALE_COLUMN = -2


def num_chunks(size: int, chunk: int) -> int:
  return -(-size // chunk)


def _vocab_chunk(lm_head: jax.Array, j, vocab_chunk: int):
  """Columns of chunk j of ``lm_head`` and their ids (stale ones marked).

  The last chunk is shifted left to end at column V rather than padded, so
  ``lm_head`` is never copied to a padded ``[d, V']``: its leading columns,
  already counted by chunk j - 1, are marked stale and count for nothing.
  """
  vocab = lm_head.shape[1]
  start = jnp.minimum(j * vocab_chunk, vocab - vocab_chunk)
  columns = jax.lax.dynamic_slice_in_dim(lm_head, start, vocab_chunk, axis=1)
  ids = start + jnp.arange(vocab_chunk)
  if vocab % vocab_chunk:
    ids = jnp.where(ids >= j * vocab_chunk, ids, _STALE_COLUMN)
  return start, columns, ids


def _dot(a, b, accumulate_dtype):
  """``a @ b`` in the operands' dtype (bf16 stays bf16), float32 sums."""
  if a.dtype != accumulate_dtype and jax.default_backend() == "cpu":
    # XLA:CPU has no bf16 x bf16 -> f32 kernel for every shape. Widening the
    # operands first computes the same thing: a product of two bf16 values is
    # exact in float32, and the sums are float32 either way.
    a, b = a.astype(accumulate_dtype), b.astype(accumulate_dtype)
  return jnp.dot(a, b, preferred_element_type=accumulate_dtype)


def _rows(x, i, token_chunk):
  return jax.lax.dynamic_slice_in_dim(x, i * token_chunk, token_chunk, axis=0)


def _set_rows(x, update, i, token_chunk):
  return jax.lax.dynamic_update_slice_in_dim(x, update, i * token_chunk, 0)


def _forward(
  hidden,
  lm_head,
  labels,
  exclude,
  vocab_chunk,
  token_chunk,
  softcap=None,
  distribution=False,
):
  """Per-token statistics for the whole vocabulary, one tile at a time.

  With ``softcap`` every tile's logits are capped as soon as they are
  computed, so every statistic is of the capped logits. With
  ``distribution`` two more sums ride along on the same exponentials (see
  :func:`slpo_jax.fused_combine.distribution`): the entropy and
  ``log sum_v p_v^2``.

  Returns ``(logp, not_logp, is_top1, distribution, residuals)``, every
  array ``[N]``; ``distribution`` is ``(entropy, log_sum_sq_probs)`` or
  None.
  """
  n, _ = hidden.shape
  vocab = lm_head.shape[1]
  acc = _logprobs._compute_dtype(hidden.dtype)
  has_exclude = exclude is not None
  num_tokens = n // token_chunk

  def tile(ids, columns, i, state):
    rest_max, rest_sum, label_logit, exclude_logit, before_max = state[:5]
    rows = lambda x: _rows(x, i, token_chunk)
    z = _logprobs.soft_cap(_dot(rows(hidden), columns, acc), softcap)
    is_label = ids == rows(labels)[:, None]
    excluded = is_label
    if has_exclude:
      is_exclude = ids == rows(exclude)[:, None]
      excluded = excluded | is_exclude
    rest = ~excluded
    if vocab % vocab_chunk:
      rest = rest & (ids >= 0)
    rest_z = jnp.where(rest, z, -jnp.inf)
    old_max = rows(rest_max)
    new_max = jnp.maximum(old_max, jnp.max(rest_z, axis=-1))
    # A row whose every column so far is excluded has max -inf; shifting by 0
    # keeps exp(-inf - 0) = 0 instead of exp(-inf + inf) = NaN.
    shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    scale = jnp.exp(old_max - shift)
    e = jnp.exp(rest_z - shift[:, None])
    new_sum = rows(rest_sum) * scale + jnp.sum(e, axis=-1)
    # The largest logit of a lower id than the label: argmax's tie-break
    # (the first maximum wins) for ``is_top1``, at one max per logit.
    before_z = jnp.where(ids < rows(labels)[:, None], rest_z, -jnp.inf)
    new_before = jnp.maximum(rows(before_max), jnp.max(before_z, axis=-1))
    # A gather in the pass: the label's logit is bit-identical to the one the
    # maxima were taken over.
    new_label = rows(label_logit) + jnp.sum(
      jnp.where(is_label, z, 0.0), axis=-1
    )
    updates = [new_max, new_sum, new_label]
    if has_exclude:
      updates.append(
        rows(exclude_logit) + jnp.sum(jnp.where(is_exclude, z, 0.0), axis=-1)
      )
    else:
      updates.append(rows(exclude_logit))
    updates.append(new_before)
    if distribution:
      rest_u_sum, rest_sq_sum = state[5:]
      # Rescaled to the new max: sum e^(z - m') (z - m') picks up
      # (m - m') sum e^(z - m') from the old terms; an empty old sum adds 0.
      moved = jnp.where(jnp.isfinite(old_max), old_max - shift, 0.0)
      u = jnp.where(rest, rest_z - shift[:, None], 0.0)
      updates.append(
        scale * (rows(rest_u_sum) + moved * rows(rest_sum))
        + jnp.sum(e * u, axis=-1)
      )
      updates.append(rows(rest_sq_sum) * scale**2 + jnp.sum(e * e, axis=-1))
    return tuple(
      _set_rows(s, u, i, token_chunk) for s, u in zip(state, updates)
    )

  def vocab_step(j, state):
    _, columns, ids = _vocab_chunk(lm_head, j, vocab_chunk)
    if num_tokens == 1:
      return tile(ids, columns, 0, state)
    return jax.lax.fori_loop(
      0, num_tokens, lambda i, s: tile(ids, columns, i, s), state
    )

  init = (
    jnp.full((n,), -jnp.inf, acc),
    jnp.zeros((n,), acc),
    jnp.zeros((n,), acc),
    jnp.zeros((n,), acc),
    jnp.full((n,), -jnp.inf, acc),
  )
  if distribution:
    init += (jnp.zeros((n,), acc), jnp.zeros((n,), acc))
  state = jax.lax.fori_loop(0, num_chunks(vocab, vocab_chunk), vocab_step, init)
  rest_max, rest_sum, label_logit, exclude_logit, before_max = state[:5]
  logp, not_logp, residuals = _combine.finish(
    labels, exclude, rest_max, rest_sum, label_logit, exclude_logit
  )
  is_top1 = _combine.is_top1(
    labels, exclude, rest_max, before_max, label_logit, exclude_logit
  )
  stats = None
  if distribution:
    stats = _combine.distribution(
      labels, exclude, label_logit, exclude_logit, state[5], state[6], residuals
    )
  return logp, not_logp, is_top1, stats, residuals


def _backward(
  hidden,
  lm_head,
  labels,
  exclude,
  residuals,
  cotangents,
  vocab_chunk,
  token_chunk,
  softcap=None,
  head_gradient=True,
):
  """Gradients for hidden and lm_head, recomputing each tile's logits.

  With ``softcap`` the derivative for a capped logit ``c = s tanh(z / s)``
  is carried back to the raw one by ``dc/dz = 1 - tanh(z / s)^2``. Without
  ``head_gradient`` (a frozen head, as under LoRA) lm_head's gradient is
  None, and neither its ``[d, V]`` buffer nor its matmuls exist.
  """
  n, d = hidden.shape
  vocab = lm_head.shape[1]
  acc = _logprobs._compute_dtype(hidden.dtype)
  has_exclude = exclude is not None
  num_tokens = n // token_chunk
  top, log_norm, rest_max, rest_sum, logp, not_logp, exclude_logp = residuals
  d_logp, d_not_logp = (c.astype(acc) for c in cotangents)

  # d/dz_v of logp = [v = y] - p_v; of not_logp = [v not excluded] r_v - p_v,
  # with r the softmax over the non-excluded ids.
  d_both = d_logp + d_not_logp
  label_p = jnp.exp(logp)
  exclude_p = jnp.exp(exclude_logp)
  # 1 - p(y) as a sum of the other masses, not a difference: exact near p = 1.
  label_one_minus_p = jnp.exp(not_logp) + exclude_p
  d_label = d_logp * label_one_minus_p - d_not_logp * label_p
  d_label = jnp.where(labels >= 0, d_label, 0.0)
  d_exclude = -d_both * exclude_p
  # For non-excluded v: p_v = e_v * exp(m_rest - m - log_norm), r_v = e_v / s.
  has_rest = rest_sum > 0
  rest_scale = jnp.where(
    has_rest,
    d_not_logp / jnp.where(has_rest, rest_sum, 1.0)
    - d_both * jnp.exp((rest_max - top) - log_norm),
    0.0,
  )

  # The head's gradient contracts over tokens; a transposed copy of hidden
  # (hidden-sized, made once) lets every tile use a plain [d, t] @ [t, v].
  hidden_t = hidden.T if head_gradient else None

  def tile(ids, columns, i, grads):
    d_hidden, d_columns = grads
    rows = lambda x: _rows(x, i, token_chunk)
    z = _dot(rows(hidden), columns, acc)
    if softcap is not None:
      tanh = jnp.tanh(z / softcap)
      z = softcap * tanh
    e = jnp.exp(z - rows(rest_max)[:, None])
    dz = e * rows(rest_scale)[:, None]
    if vocab % vocab_chunk:
      dz = jnp.where(ids >= 0, dz, 0.0)
    if has_exclude:
      dz = jnp.where(
        ids == rows(exclude)[:, None], rows(d_exclude)[:, None], dz
      )
    # The label last: with also_exclude == label it is counted once, as y.
    dz = jnp.where(ids == rows(labels)[:, None], rows(d_label)[:, None], dz)
    if softcap is not None:
      dz = dz * (1.0 - tanh * tanh)
    dz = dz.astype(columns.dtype)
    d_rows = rows(d_hidden) + _dot(dz, columns.T, acc)
    d_hidden = _set_rows(d_hidden, d_rows, i, token_chunk)
    if d_columns is None:
      return d_hidden, None
    hidden_t_rows = jax.lax.dynamic_slice_in_dim(
      hidden_t, i * token_chunk, token_chunk, axis=1
    )
    d_columns = d_columns + _dot(hidden_t_rows, dz, acc)
    return d_hidden, d_columns

  def vocab_step(j, grads):
    d_hidden, d_head = grads
    start, columns, ids = _vocab_chunk(lm_head, j, vocab_chunk)
    zero_columns = jnp.zeros((d, vocab_chunk), acc) if head_gradient else None
    chunk_grads = (d_hidden, zero_columns)
    if num_tokens == 1:
      d_hidden, d_columns = tile(ids, columns, 0, chunk_grads)
    else:
      d_hidden, d_columns = jax.lax.fori_loop(
        0, num_tokens, lambda i, g: tile(ids, columns, i, g), chunk_grads
      )
    if not head_gradient:
      return d_hidden, None
    d_columns = d_columns.astype(d_head.dtype)
    if vocab % vocab_chunk:
      # Stale columns belong to the previous chunk: keep what it wrote.
      old = jax.lax.dynamic_slice_in_dim(d_head, start, vocab_chunk, axis=1)
      d_columns = jnp.where(ids >= 0, d_columns, old)
    d_head = jax.lax.dynamic_update_slice_in_dim(d_head, d_columns, start, 1)
    return d_hidden, d_head

  init = (
    jnp.zeros((n, d), acc),
    jnp.zeros(lm_head.shape, lm_head.dtype) if head_gradient else None,
  )
  d_hidden, d_head = jax.lax.fori_loop(
    0, num_chunks(vocab, vocab_chunk), vocab_step, init
  )
  return d_hidden.astype(hidden.dtype), d_head


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def tiled_token_logps(
  hidden,
  lm_head,
  labels,
  exclude,
  vocab_chunk,
  token_chunk,
  softcap=None,
  distribution=False,
):
  """``(log p(y), log(1 - p(y) [- p(z)]), is_top1)``, ``[N]`` each, by tiles.

  Args:
    hidden: ``[N, d]``, N a multiple of ``token_chunk``.
    lm_head: ``[d, V]`` in the same dtype as ``hidden``.
    labels: ``[N]`` int32 ids in ``[0, V)`` or ``NO_ID`` (matches nothing).
    exclude: ``[N]`` int32 ids likewise, or None.
    vocab_chunk: columns per tile, at most V (static).
    token_chunk: rows per tile (static).
    softcap: if set (static), the logits are ``softcap * tanh(z / softcap)``
      of the raw ``z = hidden @ lm_head``, capped per tile.

    distribution: if True (static), also the entropy and ``log sum_v p_v^2``
      of every row, from the same pass (no gradient flows through them).

  Returns:
    ``(logp, not_logp)`` in float32 (float64 for float64 inputs), and
    ``is_top1``, bool: whether the label is the argmax of its row (no
    gradient flows through it); with ``distribution``, then ``entropy`` and
    ``log_sum_sq_probs``.
  """
  return _fused_fwd(
    hidden,
    lm_head,
    labels,
    exclude,
    vocab_chunk,
    token_chunk,
    softcap,
    distribution,
  )[0]


def _value(arg):
  """A primal of the symbolic-zeros rule (or None, which is passed as is)."""
  return (
    arg.value
    if isinstance(arg, jax.custom_derivatives.CustomVJPPrimal)
    else arg
  )


def _fused_fwd(
  hidden,
  lm_head,
  labels,
  exclude,
  vocab_chunk,
  token_chunk,
  softcap,
  distribution,
):
  # A head that is not differentiated (frozen: LoRA) gets no gradient: the
  # residuals' structure carries that to the backward pass.
  head_gradient = () if getattr(lm_head, "perturbed", True) else None
  hidden, lm_head, labels, exclude = map(
    _value, (hidden, lm_head, labels, exclude)
  )
  logp, not_logp, is_top1, stats, residuals = _forward(
    hidden,
    lm_head,
    labels,
    exclude,
    vocab_chunk,
    token_chunk,
    softcap,
    distribution,
  )
  saved = (hidden, lm_head, labels, exclude, residuals, head_gradient)
  return (logp, not_logp, is_top1) + (stats or ()), saved


def _dense(cotangent):
  if isinstance(cotangent, jax.custom_derivatives.SymbolicZero):
    return jnp.zeros(cotangent.shape, cotangent.dtype)
  return cotangent


def _fused_bwd(
  vocab_chunk, token_chunk, softcap, distribution, saved, cotangents
):
  del distribution  # Its outputs carry no gradient.
  hidden, lm_head, labels, exclude, residuals, head_gradient = saved
  d_hidden, d_head = _backward(
    hidden,
    lm_head,
    labels,
    exclude,
    residuals,
    # is_top1 is boolean: its cotangent is float0.
    tuple(_dense(c) for c in cotangents[:2]),
    vocab_chunk,
    token_chunk,
    softcap,
    head_gradient=head_gradient is not None,
  )
  return d_hidden, d_head, None, None


tiled_token_logps.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)

"""Sequence log-probabilities and their exact complements.

For a response y = (y_1, ..., y_T) scored by teacher forcing, with per-step
distributions p_t = softmax(logits_t):

* ``log pi(y)      = sum_t log p_t(y_t)``
* ``log pi(Y != y) = logsumexp_t [ sum_{s<t} log p_s(y_s) + log(1 - p_t(y_t)) ]``

The second line is the "first mismatch" decomposition (SLPO paper, section 6):
every sequence other than y leaves y at exactly one first position t, so the
complement is a sum of T positive terms and its log is one logsumexp. The
factor ``log(1 - p_t(y_t))`` is taken as a logsumexp over the vocabulary with
y_t masked out, never as ``log1p(-exp(log p))``, which in float32 returns -inf
or noise when p is close to 1 -- where a trained model spends its time.

The first-mismatch sum has the opposite weakness: when pi(y) is small the sum
is close to 1, its log close to 0, and its gradient a sum of O(p_t) terms that
cancel down to O(pi(y)); in float32 both keep only an absolute precision of
about 1e-7, so for a long response the gradient is rounding noise instead of
the true, vanishing value. A sequence-level complement therefore switches
form at pi(y) = 1/2 (Maechler's rule for ``log(1 - exp(x))``): the
first-mismatch sum above it, ``log1p(-exp(log pi(y)))`` below it, each where it
is accurate to float precision in value and gradient.

Everything here is a pure function of arrays: it jits, vmaps and differentiates.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


class TokenLogps(NamedTuple):
  """Per-token quantities from which every sequence-level value is built.

  Attributes:
    logp: ``log p_t(y_t)``, shape ``[..., T]``.
    not_logp: ``log(1 - p_t(y_t))``, shape ``[..., T]``.
    is_top1: whether ``y_t`` is the most likely token (the first, on ties,
      as ``argmax`` picks), shape ``[..., T]`` bool; a metric (TRL's
      ``mean_token_accuracy``), without gradient.
    entropy: ``H(p_t) = -sum_v p_t(v) log p_t(v)``, shape ``[..., T]``, or
      None when not asked for; without gradient (TRL's ``entropy`` metric).
    log_sum_sq_probs: ``log sum_v p_t(v)^2``, shape ``[..., T]``, or None;
      without gradient (WPO's weight alignment).
  """

  logp: jax.Array
  not_logp: jax.Array
  is_top1: jax.Array | None = None
  entropy: jax.Array | None = None
  log_sum_sq_probs: jax.Array | None = None


def soft_cap(z: jax.Array, softcap: float | None) -> jax.Array:
  """``softcap * tanh(z / softcap)`` (Gemma 2's logit cap), or ``z``."""
  return z if softcap is None else softcap * jnp.tanh(z / softcap)


def logits_from_hidden(
  hidden: jax.Array, lm_head: jax.Array, softcap: float | None = None
) -> jax.Array:
  """``hidden @ lm_head`` accumulated and returned in float32, then capped.

  The plain output head of the models and of the plain loss head alike; with
  ``softcap`` (Gemma 2's final-logit soft-capping) the logits become
  ``softcap * tanh(logits / softcap)``, in float32.
  """
  logits = jnp.einsum(
    "...d,dv->...v",
    hidden,
    lm_head.astype(hidden.dtype),
    preferred_element_type=jnp.float32,
  )
  return soft_cap(logits, softcap)


def _compute_dtype(dtype) -> jnp.dtype:
  # bfloat16 and float16 are promoted to float32; float64 (under x64) stays.
  return jnp.promote_types(dtype, jnp.float32)


def _safe_log(x: jax.Array) -> jax.Array:
  """log(x) for x >= 0 whose gradient is 0, not NaN, where x == 0."""
  positive = x > 0
  return jnp.where(positive, jnp.log(jnp.where(positive, x, 1.0)), -jnp.inf)


# log(1/2): where the accurate form of log(1 - exp(x)) changes (see above).
_LOG_HALF = -0.6931471805599453


def _complement(logp: jax.Array, first_mismatch: jax.Array) -> jax.Array:
  """``log(1 - exp(logp))``, from whichever form is accurate at ``logp``.

  Args:
    logp: log-probability of the covered set (one sequence, or two).
    first_mismatch: the same complement as a logsumexp of positive terms,
      accurate when ``exp(logp) > 1/2``.

  Returns:
    ``log1p(-exp(logp))`` where ``logp <= log(1/2)``, else ``first_mismatch``.
  """
  below_half = logp <= _LOG_HALF
  # The unselected branch must keep a finite gradient: clamp its input.
  safe = jnp.where(below_half, logp, _LOG_HALF)
  return jnp.where(below_half, jnp.log1p(-jnp.exp(safe)), first_mismatch)


def _masked_logsumexp(x: jax.Array, where: jax.Array, axis: int) -> jax.Array:
  """logsumexp over entries with ``where``; -inf (zero gradient) if none."""
  x = jnp.where(where, x, -jnp.inf)
  peak = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
  peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
  total = jnp.sum(jnp.where(where, jnp.exp(x - peak), 0.0), axis=axis)
  return _safe_log(total) + jnp.squeeze(peak, axis)


def token_logps(
  logits: ArrayLike,
  labels: ArrayLike,
  *,
  also_exclude: ArrayLike | None = None,
) -> TokenLogps:
  """Per-token ``log p_t(y_t)`` and ``log(1 - p_t(y_t))`` from logits.

  With ``l`` the label's logit and ``o`` the logsumexp of the other logits,
  ``p_t(y_t) = sigmoid(l - o)``, so ``log p = log_sigmoid(l - o)`` and
  ``log(1 - p) = log_sigmoid(o - l)``. No log-normaliser is subtracted: for
  p = 1 - 1e-7 the normaliser ``log(1 + 1e-7)`` rounds to 0 or 1.2e-7 in
  float32, while ``log_sigmoid`` keeps the full relative precision of both
  values. Logits are first shifted by their (constant) maximum, so that ``l``
  and ``o`` stay small where it matters, even for logits of magnitude 1e4.

  Args:
    logits: ``[..., T, V]`` unnormalised scores (any float dtype).
    labels: ``[..., T]`` integer token ids in ``[0, V)``.
    also_exclude: optional ``[..., T]`` ids also masked out of the complement,
      giving ``log(1 - p_t(y_t) - p_t(z_t))`` (counted once when z_t == y_t).

  Returns:
    A :class:`TokenLogps` of ``[..., T]`` arrays in float32 (float64 under x64).
  """
  logits = jnp.asarray(logits)
  logits = logits.astype(_compute_dtype(logits.dtype))
  labels = jnp.asarray(labels)
  vocab = jnp.arange(logits.shape[-1])
  is_label = vocab == labels[..., None]
  shifted = logits - jax.lax.stop_gradient(
    jnp.max(logits, axis=-1, keepdims=True)
  )
  label_logit = jnp.sum(jnp.where(is_label, shifted, 0.0), axis=-1)
  others = _masked_logsumexp(shifted, ~is_label, axis=-1)
  # p = e^l / (e^l + e^o): the two-class logistic form of the softmax.
  logp = jax.nn.log_sigmoid(label_logit - others)
  is_top1 = jax.lax.stop_gradient(jnp.argmax(logits, axis=-1) == labels)
  if also_exclude is None:
    return TokenLogps(logp, jax.nn.log_sigmoid(others - label_logit), is_top1)
  excluded = is_label | (vocab == jnp.asarray(also_exclude)[..., None])
  kept = _masked_logsumexp(shifted, ~excluded, axis=-1)
  removed = _masked_logsumexp(shifted, excluded, axis=-1)
  return TokenLogps(logp, jax.nn.log_sigmoid(kept - removed), is_top1)


def distribution_stats(logits: ArrayLike) -> tuple[jax.Array, jax.Array]:
  r"""Per-step entropy and ``log sum_v p_t(v)^2`` of ``softmax(logits)``.

  With :math:`u_v = z_v - \max z` and :math:`L = \log\sum_v e^{u_v}`:

  .. math::
    H = L - \sum_v p_v u_v, \qquad
    \log\sum_v p_v^2 = \log\sum_v e^{2u_v} - 2L

  Both are metrics or weights (TRL's ``entropy``, WPO's alignment term):
  no gradient flows through them.

  Args:
    logits: ``[..., V]`` unnormalised scores.

  Returns:
    ``(entropy, log_sum_sq_probs)``, each ``[...]`` in float32 (float64
    under x64).
  """
  logits = jax.lax.stop_gradient(jnp.asarray(logits))
  logits = logits.astype(_compute_dtype(logits.dtype))
  shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
  log_norm = jax.nn.logsumexp(shifted, axis=-1)
  probs = jnp.exp(shifted - log_norm[..., None])
  entropy = log_norm - jnp.sum(probs * shifted, axis=-1)
  log_sum_sq = jax.nn.logsumexp(2.0 * shifted, axis=-1) - 2.0 * log_norm
  return entropy, log_sum_sq


def _exclusive_cumsum(x: jax.Array) -> jax.Array:
  """``out[t] = sum_{s<t} x[s]`` along the last axis, exact at t = 0."""
  inclusive = jax.lax.cumsum(x, axis=x.ndim - 1)
  zeros = jnp.zeros_like(x[..., :1])
  return jnp.concatenate([zeros, inclusive[..., :-1]], axis=-1)


def _check_where(where, shape) -> jax.Array:
  if where is None:
    return jnp.ones(shape, dtype=bool)
  where = jnp.asarray(where)
  if where.shape != tuple(shape):
    raise ValueError(
      f"where has shape {where.shape} but labels have shape {tuple(shape)};"
      " they must be equal"
    )
  return where.astype(bool)


def masked_ids(ids: ArrayLike, where: jax.Array, *, fill: int) -> jax.Array:
  """Token ids with the positions where ``where`` is False set to ``fill``.

  Ignored positions may hold anything (for example -100). As labels they get
  ``fill=0``, any valid id, since their values are never read; as ids to
  exclude from a complement they get ``fill=-1``, which matches no token.
  """
  return jnp.where(where, jnp.asarray(ids), fill)


def sequence_logps_from_token_logps(
  token_logp: ArrayLike,
  token_not_logp: ArrayLike,
  *,
  where: ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Sequence ``log pi(y)`` and ``log pi(Y != y)`` from per-token values.

  This is the reduction half of :func:`sequence_logps`; a caller that obtains
  the per-token values another way (for example without materialising the
  logits) uses it directly.

  Args:
    token_logp: ``[..., T]`` values of ``log p_t(y_t)``.
    token_not_logp: ``[..., T]`` values of ``log(1 - p_t(y_t))``.
    where: optional ``[..., T]`` bool; False positions count for nothing.

  Returns:
    ``(logp, not_logp)``, each ``[...]``. A row with nothing counted has
    ``logp = 0`` and ``not_logp = -inf`` (the empty response is the only
    sequence of length zero).
  """
  token_logp = jnp.asarray(token_logp)
  token_not_logp = jnp.asarray(token_not_logp)
  if token_logp.shape != token_not_logp.shape:
    raise ValueError(
      f"token_logp has shape {token_logp.shape} but token_not_logp has shape"
      f" {token_not_logp.shape}; they must be equal"
    )
  where = _check_where(where, token_logp.shape)
  counted_logp = jnp.where(where, token_logp, 0.0)
  prefix_logp = _exclusive_cumsum(counted_logp)
  first_mismatch = _masked_logsumexp(
    prefix_logp + token_not_logp, where, axis=-1
  )
  logp = jnp.sum(counted_logp, axis=-1)
  return logp, _complement(logp, first_mismatch)


def _check_logits_labels(logits, labels, name: str = "logits") -> None:
  if jnp.ndim(logits) < 2 or jnp.shape(logits)[:-1] != jnp.shape(labels):
    raise ValueError(
      f"{name} has shape {jnp.shape(logits)} and labels have shape"
      f" {jnp.shape(labels)}; expected logits [..., T, V] with labels"
      " [..., T]"
    )


def sequence_logps(
  logits: ArrayLike,
  labels: ArrayLike,
  *,
  where: ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""Log-probability of each response and of its complement.

  .. math::
    \log \pi(y) = \sum_t m_t \log p_t(y_t), \qquad
    \log \pi(Y \ne y) = \log \sum_{t: m_t} \exp\Big(
      \sum_{s<t} m_s \log p_s(y_s) + \log(1 - p_t(y_t))\Big)

  Args:
    logits: ``[..., T, V]`` teacher-forced logits, float32 or bfloat16;
      ``logits[..., t, :]`` predicts ``labels[..., t]``.
    labels: ``[..., T]`` integer ids. Entries where ``where`` is False are
      ignored and may hold anything (for example -100).
    where: optional ``[..., T]`` bool marking the response tokens that count;
      prompt and padding are False. Defaults to all True.

  Returns:
    ``(logp, not_logp)``, each ``[...]`` float32 (float64 under x64). A row
    with nothing counted gives ``logp = 0`` and ``not_logp = -inf``.

  Raises:
    ValueError: when the shapes of logits, labels and where disagree.

  Example:
    >>> import jax.numpy as jnp
    >>> logits = jnp.log(jnp.array([[0.5, 0.5], [0.9, 0.1]]))
    >>> logp, not_logp = sequence_logps(logits, jnp.array([0, 0]))
    >>> print(jnp.exp(logp).round(4), jnp.exp(not_logp).round(4))
    0.45 0.55

  References:
    Ho, "Supervised Learning Preference Optimization", section 6.
  """
  _check_logits_labels(logits, labels)
  where = _check_where(where, jnp.shape(labels))
  per_token = token_logps(logits, masked_ids(labels, where, fill=0))
  return sequence_logps_from_token_logps(
    per_token.logp, per_token.not_logp, where=where
  )


def pair_not_logps(
  chosen_logits: ArrayLike,
  chosen_labels: ArrayLike,
  rejected_logits: ArrayLike,
  rejected_labels: ArrayLike,
  *,
  chosen_where: ArrayLike | None = None,
  rejected_where: ArrayLike | None = None,
) -> jax.Array:
  r"""``log pi(Y not in {y_w, y_l})``, by the prefix tree of the two responses.

  Let d be the first position at which the two responses differ. Every other
  sequence leaves the tree of {y_w, y_l} at exactly one place, so

  .. math::
    \pi(Y \notin \{y_w, y_l\}) =
      \sum_{t<d} P(y_{<t})(1 - p_t(y_t))
      + P(y_{<d})(1 - p_d(a_d) - p_d(b_d))
      + \sum_{t>d} P(a_{<t})(1 - p_t(a_t)) + \sum_{t>d} P(b_{<t})(1 - p_t(b_t))

  where a = y_w and b = y_l; the shared prefix and the divergence step use the
  chosen row's logits (the contexts are identical there). All terms are
  positive, so the result is a single logsumexp.

  The two rows must share a time axis: position t of both holds the same
  response step, as when both are laid out as ``[prompt, response, padding]``
  with the same prompt. If one response is a prefix of the other, identical
  responses included, the set {y_w, y_l} is covered by the shorter one and the
  result equals its complement ``log pi(Y != y_short)``.

  Args:
    chosen_logits: ``[..., T, V]`` logits teacher-forced on y_w.
    chosen_labels: ``[..., T]`` ids of y_w.
    rejected_logits: ``[..., T, V]`` logits teacher-forced on y_l.
    rejected_labels: ``[..., T]`` ids of y_l.
    chosen_where: optional ``[..., T]`` bool response mask of y_w.
    rejected_where: optional ``[..., T]`` bool response mask of y_l.

  Returns:
    ``[...]`` float32 (float64 under x64).

  References:
    Ho, "Supervised Learning Preference Optimization", Eq. 7.
  """
  _check_logits_labels(chosen_logits, chosen_labels, "chosen_logits")
  _check_logits_labels(rejected_logits, rejected_labels, "rejected_logits")
  if jnp.shape(chosen_logits) != jnp.shape(rejected_logits):
    raise ValueError(
      f"chosen_logits has shape {jnp.shape(chosen_logits)} but"
      f" rejected_logits has shape {jnp.shape(rejected_logits)}; pad both"
      " rows of a pair to the same length"
    )
  shape = jnp.shape(chosen_labels)
  chosen_where = _check_where(chosen_where, shape)
  rejected_where = _check_where(rejected_where, shape)
  chosen_labels = masked_ids(chosen_labels, chosen_where, fill=0)
  rejected_labels = masked_ids(rejected_labels, rejected_where, fill=0)
  # At the divergence step both a_d and b_d leave the complement.
  chosen_pair_not_logp = token_logps(
    chosen_logits,
    chosen_labels,
    also_exclude=masked_ids(rejected_labels, rejected_where, fill=-1),
  ).not_logp
  return pair_not_logps_from_token_logps(
    token_logps(chosen_logits, chosen_labels),
    chosen_pair_not_logp,
    token_logps(rejected_logits, rejected_labels),
    chosen_labels,
    rejected_labels,
    chosen_where=chosen_where,
    rejected_where=rejected_where,
  )


def pair_not_logps_from_token_logps(
  chosen: TokenLogps,
  chosen_pair_not_logp: ArrayLike,
  rejected: TokenLogps,
  chosen_labels: ArrayLike,
  rejected_labels: ArrayLike,
  *,
  chosen_where: ArrayLike | None = None,
  rejected_where: ArrayLike | None = None,
) -> jax.Array:
  """The reduction half of :func:`pair_not_logps`, from per-token values.

  Args:
    chosen: per-token values of y_w (see :func:`token_logps`).
    chosen_pair_not_logp: ``[..., T]`` ``log(1 - p_t(a_t) - p_t(b_t))``
      on the chosen row (``token_logps(..., also_exclude=rejected_labels)``).
    rejected: per-token values of y_l.
    chosen_labels: ``[..., T]`` ids of y_w.
    rejected_labels: ``[..., T]`` ids of y_l.
    chosen_where: optional ``[..., T]`` bool response mask of y_w.
    rejected_where: optional ``[..., T]`` bool response mask of y_l.

  Returns:
    ``[...]`` values of ``log pi(Y not in {y_w, y_l})``.
  """
  shape = jnp.shape(chosen_labels)
  chosen_where = _check_where(chosen_where, shape)
  rejected_where = _check_where(rejected_where, shape)
  both = chosen_where & rejected_where
  differs = (chosen_where != rejected_where) | (
    both & (jnp.asarray(chosen_labels) != jnp.asarray(rejected_labels))
  )
  # Positions up to and including the first difference: cumsum of ``differs``
  # is 0 before d and 1 at d.
  seen = jax.lax.cumsum(differs.astype(jnp.int32), axis=differs.ndim - 1)
  before = seen == 0
  at_divergence = differs & (seen == 1)
  # Branch terms exist only if both responses continue at d; otherwise one is
  # a prefix of the other and the tree is a single path.
  branches = jnp.any(at_divergence & both, axis=-1, keepdims=True)
  after = (seen >= 1) & ~at_divergence & branches

  chosen_prefix = _exclusive_cumsum(jnp.where(chosen_where, chosen.logp, 0.0))
  rejected_prefix = _exclusive_cumsum(
    jnp.where(rejected_where, rejected.logp, 0.0)
  )
  chosen_not = jnp.where(at_divergence, chosen_pair_not_logp, chosen.not_logp)
  chosen_terms = chosen_prefix + chosen_not
  rejected_terms = rejected_prefix + rejected.not_logp

  chosen_counted = chosen_where & (before | (at_divergence & both) | after)
  rejected_counted = rejected_where & after
  terms = jnp.concatenate([chosen_terms, rejected_terms], axis=-1)
  counted = jnp.concatenate([chosen_counted, rejected_counted], axis=-1)
  tree = _masked_logsumexp(terms, counted, axis=-1)

  # The mass the tree covers: both responses if they branch, else the shorter
  # one (a prefix of the other, or the same response).
  chosen_logp = jnp.sum(jnp.where(chosen_where, chosen.logp, 0.0), axis=-1)
  rejected_logp = jnp.sum(jnp.where(rejected_where, rejected.logp, 0.0), -1)
  chosen_shorter = jnp.sum(chosen_where, -1) <= jnp.sum(rejected_where, -1)
  covered = jnp.where(
    jnp.squeeze(branches, -1),
    _masked_logsumexp(
      jnp.stack([chosen_logp, rejected_logp], -1),
      jnp.ones(chosen_logp.shape + (2,), bool),
      axis=-1,
    ),
    jnp.where(chosen_shorter, chosen_logp, rejected_logp),
  )
  return _complement(covered, tree)

"""The fused head's per-token values from the sums of its vocabulary pass.

:func:`slpo_jax.fused_tiles._forward` keeps, per token, one online
accumulator over the vocabulary minus the excluded ids (running max and
sum) and the gathered excluded logits; the functions here combine them into
``log p(y)``, ``log(1 - p(y) [- p(z)])``, the top-1 flag, and (with the
pass's two extra sums) the entropy and ``log sum_v p_v^2``.
"""

import jax
import jax.numpy as jnp


def distribution(
  labels,
  exclude,
  label_logit,
  exclude_logit,
  rest_u_sum,
  rest_sq_sum,
  residuals,
):
  r"""Entropy and ``log sum_v p_v^2`` from the pass's sums (no gradient).

  With :math:`u_v = z_v - m` (m the overall max, ``top``) and the
  normaliser :math:`L = \log\sum_v e^{u_v}` (``log_norm``):
  :math:`H = L - e^{-L}\sum_v e^{u_v} u_v` and
  :math:`\log\sum_v p_v^2 = \log\sum_v e^{2u_v} - 2L`. The rest of the
  vocabulary holds its sums relative to its own max :math:`m_r`:
  ``rest_u_sum`` is :math:`\sum e^{z - m_r}(z - m_r)` and ``rest_sq_sum``
  :math:`\sum e^{2(z - m_r)}`; the excluded ids add their gathered logits.
  """
  top, log_norm, rest_max, rest_sum = residuals[:4]
  label_ok = labels >= 0
  if exclude is not None:
    exclude_ok = (exclude >= 0) & (exclude != labels)
  else:
    exclude_ok = jnp.zeros_like(label_ok)
  has_rest = rest_sum > 0
  rest_shift = jnp.where(has_rest, rest_max - top, 0.0)
  rest_scale = jnp.where(has_rest, jnp.exp(rest_shift), 0.0)
  u_sum = rest_scale * (rest_u_sum + rest_shift * rest_sum)
  sq_sum = rest_scale**2 * rest_sq_sum
  for ok, logit in ((label_ok, label_logit), (exclude_ok, exclude_logit)):
    u = jnp.where(ok, logit - top, 0.0)
    e = jnp.where(ok, jnp.exp(u), 0.0)
    u_sum = u_sum + e * u
    sq_sum = sq_sum + e * e
  entropy = log_norm - u_sum * jnp.exp(-log_norm)
  log_sum_sq = jnp.log(sq_sum) - 2.0 * log_norm
  return (
    jax.lax.stop_gradient(entropy),
    jax.lax.stop_gradient(log_sum_sq),
  )


def is_top1(labels, exclude, rest_max, before_max, label_logit, exclude_logit):
  """Whether the label is the row's argmax (the first one, on ties)."""
  if exclude is not None:
    exclude_ok = (exclude >= 0) & (exclude != labels)
    other = jnp.where(exclude_ok, exclude_logit, -jnp.inf)
    rest_max = jnp.maximum(rest_max, other)
    before_max = jnp.maximum(
      before_max, jnp.where(exclude < labels, other, -jnp.inf)
    )
  return (labels >= 0) & (label_logit >= rest_max) & (label_logit > before_max)


def finish(labels, exclude, rest_max, rest_sum, label_logit, exclude_logit):
  """Combines the rest-of-vocabulary sum with the gathered excluded logits."""
  label_ok = labels >= 0
  if exclude is not None:
    exclude_ok = (exclude >= 0) & (exclude != labels)
  else:
    exclude_ok = jnp.zeros_like(label_ok)
  label_logit = jnp.where(label_ok, label_logit, -jnp.inf)
  exclude_logit = jnp.where(exclude_ok, exclude_logit, -jnp.inf)
  top = jnp.maximum(rest_max, jnp.maximum(label_logit, exclude_logit))
  # Every term is shifted by the overall max, as the plain path shifts the
  # logits, so logits of magnitude 1e4 keep float32 relative precision.
  has_rest = rest_sum > 0
  rest_max_safe = jnp.where(has_rest, rest_max, top)
  rest_term = jnp.where(
    has_rest,
    (rest_max_safe - top) + jnp.log(jnp.where(has_rest, rest_sum, 1.0)),
    -jnp.inf,
  )
  label_term = label_logit - top
  exclude_term = exclude_logit - top
  rest_exp = jnp.exp(rest_term)
  label_exp = jnp.exp(label_term)
  exclude_exp = jnp.exp(exclude_term)
  # When an excluded id holds the max its term is exactly exp(0) = 1, and
  # log1p of the others keeps log p(y) accurate for p close to 1.
  label_top = label_term == 0
  exclude_top = ~label_top & (exclude_term == 0)
  log_norm = jnp.where(
    label_top,
    jnp.log1p(rest_exp + exclude_exp),
    jnp.where(
      exclude_top,
      jnp.log1p(rest_exp + label_exp),
      jnp.log(rest_exp + label_exp + exclude_exp),
    ),
  )
  # An invalid label (only ever at positions the caller ignores) counts as
  # logit 0 after the shift, as in ``logprobs.token_logps``.
  logp = jnp.where(label_ok, label_term, 0.0) - log_norm
  not_logp = rest_term - log_norm
  exclude_logp = exclude_term - log_norm
  residuals = (
    top,
    log_norm,
    rest_max_safe,
    rest_sum,
    logp,
    not_logp,
    exclude_logp,
  )
  return logp, not_logp, residuals

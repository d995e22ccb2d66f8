"""Numerical helpers shared by the loss functions."""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def log1mexp(x: ArrayLike) -> jax.Array:
  """``log(1 - exp(x))`` for ``x <= 0``, accurate on both sides of -log 2.

  ``log(-expm1(x))`` is accurate near 0 and ``log1p(-exp(x))`` far from it
  (Maechler, "Accurately Computing log(1 - exp(-|a|))", 2012). Returns -inf at
  ``x = 0`` with a zero gradient rather than NaN.
  """
  x = jnp.minimum(jnp.asarray(x), 0.0)
  near_zero = x > -jnp.log(2.0)
  at_zero = x == 0.0
  # Each branch only sees inputs from its own range: the branch not taken is
  # still differentiated, and log1p(-exp(x)) for x within 3e-8 of 0 is
  # log1p(-1) = -inf in float32, whose infinite gradient times the zero
  # cotangent of jnp.where would make the result's gradient NaN.
  near_x = jnp.where(near_zero & ~at_zero, x, -1.0)
  far_x = jnp.where(near_zero, -1.0, x)
  value = jnp.where(
    near_zero,
    jnp.log(-jnp.expm1(near_x)),
    jnp.log1p(-jnp.exp(far_x)),
  )
  return jnp.where(at_zero, -jnp.inf, value)


def weighted_log(weight: jax.Array, log_value: jax.Array) -> jax.Array:
  """``weight * log_value`` with ``0 * -inf = 0`` (a zero target ignores it)."""
  used = weight > 0
  return jnp.where(used, weight * jnp.where(used, log_value, 0.0), 0.0)


def log_ratios(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
) -> tuple[jax.Array, jax.Array]:
  """``(log pi(y_w) - log pi_ref(y_w), log pi(y_l) - log pi_ref(y_l))``."""
  chosen = jnp.asarray(policy_chosen_logps) - reference_chosen_logps
  rejected = jnp.asarray(policy_rejected_logps) - reference_rejected_logps
  return chosen, rejected


def log_ratio_margin(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
) -> jax.Array:
  """``(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))``."""
  chosen, rejected = log_ratios(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  return chosen - rejected

"""Hard SLPO divided by its target weight, against float64 closed forms."""

import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax import losses


def _log1mexp(x):
  return np.where(x > -np.log(2), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def _arguments(chosen, rejected, ref_chosen, ref_rejected):
  return (
    chosen,
    _log1mexp(chosen),
    rejected,
    _log1mexp(rejected),
    ref_chosen,
    ref_rejected,
  )


def test_equals_hard_slpo_divided_by_w_in_float64():
  rng = np.random.default_rng(0)
  chosen, rejected, ref_chosen, ref_rejected = -rng.uniform(0.05, 6, (4, 32))
  with jax.enable_x64(True):
    got = losses.slpo_normalized_loss(
      *_arguments(chosen, rejected, ref_chosen, ref_rejected)
    )
    hard = losses.slpo_loss(
      chosen, _log1mexp(chosen), _log1mexp(rejected), ref_chosen, ref_rejected
    )
    log_w = losses.slpo_target_log_weight(ref_chosen, ref_rejected)
    np.testing.assert_allclose(got, hard / np.exp(log_w), rtol=1e-10)


def test_finite_with_order_one_gradients_at_log_w_minus_ten_thousand():
  # Responses of thousands of tokens: w and pi(y) are far below float32's
  # range, yet the loss and its gradients keep their order-one values.
  rng = np.random.default_rng(1)
  ref_chosen = -1e4 + rng.normal(size=16)
  ref_rejected = ref_chosen - rng.uniform(0.1, 3, 16)
  chosen = ref_chosen + rng.normal(scale=0.5, size=16)
  rejected = ref_rejected + rng.normal(scale=0.5, size=16)
  args = [
    jnp.asarray(a, jnp.float32)
    for a in _arguments(chosen, rejected, ref_chosen, ref_rejected)
  ]

  def total(chosen, rejected):
    return jnp.sum(
      losses.slpo_normalized_loss(chosen, args[1], rejected, *args[3:])
    )

  value = losses.slpo_normalized_loss(*args)
  d_chosen, d_rejected = jax.grad(total, argnums=(0, 1))(args[0], args[2])
  assert np.all(np.isfinite(value))
  # Closed forms in float64, at the float32 inputs: with pi / w =
  # exp(log pi - log w) and 1 - pi = 1 to float precision here.
  chosen, rejected, ref_chosen, ref_rejected = (
    np.asarray(args[i], np.float64) for i in (0, 2, 4, 5)
  )
  log_w = np.logaddexp(ref_chosen, ref_rejected)
  want_chosen = np.exp(chosen - log_w) - 1.0
  want_rejected = np.exp(rejected - log_w)
  # float32 spacing at 1e4 is 2^-10: log w, rounded to it inside the loss,
  # moves exp(log pi - log w) by up to 5e-4 relative.
  np.testing.assert_allclose(d_chosen, want_chosen, rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(d_rejected, want_rejected, rtol=1e-3)
  assert np.max(np.abs(d_chosen)) > 0.1 and np.max(d_rejected) > 0.1


def test_a_lone_pair_settles_at_eq_6():
  # At pi(y_w) = w the winner's gradient is zero; the loser's is
  # pi(y_l) / w / (1 - pi(y_l)) > 0 until pi(y_l) reaches 0.
  ref_chosen, ref_rejected = np.log(0.3), np.log(0.2)
  w = 0.5

  def loss(chosen, rejected):
    return losses.slpo_normalized_loss(
      chosen,
      losses.log1mexp(chosen),
      rejected,
      losses.log1mexp(rejected),
      ref_chosen,
      ref_rejected,
    )

  with jax.enable_x64(True):
    grads = jax.grad(loss, argnums=(0, 1))(jnp.log(w), jnp.log(0.1))
    grads = [float(g) for g in grads]
  np.testing.assert_allclose(grads[0], 0.0, atol=1e-12)
  np.testing.assert_allclose(grads[1], 0.1 / w / 0.9, rtol=1e-10)

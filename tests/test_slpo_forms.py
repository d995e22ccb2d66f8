"""Length-tempered SLPO and SLPO-diff against float64 NumPy closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slpo_jax import losses


def _log1mexp(x):
  return np.where(x > -np.log(2), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def _inputs(seed, size=32, low=0.05, high=6.0):
  rng = np.random.default_rng(seed)
  chosen, rejected, ref_chosen, ref_rejected = -rng.uniform(
    low, high, (4, size)
  )
  lengths = rng.integers(1, 20, (2, size)).astype(np.float64)
  return dict(
    policy_chosen_logps=chosen,
    policy_chosen_not_logps=_log1mexp(chosen),
    policy_rejected_logps=rejected,
    policy_rejected_not_logps=_log1mexp(rejected),
    reference_chosen_logps=ref_chosen,
    reference_rejected_logps=ref_rejected,
    chosen_lengths=lengths[0],
    rejected_lengths=lengths[1],
  )


def _length_tempered_numpy(a):
  """Probabilities exponentiated directly: valid for the moderate inputs."""
  p_w, p_l = (
    np.exp(a["policy_chosen_logps"]),
    np.exp(a["policy_rejected_logps"]),
  )
  w = np.minimum(
    np.exp(a["reference_chosen_logps"]) + np.exp(a["reference_rejected_logps"]),
    1.0,
  )
  t_w, t_l = a["chosen_lengths"], a["rejected_lengths"]
  q = w ** (1 / t_w) / (w ** (1 / t_w) + (1 - w) ** (1 / t_w))
  s = p_w ** (1 / t_w) / (p_w ** (1 / t_w) + (1 - p_w) ** (1 / t_w))
  winner = -(q * np.log(s) + (1 - q) * np.log(1 - s))
  s_l = p_l ** (1 / t_l) / (p_l ** (1 / t_l) + (1 - p_l) ** (1 / t_l))
  return winner - np.log(1 - s_l)


def _diff_numpy(a, transfer):
  p_w, p_l = (
    np.exp(a["policy_chosen_logps"]),
    np.exp(a["policy_rejected_logps"]),
  )
  r_w, r_l = (
    np.exp(a["reference_chosen_logps"]),
    np.exp(a["reference_rejected_logps"]),
  )
  n_w, n_l = a["chosen_lengths"], a["rejected_lengths"]
  q_w, q_l = r_w + transfer * r_l, (1 - transfer) * r_l
  valid = q_w < 1
  q_w = np.where(valid, q_w, 0.5)

  def odds(p, n):
    return np.log(p / (1 - p)) / n

  z = (odds(p_w, n_w) - odds(p_l, n_l)) - (odds(q_w, n_w) - odds(q_l, n_l))
  return np.where(valid, np.log1p(np.exp(-z)), 0.0)


def test_length_tempered_matches_numpy_and_hard_slpo_at_length_one():
  a = _inputs(0)
  with jax.enable_x64(True):
    got = losses.slpo_length_tempered_loss(**a)
    np.testing.assert_allclose(got, _length_tempered_numpy(a), rtol=1e-10)
    ones = dict(a, chosen_lengths=np.ones(32), rejected_lengths=np.ones(32))
    hard = losses.slpo_loss(
      a["policy_chosen_logps"],
      a["policy_chosen_not_logps"],
      a["policy_rejected_not_logps"],
      a["reference_chosen_logps"],
      a["reference_rejected_logps"],
    )
    np.testing.assert_allclose(
      losses.slpo_length_tempered_loss(**ones), hard, rtol=1e-10
    )


def test_length_tempered_winner_minimum_is_eq_6():
  # One pair: the winner's loss over pi(y_w) is smallest at w.
  grid = np.linspace(0.01, 0.99, 9801)
  ref_w, ref_l = np.log(0.3), np.log(0.2)
  with jax.enable_x64(True):
    values = losses.slpo_length_tempered_loss(
      np.log(grid),
      np.log1p(-grid),
      np.full_like(grid, np.log(1e-3)),
      np.full_like(grid, np.log1p(-1e-3)),
      np.full_like(grid, ref_w),
      np.full_like(grid, ref_l),
      np.full_like(grid, 7.0),
      np.full_like(grid, 5.0),
    )
  assert abs(grid[np.argmin(values)] - 0.5) <= 1e-4


def test_diff_matches_numpy_and_gradient():
  a = _inputs(1)
  with jax.enable_x64(True):
    got = losses.slpo_diff_loss(**a, transfer=0.3)
    np.testing.assert_allclose(got, _diff_numpy(a, 0.3), rtol=1e-10)
    # d/d omega_w of softplus(-z) is -sigmoid(-z), and omega_w's derivative
    # with respect to log pi(y_w) is 1 / ((1 - pi(y_w)) |y_w|).
    grad = jax.grad(
      lambda c: jnp.sum(
        losses.slpo_diff_loss(**dict(a, policy_chosen_logps=c), transfer=0.3)
      )
    )(a["policy_chosen_logps"])
    z = -np.log(np.expm1(_diff_numpy(a, 0.3)))  # softplus(-z) inverted
    # The complement is an input here, held fixed: only log p moves.
    want = -1 / (1 + np.exp(z)) / a["chosen_lengths"]
    valid = _diff_numpy(a, 0.3) > 0
    np.testing.assert_allclose(grad[valid], want[valid], rtol=1e-8)


def test_diff_leaves_out_rows_whose_target_reaches_one():
  a = _inputs(2, size=4)
  a["reference_chosen_logps"][:2] = np.log(0.9)
  a["reference_rejected_logps"][:2] = np.log(0.5)  # 0.9 + 0.25 > 1
  with jax.enable_x64(True):
    value = losses.slpo_diff_loss(**a, transfer=0.5)
    grad = jax.grad(
      lambda r: jnp.sum(
        losses.slpo_diff_loss(**dict(a, policy_rejected_logps=r))
      )
    )(a["policy_rejected_logps"])
  np.testing.assert_array_equal(np.asarray(value[:2]), 0.0)
  np.testing.assert_array_equal(np.asarray(grad[:2]), 0.0)
  assert np.all(np.asarray(value[2:]) > 0) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("transfer", [0.0, 1.0, -0.5])
def test_diff_refuses_transfer_outside_the_open_interval(transfer):
  with pytest.raises(ValueError, match="transfer"):
    losses.slpo_diff_loss(**_inputs(3, size=2), transfer=transfer)


@pytest.mark.parametrize(
  "loss", [losses.slpo_length_tempered_loss, losses.slpo_diff_loss]
)
def test_finite_in_float32_at_log_probabilities_of_minus_ten_thousand(loss):
  rng = np.random.default_rng(4)
  ref_chosen = -1e4 + rng.normal(size=8)
  ref_rejected = ref_chosen - rng.uniform(0.1, 3, 8)
  chosen = ref_chosen + rng.normal(scale=0.5, size=8)
  rejected = ref_rejected + rng.normal(scale=0.5, size=8)
  args = {
    k: jnp.asarray(v, jnp.float32)
    for k, v in dict(
      policy_chosen_logps=chosen,
      policy_chosen_not_logps=_log1mexp(chosen),
      policy_rejected_logps=rejected,
      policy_rejected_not_logps=_log1mexp(rejected),
      reference_chosen_logps=ref_chosen,
      reference_rejected_logps=ref_rejected,
      chosen_lengths=np.full(8, 4000.0),
      rejected_lengths=np.full(8, 4000.0),
    ).items()
  }

  def total(c, r):
    return jnp.sum(
      loss(**dict(args, policy_chosen_logps=c, policy_rejected_logps=r))
    )

  value = loss(**args)
  d_chosen, d_rejected = jax.grad(total, argnums=(0, 1))(
    args["policy_chosen_logps"], args["policy_rejected_logps"]
  )
  assert np.all(np.isfinite(value))
  assert np.all(np.isfinite(d_chosen)) and np.all(np.isfinite(d_rejected))
  if loss is losses.slpo_length_tempered_loss:
    # Closed forms in float64 (complements held fixed): the winner's
    # derivative is (s_w - q) / t and the loser's s_l / t, with
    # s = sigmoid((log pi - log pi(Y != y)) / t), q the tempered target.
    f64 = {k: np.asarray(v, np.float64) for k, v in args.items()}
    t = 4000.0

    def sigmoid(x):
      return 1 / (1 + np.exp(-x))

    log_w = np.logaddexp(
      f64["reference_chosen_logps"], f64["reference_rejected_logps"]
    )
    q = sigmoid((log_w - _log1mexp(log_w)) / t)
    s_w = sigmoid(
      (f64["policy_chosen_logps"] - f64["policy_chosen_not_logps"]) / t
    )
    s_l = sigmoid(
      (f64["policy_rejected_logps"] - f64["policy_rejected_not_logps"]) / t
    )
    np.testing.assert_allclose(d_chosen, (s_w - q) / t, rtol=2e-2, atol=1e-11)
    np.testing.assert_allclose(d_rejected, s_l / t, rtol=1e-3)
  # The loser's push keeps a per-token scale: of order
  # pi(y_l)^(1/|y|) / |y| = e^-2.5 / 4000, not exp(-1e4).
  assert np.min(np.abs(d_rejected)) > 1e-6

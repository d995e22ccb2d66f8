"""The frontier study's selection and decision rules, on made-up points."""

import math

import pytest

from experiments import frontier


def test_envelope_keeps_exactly_the_undominated_points():
  points = [(1.0, 0.2), (2.0, 0.3), (2.0, 0.25), (3.0, 0.28), (0.5, 0.2)]
  # (1, 0.2) loses to (0.5, 0.2): as much reward at less KL.
  assert frontier.envelope(points) == [1, 4]


def test_interpolate_is_linear_and_nan_beyond_the_last_point():
  curve = [(0.0, 0.0, -0.1), (1.0, 0.2, 0.1), (3.0, 0.4, 0.3)]
  assert frontier.interpolate(curve, 2.0) == pytest.approx((0.3, 0.2))
  assert frontier.interpolate(curve, 0.5) == pytest.approx((0.1, 0.0))
  assert all(math.isnan(v) for v in frontier.interpolate(curve, 3.5))


def test_first_crossing_reads_the_first_time_the_budget_is_spent():
  trajectory = [(0.0, 0.0), (1.0, 0.1), (3.0, 0.5), (1.5, 0.6), (4.0, 0.7)]
  assert frontier.first_crossing(trajectory, 2.0) == pytest.approx(0.3)
  assert frontier.first_crossing(trajectory, 5.0) is None


def _rows(loss, hparam, family, kl, reward):
  return {
    "family": family,
    "loss": loss,
    "hyperparameter": hparam,
    "seed": 0,
    "step": 360,
    "kl": kl,
    "reward": reward,
  }


def test_select_takes_the_envelope_and_each_forms_best_learning_rate():
  reference = {
    "family": "reference",
    "loss": "reference",
    "hyperparameter": "",
    "seed": 0,
    "step": 0,
    "kl": 0.0,
    "reward": 0.0,
  }
  # DPO beta=0.2 at 1e-3 lies below DPO beta=1 at 3e-3 (more KL, less
  # reward); slpo_normalized is best above the envelope at 3e-3.
  phase_a = {
    1e-3: [
      reference,
      _rows("dpo", "beta=0.2", "dpo", 4.0, 0.30),
      _rows("slpo_normalized", "", "slpo_normalized", 1.0, 0.05),
    ],
    3e-3: [
      reference,
      _rows("dpo", "beta=0.2", "dpo", 8.0, 0.50),
      _rows("dpo", "beta=1", "dpo", 2.0, 0.35),
      _rows("slpo_normalized", "", "slpo_normalized", 3.0, 0.30),
    ],
  }
  chosen = {
    (p.loss, p.hyperparameter, lr) for p, lr in frontier.select(phase_a)
  }
  assert chosen == {
    ("dpo", "beta=0.2", 3e-3),
    ("dpo", "beta=1", 3e-3),
    ("slpo_normalized", "", 3e-3),
  }

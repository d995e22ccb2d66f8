"""Section 5.2's shared-parameter policy and its exact measures."""

import jax
import numpy as np
import pytest

from experiments import displacement
from experiments import objectives


def test_features_tell_apart_what_the_network_may_see():
  features = displacement.prefix_features(displacement.SPACE)
  assert features.shape == (341, 15)
  # Every prefix has one last token, one token before it and one length.
  np.testing.assert_array_equal(features.sum(1), 3)
  space = displacement.SPACE
  # Prefixes that end alike at the same length share their features.
  a, b = space.node_id((0, 1, 2)), space.node_id((3, 1, 2))
  np.testing.assert_array_equal(features[a], features[b])


def test_pairs_are_near_duplicates():
  pairs = displacement.near_duplicate_pairs(displacement.SPACE, 8)
  assert len({w for w, _ in pairs}) == 8
  for winner, loser in pairs:
    assert len(winner) == len(loser) == 5
    assert winner[:4] == loser[:4] and winner[4] != loser[4]


def test_measures_match_a_float64_numpy_computation():
  rng = np.random.default_rng(1)
  logits_p, logits_q = rng.normal(size=20), rng.normal(size=20)
  log_p = logits_p - np.log(np.exp(logits_p).sum())
  log_q = logits_q - np.log(np.exp(logits_q).sum())
  chosen, rejected = np.array([0, 1]), np.array([2, 3])
  outside = np.ones(20, bool)
  outside[:4] = False
  with jax.enable_x64(True):
    got = displacement.measures(log_p, log_q, chosen, rejected, outside)
    got = {name: float(value) for name, value in got.items()}
  p, q = np.exp(log_p), np.exp(log_q)
  rest_p, rest_q = p[4:] / p[4:].sum(), q[4:] / q[4:].sum()
  assert got["kl"] == pytest.approx(np.sum(p * np.log(p / q)))
  assert got["rest_kl"] == pytest.approx(
    np.sum(rest_p * np.log(rest_p / rest_q))
  )
  assert got["outside_change"] == pytest.approx(p[4:].sum() - q[4:].sum())
  assert got["chosen_shift"] == pytest.approx(np.mean(log_p[:2] - log_q[:2]))


def test_short_training_starts_at_the_reference_and_moves():
  pairs = displacement.near_duplicate_pairs(displacement.SPACE, 8)
  records = displacement.train(objectives.dpo(0.1), pairs, seeds=2, steps=100)
  assert records["kl"].shape == (2, 11)
  np.testing.assert_allclose(records["kl"][:, 0], 0.0, atol=1e-12)
  assert np.all(records["kl"][:, -1] > 1e-3)
  # DPO widens the margin: the loser falls more than the winner.
  assert np.all(
    records["rejected_shift"][:, -1] < records["chosen_shift"][:, -1]
  )
  at = displacement.at_budget(records, float(records["kl"][:, -1].min()) / 2)
  assert at is not None and at["kl"] == pytest.approx(
    float(records["kl"][:, -1].min()) / 2
  )

"""Tests of slpo_jax.preference_metrics against NumPy and golden rewards.

The golden rewards come from a transcription of the reference DPO code (see
tests/golden/make_golden.py; regenerate with
``python tests/golden/make_golden.py``).
"""

import json
import pathlib

import jax
import numpy as np
import pytest

import slpo_jax

GOLDEN = json.loads(
  (pathlib.Path(__file__).parent / "golden" / "losses.json").read_text()
)
TRL_KEYS = {
  "rewards/chosen",
  "rewards/rejected",
  "rewards/accuracies",
  "rewards/margins",
  "logps/chosen",
  "logps/rejected",
}


def _inputs(rng, shape):
  pc, pr, rc, rr = (
    rng.uniform(-50.0, -0.1, shape).astype(np.float32) for _ in range(4)
  )
  pr.flat[0], rr.flat[0] = pc.flat[0], rc.flat[0]  # a tie: not accurate
  return pc, pr, rc, rr


@pytest.mark.parametrize("beta", [0.05, 0.5])
def test_values_match_numpy(beta):
  rng = np.random.default_rng(0)
  pc, pr, rc, rr = _inputs(rng, (4, 8))
  got = slpo_jax.preference_metrics(pc, pr, rc, rr, beta=beta)
  assert set(got) == TRL_KEYS | {"slpo/target_log_weight"}
  f64 = lambda x: np.asarray(x, np.float64)
  chosen = beta * (f64(pc) - f64(rc))
  rejected = beta * (f64(pr) - f64(rr))
  want = {
    "rewards/chosen": chosen,
    "rewards/rejected": rejected,
    "rewards/margins": chosen - rejected,
    "logps/chosen": pc,
    "logps/rejected": pr,
    "slpo/target_log_weight": np.minimum(np.logaddexp(f64(rc), f64(rr)), 0),
  }
  for key, value in want.items():
    assert got[key].shape == (4, 8), key
    np.testing.assert_allclose(
      got[key], value, rtol=1e-5, atol=1e-6, err_msg=key
    )
  accuracies = np.asarray(got["rewards/accuracies"])
  assert set(np.unique(accuracies)) <= {0.0, 1.0}
  np.testing.assert_array_equal(accuracies, (chosen > rejected).astype(float))
  assert accuracies.flat[0] == 0.0  # equal rewards are not a win


def test_complements_are_passed_through_when_given():
  rng = np.random.default_rng(1)
  pc, pr, rc, rr = _inputs(rng, (5,))
  nc, nr = rng.uniform(-1.0, 0.0, (2, 5)).astype(np.float32)
  got = slpo_jax.preference_metrics(
    pc, pr, rc, rr, policy_chosen_not_logps=nc, policy_rejected_not_logps=nr
  )
  np.testing.assert_array_equal(got["logps/chosen_not"], nc)
  np.testing.assert_array_equal(got["logps/rejected_not"], nr)
  assert "logps/chosen_not" not in slpo_jax.preference_metrics(pc, pr, rc, rr)


def test_target_weight_is_capped_at_one():
  # Chosen equal to rejected and near-certain: w would be about 2.
  got = slpo_jax.preference_metrics(-1e-3, -1e-3, -1e-3, -1e-3)
  assert float(got["slpo/target_log_weight"]) == 0.0


def test_jit_matches_eager():
  rng = np.random.default_rng(2)
  args = _inputs(rng, (6,))
  eager = slpo_jax.preference_metrics(*args, beta=0.1)
  jitted = jax.jit(lambda *a: slpo_jax.preference_metrics(*a, beta=0.1))(*args)
  for key in eager:
    # XLA may contract beta * a - beta * b into a fused multiply-add.
    np.testing.assert_allclose(
      jitted[key], eager[key], rtol=1e-6, atol=1e-6, err_msg=key
    )


@pytest.mark.parametrize(
  "case",
  [c for c in GOLDEN["cases"] if c["loss"] == "dpo"],
  ids=lambda c: (
    f"beta={c['params']['beta']},ls={c['params']['label_smoothing']}"
  ),
)
def test_rewards_match_reference_implementation(case):
  inputs = [np.asarray(v, np.float32) for v in case["inputs"].values()]
  got = slpo_jax.preference_metrics(*inputs, beta=case["params"]["beta"])
  np.testing.assert_allclose(
    got["rewards/chosen"], case["chosen_rewards"], rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    got["rewards/rejected"], case["rejected_rewards"], rtol=1e-5, atol=1e-6
  )
  want_accuracies = np.asarray(case["chosen_rewards"]) > np.asarray(
    case["rejected_rewards"]
  )
  # The first golden example is a tie at the reference (both rewards 0).
  np.testing.assert_array_equal(got["rewards/accuracies"], want_accuracies)

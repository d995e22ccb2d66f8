"""KTO's loss against TRL 1.16's ``KTOTrainer``, in float64.

The golden file ``tests/golden/trl_kto.json`` holds TRL's loss, its KL
estimate and the loss's gradient with respect to every per-token policy
log-prob (``tests/golden/make_trl_kto_golden.py``); the same inputs go
through :func:`slpo_jax.losses.kto_reference_point` and
:func:`slpo_jax.losses.kto_loss`, averaged over the batch as TRL does.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slpo_jax import losses

GOLDEN = pathlib.Path(__file__).parent / "golden" / "trl_kto.json"
CASES = json.loads(GOLDEN.read_text())["cases"]
RTOL = 1e-6


def _sums(rows):
  return np.array([sum(r) for r in rows])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_value_kl_and_gradient_equal_trl(case):
  desirable = np.array(case["desirable"])
  counted = np.ones(len(desirable), bool)
  with jax.enable_x64(True):
    z = losses.kto_reference_point(
      _sums(case["policy_kl_token_logps"]),
      _sums(case["reference_kl_token_logps"]),
      counted,
    )
    np.testing.assert_allclose(float(z), case["kl"], rtol=RTOL, atol=1e-300)

    def batch_loss(policy_logps):
      return jnp.mean(
        losses.kto_loss(
          policy_logps,
          _sums(case["reference_token_logps"]),
          desirable,
          z,
          beta=case["beta"],
          desirable_weight=case["desirable_weight"],
          undesirable_weight=case["undesirable_weight"],
        )
      )

    loss, grad = jax.value_and_grad(batch_loss)(
      jnp.asarray(_sums(case["policy_token_logps"]))
    )
  np.testing.assert_allclose(float(loss), case["loss"], rtol=RTOL)
  # Every token of a completion has the gradient of its sequence log-prob.
  want = np.array([g[0] for g in case["grad_policy_token_logps"]])
  np.testing.assert_allclose(np.asarray(grad), want, rtol=RTOL)


def test_the_golden_cases_cover_both_sides_of_the_clamp():
  kls = [case["kl"] for case in CASES]
  assert min(kls) == 0.0 and max(kls) > 0.0


def test_padding_examples_stay_out_of_the_reference_point():
  with jax.enable_x64(True):
    z = losses.kto_reference_point(
      jnp.array([1.0, 3.0, -100.0]),
      jnp.array([0.0, 0.0, 0.0]),
      jnp.array([True, True, False]),
    )
  np.testing.assert_allclose(float(z), 2.0)


def test_no_gradient_flows_through_the_reference_point():
  grad = jax.grad(
    lambda kl: losses.kto_reference_point(kl, jnp.zeros(2), jnp.ones(2, bool))
  )(jnp.array([1.0, 2.0]))
  np.testing.assert_array_equal(grad, 0.0)

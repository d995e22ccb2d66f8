"""Gradient scale at the reference, on a few lengths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import gradient_scale
from experiments import objectives

LENGTHS = (1, 8, 64, 100, 140, 256)


@pytest.fixture(scope="module")
def pair():
  return gradient_scale.make_pair(seed=0)


@pytest.fixture(scope="module")
def float32_norms(pair):
  pullback = gradient_scale.Pullback(pair, LENGTHS, jnp.float32)
  return {
    objective.label: gradient_scale.norm(
      gradient_scale.gradients(objective, pullback)
    )
    for objective in (
      objectives.dpo(0.1),
      objectives.slpo(),
      objectives.slpo(8.0),
    )
  }


def test_pair_has_realistic_token_probabilities(pair):
  chosen_logits, _, chosen_labels, _ = pair
  probs = np.exp(chosen_logits[np.arange(len(chosen_labels)), chosen_labels])
  assert np.all((probs >= 0.3) & (probs <= 0.7))
  np.testing.assert_allclose(np.exp(chosen_logits).sum(axis=1), 1.0)


def test_hard_slpo_underflows_in_float32_and_tempered_does_not(float32_norms):
  hard = float32_norms["slpo"]
  tempered = float32_norms["slpo_tempered t=8"]
  lengths = np.array(LENGTHS)
  # log pi ~ -0.72 T: still representable at T = 100, below the smallest
  # normal float32 (log ~ -87.3) from T ~ 124 on.
  assert np.all(hard[lengths <= 100] > 0)
  assert np.all(hard[lengths >= 140] == 0)
  assert np.all(tempered > 0)
  assert hard[lengths == 64][0] < 1e-15


def test_dpo_gradient_is_nonzero_at_the_reference_and_grows(float32_norms):
  dpo = float32_norms["dpo beta=0.1"]
  assert np.all(dpo > 0)
  assert np.all(np.diff(dpo) > 0)


def test_float64_hard_slpo_matches_its_closed_form(pair):
  with jax.enable_x64(True):
    pullback = gradient_scale.Pullback(pair, (1, 8, 64), jnp.float64)
    measured = gradient_scale.gradients(objectives.slpo(), pullback)
    formula, log_w, log_l = gradient_scale.slpo_formula(pullback)
  assert np.all(log_w < 0) and np.all(log_l < 0)
  np.testing.assert_allclose(
    gradient_scale.norm(measured), gradient_scale.norm(formula), rtol=1e-9
  )
  np.testing.assert_allclose(
    gradient_scale.cosine(measured, formula), 1.0, atol=1e-9
  )


def test_norm_survives_tiny_values():
  grads = np.array([[3e-200, 4e-200], [0.0, 0.0]])
  np.testing.assert_allclose(gradient_scale.norm(grads), [5e-200, 0.0])

"""Enumerable policies: the listed distribution is a distribution, and the
library's complements agree with it."""

import jax
import numpy as np
import pytest

import slpo_jax
from experiments import stats
from experiments.sequence_space import BANDIT
from experiments.sequence_space import PAD
from experiments.sequence_space import TINY_LM


def _product_log_probs(space, table):
  """log pi of every response by multiplying softmax rows in NumPy."""
  table = np.asarray(table, np.float64)
  log_softmax = table - np.log(np.exp(table).sum(axis=1, keepdims=True))
  out = []
  for response in space.responses:
    labels, where, nodes = space.encode(response)
    out.append(
      sum(
        log_softmax[nodes[t], labels[t]]
        for t in range(space.max_length)
        if where[t]
      )
    )
  return np.array(out)


def test_sizes():
  assert len(BANDIT.responses) == 3 and BANDIT.num_nodes == 1
  # 1 + 3 + 9 + 27 responses; 1 + 3 + 9 prefixes choose a next token.
  assert len(TINY_LM.responses) == 40 and TINY_LM.num_nodes == 13
  assert TINY_LM.vocab_size == 4


def test_encode_places_the_end_token_and_forces_it_at_full_length():
  labels, where, nodes = TINY_LM.encode((0, 2))
  np.testing.assert_array_equal(labels, [0, 2, TINY_LM.eos_id])
  np.testing.assert_array_equal(where, [True, True, True])
  np.testing.assert_array_equal(
    nodes, [0, TINY_LM.node_id((0,)), TINY_LM.node_id((0, 2))]
  )
  labels, where, _ = TINY_LM.encode((1,))
  np.testing.assert_array_equal(labels, [1, TINY_LM.eos_id, PAD])
  np.testing.assert_array_equal(where, [True, True, False])
  labels, where, _ = TINY_LM.encode((2, 2, 2))  # Full length: no end token.
  np.testing.assert_array_equal(labels, [2, 2, 2])
  assert TINY_LM.name((0, 1)) == "0 1 $"


@pytest.mark.parametrize("space", [BANDIT, TINY_LM])
def test_listed_distribution_sums_to_one_and_matches_products(space):
  table = space.random_table(jax.random.PRNGKey(3), scale=2.0)
  log_probs = np.asarray(jax.jit(space.log_probs)(table), np.float64)
  np.testing.assert_allclose(np.exp(log_probs).sum(), 1.0, atol=1e-5)
  np.testing.assert_allclose(
    log_probs, _product_log_probs(space, table), atol=1e-5
  )


@pytest.mark.parametrize(
  "chosen,rejected",
  [
    ((0, 1), (0, 2)),  # Shared prefix, same length.
    ((0, 1), (1,)),  # Different first token and length.
    ((0,), (0, 1, 2)),  # One is a prefix of the other's content.
    ((2, 2, 2), (2, 2, 1)),
  ],
)
def test_library_complements_match_enumeration(chosen, rejected):
  """pi(Y != y) and pi(Y not in {y_w, y_l}) as 1 - listed masses."""
  table = TINY_LM.random_table(jax.random.PRNGKey(5))
  probs = np.exp(np.asarray(jax.jit(TINY_LM.log_probs)(table), np.float64))
  encoded = [TINY_LM.encode(r) for r in (chosen, rejected)]
  (cl, cw, cn), (rl, rw, rn) = encoded

  @jax.jit
  def complements(table):
    _, chosen_not = slpo_jax.sequence_logps(table[cn], cl, where=cw)
    pair_not = slpo_jax.pair_not_logps(
      table[cn], cl, table[rn], rl, chosen_where=cw, rejected_where=rw
    )
    return chosen_not, pair_not

  chosen_not, pair_not = complements(table)
  p_chosen = probs[TINY_LM.index(chosen)]
  p_rejected = probs[TINY_LM.index(rejected)]
  np.testing.assert_allclose(np.exp(chosen_not), 1 - p_chosen, rtol=1e-5)
  np.testing.assert_allclose(
    np.exp(pair_not), 1 - p_chosen - p_rejected, rtol=1e-5
  )


def test_t_quantiles_match_scipy():
  scipy_stats = pytest.importorskip("scipy.stats")
  for df in range(1, 31):
    assert stats.t_quantile_975(df) == pytest.approx(
      scipy_stats.t.ppf(0.975, df), abs=1e-3
    )


def test_mean_interval():
  mean, low, high = stats.mean_interval([1.0, 2.0, 3.0])
  assert mean == 2.0
  # sd 1, n 3: half-width t_{0.975,2} / sqrt(3).
  assert high - mean == pytest.approx(4.303 / np.sqrt(3))
  assert stats.mean_interval([5.0]) == (5.0, 5.0, 5.0)
  assert all(np.isnan(stats.mean_interval([np.nan, np.nan])))

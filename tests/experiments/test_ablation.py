"""Section 5's ablation losses, matched sampler and paired gap."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ablation
from experiments import ablation_losses
from experiments import ablation_report
from experiments import controlled_generation as cg
from experiments import paired_gap
from slpo_jax.losses import dpo_family
from slpo_jax.losses import slpo_normalized
from slpo_jax.tasks import synthetic
from slpo_jax.tasks.vocab import EOS_ID

FIGURES = pathlib.Path(__file__).parents[2] / "docs" / "figures"


def _grad(fn, chosen, rejected):
  return np.array(jax.grad(fn, argnums=(0, 1))(chosen, rejected))


def test_share_weighted_dpo_points_where_slpo_normalized_points():
  with jax.enable_x64(True):
    ref_w, ref_l = -30.0, -28.0
    share = 1.0 / (1.0 + np.exp(ref_w - ref_l))  # s = pi_l / (pi_w + pi_l)
    beta = 0.2

    def weighted(c, r):
      return ablation_losses.dpo_share_weighted_loss(
        c, r, ref_w, ref_l, beta=beta
      )

    grad = _grad(weighted, ref_w, ref_l)
    # DPO's gradient at the reference is beta / 2 * (-1, 1); times 2s.
    np.testing.assert_allclose(grad, [-beta * share, beta * share], rtol=1e-12)

    def normalized(c, r):
      return slpo_normalized.slpo_normalized_loss(
        c, jnp.log1p(-jnp.exp(c)), r, jnp.log1p(-jnp.exp(r)), ref_w, ref_l
      )

    np.testing.assert_allclose(
      _grad(normalized, ref_w, ref_l), [-share, share], rtol=1e-9
    )
    # A balanced pair keeps DPO's loss.
    balanced = ablation_losses.dpo_share_weighted_loss(
      -1.0, -2.0, -5.0, -5.0, beta=beta
    )
    assert float(balanced) == pytest.approx(
      float(dpo_family.dpo_loss(-1.0, -2.0, -5.0, -5.0, beta=beta))
    )


@pytest.mark.parametrize("moved", [(0.0, 0.0), (0.4, -2.0), (-0.3, 1.0)])
def test_ratio_form_has_slpo_normalized_gradients_on_improbable_pairs(moved):
  with jax.enable_x64(True):
    ref_w, ref_l = -25.0, -24.0
    chosen, rejected = ref_w + moved[0], ref_l + moved[1]

    def library(c, r):
      return slpo_normalized.slpo_normalized_loss(
        c, jnp.log1p(-jnp.exp(c)), r, jnp.log1p(-jnp.exp(r)), ref_w, ref_l
      )

    def ratio(c, r):
      return ablation_losses.slpo_ratio_loss(c, r, ref_w, ref_l)

    np.testing.assert_allclose(
      _grad(ratio, chosen, rejected),
      _grad(library, chosen, rejected),
      rtol=1e-8,
    )


def test_per_token_share_target_ignores_length():
  with jax.enable_x64(True):
    # Per-token means -2 and -1.5: s̄ = sigmoid(0.5), whatever the lengths.
    ref_w, ref_l, len_w, len_l = -20.0, -6.0, 10, 4
    share = 1.0 / (1.0 + np.exp(-0.5))

    def loss(c, r):
      return ablation_losses.slpo_share_per_token_loss(
        c, r, ref_w, ref_l, len_w, len_l
      )

    grad = _grad(loss, ref_w, ref_l)
    np.testing.assert_allclose(grad, [-share, share], rtol=1e-12)
    # The winner's stationary point: r_w = 1 / (1 - s̄).
    target = ref_w - np.log(1.0 - share)
    assert _grad(loss, target, ref_l)[0] == pytest.approx(0.0, abs=1e-12)


def test_length_matched_sampler_picks_a_draw_of_the_first_length():
  calls = []

  def fake_reference_sampler(model, params, *, max_new_tokens, seed):
    rng = np.random.default_rng(seed)

    def sample(prompts, _):
      calls.append(len(prompts))
      tokens = np.full((len(prompts), 6), 7)
      ends = rng.integers(0, 6, len(prompts))
      tokens[np.arange(len(prompts)), ends] = EOS_ID
      return tokens

    return sample

  make = ablation.length_matched_sampler(fake_reference_sampler)
  sample_fn = make(None, None, max_new_tokens=5, seed=0)
  prompts = np.zeros((2 * 50, 3), np.int32)
  out = sample_fn(prompts, None)
  assert calls == [50, 50 * ablation.LENGTH_MATCH_DRAWS]
  first = ablation.response_lengths(out[:50])
  second = ablation.response_lengths(out[50:])
  # 8 draws of 6 equally likely lengths miss a given one with 0.83^8 = 0.23.
  assert np.mean(first == second) > 0.6
  assert np.array_equal(
    ablation.response_lengths(np.array([[3, EOS_ID, 0], [3, 3, 3]])), [2, 3]
  )


def _row(family, loss, seed, kl, reward, hparam=""):
  return {
    "family": family,
    "loss": loss,
    "hyperparameter": hparam,
    "seed": seed,
    "step": 360,
    "kl": kl,
    "reward": reward,
    "learning_rate": 3e-4,
  }


def test_paired_gap_uses_each_seeds_own_envelope():
  rows = []
  for seed, lift in ((0, 0.0), (1, 0.1)):
    rows += [
      dict(_row("reference", "reference", seed, 0.0, lift), step=0),
      _row("dpo", "dpo", seed, 1.0, 0.2 + lift, "beta=1"),
      _row("ipo", "ipo", seed, 2.0, 0.25 + lift, "beta=1"),
      # Dominated: less reward at more KL.
      _row("dpo", "dpo", seed, 3.0, 0.1 + lift, "beta=2"),
    ]
  np.testing.assert_allclose(
    paired_gap.seed_envelope(rows, 1), [(0.0, 0.1), (1.0, 0.3), (2.0, 0.35)]
  )
  finals = [
    _row("x", "x", 0, 0.5, 0.05),
    _row("x", "x", 1, 1.5, 0.3),
  ]
  gaps = paired_gap.paired_gaps(finals, rows)
  assert gaps[0] == pytest.approx(0.05 - 0.1)
  assert gaps[1] == pytest.approx(0.3 - 0.325)
  assert paired_gap.verdict({0: -0.05, 1: -0.06, 2: -0.04}) == "below"


def test_paired_gap_of_section_4_recomputes_from_its_csv():
  rows = paired_gap.phase_b_rows(FIGURES)
  finals = paired_gap.run_finals(rows)["slpo_normalized lr0.0003"]
  gaps = paired_gap.paired_gaps(finals, rows)
  assert sorted(gaps) == [0, 1, 2, 3, 4]
  assert np.mean(list(gaps.values())) == pytest.approx(-0.041, abs=5e-4)
  assert "-0.041 [-0.048, -0.033]" in paired_gap.section4_table(FIGURES)


def test_report_reads_an_unchanged_arm_as_closing_none_of_the_gap(tmp_path):
  # Section 4's own slpo_normalized runs, renamed as the length-matched arm:
  # the report must find their gap and say that nothing of it is closed.
  for path in FIGURES.glob("frontier_b_*.csv"):
    (tmp_path / path.name).write_text(path.read_text())
  rows = paired_gap.phase_b_rows(FIGURES)
  arm_rows = [
    dict(r, loss="slpo_normalized_length_matched")
    for r in rows
    if r["loss"] == "slpo_normalized"
    and r["hyperparameter"] == ""
    and r["learning_rate"] == 3e-4
  ]
  arm_rows += [r for r in rows if r["family"] == "reference"][:5]
  cg.write_points_csv(arm_rows, tmp_path / "ablation.csv")
  text = ablation_report.report(tmp_path)
  assert "| slpo_normalized_length_matched | 5 |" in text
  assert "-0.041 [-0.048, -0.033] | below |" in text
  assert "length matching closes 0% of slpo_normalized's gap" in text
  assert "| dpo_share_weighted_beta1 | 0 | not run |" in text


def test_best_of_n_sampler_keeps_the_highest_reward_draw():
  def fake_reference_sampler(model, params, *, max_new_tokens, seed):
    rng = np.random.default_rng(seed)

    def sample(prompts, _):
      words = rng.integers(synthetic.FIRST_WORD_ID, 67, (len(prompts), 4))
      return np.concatenate([words, np.full((len(prompts), 1), EOS_ID)], axis=1)

    return sample

  make = ablation.best_of_n_sampler(fake_reference_sampler, 8)
  out = make(None, None, max_new_tokens=4, seed=0)(np.zeros((200, 3)), None)
  rewards = synthetic.sentiment_reward(out, synthetic.response_mask(out))
  best, plain = rewards[:100], rewards[100:]
  # The best of 8 beats a single draw nearly always, and by a clear margin.
  assert np.mean(best > plain) > 0.85
  assert best.mean() - plain.mean() > 0.3

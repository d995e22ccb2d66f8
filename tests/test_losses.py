"""Tests of slpo_jax.losses: golden values, the papers' identities, properties.

Golden values in tests/golden/losses.json come from implementations
independent of this library (a transcription of the reference DPO code, and
TRL); regenerate them with::

  pip install torch trl
  python tests/golden/make_golden.py

The test reads only the JSON file, so neither PyTorch nor TRL is needed here.
"""

import json
import pathlib

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slpo_jax
from slpo_jax import losses
from tests.enumeration import TreeModel

GOLDEN = json.loads(
  (pathlib.Path(__file__).parent / "golden" / "losses.json").read_text()
)
SETTINGS = hypothesis.settings(max_examples=25, deadline=None)


@pytest.fixture
def x64():
  """float64 for one test, restored afterwards."""
  with jax.enable_x64(True):
    yield


def np_log1mexp(x):
  x = np.asarray(x, np.float64)
  with np.errstate(divide="ignore"):
    return np.where(
      x > -np.log(2.0),
      np.log(-np.expm1(np.minimum(x, -1e-300))),
      np.log1p(-np.exp(np.minimum(x, -np.log(2.0)))),
    ) + np.where(x == 0, -np.inf, 0.0)


def np_log_softmax(x, axis=-1):
  x = np.asarray(x, np.float64)
  peak = np.max(x, axis=axis, keepdims=True)
  return x - peak - np.log(np.sum(np.exp(x - peak), axis=axis, keepdims=True))


def np_cross_entropy(target, log_pred):
  """-sum target * log_pred, with 0 * log 0 = 0."""
  target = np.asarray(target, np.float64)
  return -np.sum(np.where(target > 0, target * log_pred, 0.0), axis=-1)


# ---------------------------------------------------------------------------
# Golden values.


def _call_golden(case, dtype):
  inputs = {k: np.asarray(v, dtype) for k, v in case["inputs"].items()}
  fn = {
    "dpo": losses.dpo_loss,
    "ipo": losses.ipo_loss,
    "hinge": losses.hinge_loss,
    "simpo": losses.simpo_loss,
    "orpo": losses.orpo_loss,
  }[case["loss"]]
  return fn(*inputs.values(), **case["params"])


def _golden_id(case):
  params = ",".join(f"{k}={v}" for k, v in case["params"].items())
  return f"{case['loss']}[{params}]"


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=_golden_id)
def test_golden_float64(case, x64):
  del x64
  got = _call_golden(case, np.float64)
  assert got.dtype == jnp.float64
  # TRL computes ORPO's odds term in float32; everything else is float64.
  rtol = 1e-6 if case["loss"] == "orpo" else 1e-12
  np.testing.assert_allclose(got, case["expected"], rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=_golden_id)
def test_golden_float32(case):
  got = _call_golden(case, np.float32)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, case["expected"], rtol=1e-5, atol=1e-5)


def test_golden_covers_the_dpo_family():
  kinds = {
    (c["loss"], c["params"].get("label_smoothing", 0.0) > 0)
    for c in GOLDEN["cases"]
  }
  assert kinds >= {
    ("dpo", False),
    ("dpo", True),
    ("ipo", False),
    ("hinge", False),
    ("simpo", False),
    ("orpo", False),
  }


# ---------------------------------------------------------------------------
# The papers' identities.


def _random_logps(rng, shape, low=-40.0):
  return rng.uniform(low, -0.01, shape)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_dpo_is_two_class_cross_entropy(label_smoothing, x64):
  """Paper 000, Eq. 5 and Appendix A: sigmoid of a difference is softmax."""
  del x64
  rng = np.random.default_rng(0)
  pc, pr, rc, rr = (_random_logps(rng, 64) for _ in range(4))
  for beta in (0.05, 0.5, 3.0):
    s_w, s_l = pc - rc, pr - rr
    log_pred = np_log_softmax(np.stack([beta * s_w, beta * s_l], -1))
    target = np.array([1.0 - label_smoothing, label_smoothing])
    want = np_cross_entropy(target, log_pred)
    got = losses.dpo_loss(
      pc, pr, rc, rr, beta=beta, label_smoothing=label_smoothing
    )
    # The log-softmax reference keeps only absolute precision near 0.
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_joint_probability_identity(x64):
  """Paper 000, Appendix B, and the winner half of hard SLPO.

  The cross-entropy of the joint outcome (j, k) of two independent softmaxes
  against "everything else", listed cell by cell, equals the two-class
  cross-entropy of softmax([s1, log Omega]); it is also the winner half of
  Eq. 8 for a two-token sequence whose steps do not depend on each other.
  """
  del x64
  rng = np.random.default_rng(1)
  classes, count = 6, 20
  z = rng.normal(0.0, 2.0, (count, 2, classes))
  jk = rng.integers(0, classes, (count, 2))
  target = rng.uniform(0.05, 0.95, count)
  direct, s1, log_omega = [], [], []
  for i in range(count):
    j, k = jk[i]
    joint = np.outer(*np.exp(np_log_softmax(z[i])))
    cells = np.ones_like(joint, bool)
    cells[j, k] = False
    omega = np.sum(joint[cells])  # every other outcome, cell by cell
    direct.append(
      -target[i] * np.log(joint[j, k]) - (1 - target[i]) * np.log(omega)
    )
    s1.append(np_log_softmax(z[i])[0, j] + np_log_softmax(z[i])[1, k])
    log_omega.append(np.log(omega))
  two_class = np_cross_entropy(
    np.stack([target, 1 - target], -1),
    np_log_softmax(np.stack([s1, log_omega], -1)),
  )
  np.testing.assert_allclose(two_class, direct, rtol=1e-12)

  logp, not_logp = slpo_jax.sequence_logps(z, jk)
  # log(omega) is the log of a float64 number near 1: absolute precision.
  np.testing.assert_allclose(logp, s1, rtol=1e-12)
  np.testing.assert_allclose(not_logp, log_omega, rtol=1e-12, atol=1e-15)
  # w = C: the reference gives y_l no mass; the loser half is -log 1 = 0.
  winner = losses.slpo_loss(
    logp, not_logp, np.zeros(count), np.log(target), np.full(count, -np.inf)
  )
  np.testing.assert_allclose(winner, direct, rtol=1e-12, atol=1e-15)


def np_tempered_slpo(lp_w, not_w, lp_l, not_l, ref_w, ref_l, t):
  """Two-class cross-entropies of normalised t-th roots (DESIGN.md)."""
  log_w = np.minimum(np.logaddexp(ref_w, ref_l), 0.0)
  target = np.exp(np_log_softmax(np.stack([log_w, np_log1mexp(log_w)], -1) / t))
  winner = np_cross_entropy(
    target, np_log_softmax(np.stack([lp_w, not_w], -1) / t)
  )
  loser = -np_log_softmax(np.stack([lp_l, not_l], -1) / t)[..., 1]
  return winner + loser


def _consistent_logps(rng, n):
  """log pi(y) with log pi(Y != y) = log(1 - pi(y)), as from a real model."""
  lp_w = rng.uniform(-12.0, -0.05, n)
  lp_l = rng.uniform(-12.0, -0.05, n)
  ref_w = lp_w + rng.normal(0.0, 1.0, n)
  ref_l = lp_l + rng.normal(0.0, 1.0, n)
  return (
    lp_w,
    np_log1mexp(lp_w),
    lp_l,
    np_log1mexp(lp_l),
    np.minimum(ref_w, -0.05),
    np.minimum(ref_l, -0.05),
  )


@pytest.mark.parametrize("temperature", [1.0, 1.5, 3.0, 10.0])
def test_slpo_matches_tempered_two_class_form(temperature, x64):
  del x64
  rng = np.random.default_rng(2)
  lp_w, not_w, lp_l, not_l, ref_w, ref_l = _consistent_logps(rng, 64)
  got = losses.slpo_loss(
    lp_w,
    not_w,
    not_l,
    ref_w,
    ref_l,
    temperature=temperature,
    policy_rejected_logps=lp_l,
  )
  want = np_tempered_slpo(lp_w, not_w, lp_l, not_l, ref_w, ref_l, temperature)
  np.testing.assert_allclose(got, want, rtol=1e-10)
  if temperature == 1.0:
    # Eq. 8 as written, which the library evaluates at t = 1.
    w = np.exp(np.minimum(np.logaddexp(ref_w, ref_l), 0.0))
    eq8 = -(w * lp_w + (1 - w) * not_w) - not_l
    np.testing.assert_allclose(got, eq8, rtol=1e-12)
    # The tempered branch just above t = 1 joins it continuously.
    near = losses.slpo_loss(
      lp_w,
      not_w,
      not_l,
      ref_w,
      ref_l,
      temperature=1.0 + 1e-9,
      policy_rejected_logps=lp_l,
    )
    np.testing.assert_allclose(near, got, rtol=1e-6)


def test_slpo_float32_matches_float64_form():
  rng = np.random.default_rng(3)
  args = _consistent_logps(rng, 64)
  lp_w, not_w, lp_l, not_l, ref_w, ref_l = (a.astype(np.float32) for a in args)
  for t in (1.0, 2.0):
    got = losses.slpo_loss(
      lp_w,
      not_w,
      not_l,
      ref_w,
      ref_l,
      temperature=t,
      policy_rejected_logps=lp_l,
    )
    want = np_tempered_slpo(lp_w, not_w, lp_l, not_l, ref_w, ref_l, t)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def np_soft_slpo(lp_w, lp_l, pair_not, ref_w, ref_l, alpha, t):
  """Eq. 7: targets [alpha w, (1 - alpha) w, 1 - w], tempered when t > 1."""
  w = np.exp(np.minimum(np.logaddexp(ref_w, ref_l), 0.0))
  target = np.stack([alpha * w, (1 - alpha) * w, 1 - w], -1)
  log_pred = np.stack([lp_w, lp_l, pair_not], -1)
  if t != 1.0:
    with np.errstate(divide="ignore"):
      target = np.exp(np_log_softmax(np.log(target) / t))
    log_pred = np_log_softmax(log_pred / t)
  return np_cross_entropy(target, log_pred)


@pytest.mark.parametrize("alpha", [0.6, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_slpo_soft_loss_matches_eq7(alpha, temperature, x64):
  del x64
  rng = np.random.default_rng(4)
  lp_w, _, lp_l, _, ref_w, ref_l = _consistent_logps(rng, 64)
  pair_not = np_log1mexp(np.logaddexp(lp_w, lp_l) - 1e-3)
  got = losses.slpo_soft_loss(
    lp_w, lp_l, pair_not, ref_w, ref_l, alpha=alpha, temperature=temperature
  )
  want = np_soft_slpo(lp_w, lp_l, pair_not, ref_w, ref_l, alpha, temperature)
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_soft_slpo_with_alpha_one_is_the_hard_winner_half(x64):
  """alpha = 1 moves all of w to y_w, like the winner half of Eq. 8.

  The two differ only in the set the rest of the mass is measured on:
  pi(Y not in {y_w, y_l}) against pi(Y != y_w), so on the tree model
  soft - winner = (1 - w) [log pi(Y != y_w) - log pi(Y not in {y_w, y_l})],
  and they coincide when y_l has no mass.
  """
  del x64
  model = TreeModel(seed=11)
  everything = model.all_sequences()
  rng = np.random.default_rng(5)
  for i, j in rng.integers(0, len(everything), (20, 2)):
    y_w, y_l = everything[i], everything[j]
    if y_w == y_l:
      continue
    lp_w, lp_l = model.log_probability(y_w), model.log_probability(y_l)
    not_w = model.complement_log_probability([y_w])
    not_l = model.complement_log_probability([y_l])
    pair_not = model.complement_log_probability([y_w, y_l])
    ref_w, ref_l = lp_w + rng.normal(), lp_l + rng.normal()
    w = min(np.exp(np.logaddexp(ref_w, ref_l)), 1.0)
    winner = losses.slpo_loss(lp_w, not_w, not_l, ref_w, ref_l) + not_l
    soft = losses.slpo_soft_loss(lp_w, lp_l, pair_not, ref_w, ref_l, alpha=1.0)
    np.testing.assert_allclose(
      soft - winner, (1 - w) * (not_w - pair_not), rtol=1e-9, atol=1e-12
    )
    # No mass on y_l: the pair complement is the winner's complement.
    soft_zero = losses.slpo_soft_loss(
      lp_w, lp_l, not_w, ref_w, ref_l, alpha=1.0
    )
    np.testing.assert_allclose(soft_zero, winner, rtol=1e-12)


def test_hyperparameter_errors():
  args = (-1.0, -2.0, -3.0, -1.0, -2.0)
  with pytest.raises(ValueError, match="temperature"):
    losses.slpo_loss(*args, temperature=0.5)
  with pytest.raises(ValueError, match="policy_rejected_logps"):
    losses.slpo_loss(*args, temperature=2.0)
  with pytest.raises(ValueError, match="alpha"):
    losses.slpo_soft_loss(*args, alpha=0.5)
  with pytest.raises(ValueError, match="alpha"):
    losses.slpo_soft_loss(*args, alpha=1.1)
  with pytest.raises(ValueError, match="temperature"):
    losses.slpo_soft_loss(*args, temperature=0.9)


# ---------------------------------------------------------------------------
# Hard SLPO reaches its target on models that can represent it.


def test_hard_slpo_optimum_on_a_free_sequence_distribution():
  """pi(y_w) -> w, pi(y_l) -> 0, every other sequence keeps its reference mass.

  The policy is a free distribution over the 85 responses of the tree model,
  trained by exponentiated gradient (mirror descent on the simplex). Eq. 8
  depends on the other responses only through their total, so its gradient
  is the same for each of them and they keep their ratios to the reference;
  the loser's mass is what moves, and it goes to y_w.
  """
  model = TreeModel(seed=12)
  reference = np.log([model.probability(s) for s in model.all_sequences()])
  order = np.argsort(reference)
  chosen, rejected = order[-3], order[-1]  # the loser is the likeliest
  ref_w, ref_l = reference[chosen], reference[rejected]
  w = np.exp(ref_w) + np.exp(ref_l)
  not_chosen = np.arange(len(reference)) != chosen
  not_rejected = np.arange(len(reference)) != rejected

  def loss(p):
    return losses.slpo_loss(
      jnp.log(p[chosen]),
      jnp.log(jnp.sum(jnp.where(not_chosen, p, 0.0))),
      jnp.log(jnp.sum(jnp.where(not_rejected, p, 0.0))),
      ref_w,
      ref_l,
    )

  @jax.jit
  def train(theta):
    def step(_, theta):
      return theta - 0.5 * jax.grad(loss)(jax.nn.softmax(theta))

    return jax.nn.softmax(jax.lax.fori_loop(0, 300, step, theta))

  policy = np.asarray(train(jnp.asarray(reference, jnp.float32)), np.float64)
  others = not_chosen & not_rejected
  assert policy[rejected] < 1e-6
  np.testing.assert_allclose(policy[chosen], w, rtol=1e-4)
  np.testing.assert_allclose(
    policy[others], np.exp(reference[others]), rtol=1e-4
  )


def test_hard_slpo_optimum_through_sequence_logps():
  """The same on the autoregressive table, trained through sequence_logps."""
  model = TreeModel(seed=13)
  eos = model.eos
  y_w, y_l = (0, 1, eos), (0, 2, eos)
  ref_w, ref_l = model.log_probability(y_w), model.log_probability(y_l)
  w = np.exp(ref_w) + np.exp(ref_l)
  prompt = (eos, eos)
  labels_w, where_w = model.labels_and_where(prompt, y_w, length=7)
  labels_l, where_l = model.labels_and_where(prompt, y_l, length=7)
  # Forced-EOS entries are -inf; keep them out of the trainable parameters.
  forced = np.isinf(model.table)

  def loss(table):
    table = jnp.where(forced, -jnp.inf, table)
    logits_w = model.logits_for(prompt, y_w, length=7, table=table)
    logits_l = model.logits_for(prompt, y_l, length=7, table=table)
    logp_w, not_w = slpo_jax.sequence_logps(logits_w, labels_w, where=where_w)
    _, not_l = slpo_jax.sequence_logps(logits_l, labels_l, where=where_l)
    return losses.slpo_loss(logp_w, not_w, not_l, ref_w, ref_l)

  @jax.jit
  def train(table):
    step = lambda _, t: t - 2.0 * jax.grad(loss)(t)
    return jax.lax.fori_loop(0, 3000, step, table)

  trained = np.asarray(
    train(jnp.asarray(np.where(forced, 0.0, model.table), jnp.float32)),
    np.float64,
  )
  model.table = np.where(forced, -np.inf, trained)
  assert model.probability(y_l) < 5e-3
  np.testing.assert_allclose(model.probability(y_w), w, atol=1e-3)
  np.testing.assert_allclose(
    sum(model.probability(s) for s in model.all_sequences()), 1.0, rtol=1e-9
  )


# ---------------------------------------------------------------------------
# Token-level SLPO against the earlier draft's code.


def np_draft_token_loss(logits, y_w, y_l, w_w):
  """NumPy transcription of the draft's ``slpo_loss(logits, y_w, y_l, w_w)``."""
  log_probs = np_log_softmax(logits)
  log_prob_w = np.take_along_axis(log_probs, y_w[..., None], -1)[..., 0]
  mask = np.ones_like(log_probs, dtype=bool)
  np.put_along_axis(mask, y_w[..., None], False, -1)
  np.put_along_axis(mask, y_l[..., None], False, -1)
  log_probs_masked = np.where(mask, log_probs, -np.inf)
  peak = np.max(log_probs_masked, -1, keepdims=True)
  log_prob_o = (
    np.log(np.sum(np.exp(log_probs_masked - peak), -1)) + peak[..., 0]
  )
  return -np.mean(w_w * log_prob_w + (1 - w_w) * log_prob_o)


def _token_batch(rng, batch=4, length=9, vocab=11):
  logits = rng.normal(0.0, 3.0, (batch, length, vocab)).astype(np.float32)
  y_w = rng.integers(0, vocab, (batch, length)).astype(np.int32)
  y_l = rng.integers(0, vocab, (batch, length)).astype(np.int32)
  y_l[:, ::4] = y_w[:, ::4]  # identical tokens at some steps
  weights = rng.uniform(0.0, 1.0, (batch, length)).astype(np.float32)
  weights[0, 0], weights[0, 1] = 0.0, 1.0
  return logits, y_w, y_l, weights


def test_token_loss_matches_draft_code():
  rng = np.random.default_rng(6)
  logits, y_w, y_l, weights = _token_batch(rng)
  per_example = losses.slpo_token_loss(logits, y_w, y_l, weights)
  want = np_draft_token_loss(logits, y_w, y_l, weights.astype(np.float64))
  np.testing.assert_allclose(np.mean(per_example), want, rtol=1e-5)
  for i in range(len(logits)):  # the per-example values too
    np.testing.assert_allclose(
      per_example[i],
      np_draft_token_loss(logits[i], y_w[i], y_l[i], weights[i]),
      rtol=1e-5,
    )


def test_token_loss_with_mask_and_from_token_logps():
  rng = np.random.default_rng(7)
  logits, y_w, y_l, weights = _token_batch(rng)
  where = rng.random(y_w.shape) < 0.7
  where[1] = False
  got = losses.slpo_token_loss(logits, y_w, y_l, weights, where=where)
  for i in range(len(logits)):
    m = where[i]
    want = (
      np_draft_token_loss(logits[i][m], y_w[i][m], y_l[i][m], weights[i][m])
      if m.any()
      else 0.0
    )
    np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-7)
  stats = slpo_jax.token_logps(logits, y_w, also_exclude=y_l)
  from_tokens = losses.slpo_token_loss_from_token_logps(
    stats.logp, stats.not_logp, weights, where=where
  )
  np.testing.assert_allclose(from_tokens, got, rtol=1e-6)


def test_slpo_token_weights_match_numpy():
  rng = np.random.default_rng(8)
  logits, y_w, y_l, _ = _token_batch(rng)
  # A near-certain reference step and a near-impossible pair of tokens.
  logits[0, 0] = -30.0
  logits[0, 0, y_w[0, 0]] = 0.0
  logits[0, 1] = 0.0
  logits[0, 1, y_w[0, 1]] = logits[0, 1, y_l[0, 1]] = -25.0
  probs = np.exp(np_log_softmax(logits))
  p_w = np.take_along_axis(probs, y_w[..., None], -1)[..., 0]
  p_l = np.take_along_axis(probs, y_l[..., None], -1)[..., 0]
  want = np.where(y_w == y_l, p_w, p_w + p_l)
  got = losses.slpo_token_weights(logits, y_w, y_l)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_log1mexp_is_accurate_with_finite_gradients():
  x = -np.concatenate(
    [np.geomspace(1e-9, 1e4, 200), [np.log(2.0), 0.0, np.inf]]
  ).astype(np.float32)
  got = losses.log1mexp(x)
  np.testing.assert_allclose(
    got, np_log1mexp(x), rtol=1e-5, atol=float(np.finfo(np.float32).tiny)
  )
  grad = jax.jit(jax.vmap(jax.grad(losses.log1mexp)))(jnp.asarray(x))
  assert np.all(np.isfinite(grad))
  inside = (x < 0) & np.isfinite(x)
  x64 = x[inside].astype(np.float64)
  np.testing.assert_allclose(
    grad[inside],
    np.exp(x64) / np.expm1(x64),
    rtol=1e-5,
    atol=float(np.finfo(np.float32).tiny),
  )


# ---------------------------------------------------------------------------
# Properties of every loss.


def _sequence_losses(pc, pr, rc, rr, nc, nr, pair, lc, lr):
  """Every sequence-level loss at one setting of its hyperparameters."""
  return {
    "dpo": losses.dpo_loss(pc, pr, rc, rr, beta=0.1),
    "cdpo": losses.dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.2),
    "ipo": losses.ipo_loss(pc, pr, rc, rr, beta=0.1),
    "hinge": losses.hinge_loss(pc, pr, rc, rr, beta=0.1),
    "simpo": losses.simpo_loss(pc, pr, lc, lr, beta=2.0, gamma=0.5),
    "orpo": losses.orpo_loss(pc, pr, lc, lr, beta=0.1),
    "slpo": losses.slpo_loss(pc, nc, nr, rc, rr),
    "slpo_t2": losses.slpo_loss(
      pc, nc, nr, rc, rr, temperature=2.0, policy_rejected_logps=pr
    ),
    "slpo_soft": losses.slpo_soft_loss(pc, pr, pair, rc, rr, alpha=0.9),
    "slpo_soft_t2": losses.slpo_soft_loss(
      pc, pr, pair, rc, rr, alpha=1.0, temperature=2.0
    ),
  }


_POLICY_ARGS = 7  # pc, pr, rc, rr, nc, nr, pair are differentiated


def _sum_of_losses(*args):
  return sum(jnp.sum(v) for v in _sequence_losses(*args).values())


_jitted_losses = jax.jit(_sequence_losses)
_loss_grads = jax.jit(
  jax.grad(_sum_of_losses, argnums=tuple(range(_POLICY_ARGS)))
)
_mapped_losses = jax.jit(jax.vmap(_sequence_losses))


def _extreme_logps(rng, shape):
  """Log-probabilities from -1e4 to 0, with the end points."""
  special = np.array([-1e4, -1e3, -88.0, -1.0, -1e-7, 0.0])
  values = np.where(
    rng.random(shape) < 0.5,
    rng.choice(special, shape),
    -np.exp(rng.uniform(np.log(1e-7), np.log(1e4), shape)),
  )
  return values.astype(np.float32)


def _loss_args(rng, shape, extreme):
  draw = (
    _extreme_logps
    if extreme
    else (lambda r, s: r.uniform(-30.0, -0.1, s).astype(np.float32))
  )
  pc, pr, rc, rr, nc, nr, pair = (draw(rng, shape) for _ in range(7))
  # ORPO's odds are infinite at pi = 1, and their ratio is undefined when
  # both responses have it; keep the policy log-probs strictly negative.
  pc, pr = np.minimum(pc, -1e-7), np.minimum(pr, -1e-7)
  lc = rng.integers(1, 1000, shape).astype(np.float32)
  lr = rng.integers(1, 1000, shape).astype(np.float32)
  return pc, pr, rc, rr, nc, nr, pair, lc, lr


@SETTINGS
@hypothesis.given(seed=st.integers(0, 2**31 - 1))
def test_extreme_inputs_give_finite_losses_and_gradients(seed):
  rng = np.random.default_rng(seed)
  args = _loss_args(rng, (3, 4), extreme=True)
  for name, value in _jitted_losses(*args).items():
    assert np.all(np.isfinite(value)), name
  for grad in _loss_grads(*args):
    assert np.all(np.isfinite(grad))


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1))
def test_jit_vmap_and_loop_agree(seed):
  rng = np.random.default_rng(seed)
  batches = [_loss_args(rng, (3, 4), extreme=False) for _ in range(2)]
  eager = _sequence_losses(*batches[0])
  jitted = _jitted_losses(*batches[0])
  # vmap over an extra leading axis against a loop over it.
  mapped = _mapped_losses(*(np.stack(a) for a in zip(*batches)))
  looped = [_jitted_losses(*batch) for batch in batches]
  for name in eager:
    np.testing.assert_allclose(jitted[name], eager[name], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
      mapped[name],
      np.stack([row[name] for row in looped]),
      rtol=1e-6,
      atol=1e-7,
    )


def _token_loss(logits, y_w, y_l, weights, where):
  return losses.slpo_token_loss(logits, y_w, y_l, weights, where=where)


_jitted_token_loss = jax.jit(_token_loss)
_token_loss_grad = jax.jit(jax.grad(lambda *a: jnp.sum(_token_loss(*a))))


@SETTINGS
@hypothesis.given(seed=st.integers(0, 2**31 - 1), extreme=st.booleans())
def test_token_loss_masks_extremes_and_bfloat16(seed, extreme):
  rng = np.random.default_rng(seed)
  logits, y_w, y_l, weights = _token_batch(rng, 3, 6, 7)
  if extreme:
    logits = rng.choice([-1e4, 1e4, 0.0], logits.shape).astype(np.float32)
  where = rng.random(y_w.shape) < 0.6
  args = (logits, y_w, y_l, weights, where)
  value = _jitted_token_loss(*args)
  grad = _token_loss_grad(*args)
  assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
  np.testing.assert_array_equal(np.asarray(grad)[~where], 0.0)
  # Masked steps: any logits and labels there change nothing.
  junk = rng.uniform(-1e4, 1e4, logits.shape).astype(np.float32)
  junk_args = (
    np.where(where[..., None], logits, junk),
    np.where(where, y_w, -100).astype(np.int32),
    np.where(where, y_l, 10**6).astype(np.int32),
    weights,
    where,
  )
  np.testing.assert_array_equal(_jitted_token_loss(*junk_args), value)
  # bfloat16 logits give the float32 result of the rounded logits.
  low = jnp.asarray(logits, jnp.bfloat16)
  got = _jitted_token_loss(low, *args[1:])
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(
    got, _jitted_token_loss(low.astype(jnp.float32), *args[1:])
  )

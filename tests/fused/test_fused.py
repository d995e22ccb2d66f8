"""The fused head against the plain path and a float64 NumPy reference.

Equivalence is the contract: ``sequence_logps_from_hidden(h, W, y)`` must
equal ``sequence_logps(h @ W, y)`` in value (1e-5) and in the gradients for
``h`` and ``W`` (1e-4), for every chunking. Small chunk sizes make a few dozen
tokens cross several vocabulary and token tiles, including a ragged last
vocabulary tile and padded token rows.
"""

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import slpo_jax
from slpo_jax import fused
from slpo_jax import logprobs

# (leading shape, d, V, vocab chunk, token chunk): V a multiple of the chunk
# or not (the last tile shifted), several leading dims, N a multiple of the
# token chunk or not (padded rows), a single token tile.
SHAPES = [
  ((3, 9), 16, 300, 128, 5),
  ((2, 3, 5), 8, 256, 128, 4),
  ((3, 7), 12, 1000, 384, 64),
]


def _present(got, want):
  """Pairs of the fields both hold (the distribution fields are None unless
  asked for)."""
  return [(g, w) for g, w in zip(got, want) if g is not None or w is not None]


def _inputs(leading, d, vocab, seed=0):
  # NumPy, not jax.random: each new shape would compile a random kernel,
  # which costs more than the tests themselves.
  rng = np.random.default_rng(seed)
  hidden = rng.standard_normal((*leading, d), np.float32)
  lm_head = (2.0 / np.sqrt(d)) * rng.standard_normal((d, vocab), np.float32)
  labels = rng.integers(0, vocab, leading).astype(np.int32)
  where = rng.random(leading) < 0.75
  return hidden, lm_head, labels, where, rng


def _values_and_grads(f, weights):
  """One compiled program: f's outputs and d(sum weights * f)/d(h, W).

  Values and gradients are compiled together to keep the file to about one
  compilation per path per test; compilation dominates its run time.
  """

  def run(hidden, lm_head):
    values, pullback = jax.vjp(f, hidden, lm_head)
    cotangents = [
      jnp.broadcast_to(c, v.shape).astype(v.dtype)
      for c, v in zip(weights, values)
    ]
    if isinstance(values, logprobs.TokenLogps):
      # is_top1 is boolean; its cotangent is float0.
      top1 = np.zeros(values.is_top1.shape, jax.dtypes.float0)
      cotangents = logprobs.TokenLogps(*cotangents[:2], top1)
    else:
      cotangents = tuple(cotangents)
    return values, pullback(cotangents)

  return jax.jit(run)


def _numpy_token_logps(logits, labels, exclude=None):
  """float64 reference: log p(y) and log(1 - p(y) [- p(z)]) by brute force."""
  logits = np.asarray(logits, np.float64)
  ids = np.arange(logits.shape[-1])
  top = logits.max(-1, keepdims=True)
  log_norm = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
  onehot = ids == np.asarray(labels)[..., None]
  excluded = onehot
  if exclude is not None:
    excluded = excluded | (ids == np.asarray(exclude)[..., None])
  rest = np.where(excluded, -np.inf, logits)
  rest_top = rest.max(-1, keepdims=True)
  log_rest = np.log(np.exp(rest - rest_top).sum(-1)) + rest_top[..., 0]
  label_logit = np.where(onehot, logits, 0.0).sum(-1)
  return label_logit - log_norm, log_rest - log_norm


def _assert_close(actual, expected, tol):
  np.testing.assert_allclose(
    np.asarray(actual, np.float64),
    np.asarray(expected, np.float64),
    rtol=tol,
    atol=tol,
  )


@pytest.mark.parametrize("leading,d,vocab,vocab_chunk,token_chunk", SHAPES)
def test_sequence_values_and_gradients_match_plain(
  leading, d, vocab, vocab_chunk, token_chunk
):
  hidden, lm_head, labels, where, rng = _inputs(leading, d, vocab)
  # A fully padded row, and ignored positions holding ids out of range both
  # ways, which the plain path sanitises away.
  where[1] = False
  labels = np.where(where, labels, -100)
  labels[0, 0] = vocab + 17
  where[0, 0] = False
  # Nonzero weights reach the padded row's -inf too: both paths give it a
  # zero gradient, not NaN.
  weights = rng.standard_normal((2, *leading[:-1]), np.float32)

  got, got_grads = _values_and_grads(
    lambda h, w: fused.sequence_logps_from_hidden(
      h,
      w,
      labels,
      where=where,
      vocab_chunk_size=vocab_chunk,
      token_chunk_size=token_chunk,
    ),
    weights,
  )(hidden, lm_head)
  want, want_grads = _values_and_grads(
    lambda h, w: slpo_jax.sequence_logps(h @ w, labels, where=where), weights
  )(hidden, lm_head)

  for value, expected in _present(got, want):
    _assert_close(value, expected, 1e-5)
  for value, expected in zip(got_grads, want_grads):
    _assert_close(value, expected, 1e-4)
  # The row with nothing counted: logp = 0, not_logp = -inf, and exactly zero
  # gradient for its hidden states.
  assert np.all(got[0][1] == 0.0) and np.all(got[1][1] == -np.inf)
  np.testing.assert_array_equal(got_grads[0][1], 0.0)


def test_token_values_and_gradients_with_also_exclude():
  leading, d, vocab = (4, 6), 8, 300
  hidden, lm_head, labels, _, rng = _inputs(leading, d, vocab, seed=1)
  exclude = rng.integers(0, vocab, leading).astype(np.int32)
  # Equal to the label (counted once) and out of range both ways (ignored).
  exclude[0, 0] = labels[0, 0]
  exclude[1, 1] = -1
  exclude[2, 2] = vocab + 3
  weights = rng.standard_normal((2, *leading), np.float32)

  got, got_grads = _values_and_grads(
    lambda h, w: fused.token_logps_from_hidden(
      h,
      w,
      labels,
      also_exclude=exclude,
      vocab_chunk_size=128,
      token_chunk_size=5,
    ),
    weights,
  )(hidden, lm_head)
  want, want_grads = _values_and_grads(
    lambda h, w: logprobs.token_logps(h @ w, labels, also_exclude=exclude),
    weights,
  )(hidden, lm_head)

  for value, expected in _present(got, want):
    _assert_close(value, expected, 1e-5)
  reference = _numpy_token_logps(
    np.asarray(hidden, np.float64) @ np.asarray(lm_head, np.float64),
    labels,
    np.where((exclude >= 0) & (exclude < vocab), exclude, -1),
  )
  for value, expected in _present(got, reference):
    _assert_close(value, expected, 1e-5)
  for value, expected in zip(got_grads, want_grads):
    _assert_close(value, expected, 1e-4)


def _identity_head_inputs(logits):
  """hidden = logits and lm_head = I: the product is exact on any backend.

  The precision tests need the fused path, the plain path and the float64
  reference to see bit-identical logits, so that what they measure is the
  softmax arithmetic, not the rounding of a matmul.
  """
  logits = np.asarray(logits, np.float32)
  return logits, np.eye(logits.shape[-1], dtype=np.float32)


def test_near_deterministic_tokens_keep_log_one_minus_p():
  vocab, steps = 300, 6
  noise = np.random.default_rng(2).standard_normal((steps, vocab))
  labels = np.arange(steps) * 7
  # Choose each label's logit so that 1 - p = 1e-7 (up to float32 rounding).
  others = np.where(np.arange(vocab) == labels[:, None], 0.0, np.exp(noise))
  logits = noise.copy()
  logits[np.arange(steps), labels] = np.log(others.sum(-1) * (1 - 1e-7) / 1e-7)
  hidden, lm_head = _identity_head_inputs(logits)

  @jax.jit
  def run(h, w):
    per_token = fused.token_logps_from_hidden(
      h, w, labels, vocab_chunk_size=128, token_chunk_size=4
    )
    sequence = fused.sequence_logps_from_hidden(
      h[None], w, labels[None], vocab_chunk_size=128, token_chunk_size=4
    )
    return per_token, sequence

  got, (seq_logp, seq_not) = run(hidden, lm_head)
  want_logp, want_not = _numpy_token_logps(hidden, labels)
  np.testing.assert_allclose(np.exp(want_not), 1e-7, rtol=1e-4)
  np.testing.assert_allclose(got.not_logp, want_not, rtol=1e-5)
  # log p ~ -1e-7 is log1p of the other masses, not a difference of
  # normalisers, so it too keeps its relative precision.
  np.testing.assert_allclose(got.logp, want_logp, rtol=1e-4)
  # The sequence complement of six such tokens is about 6e-7.
  prefix = np.concatenate([[0.0], np.cumsum(want_logp)[:-1]])
  want_seq_not = np.log(np.sum(np.exp(prefix + want_not)))
  np.testing.assert_allclose(seq_not[0], want_seq_not, rtol=1e-5)
  np.testing.assert_allclose(seq_logp[0], want_logp.sum(), rtol=1e-4)


def test_logits_of_large_magnitude():
  """Logits near 1e4 keep float32 relative precision, as in the plain path.

  Three regimes: the label among peers, the label ahead by 30, and the label
  ahead by 1e4, where ``log(1 - p)`` is about -1e4 and is exact only because
  the non-excluded vocabulary keeps its own running maximum.
  """
  vocab, steps = 260, 5
  rng = np.random.default_rng(3)
  noise = rng.standard_normal((steps, vocab))
  labels = np.array([0, 5, 130, 259, 77])
  weights = rng.standard_normal((2, steps), np.float32)
  fused_run = _values_and_grads(
    lambda h, w: fused.token_logps_from_hidden(
      h, w, labels, vocab_chunk_size=128, token_chunk_size=2
    ),
    weights,
  )
  plain_run = _values_and_grads(
    lambda h, w: logprobs.token_logps(h @ w, labels), weights
  )

  for label_offset in (0.0, 30.0, 1e4):
    logits = 1e4 + noise
    logits[np.arange(steps), labels] += label_offset
    hidden, lm_head = _identity_head_inputs(logits)
    got, got_grads = fused_run(hidden, lm_head)
    want, want_grads = plain_run(hidden, lm_head)
    for value, expected in _present(got, _numpy_token_logps(hidden, labels)):
      np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
    for value, expected in _present(got, want):
      np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
    for value, expected in zip(got_grads, want_grads):
      _assert_close(value, expected, 1e-4)


def test_vocabulary_fully_excluded():
  """V = 2 with both ids excluded: the complement is empty, -inf, zero grad."""
  rng = np.random.default_rng(6)
  hidden = rng.standard_normal((3, 4), np.float32)
  lm_head = rng.standard_normal((4, 2), np.float32)
  labels = np.array([0, 1, 0])
  exclude = np.array([1, 0, 0])
  got, grads = _values_and_grads(
    lambda h, w: fused.token_logps_from_hidden(
      h, w, labels, also_exclude=exclude
    ),
    (1.0, 0.0),
  )(hidden, lm_head)
  want = logprobs.token_logps(hidden @ lm_head, labels, also_exclude=exclude)
  np.testing.assert_array_equal(got.not_logp[:2], -np.inf)
  for value, expected in _present(got, want):
    _assert_close(value, expected, 1e-5)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_jit_matches_eager():
  hidden, lm_head, labels, where, _ = _inputs((2, 7), 8, 300, seed=8)
  run = lambda h, w: fused.sequence_logps_from_hidden(
    h, w, labels, where=where, vocab_chunk_size=128, token_chunk_size=3
  )
  for eager, jitted in zip(run(hidden, lm_head), jax.jit(run)(hidden, lm_head)):
    _assert_close(jitted, eager, 1e-6)


def test_float64_gradients_by_finite_differences():
  """Under x64 the custom VJP is checked against finite differences."""
  with jax.enable_x64(True):
    hidden, lm_head, labels, where, _ = _inputs((2, 4), 4, 150, seed=9)
    hidden = hidden.astype(jnp.float64)
    lm_head = lm_head.astype(jnp.float64)
    exclude = np.roll(labels, 1, axis=-1)

    @jax.jit
    def values(h, w):
      per_token = fused.token_logps_from_hidden(
        h,
        w,
        labels,
        also_exclude=exclude,
        vocab_chunk_size=128,
        token_chunk_size=3,
      )
      sequence = fused.sequence_logps_from_hidden(
        h, w, labels, where=where, vocab_chunk_size=128, token_chunk_size=3
      )
      return per_token[:2], sequence  # Not is_top1: boolean, no gradient.

    assert values(hidden, lm_head)[0][0].dtype == jnp.float64
    jax.test_util.check_grads(
      values, (hidden, lm_head), order=1, modes=["rev"], eps=1e-6
    )


def test_bfloat16_inputs_against_plain_on_the_same_product():
  """bf16 hidden and head: the plain path's values, gradients to bf16.

  The reference is the plain path on ``h @ W`` of the bf16-rounded inputs,
  formed in float32: the product the fused matmuls compute (bf16 operands,
  float32 accumulation). The values then agree to float32 summation-order
  noise, and are checked at 1e-5.

  The gradients differ by design: the backward matmuls take the logit
  cotangent ``dz`` rounded to bfloat16 (as the plain path does when its
  logits are bf16), and the results are rounded to bf16. bfloat16 keeps 8
  significant bits, so each rounding is off by at most u = 2^-8 relative and
  every entry obeys ``|g - g_ref| <= u (|dz| @ |W|^T) + u |g_ref|`` to first
  order (float32 noise aside). The test checks exactly that bound: tighter
  than any blanket tolerance, and it fails if a step loses more than one
  rounding.
  """
  leading, d, vocab = (2, 8), 32, 640
  hidden, lm_head, labels, where, rng = _inputs(leading, d, vocab, seed=10)
  hidden, lm_head = hidden.astype(jnp.bfloat16), lm_head.astype(jnp.bfloat16)
  h32, w32 = hidden.astype(np.float32), lm_head.astype(np.float32)
  weights = rng.standard_normal((2, leading[0]), np.float32)

  got, got_grads = _values_and_grads(
    lambda h, w: fused.sequence_logps_from_hidden(
      h, w, labels, where=where, vocab_chunk_size=256, token_chunk_size=8
    ),
    weights,
  )(hidden, lm_head)
  logits = h32 @ w32
  want, d_logits = _values_and_grads(
    lambda z, _: slpo_jax.sequence_logps(z, labels, where=where), weights
  )(logits, None)
  d_logits = d_logits[0]
  for value, expected in _present(got, want):
    assert value.dtype == jnp.float32
    _assert_close(value, expected, 1e-5)

  assert got_grads[0].dtype == got_grads[1].dtype == jnp.bfloat16
  want_hidden = d_logits @ w32.T
  want_head = jnp.einsum("btd,btv->dv", h32, d_logits)
  abs_dz = jnp.abs(d_logits)
  unit_roundoff = 2.0**-8
  bounds = (
    unit_roundoff * (abs_dz @ jnp.abs(w32).T + jnp.abs(want_hidden)),
    unit_roundoff
    * (jnp.einsum("btd,btv->dv", jnp.abs(h32), abs_dz) + jnp.abs(want_head)),
  )
  for value, expected, bound in zip(
    got_grads, (want_hidden, want_head), bounds
  ):
    error = jnp.abs(value.astype(jnp.float32) - expected)
    worst = float(jnp.max(error / (bound + 1e-6)))
    assert worst <= 1.0, worst


def test_shape_errors():
  hidden = jnp.zeros((2, 3, 4))
  labels = jnp.zeros((2, 3), int)
  with pytest.raises(ValueError, match="lm_head"):
    fused.sequence_logps_from_hidden(hidden, jnp.zeros((5, 7)), labels)
  with pytest.raises(ValueError, match="labels"):
    fused.token_logps_from_hidden(
      hidden, jnp.zeros((4, 7)), jnp.zeros((2, 4), int)
    )
  with pytest.raises(ValueError, match="where"):
    fused.sequence_logps_from_hidden(
      hidden, jnp.zeros((4, 7)), labels, where=jnp.ones((3, 2), bool)
    )
  with pytest.raises(ValueError, match="chunk"):
    fused.token_logps_from_hidden(
      hidden, jnp.zeros((4, 7)), labels, vocab_chunk_size=-1
    )


@pytest.mark.parametrize("exclude", [False, True])
def test_is_top1_is_numpy_argmax_with_its_tie_break(exclude):
  """is_top1 (TRL's token accuracy) equals ``argmax(logits) == label``.

  Small integer weights make every logit an exact small integer, so ties
  are frequent and identical on every path: a label tied with an earlier id
  is not the argmax. The vocabulary (150) is not a multiple of the tile
  (64), so the last tile's stale columns are in play; labels out of range
  are never top.
  """
  rng = np.random.default_rng(3)
  hidden = rng.integers(-2, 3, (4, 9, 3)).astype(np.float32)
  lm_head = rng.integers(-2, 3, (3, 150)).astype(np.float32)
  logits = hidden @ lm_head
  first_max = np.argmax(logits, axis=-1)
  last_max = logits.shape[-1] - 1 - np.argmax(logits[..., ::-1], axis=-1)
  labels = rng.integers(0, 150, (4, 9))
  pick = rng.integers(0, 3, (4, 9))
  labels = np.where(pick == 0, first_max, np.where(pick == 1, last_max, labels))
  labels[0, :2] = (-1, 150)
  labels = labels.astype(np.int32)
  expected = np.argmax(logits, axis=-1) == labels
  assert expected.any() and (~expected & (pick == 1)).any()
  also_exclude = np.roll(labels, 1, axis=-1) if exclude else None
  plain = logprobs.token_logps(logits, labels, also_exclude=also_exclude)
  tiled = fused.token_logps_from_hidden(
    hidden,
    lm_head,
    labels,
    also_exclude=also_exclude,
    vocab_chunk_size=64,
    token_chunk_size=5,
  )
  np.testing.assert_array_equal(plain.is_top1, expected)
  np.testing.assert_array_equal(tiled.is_top1, expected)

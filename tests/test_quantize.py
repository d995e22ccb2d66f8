"""int8 and NF4 kernels against NumPy implementations of their definitions."""

import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slpo_jax import models
from slpo_jax import quantize
from slpo_jax.models import quantized
from tests.models import models_testing


def _paper_nf4_codebook() -> np.ndarray:
  """QLoRA's NF4 (Dettmers et al. 2023, section 3 and appendix E): quantiles
  of N(0, 1) at evenly spaced probabilities from ``offset`` to 1/2, eight
  on the positive side and seven on the negative, which share an exact
  zero, all divided by the largest. ``offset`` = (1/2)(1/32 + 1/30) from
  the end, the midpoint of the outermost probabilities of 16 and 15
  levels, as the reference implementation sets it (0.9677083)."""
  offset = 1 - 0.5 * (1 / 32 + 1 / 30)
  normal = statistics.NormalDist()
  positive = [normal.inv_cdf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
  negative = [-normal.inv_cdf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
  values = np.sort(np.array(positive + [0.0] + negative))
  return values / np.max(np.abs(values))


def _numpy_nf4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Codes and block maxima: each value's nearest codebook entry after
  dividing its block of 64 (row-major) by the block's absolute maximum."""
  blocks = w.astype(np.float64).reshape(-1, 64)
  absmax = np.abs(blocks).max(axis=1)
  normed = blocks / absmax[:, None]
  book = _paper_nf4_codebook()
  codes = np.abs(normed[..., None] - book).argmin(axis=-1)
  return codes.reshape(-1), absmax


def test_nf4_codebook_is_the_papers():
  np.testing.assert_allclose(
    quantized.NF4_CODEBOOK, _paper_nf4_codebook(), atol=2e-7
  )
  assert quantized.NF4_CODEBOOK[7] == 0.0


def test_nf4_round_trip_matches_numpy():
  w = np.random.default_rng(0).normal(size=(96, 4, 16)).astype(np.float32)
  leaves = jax.jit(quantize.nf4_leaves)(w)
  codes, absmax = _numpy_nf4(w)
  packed = np.asarray(leaves["nf4"])
  ours = np.concatenate([packed >> 4, packed & 15])
  np.testing.assert_array_equal(ours, codes)
  np.testing.assert_allclose(leaves["absmax"], absmax, rtol=1e-7)
  want = _paper_nf4_codebook()[codes].reshape(-1, 64) * absmax[:, None]
  got = quantized.dequantize(leaves, w.shape, jnp.float32)
  np.testing.assert_allclose(got, want.reshape(w.shape), rtol=1e-6, atol=1e-7)
  # 4 bits: within half the widest gap between codes, per block.
  gap = np.max(np.diff(_paper_nf4_codebook())) / 2
  err = np.abs(np.asarray(got) - w).reshape(-1, 64)
  assert np.all(err <= gap * absmax[:, None] + 1e-6)


def test_double_quantized_maxima_stay_close():
  w = np.random.default_rng(1).normal(size=(512, 64)).astype(np.float32)
  single = jax.jit(quantize.nf4_leaves)(w)
  double = jax.jit(lambda x: quantize.nf4_leaves(x, True))(w)
  assert "absmax" not in double and double["absmax_int8"].dtype == jnp.int8
  exact = np.asarray(single["absmax"])
  restored = np.asarray(quantized.nf4_absmax(double))
  groups = (exact - exact.mean()).reshape(-1, 256)
  bound = np.abs(groups).max(axis=1, keepdims=True) / 127 / 2
  assert np.all(np.abs(restored - exact).reshape(-1, 256) <= bound + 1e-6)


def test_int8_round_trip_matches_numpy():
  w = np.random.default_rng(2).normal(size=(4, 16, 64)).astype(np.float32)
  leaves = jax.jit(lambda x: quantize.int8_leaves(x, 2))(w)
  scale = np.abs(w).max(axis=(0, 1)) / 127  # One per output channel.
  np.testing.assert_allclose(leaves["scale"], scale, rtol=1e-6)
  np.testing.assert_array_equal(leaves["int8"], np.round(w / scale))
  got = quantized.dequantize(leaves, w.shape, jnp.float32)
  assert np.max(np.abs(np.asarray(got) - w) / scale) <= 0.5 + 1e-5


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_quantized_base_logits_are_near_the_unquantized(family):
  """Per-block dequantization inside the model equals the whole tree
  dequantized; the logits' distance to the unquantized base is bounded."""
  model = models.build(models.tiny_config(family, scan_layers=True))
  params = model.init(jax.random.key(0))
  ids, mask = models_testing.right_padded_batch(512, (6, 4))
  apply = jax.jit(model.apply)
  exact = apply(params, ids, mask)
  distances = {}
  for fmt in quantize.FORMATS:
    stored = quantize.quantize_params(params, model, fmt)
    logits = apply(stored, ids, mask)
    whole = apply(quantize.dequantize_params(stored, model), ids, mask)
    np.testing.assert_allclose(logits, whole, rtol=1e-5, atol=1e-5)
    distances[fmt] = models_testing.max_masked_diff(logits, exact, mask)
  # Measured: int8 0.005-0.007, nf4 0.09-0.11 (the logits' spread: ~1).
  assert 0 < distances["int8"] < 0.02
  assert distances["int8"] < distances["nf4"] < 0.25

"""The Pallas kernels (splash, the GPU flash kernel) against dense attention.

They run here in interpret mode. Every feature splash must cover is checked
in values and gradients against ``dense_attention``, the reference: causal
masking, right padding, packed segments shorter than a tile, a row with no
tokens at all, sliding windows (static, and traced per layer as under
``scan_layers``), logit soft-capping, grouped-query, multi-query and
multi-head layouts, a logit scale other than ``head_dim ** -0.5``
(Gemma's ``query_pre_attn_scalar``), lengths that are not multiples of the
tile, and the kernel under ``shard_map`` on a (data, fsdp, tensor) mesh.

The bound: every output and gradient array differs from the dense one by at
most ``1e-5 * max(1, max |dense|)`` in float32 (relative to the array's
largest entry where values are large).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slpo_jax import models
from slpo_jax.models import attention

from models_testing import random_params

HEADS, HEAD_DIM, LENGTH = 4, 8, 150  # 150 pads to two 128-token tiles
SCALE = 0.3
BOUND = 1e-5


def _layout():
  """Row 0: 120 tokens then padding; row 1: segments of 15, 18, 107 tokens
  then padding; row 2: padding only. Positions count from 0 per segment."""
  seg = np.ones((3, LENGTH), np.int32)
  seg[0, 120:] = 0
  seg[1, 15:33] = 2
  seg[1, 33:140] = 3
  seg[1, 140:] = 0
  seg[2] = 0
  pos = np.zeros_like(seg)
  for b in range(seg.shape[0]):
    for s in np.unique(seg[b]):
      idx = np.flatnonzero(seg[b] == s)
      pos[b, idx] = np.arange(len(idx))
  return attention.self_attention_mask(jnp.asarray(seg), jnp.asarray(pos))


def _inputs(kv_heads, seed=0):
  rng = np.random.default_rng(seed)
  shapes = [(HEADS, HEAD_DIM), (kv_heads, HEAD_DIM), (kv_heads, HEAD_DIM)]
  q, k, v = (
    rng.normal(size=(3, LENGTH, *s)).astype(np.float32) for s in shapes
  )
  weights = rng.normal(size=(3, LENGTH, HEADS, HEAD_DIM)).astype(np.float32)
  return q, k, v, weights


@functools.partial(jax.jit, static_argnames=("impl", "softcap", "static"))
def _values_and_grads(q, k, v, weights, window, *, impl, softcap, static):
  mask = _layout()
  window = static if window is None else window

  def loss(q, k, v):
    out = attention.attention(
      q,
      k,
      v,
      mask,
      impl=impl,
      scale=SCALE,
      softcap=softcap,
      window=window,
      window_size=7,
      block=128,
    )
    return jnp.sum(out * weights), out

  (_, out), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v)
  return out, grads


def assert_within_bound(ours, reference):
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(1.0, float(np.max(np.abs(b))))
    np.testing.assert_allclose(a, b, rtol=0, atol=BOUND * scale)


def _check(impl, kv_heads, softcap=None, window=None, traced=None):
  """``impl`` equals dense; ``traced`` passes the window as an int32 array."""
  q, k, v, weights = _inputs(kv_heads)
  kwargs = dict(softcap=softcap, static=window)
  traced = None if traced is None else jnp.int32(traced)
  dense = _values_and_grads(q, k, v, weights, traced, impl="dense", **kwargs)
  ours = _values_and_grads(q, k, v, weights, traced, impl=impl, **kwargs)
  assert_within_bound(ours, dense)
  out = np.asarray(ours[0])
  np.testing.assert_array_equal(out[np.asarray(_layout()[0]) == 0], 0.0)
  assert np.all(np.isfinite(out))


FAST = [
  # kv_heads, softcap, static window, traced window
  (2, None, None, None),
  (2, 5.0, 7, None),
  (2, None, None, 7),
]
SLOW = [
  (kv, softcap, static, traced)
  for kv in (4, 2, 1)
  for softcap in (None, 5.0)
  for static, traced in (
    (None, None),
    (7, None),
    (None, 7),
    (None, int(attention.NO_WINDOW)),
  )
  if (kv, softcap, static, traced) not in FAST
]


@pytest.mark.parametrize("kv_heads,softcap,window,traced", FAST)
def test_splash_equals_dense(kv_heads, softcap, window, traced):
  _check("splash", kv_heads, softcap, window, traced)


@pytest.mark.slow
@pytest.mark.parametrize("kv_heads,softcap,window,traced", SLOW)
def test_splash_equals_dense_every_feature(kv_heads, softcap, window, traced):
  _check("splash", kv_heads, softcap, window, traced)


def test_pallas_gpu_equals_dense():
  _check("pallas_gpu", 2)


@pytest.mark.slow
@pytest.mark.parametrize("kv_heads", [4, 1])
def test_pallas_gpu_equals_dense_every_layout(kv_heads):
  _check("pallas_gpu", kv_heads)


def test_auto_runs_blockwise_on_this_cpu():
  """``auto`` lowers to blockwise here: bitwise the blockwise values."""
  q, k, v, weights = _inputs(2)
  kwargs = dict(softcap=None, static=None)
  auto = _values_and_grads(q, k, v, weights, None, impl="auto", **kwargs)
  blockwise = _values_and_grads(
    q, k, v, weights, None, impl="blockwise", **kwargs
  )
  for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(blockwise)):
    np.testing.assert_array_equal(a, b)


def test_splash_on_a_mesh_equals_dense():
  """Under ``shard_map`` over data x fsdp (rows) and tensor (heads)."""
  devices = np.array(jax.devices()[:8]).reshape(2, 2, 2)
  mesh = jax.sharding.Mesh(devices, ("data", "fsdp", "tensor"))
  q, k, v, weights = _inputs(2)
  # Four rows: the three of the layout and a copy of the packed one.
  mask = attention.self_attention_mask(
    *(jnp.concatenate([m, m[1:2]]) for m in _layout()[:2])
  )
  q, k, v, weights = (np.concatenate([x, x[1:2]]) for x in (q, k, v, weights))

  def loss(q, k, v, impl):
    out = attention.attention(
      q, k, v, mask, impl=impl, scale=SCALE, softcap=5.0, window=7, block=128
    )
    return jnp.sum(out * weights)

  grad = jax.value_and_grad(loss, (0, 1, 2))
  dense = jax.jit(functools.partial(grad, impl="dense"))(q, k, v)
  with jax.set_mesh(mesh), nn.logical_axis_rules(models.logical_axis_rules()):
    jitted = jax.jit(functools.partial(grad, impl="splash"))
    text = jitted.lower(q, k, v).as_text()
    ours = jitted(q, k, v)
  assert "shard_map" in text or "sdy.manual_computation" in text
  assert_within_bound(ours, dense)


@pytest.fixture(scope="module")
def gemma2_like():
  """Soft-capped logits, a query scale, alternating windows, scanned."""
  config = models.tiny_config(
    "llama",
    attn_logit_softcap=20.0,
    query_scale=0.2,
    sliding_window=5,
    layer_types=("sliding_attention", "full_attention"),
    scan_layers=True,
    attention_block=128,
  )
  params = random_params(models.build(config), seed=3)
  return config, params


def test_model_with_splash_equals_blockwise(gemma2_like):
  """Logits and parameter gradients of a scanned model, windows per layer."""
  config, params = gemma2_like
  rng = np.random.default_rng(4)
  tokens = jnp.asarray(rng.integers(0, config.vocab_size, (2, 40)))
  seg = np.ones((2, 40), np.int32)
  seg[1, 25:] = 0

  def logits_and_grads(impl):
    model = models.build(config.replace(attention_impl=impl))

    def loss(params):
      logits = model.apply(params, tokens, jnp.asarray(seg))
      return jnp.sum(jnp.where(seg[..., None] != 0, logits, 0) ** 2), logits

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  assert_within_bound(logits_and_grads("splash"), logits_and_grads("blockwise"))


@pytest.mark.parametrize(
  "changes,impl,message",
  [
    (dict(attn_logit_softcap=30.0), "cudnn", "cannot cap attention logits"),
    (dict(attn_logit_softcap=30.0), "pallas_gpu", "no logit soft-capping"),
    (dict(sliding_window=8), "pallas_gpu", "no sliding window"),
    (dict(dtype="float32"), "cudnn", "needs bfloat16 or float16"),
  ],
)
def test_impossible_kernel_is_a_config_error(changes, impl, message):
  with pytest.raises(ValueError, match=message):
    models.tiny_config("llama", attention_impl=impl, **changes)


@pytest.mark.parametrize(
  "platform,features,expected",
  [
    ("tpu", dict(softcap=True, window=True, packed=True), "splash"),
    ("cpu", dict(softcap=False, window=False, packed=False), "blockwise"),
    ("gpu", dict(softcap=False, window=True, packed=False), "cudnn"),
    (
      "gpu",
      dict(softcap=False, window=True, packed=False, dtype="bfloat16"),
      "cudnn",
    ),
    (
      "gpu",
      dict(softcap=False, window=False, packed=False, dtype="float32"),
      "pallas_gpu",
    ),
    ("gpu", dict(softcap=False, window=False, packed=True), "pallas_gpu"),
    ("gpu", dict(softcap=False, window=True, packed=True), "blockwise"),
    ("gpu", dict(softcap=True, window=False, packed=False), "blockwise"),
  ],
)
def test_choice_per_platform(platform, features, expected):
  impl, reason = models.choose_attention(platform, **features)
  assert impl == expected and reason
  assert models.unsupported_attention(impl, **features) is None

"""Properties of ``DecoderLM`` that need no reference implementation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from slpo_jax import models

from models_testing import apply
from models_testing import hidden_states
from models_testing import random_params

FAMILIES = ("gpt2", "llama")
LOGICAL_NAMES = {
  "vocab",
  "embed",
  "mlp",
  "heads",
  "kv_heads",
  "head_dim",
  "norm",
  "positions",
  "layers",
}


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
  model = models.build(models.tiny_config(request.param))
  return model, random_params(model)


def _batch(vocab_size, lengths=(8, 5, 2), seed=0):
  rng = np.random.default_rng(seed)
  width = max(lengths)
  mask = (np.arange(width)[None] < np.array(lengths)[:, None]).astype(np.int32)
  ids = rng.integers(1, vocab_size, (len(lengths), width)) * mask
  return jnp.asarray(ids, jnp.int32), jnp.asarray(mask)


def _left_pad(ids, mask):
  """The same rows, padded on the left instead of the right."""
  lengths = mask.sum(-1)
  shifts = mask.shape[1] - lengths
  left_ids = jnp.stack([jnp.roll(r, s) for r, s in zip(ids, shifts)])
  left_mask = jnp.stack([jnp.roll(r, s) for r, s in zip(mask, shifts)])
  return left_ids, left_mask, shifts


def test_tiny_configs_are_tiny():
  for family in FAMILIES:
    config = models.tiny_config(family)
    assert 100_000 <= config.num_params <= 500_000
    params = models.build(config).abstract_params()
    assert sum(x.size for x in jax.tree.leaves(params)) == config.num_params
  assert models.get_config("gpt2", "small").num_params == 124_439_808
  with pytest.raises(ValueError, match="no built-in config"):
    models.get_config("llama", "huge")


def test_config_validation():
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    models.tiny_config("llama", num_kv_heads=3)
  with pytest.raises(ValueError, match="dtype int32 is not supported"):
    models.tiny_config("llama", dtype="int32")
  config = models.tiny_config("llama", dtype=jnp.bfloat16)
  assert config.dtype == "bfloat16" and hash(config) == hash(
    models.tiny_config("llama", dtype="bfloat16")
  )


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_param_has_logical_axes(scan_layers):
  for family in FAMILIES:
    model = models.build(models.tiny_config(family, scan_layers=scan_layers))
    axes = model.logical_axes()
    shapes = model.abstract_params()
    assert jax.tree.structure(shapes) == jax.tree.structure(
      axes, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )
    for spec, shape in zip(
      jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, PartitionSpec)),
      jax.tree.leaves(shapes),
    ):
      assert len(spec) == len(shape.shape)
      assert set(spec) <= LOGICAL_NAMES
      assert (spec[0] == "layers") == (scan_layers and spec[0] == "layers")


def test_partition_specs_follow_rules():
  model = models.build(models.tiny_config("llama"))
  specs = model.partition_specs()
  assert specs["embed"]["embedding"] == PartitionSpec("tensor", "fsdp")
  assert specs["lm_head"] == PartitionSpec("fsdp", "tensor")
  q = specs["layers_0"]["attn"]["q"]["kernel"]
  assert q == PartitionSpec("fsdp", "tensor", None)
  assert specs["layers_0"]["mlp"]["down"]["kernel"] == PartitionSpec(
    "tensor", "fsdp"
  )
  no_tensor = models.param_partition_specs(
    model, models.logical_axis_rules(tensor=None)
  )
  assert no_tensor["lm_head"] == PartitionSpec("fsdp", None)


def test_sharded_init_and_apply():
  devices = np.array(jax.devices()[:8]).reshape(1, 2, 4)
  mesh = Mesh(devices, ("data", "fsdp", "tensor"))
  # Scanned, so that initialisation compiles one random-number program per
  # kind of parameter rather than per layer.
  config = models.tiny_config("llama", vocab_size=256, scan_layers=True)
  model = models.build(config)
  shardings = model.shardings(mesh)
  # The 4-way tensor axis does not divide the 2 kv heads: that dimension
  # falls back to replication instead of failing.
  kv = shardings["layers"]["attn"]["k"]["kernel"].spec
  assert kv == PartitionSpec(None, "fsdp", None, None)
  # An "rbg" key compiles faster than the default threefry on CPU.
  params = jax.jit(model.init, out_shardings=shardings)(
    jax.random.key(0, impl="rbg")
  )
  assert params["lm_head"].sharding == NamedSharding(
    mesh, PartitionSpec("fsdp", "tensor")
  )
  # Plain arrays (no partitioning boxes), float32, the usual initial values.
  for leaf in jax.tree.leaves(
    params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)
  ):
    assert isinstance(leaf, jax.Array) and leaf.dtype == jnp.float32
  np.testing.assert_array_equal(params["layers"]["mlp_norm"]["scale"], 1.0)
  assert 0.015 < np.std(params["embed"]["embedding"]) < 0.025
  ids, mask = _batch(config.vocab_size, lengths=(8, 5))
  with nn.logical_axis_rules(models.DEFAULT_RULES), jax.set_mesh(mesh):
    sharded = apply(model, params, ids, mask)
  unsharded = apply(model, jax.device_get(params), ids, mask)
  np.testing.assert_allclose(sharded, unsharded, atol=1e-5)


def test_hidden_states_times_head_is_logits(tiny):
  model, params = tiny
  ids, mask = _batch(model.config.vocab_size)
  hidden, lm_head = hidden_states(model, params, ids, mask)
  assert hidden.shape == (3, 8, model.config.d_model)
  assert lm_head.shape == (model.config.d_model, model.config.vocab_size)
  if model.config.tie_embeddings:
    np.testing.assert_array_equal(lm_head, params["embed"]["embedding"].T)
  logits = apply(model, params, ids, mask)
  np.testing.assert_allclose(hidden @ lm_head, logits, atol=1e-5)


def test_padding_side_does_not_matter(tiny):
  model, params = tiny
  ids, mask = _batch(model.config.vocab_size)
  right = apply(model, params, ids, mask)
  left_ids, left_mask, shifts = _left_pad(ids, mask)
  left = apply(model, params, left_ids, left_mask)
  for row, shift in enumerate(shifts):
    length = int(mask[row].sum())
    np.testing.assert_allclose(
      left[row, shift:], right[row, :length], atol=1e-5
    )


def test_causality(tiny):
  """Changing a later token leaves earlier logits untouched."""
  model, params = tiny
  ids, mask = _batch(model.config.vocab_size, lengths=(8,))
  changed = ids.at[0, 5].set((ids[0, 5] + 1) % model.config.vocab_size)
  a, b = apply(model, params, ids, mask), apply(model, params, changed, mask)
  np.testing.assert_array_equal(a[:, :5], b[:, :5])
  assert not np.allclose(a[:, 5:], b[:, 5:])


def test_scan_and_remat_match_unrolled(tiny):
  model, params = tiny
  scanned = models.build(model.config.replace(scan_layers=True, remat=True))
  layers = [params[f"layers_{i}"] for i in range(model.config.num_layers)]
  stacked = {k: v for k, v in params.items() if not k.startswith("layers_")}
  stacked["layers"] = jax.tree.map(lambda *x: jnp.stack(x), *layers)
  assert jax.tree.structure(stacked) == jax.tree.structure(
    scanned.abstract_params()
  )
  ids, mask = _batch(model.config.vocab_size)

  np.testing.assert_allclose(
    apply(scanned, stacked, ids, mask),
    apply(model, params, ids, mask),
    atol=1e-5,
  )
  if model.config.family != "llama":
    return  # The gradient path is shared; one family suffices.

  def loss(p):
    return jnp.mean(jax.nn.log_softmax(scanned.apply(p, ids, mask))[..., 0])

  # Rematerialised and scanned blocks differentiate to stacked, finite
  # gradients for every layer.
  grad = jax.jit(jax.grad(loss))(stacked)
  assert jax.tree.structure(grad) == jax.tree.structure(stacked)
  for leaf in jax.tree.leaves(grad["layers"]):
    assert np.isfinite(leaf).all() and np.all(
      np.abs(leaf).sum(axis=tuple(range(1, leaf.ndim))) > 0
    )


def test_bfloat16_compute(tiny):
  model, params = tiny
  bf16 = models.build(model.config.replace(dtype="bfloat16"))
  ids, mask = _batch(model.config.vocab_size)
  logits = apply(bf16, params, ids, mask)
  assert logits.dtype == jnp.float32
  # Shapes and dtypes only: no need to compile a second bfloat16 program.
  hidden, lm_head = jax.eval_shape(bf16.hidden_states, params, ids, mask)
  assert hidden.dtype == lm_head.dtype == jnp.bfloat16
  reference = apply(model, params, ids, mask)
  m = np.asarray(mask, bool)
  # bfloat16 keeps 8 bits of mantissa; a few roundings per layer leave
  # errors of a few percent of the logits' scale.
  scale = np.max(np.abs(reference)[m])
  assert np.max(np.abs(logits - reference)[m]) < 0.03 * scale


def test_sliding_window_masks_distant_tokens():
  config = models.tiny_config("llama", sliding_window=3)
  model = models.build(config)
  params = random_params(model)
  ids, mask = _batch(config.vocab_size, lengths=(8,))
  changed = ids.at[0, 0].set((ids[0, 0] + 1) % config.vocab_size)
  a, b = apply(model, params, ids, mask), apply(model, params, changed, mask)
  # Token 0 reaches position t through at most (window - 1) * layers steps.
  reach = (config.sliding_window - 1) * config.num_layers
  np.testing.assert_array_equal(a[:, reach + 1 :], b[:, reach + 1 :])
  assert not np.allclose(a[:, reach], b[:, reach])


def test_gpt2_refuses_more_tokens_than_positions():
  model = models.build(models.tiny_config("gpt2", max_len=8))
  ids = jnp.ones((1, 9), jnp.int32)
  with pytest.raises(ValueError, match="9 tokens exceed the 8 learned"):
    jax.eval_shape(model.apply, model.abstract_params(), ids)


def test_position_ids():
  mask = jnp.array([[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
  np.testing.assert_array_equal(
    models.position_ids(mask), [[0, 1, 2, 2], [0, 0, 0, 1], [0, 1, 2, 3]]
  )

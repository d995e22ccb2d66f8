"""LoRA inside the layers: the same policy as the merged kernels, without
them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slpo_jax import lora
from slpo_jax import lora_sites
from slpo_jax import models
from slpo_jax.models import layers
from tests.models import models_testing
from tests.test_lora import _random_adapters
from tests.test_lora import _stack_blocks

SLOW = pytest.mark.slow

CASES = [
  ("llama", False, ("attention", "mlp", "embed", "lm_head")),
  pytest.param("llama", True, ("attention", "mlp", "embed"), marks=SLOW),
  pytest.param("gpt2", False, ("attention", "mlp"), marks=SLOW),
  ("gpt2", True, ("attention", "mlp")),  # c_attn: q, k, v share A.
]


def _setup(family, scan, targets, rank=4):
  flat = models.build(models.tiny_config(family))
  model = models.build(models.tiny_config(family, scan_layers=scan))
  config = lora.LoraConfig(rank=rank, alpha=8.0, targets=targets)
  base = models_testing.random_params(flat)
  adapters = _random_adapters(lora_sites.select_sites(flat, config), rank)
  if scan:
    layers_count = flat.config.num_layers
    base = _stack_blocks(base, layers_count)
    adapters = _stack_blocks(adapters, layers_count)
  return model, config, lora_sites.select_sites(model, config), base, adapters


@pytest.mark.parametrize("family, scan, targets", CASES)
def test_layer_adapters_equal_the_merged_kernels(family, scan, targets):
  model, config, sites, base, adapters = _setup(family, scan, targets)
  ids, mask = models_testing.right_padded_batch(512, (6, 4))

  def loss_and_logits(form, adapters):
    logits = model.apply(form(base, adapters, sites, config), ids, mask)
    logps = jnp.where(mask[..., None], jax.nn.log_softmax(logits), 0)
    return jnp.sum(logps), logits

  results = {
    form: jax.jit(
      jax.value_and_grad(lambda a, f=form: loss_and_logits(f, a), has_aux=True)
    )(adapters)
    for form in (lora.policy_params, lora.layer_params)
  }
  (_, merged_logits), merged_grads = results[lora.policy_params]
  (_, logits), layer_grads = results[lora.layer_params]
  np.testing.assert_allclose(logits, merged_logits, rtol=1e-5, atol=1e-5)
  base_logits = jax.jit(model.apply)(base, ids, mask)
  assert models_testing.max_masked_diff(logits, base_logits, mask) > 1e-1
  for want, got in zip(
    jax.tree.leaves(merged_grads), jax.tree.leaves(layer_grads)
  ):
    scale = float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


def test_no_kernel_sized_array_is_formed():
  """The merged form makes an ``[in, out]`` product of ``A @ B`` per site;
  the layer form makes none, nor a gradient of that size."""
  model, config, sites, base, adapters = _setup(
    "llama", True, ("attention", "mlp")
  )
  ids = jnp.ones((2, 8), jnp.int32)
  kernel_shapes = {
    tuple(leaf.shape)
    for path, leaf in jax.tree_util.tree_leaves_with_path(base)
    if "kernel" in jax.tree_util.keystr(path)
  }
  kernel_shapes |= {shape[1:] for shape in kernel_shapes}  # Per block.

  def products(form):
    def loss(adapters):
      return jnp.sum(model.apply(form(base, adapters, sites, config), ids))

    jaxpr = jax.make_jaxpr(jax.grad(loss))(adapters)
    found = []

    def walk(jaxpr):
      for equation in jaxpr.eqns:
        if equation.primitive.name == "dot_general":
          found.extend(tuple(v.aval.shape) for v in equation.outvars)
        for sub in jax.core.jaxprs_in_params(equation.params):
          walk(sub)

    walk(jaxpr.jaxpr)
    return [shape for shape in found if shape in kernel_shapes]

  assert products(lora.policy_params)  # The check can see them.
  assert products(lora.layer_params) == []


def _dense_with_adapter(rate, key):
  """A 4 -> 4 projection with zero kernel, ``A = B = I``: its output is the
  adapter path alone, ``scale * dropout(x)``."""
  dense = layers.DenseGeneral((4,), ("embed", "mlp"), use_bias=False)
  node = {"kernel": np.zeros((4, 4), np.float32)}
  node["lora_a"] = np.eye(4, dtype=np.float32)
  node["lora_b"] = 2.0 * np.eye(4, dtype=np.float32)
  if key is not None:
    node["lora_dropout_key"] = jax.random.key_data(key)
    node["lora_dropout_rate"] = np.float32(rate)
  return lambda x: dense.apply({"params": node}, x)


def test_dropout_acts_on_the_adapter_input_as_in_peft():
  x = np.random.default_rng(0).normal(size=(4000, 4)).astype(np.float32)
  # Without a key (evaluation) the adapter sees x itself.
  np.testing.assert_allclose(_dense_with_adapter(0.25, None)(x), 2 * x)
  out = np.asarray(_dense_with_adapter(0.25, jax.random.key(3))(x))
  dropped = out == 0
  # Inverted dropout: kept inputs scaled by 1 / (1 - p), the rest zero.
  np.testing.assert_allclose(out[~dropped], 2 * x[~dropped] / 0.75, rtol=1e-6)
  assert abs(dropped.mean() - 0.25) < 0.02


def test_dropout_masks_differ_by_block_and_leave_the_base_alone():
  model, config, sites, base, adapters = _setup(
    "gpt2", True, ("attention", "mlp")
  )
  config = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.5)
  ids, mask = models_testing.right_padded_batch(512, (6, 4))
  key = jax.random.key(0)
  with_dropout = lora.layer_params(
    base, adapters, sites, config, dropout_key=key
  )
  keys = with_dropout["layers"]["attn"]["q"]["lora_dropout_key"]
  assert keys.shape == (2, 2) and not np.array_equal(keys[0], keys[1])
  # One fused module, one mask: q, k and v of c_attn share the key.
  for name in ("k", "v"):
    np.testing.assert_array_equal(
      with_dropout["layers"]["attn"][name]["lora_dropout_key"], keys
    )
  apply = jax.jit(model.apply)
  dropped = apply(with_dropout, ids, mask)
  plain = apply(lora.layer_params(base, adapters, sites, config), ids, mask)
  assert models_testing.max_masked_diff(dropped, plain, mask) > 1e-2
  # With B = 0 the adapters add nothing, dropped or not.
  zero_b = jax.tree_util.tree_map_with_path(
    lambda path, x: 0 * x if "lora_b" in jax.tree_util.keystr(path) else x,
    adapters,
  )
  np.testing.assert_array_equal(
    apply(
      lora.layer_params(base, zero_b, sites, config, dropout_key=key),
      ids,
      mask,
    ),
    apply(base, ids, mask),
  )

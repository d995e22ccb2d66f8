"""LoRA on the parameter tree: sites, initialisation, merging, sharding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slpo_jax import lora
from slpo_jax import lora_sites
from slpo_jax import models
from tests.models import models_testing


def _model(family: str, **changes):
  return models.build(models.tiny_config(family, **changes))


def _random_adapters(sites, rank, seed=0):
  """Adapters with every leaf random (B too), so merging changes logits."""
  abstract = lora.abstract_adapters(sites, rank)
  leaves, treedef = jax.tree.flatten(abstract)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(
    treedef,
    [rng.normal(size=x.shape).astype(np.float32) * 0.1 for x in leaves],
  )


def _stack_blocks(tree, num_layers):
  """An unscanned tree (``layers_i``) as the scanned one (``layers``)."""
  tree = dict(tree)
  blocks = [tree.pop(f"layers_{i}") for i in range(num_layers)]
  tree["layers"] = jax.tree.map(lambda *x: np.stack(x), *blocks)
  return tree


def test_default_targets_are_every_projection():
  for family, names in (
    ("llama", {"q", "k", "v", "o", "gate", "up", "down"}),
    ("gpt2", {"q", "k", "v", "o", "fc", "proj"}),
  ):
    model = _model(family)
    sites = lora_sites.select_sites(model, lora.LoraConfig(rank=4))
    assert {n for s in sites for n in s.names} == names
    assert len(sites) == model.config.num_layers * (
      7 if family == "llama" else 4
    )


def test_sites_know_their_modules_and_layouts():
  sites = lora_sites.select_sites(
    _model("llama"), lora.LoraConfig(rank=4, targets=("o", "lm_head"))
  )
  head, o = sites[0], sites[1]
  assert head.hf_modules == ("lm_head",)
  assert (head.in_shape, head.out_shapes) == ((64,), ((512,),))
  assert o.hf_modules == ("model.layers.0.self_attn.o_proj",)
  assert (o.in_shape, o.out_shapes) == ((4, 16), ((64,),))
  assert (o.in_axes, o.out_axes) == (("heads", "head_dim"), (("embed",),))
  fused = lora_sites.select_sites(_model("gpt2"), lora.LoraConfig(rank=4))[0]
  assert fused.path == ("layers_0", "attn", "q_k_v")
  assert fused.hf_modules == ("transformer.h.0.attn.c_attn",)
  assert fused.out_shapes == ((4, 16),) * 3


def test_path_patterns_select_single_blocks():
  sites = lora_sites.select_sites(
    _model("llama"), lora.LoraConfig(rank=2, targets=("layers_1/mlp/down",))
  )
  assert [s.path for s in sites] == [("layers_1", "mlp", "down")]


def test_scale_and_rslora():
  assert lora.LoraConfig(rank=8, alpha=16).scale == 2.0
  assert lora.LoraConfig(rank=16, alpha=8, rslora=True).scale == 2.0


@pytest.mark.parametrize(
  "changes, message",
  [
    (dict(rank=0), "rank is 0"),
    (dict(rank=2, alpha=0.0), "alpha is 0.0"),
    (dict(rank=2, dropout=1.0), r"dropout is 1.0; it must be in \[0, 1\)"),
    (dict(rank=2, targets=()), "non-empty"),
  ],
)
def test_bad_settings_are_one_line_errors(changes, message):
  with pytest.raises(lora.LoraError, match=message) as info:
    lora.LoraConfig(**changes)
  assert "\n" not in str(info.value)


@pytest.mark.parametrize(
  "family, changes, targets, rank, message",
  [
    ("llama", {}, ("q", "qproj"), 2, "'qproj' matches no parameter"),
    (
      "llama",
      {},
      ("k",),
      64,
      "rank 64 exceeds dimension 32 of layers_0/attn/k",
    ),
    ("gpt2", {}, ("q",), 2, r"select \['q'\] of layers_0/attn/q_k_v"),
    ("gpt2", {}, ("embed",), 2, "tied embeddings"),
    ("llama", dict(scan_layers=True), ("layers_0/attn/q",), 2, "some blocks"),
  ],
)
def test_bad_targets_are_one_line_errors(
  family, changes, targets, rank, message
):
  model = _model(family, **changes)
  with pytest.raises(lora.LoraError, match=message) as info:
    lora_sites.select_sites(model, lora.LoraConfig(rank=rank, targets=targets))
  assert "\n" not in str(info.value)


def test_initialisation_follows_peft():
  model = _model("llama")
  config = lora.LoraConfig(rank=8, targets=("down", "embed"))
  sites = lora_sites.select_sites(model, config)
  adapters = lora.init_adapters(sites, 8, jax.random.key(0))
  down = adapters["layers_0"]["mlp"]["down"]
  assert down["lora_a"].shape == (176, 8) and down["lora_b"].shape == (8, 64)
  bound = 1 / math.sqrt(176)
  assert 0.9 * bound < float(jnp.max(jnp.abs(down["lora_a"]))) <= bound
  assert not np.any(down["lora_b"])
  embed = adapters["embed"]
  assert not np.any(embed["lora_a"])
  assert 0.8 < float(jnp.std(embed["lora_b"])) < 1.2


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_step_zero_is_the_base_bitwise(family):
  model = _model(family)
  base = models_testing.random_params(model)
  config = lora.LoraConfig(rank=4)
  sites = lora_sites.select_sites(model, config)
  adapters = lora.init_adapters(sites, 4, jax.random.key(1))
  policy = lora.policy_params(base, adapters, sites, config)
  ids, mask = models_testing.right_padded_batch(512, (6, 4))
  np.testing.assert_array_equal(
    models_testing.apply(model, policy, ids, mask),
    models_testing.apply(model, base, ids, mask),
  )
  assert lora.base_params(base) is base


def test_merge_is_w_plus_scaled_a_b_in_the_kernel_layout():
  model = _model("gpt2")
  base = models_testing.random_params(model)
  config = lora.LoraConfig(rank=3, alpha=6.0, targets=("q", "k", "v", "o"))
  sites = lora_sites.select_sites(model, config)
  adapters = _random_adapters(sites, 3)
  policy = lora.policy_params(base, adapters, sites, config)
  node = adapters["layers_1"]["attn"]["q_k_v"]
  want_k = base["layers_1"]["attn"]["k"]["kernel"] + 2.0 * np.einsum(
    "ir,rhd->ihd", node["lora_a"], node["lora_b"]["k"]
  )
  np.testing.assert_allclose(
    policy["layers_1"]["attn"]["k"]["kernel"], want_k, rtol=1e-6, atol=1e-6
  )
  node = adapters["layers_0"]["attn"]["o"]
  want_o = base["layers_0"]["attn"]["o"]["kernel"] + 2.0 * np.einsum(
    "hdr,re->hde", node["lora_a"], node["lora_b"]
  )
  np.testing.assert_allclose(
    policy["layers_0"]["attn"]["o"]["kernel"], want_o, rtol=1e-6, atol=1e-6
  )
  # Untargeted leaves are the base's own arrays.
  assert (
    policy["layers_0"]["mlp"]["fc"]["kernel"]
    is (base["layers_0"]["mlp"]["fc"]["kernel"])
  )


def test_scanned_blocks_merge_like_unscanned_ones():
  flat_model = _model("llama")
  scanned_model = _model("llama", scan_layers=True)
  config = lora.LoraConfig(rank=4)
  base = models_testing.random_params(flat_model)
  flat_sites = lora_sites.select_sites(flat_model, config)
  scanned_sites = lora_sites.select_sites(scanned_model, config)
  adapters = _random_adapters(flat_sites, 4)
  flat = lora.policy_params(base, adapters, flat_sites, config)
  scanned = lora.policy_params(
    _stack_blocks(base, 2), _stack_blocks(adapters, 2), scanned_sites, config
  )
  for a, b in zip(
    jax.tree.leaves(_stack_blocks(flat, 2)), jax.tree.leaves(scanned)
  ):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_adapters_shard_like_their_kernels():
  model = _model("llama", scan_layers=True)
  sites = lora_sites.select_sites(model, lora.LoraConfig(rank=4))
  specs = lora.logical_axes(sites)
  q = specs["layers"]["attn"]["q"]
  assert tuple(q["lora_a"]) == ("layers", "embed", "lora_rank")
  assert tuple(q["lora_b"]) == ("layers", "lora_rank", "heads", "head_dim")
  mesh = jax.sharding.Mesh(
    np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor")
  )
  placed = lora.shardings(sites, 4, mesh, models.logical_axis_rules())
  down = placed["layers"]["mlp"]["down"]
  assert tuple(down["lora_a"].spec) == (None, "tensor", None)
  assert tuple(down["lora_b"].spec) == (None, None, "fsdp")

"""Tests of slpo_jax.fingerprint: one value per tree, however it is placed."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from slpo_jax import fingerprint

# The value the LoRA runs store for ``_tree()`` as their base weights' hash
# (``train.lora_setup.prepare``'s identity), so checkpoints written before
# this module resume.
EXPECTED = "1d9d15ead019a530"


def _tree():
  rng = np.random.default_rng(0)
  return {
    "embed": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
    "layers": {
      "kernel": jnp.asarray(rng.normal(size=(2, 8, 4)), jnp.bfloat16),
      "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
    },
  }


def test_value_is_stable():
  assert fingerprint.params_fingerprint(_tree()) == EXPECTED


def test_sharding_does_not_change_it():
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))
  tree = _tree()
  specs = {
    "embed": PartitionSpec("fsdp", "data"),
    "layers": {
      "kernel": PartitionSpec(None, "fsdp"),
      "bias": PartitionSpec("data"),
    },
  }
  placed = jax.tree.map(
    lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)), tree, specs
  )
  assert len(placed["embed"].sharding.device_set) == 8
  assert fingerprint.params_fingerprint(placed) == EXPECTED


def test_values_order_and_paths_change_it():
  tree = _tree()
  changed = jax.tree.map(lambda x: x, tree)
  changed["embed"] = tree["embed"].at[3, 5].add(1e-3)
  swapped = jax.tree.map(lambda x: x, tree)
  swapped["embed"] = tree["embed"][::-1]
  renamed = {"embedding": tree["embed"], "layers": tree["layers"]}
  values = {
    fingerprint.params_fingerprint(t) for t in (changed, swapped, renamed)
  }
  assert len(values) == 3 and EXPECTED not in values

"""A short hash of a parameter tree's values, computed where the values are.

Used to tell whether two runs hold the same weights (a LoRA base, a frozen
reference) without gathering them: a model of billions of parameters would
otherwise be copied to one host just to be hashed.
"""

import hashlib
from typing import Any

import jax
import jax.numpy as jnp

# Knuth's multiplicative constant: position weights that differ in many bits.
_MULTIPLIER = 2654435761


def _checksum(leaf: jax.Array) -> jax.Array:
  """The leaf's bits, summed in uint32 with odd weights by flat position.

  Wrapping uint32 sums are exact, so the result is the same however the leaf
  is sharded; the odd weights make a swap of two elements change it.
  """
  bits = jax.lax.bitcast_convert_type(
    leaf, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[leaf.dtype.itemsize]
  ).astype(jnp.uint32)
  index = jax.lax.broadcasted_iota(jnp.uint32, leaf.shape, 0)
  for axis in range(1, leaf.ndim):
    index = index * jnp.uint32(leaf.shape[axis]) + jax.lax.broadcasted_iota(
      jnp.uint32, leaf.shape, axis
    )
  return jnp.sum(bits * (index * jnp.uint32(_MULTIPLIER) | jnp.uint32(1)))


def params_fingerprint(params: Any) -> str:
  """16 hex digits that identify a parameter tree's paths and values.

  Each leaf (of 1, 2 or 4-byte elements, at least one dimension) is reduced
  on its devices to one checksum; only those reach the host.
  """
  sums = jax.device_get(jax.jit(lambda p: jax.tree.map(_checksum, p))(params))
  digest = hashlib.sha256()
  for path, value in jax.tree_util.tree_leaves_with_path(sums):
    digest.update(f"{jax.tree_util.keystr(path)}={int(value)};".encode())
  return digest.hexdigest()[:16]

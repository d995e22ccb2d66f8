"""Low-rank adapters and quantized kernels, read from a module's own params.

A projection's parameter node may hold, beside its ``kernel``:

* ``lora_a`` ``[in..., r]`` and ``lora_b`` ``[r, out...]`` (the latter
  already multiplied by the LoRA scale): the module then computes
  ``x @ kernel + (dropout(x) @ lora_a) @ lora_b``, so neither a merged
  kernel nor a gradient of the kernel's size is ever formed;
* ``lora_dropout_key`` (``uint32 [2]`` key data) and ``lora_dropout_rate``
  (a float32 scalar): dropout on the adapter's input only, as PEFT's
  ``lora_dropout`` does;
* a quantized kernel (:mod:`slpo_jax.models.quantized`) in place of
  ``kernel``, dequantized where the module uses it.

The nodes are built by ``slpo_jax.lora.layer_params`` and
``slpo_jax.quantize``; a tree without them is the plain model. Under a
scanned stack every leaf carries the ``layers`` axis and the scan hands each
block its slice, so a quantized base is dequantized one block at a time.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from slpo_jax.models import quantized

A = "lora_a"
B = "lora_b"
DROPOUT_KEY = "lora_dropout_key"
DROPOUT_RATE = "lora_dropout_rate"


def has_adapter(module: Any) -> bool:
  """Whether ``module``'s params carry a LoRA adapter."""
  return module.has_variable("params", A)


def _dropped(module: Any, x: jax.Array) -> jax.Array:
  """``x`` with inverted dropout when the node carries a dropout key."""
  if not module.has_variable("params", DROPOUT_KEY):
    return x
  key = jax.random.wrap_key_data(module.get_variable("params", DROPOUT_KEY))
  rate = module.get_variable("params", DROPOUT_RATE)
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate).astype(x.dtype), 0).astype(x.dtype)


def dense_update(module: Any, x: jax.Array, num_in: int, dtype: Any):
  """``(dropout(x) @ A) @ B`` over the trailing ``num_in`` axes of ``x``."""
  a = module.get_variable("params", A).astype(dtype)
  b = module.get_variable("params", B).astype(dtype)
  x = _dropped(module, x.astype(dtype))
  x_axes = tuple(range(x.ndim - num_in, x.ndim))
  low = jax.lax.dot_general(x, a, ((x_axes, tuple(range(num_in))), ((), ())))
  return jax.lax.dot_general(low, b, (((low.ndim - 1,), (0,)), ((), ())))


def embedding_update(module: Any, ids: jax.Array, dtype: Any) -> jax.Array:
  """``A[ids] @ B``: an embedding table's adapter (PEFT applies no dropout
  to embeddings)."""
  a = module.get_variable("params", A).astype(dtype)
  b = module.get_variable("params", B).astype(dtype)
  return jnp.take(a, ids, axis=0) @ b


def kernel(
  module: Any, name: str, make: Any, dtype: Any, shape: tuple[int, ...]
) -> jax.Array:
  """The module's kernel ``name`` of ``shape`` in ``dtype``: dequantized
  when the node holds it quantized, else ``make()`` (the ``self.param``
  call) cast."""
  stored = quantized.stored_form(module, name)
  if stored is not None:
    return quantized.dequantize(stored, shape, dtype)
  return make().astype(dtype)

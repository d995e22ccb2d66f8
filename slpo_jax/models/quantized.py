"""Quantized kernels: how they are stored and read back.

A projection's kernel may be stored in one of two forms, as sibling leaves
of its parameter node in place of ``kernel`` (with the ``layers`` axis first
when the blocks are scanned, so a scan dequantizes one block at a time):

* **int8**, per output channel: ``kernel_int8`` (int8, the kernel's shape)
  and ``kernel_scale`` (float32, the output dimensions): the kernel is
  ``kernel_int8 * kernel_scale``, the scale being the channel's absolute
  maximum over 127.
* **nf4**, QLoRA's 4-bit NormalFloat (Dettmers et al. 2023,
  arXiv:2305.14314): the kernel flattened in row-major order and cut into
  blocks of :data:`NF4_BLOCK`; each block is divided by its absolute maximum
  and each value replaced by the index of the nearest of the 16 values of
  :data:`NF4_CODEBOOK`. ``kernel_nf4`` (uint8) holds two indices a byte:
  byte i holds index i in its high nibble and index i + n/2 in its low one
  (n indices in all), so reading concatenates the two halves rather than
  interleaving them, which on a TPU would pad a trailing axis of 2 to 128.
  ``kernel_absmax`` (float32) holds each block's maximum. With double quantization the maxima are themselves stored as
  ``kernel_absmax_int8``: their offset from ``kernel_absmax_mean`` in
  groups of :data:`ABSMAX_BLOCK` (the last padded with zeros), each with
  its absmax scale ``kernel_absmax_scale`` (QLoRA uses 8-bit floats there,
  these are 8-bit integers).

Quantizing a tree is :mod:`slpo_jax.quantize`; this module only reads.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# QLoRA's NF4 values (the table bitsandbytes ships): 8 positive and 7
# negative quantiles of N(0, 1), normalised to [-1, 1], and an exact zero.
# tests/test_quantize.py recomputes them from the paper's definition.
NF4_CODEBOOK = np.array(
  [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
  ],
  np.float32,
)
NF4_BLOCK = 64
ABSMAX_BLOCK = 256

INT8 = ("int8", "scale")
NF4 = ("nf4", "absmax")
NF4_DOUBLE = ("nf4", "absmax_int8", "absmax_scale", "absmax_mean")
FORMS = (NF4_DOUBLE, NF4, INT8)


def stored_form(module: Any, name: str) -> dict[str, jax.Array] | None:
  """The quantized leaves of kernel ``name`` in ``module``'s params, keyed
  by suffix (``int8``, ``scale``, ...), or None when it is stored plainly."""
  for form in FORMS:
    names = [f"{name}_{suffix}" for suffix in form]
    if all(module.has_variable("params", n) for n in names):
      return {
        suffix: module.get_variable("params", n)
        for suffix, n in zip(form, names)
      }
  return None


def nf4_absmax(stored: dict[str, jax.Array]) -> jax.Array:
  """The float32 block maxima, undoing the double quantization if any."""
  if "absmax" in stored:
    return stored["absmax"]
  q = stored["absmax_int8"].astype(jnp.float32)
  groups = q.reshape(-1, ABSMAX_BLOCK) * stored["absmax_scale"][:, None]
  count = stored["nf4"].shape[-1] * 2 // NF4_BLOCK  # Padding dropped.
  return groups.reshape(-1)[:count] + stored["absmax_mean"]


def dequantize(
  stored: dict[str, jax.Array], shape: tuple[int, ...], dtype: Any
) -> jax.Array:
  """The kernel of ``shape`` (no layers axis) from its stored leaves."""
  if "int8" in stored:
    kernel = stored["int8"].astype(jnp.float32) * stored["scale"]
    return kernel.astype(dtype)
  packed = stored["nf4"]
  codes = jnp.concatenate([packed >> 4, packed & 15], axis=-1)
  # Elementwise selects rather than a gather from the codebook, and in the
  # compute dtype: XLA then forms each kernel in one fused pass, holding no
  # index array and no float32 copy (on a v5p, 1B: 1.53 against 2.10 GiB of
  # temporaries per chip). In bfloat16 the block maximum and the product are
  # rounded once more, far below NF4's own rounding.
  values = jnp.full(codes.shape, NF4_CODEBOOK[0], dtype)
  for code in range(1, len(NF4_CODEBOOK)):
    level = jnp.asarray(NF4_CODEBOOK[code], dtype)
    values = jnp.where(codes == code, level, values)
  absmax = nf4_absmax(stored).astype(dtype)
  return (values.reshape(-1, NF4_BLOCK) * absmax[:, None]).reshape(shape)


def nf4_storable(size: int) -> bool:
  """Whether a kernel of ``size`` elements cuts into whole NF4 blocks."""
  return size % NF4_BLOCK == 0

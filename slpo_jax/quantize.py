"""A frozen base with its projection kernels quantized: int8 or NF4.

:func:`quantize_params` replaces every projection kernel of a parameter tree
(q k v o and the MLP's; not the embeddings, the output projection or the
norms, which stay as they are, as bitsandbytes leaves them) by its stored
form of :mod:`slpo_jax.models.quantized`, which the model reads directly:
each block dequantizes its own kernels when it runs, so under a scanned
stack no whole dequantized base ever exists. :func:`dequantize_params`
gives the plain tree back (for a merged export).

Quantizing runs one kernel, and under a scanned stack one block, at a time,
so its float32 temporaries are a block's, not the model's.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from slpo_jax import lora
from slpo_jax import lora_sites
from slpo_jax.models import quantized

FORMATS = ("int8", "nf4")
Params = dict[str, Any]
Path = tuple[str, ...]


class QuantizeError(ValueError):
  """A model, kernel or mesh the chosen format cannot hold."""


def kernel_layouts(model: Any) -> dict[Path, tuple[int, int]]:
  """``{kernel path: (leading axes, input axes)}`` for every projection
  kernel of ``model``'s tree (leading: 1 for a scanned stack's)."""
  layouts = {}
  for site in lora_sites.all_sites(model):
    if site.embedding or site.path == lora.HEAD:
      continue
    lead = 0 if site.num_layers is None else 1
    for path in site.kernels:
      layouts[path] = (lead, len(site.in_shape))
  return layouts


def check(model: Any, fmt: str, double_quant: bool = False) -> None:
  """Raises :class:`QuantizeError` (one line) for a kernel ``fmt`` cannot
  cut into whole blocks."""
  if fmt not in FORMATS:
    raise QuantizeError(f"unknown format {fmt!r}; use one of {FORMATS}")
  if fmt != "nf4":
    return
  del double_quant  # The maxima's last group is padded: any size works.
  abstract = model.abstract_params()
  for path, (lead, _) in kernel_layouts(model).items():
    shape = lora.lookup(abstract, path).shape[lead:]
    size = math.prod(shape)
    if not quantized.nf4_storable(size):
      raise QuantizeError(
        f"{'/'.join(path[:-1])}'s kernel {shape} has {size} values, not a"
        f" multiple of the NF4 block of {quantized.NF4_BLOCK}"
      )


def int8_leaves(kernel: jax.Array, num_in: int) -> dict[str, jax.Array]:
  """Per-output-channel absmax int8 of one kernel ``[in..., out...]``."""
  w = kernel.astype(jnp.float32)
  absmax = jnp.max(jnp.abs(w), axis=tuple(range(num_in)))
  scale = jnp.where(absmax > 0, absmax / 127.0, 1.0)
  q = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
  return {"int8": q, "scale": scale}


def nf4_codes(values: jax.Array) -> jax.Array:
  """Index of the nearest NF4 value to each of ``values`` (in [-1, 1])."""
  book = quantized.NF4_CODEBOOK
  midpoints = jnp.asarray((book[1:] + book[:-1]) / 2)
  return jnp.searchsorted(midpoints, values).astype(jnp.uint8)


def nf4_leaves(
  kernel: jax.Array, double_quant: bool = False
) -> dict[str, jax.Array]:
  """NF4 with block-wise absmax of one kernel, flattened row-major."""
  blocks = kernel.astype(jnp.float32).reshape(-1, quantized.NF4_BLOCK)
  absmax = jnp.max(jnp.abs(blocks), axis=-1)
  safe = jnp.where(absmax > 0, absmax, 1.0)
  codes = nf4_codes(blocks / safe[:, None]).reshape(2, -1)
  # The first half's indices in the high nibbles, the second half's in the
  # low ones (see slpo_jax.models.quantized).
  leaves = {"nf4": (codes[0] << 4) | codes[1], "absmax": absmax}
  if double_quant:
    mean = jnp.mean(absmax, keepdims=True)  # [1]: every leaf has an axis.
    # The last group is padded with zeros, which reading drops.
    padding = -absmax.shape[0] % quantized.ABSMAX_BLOCK
    centered = jnp.pad(absmax - mean, (0, padding))
    groups = centered.reshape(-1, quantized.ABSMAX_BLOCK)
    peak = jnp.max(jnp.abs(groups), axis=-1)
    scale = jnp.where(peak > 0, peak / 127.0, 1.0)
    q = jnp.clip(jnp.round(groups / scale[:, None]), -127, 127)
    del leaves["absmax"]
    leaves["absmax_int8"] = q.astype(jnp.int8).reshape(-1)
    leaves["absmax_scale"] = scale
    leaves["absmax_mean"] = mean
  return leaves


def _kernel_leaves(kernel, lead, num_in, fmt, double_quant):
  def one(w):
    if fmt == "int8":
      return int8_leaves(w, num_in)
    return nf4_leaves(w, double_quant)

  if lead:  # One block at a time.
    return jax.lax.map(one, kernel)
  return one(kernel)


def quantize_params(
  params: Params,
  model: Any,
  fmt: str,
  *,
  double_quant: bool = False,
  shardings: Params | None = None,
) -> Params:
  """``params`` with every projection kernel stored in ``fmt``.

  Args:
    params: the model's plain tree.
    model: its ``DecoderLM`` (for each kernel's layout).
    fmt: 'int8' or 'nf4'.
    double_quant: also quantize NF4's block maxima.
    shardings: the tree's ``NamedSharding``s; the stored leaves are placed
      by :func:`stored_shardings` of them. None: jitted without placement.
  """
  check(model, fmt, double_quant)
  layouts = kernel_layouts(model)
  out = jax.tree.map(lambda x: x, params)
  placed = None
  if shardings is not None:
    placed = stored_shardings(shardings, model, fmt, double_quant)
  for path, (lead, num_in) in layouts.items():
    module = path[:-1]
    node = lora.lookup(out, module)
    kernel = node.pop(path[-1])
    out_shardings = None
    if placed is not None:
      target = lora.lookup(placed, module)
      out_shardings = {
        key[len(path[-1]) + 1 :]: value
        for key, value in target.items()
        if key.startswith(path[-1] + "_")
      }
    make = jax.jit(
      lambda w, lead=lead, num_in=num_in: _kernel_leaves(
        w, lead, num_in, fmt, double_quant
      ),
      out_shardings=out_shardings,
    )
    for suffix, value in make(kernel).items():
      node[f"{path[-1]}_{suffix}"] = value
  return out


def abstract_params(
  model: Any, fmt: str, dtype: Any, double_quant: bool = False
) -> Params:
  """Shapes and dtypes of the quantized tree (``jax.ShapeDtypeStruct``),
  the unquantized leaves in ``dtype``."""
  base = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, dtype), model.abstract_params()
  )
  return jax.eval_shape(
    lambda p: quantize_params(p, model, fmt, double_quant=double_quant), base
  )


def _fit(mesh, spec: tuple, shape: tuple[int, ...]) -> NamedSharding:
  """The spec with a mesh axis dropped from a dimension it does not divide."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * len(shape)):
    names = () if axes is None else (axes,) if isinstance(axes, str) else axes
    size = math.prod(mesh.shape[n] for n in names)
    fitted.append(axes if dim % size == 0 else None)
  return NamedSharding(mesh, PartitionSpec(*fitted))


def stored_shardings(
  shardings: Params, model: Any, fmt: str, double_quant: bool = False
) -> Params:
  """Shardings of the quantized tree from the plain tree's: int8 values as
  their kernel, scales as its output part; NF4's flat codes and maxima over
  all the mesh axes the kernel was split on (the layers axis kept)."""
  abstract = abstract_params(model, fmt, jnp.float32, double_quant)
  plain = model.abstract_params()
  out = jax.tree.map(lambda x: x, shardings)
  for path, (lead, num_in) in kernel_layouts(model).items():
    module = path[:-1]
    node = lora.lookup(out, module)
    kernel = node.pop(path[-1])
    ndim = lora.lookup(plain, path).ndim
    spec = tuple(kernel.spec) + (None,) * (ndim - len(kernel.spec))
    mesh = kernel.mesh
    shapes = {
      key: value.shape
      for key, value in lora.lookup(abstract, module).items()
      if key.startswith(path[-1] + "_")
    }
    for key, shape in shapes.items():
      suffix = key[len(path[-1]) + 1 :]
      if suffix == "int8":
        leaf_spec = spec
      elif suffix == "scale":
        leaf_spec = spec[:lead] + spec[lead + num_in :]
      elif len(shape) > lead and suffix != "absmax_mean":
        used = tuple(
          name
          for axes in spec[lead:]
          if axes is not None
          for name in ((axes,) if isinstance(axes, str) else axes)
        )
        leaf_spec = spec[:lead] + ((used or None),)
      else:
        leaf_spec = spec[:lead]
      node[key] = _fit(mesh, leaf_spec, shape)
  return out


def dequantize_params(
  params: Params, model: Any, dtype: Any = jnp.float32
) -> Params:
  """The plain tree of a quantized one, its kernels in ``dtype``; a tree
  with no quantized kernel is returned as it is."""
  layouts = kernel_layouts(model)
  abstract = model.abstract_params()
  out = jax.tree.map(lambda x: x, params)
  for path, (lead, _) in layouts.items():
    node = lora.lookup(out, path[:-1])
    name = path[-1]
    stored = {
      key[len(name) + 1 :]: node[key]
      for key in list(node)
      if key.startswith(name + "_") and not key.startswith("lora")
    }
    if not stored:
      continue
    for key in stored:
      del node[f"{name}_{key}"]
    shape = lora.lookup(abstract, path).shape

    def one(leaves, shape=shape[lead:]):
      return quantized.dequantize(leaves, shape, dtype)

    node[name] = jax.lax.map(one, stored) if lead else one(stored)
  return out


def stored_bytes(params: Params) -> int:
  """Bytes of a (quantized or plain) tree's leaves."""
  return int(
    sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(params))
  )

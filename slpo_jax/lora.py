"""LoRA as a transformation of the plain-dict parameter tree.

Low-rank adapters (Hu et al. 2021, arXiv:2106.09685) add ``scale * A @ B``
to chosen weight matrices of a frozen base. Here the adapters are a separate
parameter tree. :func:`layer_params`, what the train step runs, puts each
adapter beside its kernel in the base tree, where the model's projections
compute ``x @ W + scale * (dropout(x) @ A) @ B`` (see
``slpo_jax.models.adapted``): no merged kernel and no kernel-sized gradient
exist. :func:`policy_params` merges the adapters into the kernels, for
exports and sampling; :func:`base_params` (adapters off) is the base tree
itself.

Each targeted matrix is a *site*, one per Hugging Face module (see
``slpo_jax.models.hf_weights``): its adapter has

* ``lora_a``: ``[in..., rank]``, the kernel's input dimensions and logical
  axes plus an unsharded ``lora_rank`` axis;
* ``lora_b``: ``[rank, out...]``, the kernel's output dimensions and axes
  (for a module our tree splits, GPT-2's fused ``c_attn``, a dict of one
  part per kernel, all sharing ``lora_a``);

with a leading ``layers`` axis when the blocks are scanned. Adapters then
shard on the same mesh as the base kernels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from slpo_jax.lora_sites import DEFAULT_TARGETS
from slpo_jax.lora_sites import HEAD
from slpo_jax.lora_sites import LoraError
from slpo_jax.lora_sites import Site
from slpo_jax.lora_sites import lookup
from slpo_jax.lora_sites import put
from slpo_jax.models import adapted

Params = dict[str, Any]
Path = tuple[str, ...]

RANK_AXIS = "lora_rank"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Which matrices get adapters, and how big and strong they are.

  Attributes:
    rank: the adapters' rank ``r``.
    alpha: strength; the update is scaled by ``alpha / rank``.
    dropout: the probability of zeroing an input of an adapter's path
      while training (PEFT's ``lora_dropout``); embeddings take none, as in
      PEFT, and the ``lm_head`` target, which the loss head reads as one
      matrix, allows none.
    targets: regular expressions, each fully matching a module name (``q``,
      ``k``, ``v``, ``o``, ``gate``, ``up``, ``down``, GPT-2's ``fc`` and
      ``proj``, ``embed``, ``lm_head``) or a module path (``layers_3/attn/q``);
      ``attention`` and ``mlp`` name those groups.
    rslora: scale by ``alpha / sqrt(rank)`` instead (Kalajdzievski 2023,
      arXiv:2312.03732), which keeps the update's size across ranks.
  """

  rank: int
  alpha: float = 16.0
  dropout: float = 0.0
  targets: tuple[str, ...] = DEFAULT_TARGETS
  rslora: bool = False

  def __post_init__(self):
    if not isinstance(self.rank, int) or self.rank < 1:
      raise LoraError(f"lora rank is {self.rank!r}; it must be an integer >= 1")
    if not self.alpha > 0:
      raise LoraError(f"lora alpha is {self.alpha!r}; it must be > 0")
    if not 0 <= self.dropout < 1:
      raise LoraError(f"lora dropout is {self.dropout!r}; it must be in [0, 1)")
    if isinstance(self.targets, str) or not self.targets:
      raise LoraError(
        f"lora targets are {self.targets!r}; give a non-empty tuple of names"
      )
    object.__setattr__(self, "targets", tuple(self.targets))

  @property
  def scale(self) -> float:
    """The factor of ``A @ B`` in the merged weight."""
    if self.rslora:
      return self.alpha / math.sqrt(self.rank)
    return self.alpha / self.rank


def _leading(site: Site) -> tuple[int, ...]:
  return () if site.num_layers is None else (site.num_layers,)


def b_parts(site: Site, node: dict) -> list[Any]:
  """The ``B`` of each kernel of ``site``, in kernel order."""
  if site.fused:
    return [node["lora_b"][name] for name in site.names]
  return [node["lora_b"]]


def adapter_node(site: Site, a: Any, parts: list[Any]) -> dict:
  """The adapter tree's node of ``site`` from its ``A`` and ``B`` parts."""
  b = dict(zip(site.names, parts)) if site.fused else parts[0]
  return {"lora_a": a, "lora_b": b}


def init_adapters(
  sites: list[Site], rank: int, rng: jax.Array, dtype: Any = jnp.float32
) -> Params:
  """Fresh adapters, initialised as PEFT does: step 0 is the base exactly.

  ``A`` is uniform in ``+-1/sqrt(in)`` (PyTorch's ``kaiming_uniform_`` with
  ``a=sqrt(5)``, PEFT's default) and ``B`` zero; for an embedding table,
  PEFT's ``A`` is zero and ``B`` standard normal.
  """
  adapters: Params = {}
  for site, key in zip(sites, jax.random.split(rng, max(len(sites), 1))):
    lead = _leading(site)
    a_shape = lead + site.in_shape + (rank,)
    b_shapes = [lead + (rank,) + s for s in site.out_shapes]
    if site.embedding:
      a = jnp.zeros(a_shape, dtype)
      parts = [jax.random.normal(key, b_shapes[0], dtype)]
    else:
      bound = 1.0 / math.sqrt(site.in_features)
      a = jax.random.uniform(key, a_shape, dtype, -bound, bound)
      parts = [jnp.zeros(s, dtype) for s in b_shapes]
    put(adapters, site.path, adapter_node(site, a, parts))
  return adapters


def abstract_adapters(
  sites: list[Site], rank: int, dtype: Any = jnp.float32
) -> Params:
  """Shapes and dtypes of the adapters (``jax.ShapeDtypeStruct`` leaves)."""
  return jax.eval_shape(
    lambda: init_adapters(sites, rank, jax.random.key(0), dtype)
  )


def logical_axes(sites: list[Site]) -> Params:
  """A ``PartitionSpec`` of logical axis names for every adapter leaf."""
  specs: Params = {}
  for site in sites:
    lead = () if site.num_layers is None else ("layers",)
    a = PartitionSpec(*lead, *site.in_axes, RANK_AXIS)
    parts = [PartitionSpec(*lead, RANK_AXIS, *axes) for axes in site.out_axes]
    put(specs, site.path, adapter_node(site, a, parts))
  return specs


def shardings(sites: list[Site], rank: int, mesh: Mesh, rules: Any) -> Params:
  """``NamedSharding`` of every adapter leaf: the base kernels' mesh axes,
  a mesh axis dropped from a dimension it does not divide."""
  specs = nn.logical_to_mesh(logical_axes(sites), rules)

  def fit(spec: PartitionSpec, leaf: Any) -> NamedSharding:
    fitted = []
    for dim, axes in zip(leaf.shape, tuple(spec) + (None,) * leaf.ndim):
      names = () if axes is None else (axes,) if isinstance(axes, str) else axes
      size = math.prod(mesh.shape[n] for n in names)
      fitted.append(axes if dim % size == 0 else None)
    return NamedSharding(mesh, PartitionSpec(*fitted))

  return jax.tree.map(
    fit,
    specs,
    abstract_adapters(sites, rank),
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


def site_deltas(site: Site, node: dict, scale: float) -> list[jax.Array]:
  """``scale * A @ B`` of each kernel of ``site``, float32, in its layout."""
  lead = _leading(site)
  a = node["lora_a"].astype(jnp.float32)
  a = a.reshape(lead + (site.in_features, a.shape[-1]))
  deltas = []
  for b, out_shape in zip(b_parts(site, node), site.out_shapes):
    b = b.astype(jnp.float32).reshape(lead + (b.shape[len(lead)], -1))
    delta = scale * jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
    deltas.append(delta.reshape(lead + site.in_shape + out_shape))
  return deltas


def policy_params(
  base: Params,
  adapters: Params,
  sites: list[Site],
  config: LoraConfig,
  dtype: Any = None,
) -> Params:
  """The base with each targeted kernel replaced by ``W + scale * A @ B``.

  Works under ``jax.jit`` and ``jax.grad`` (differentiate with respect to
  ``adapters``). Untargeted leaves are the base's own arrays; merged ones
  are summed in float32 and stored in ``dtype`` (the base leaf's when None;
  pass the compute dtype to keep a bfloat16 base's small updates from being
  rounded away before the model casts them anyway).
  """
  merged = jax.tree.map(lambda x: x, base)  # New dicts, the same leaves.
  for site in sites:
    for path, delta in zip(
      site.kernels,
      site_deltas(site, lookup(adapters, site.path), config.scale),
    ):
      kernel = lookup(base, path)
      out_dtype = kernel.dtype if dtype is None else dtype
      put(merged, path, (kernel.astype(jnp.float32) + delta).astype(out_dtype))
  return merged


def layer_params(
  base: Params,
  adapters: Params,
  sites: list[Site],
  config: LoraConfig,
  *,
  dropout_key: jax.Array | None = None,
  dtype: Any = None,
) -> Params:
  """The base with each adapter beside the kernel it adapts.

  Each targeted projection's node gets ``lora_a`` and ``scale * lora_b``
  (a fused module's kernels share ``lora_a``), and, with ``dropout_key``
  and ``config.dropout > 0``, a dropout key and rate: a different key per
  site and per block, the same for the kernels of one fused module, so that
  they see one mask as the module does in PEFT. The model then runs the
  adapters inside its layers. The output projection is the exception: the
  loss head reads it as one matrix, so its adapter is merged as in
  :func:`policy_params` (in ``dtype``).

  Works under ``jax.jit`` and ``jax.grad`` with respect to ``adapters``;
  the base's leaves are its own arrays.
  """
  tree = jax.tree.map(lambda x: x, base)  # New dicts, the same leaves.
  keys = None
  if dropout_key is not None and config.dropout > 0:
    keys = jax.random.split(dropout_key, max(len(sites), 1))
  for index, site in enumerate(sites):
    node = lookup(adapters, site.path)
    if site.path == HEAD:
      (delta,) = site_deltas(site, node, config.scale)
      kernel = lookup(base, HEAD)
      out_dtype = kernel.dtype if dtype is None else dtype
      put(tree, HEAD, (kernel.astype(jnp.float32) + delta).astype(out_dtype))
      continue
    lead = _leading(site)
    dropout = {}
    if keys is not None and not site.embedding:
      key = keys[index]
      if lead:
        key = jax.random.split(key, lead[0])
      dropout = {
        adapted.DROPOUT_KEY: jax.random.key_data(key),
        adapted.DROPOUT_RATE: jnp.full(lead, config.dropout, jnp.float32),
      }
    for path, b in zip(site.kernels, b_parts(site, node)):
      module = path[:-1]
      put(tree, module + (adapted.A,), node["lora_a"])
      put(tree, module + (adapted.B,), config.scale * b)
      for name, value in dropout.items():
        put(tree, module + (name,), value)
  return tree


def base_params(base: Params) -> Params:
  """The policy with its adapters off: the base tree itself, no copy."""
  return base


def trainable_count(adapters: Params) -> int:
  """Number of adapter parameters."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(adapters)))

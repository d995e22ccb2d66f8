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
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from slpo_jax.models import adapted
from slpo_jax.models import hf_weights

Params = dict[str, Any]
Path = tuple[str, ...]

RANK_AXIS = "lora_rank"
# Short names expanding to groups of our module names (GPT-2's MLP is
# fc/proj, the Llama family's gate/up/down).
ALIASES = {"attention": "q|k|v|o", "mlp": "gate|up|down|fc|proj"}
DEFAULT_TARGETS = ("attention", "mlp")
# Families whose Hugging Face projections are ``Conv1D`` (``[in, out]``
# weights) rather than ``nn.Linear`` (``[out, in]``).
CONV1D_FAMILIES = ("gpt2",)
_EMBEDDING = ("embed", "embedding")
# The output projection's site: merged even in the step (see layer_params).
HEAD = ("lm_head",)


class LoraError(ValueError):
  """A LoRA setting that cannot work with this model."""


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


@dataclasses.dataclass(frozen=True)
class Site:
  """One matrix that can carry an adapter.

  Attributes:
    path: the adapter's node in the adapter tree.
    kernels: base parameter paths it adds to (several for a fused module).
    names: our module name of each kernel (``q``, ``embed``...).
    layer_paths: the unscanned module path(s), ``layers_0/attn/q``, one per
      block a scanned site stacks; targets are matched against these.
    hf_modules: the Hugging Face module name(s), prefixed
      (``model.layers.0.self_attn.q_proj``), one per block when scanned.
    in_shape: the kernel's input dimensions (no layers axis).
    out_shapes: each kernel's output dimensions.
    in_axes: logical names of the input dimensions.
    out_axes: logical names of each kernel's output dimensions.
    num_layers: the stacked blocks when scanned, else None.
    embedding: an embedding table (``in`` is the vocabulary).
  """

  path: Path
  kernels: tuple[Path, ...]
  names: tuple[str, ...]
  layer_paths: tuple[str, ...]
  hf_modules: tuple[str, ...]
  in_shape: tuple[int, ...]
  out_shapes: tuple[tuple[int, ...], ...]
  in_axes: tuple[str | None, ...]
  out_axes: tuple[tuple[str | None, ...], ...]
  num_layers: int | None = None
  embedding: bool = False

  @property
  def in_features(self) -> int:
    return math.prod(self.in_shape)

  @property
  def out_features(self) -> tuple[int, ...]:
    return tuple(math.prod(s) for s in self.out_shapes)

  @property
  def fused(self) -> bool:
    return len(self.kernels) > 1


def _input_dims(shape: tuple[int, ...], in_features: int) -> int:
  """How many leading dimensions of a kernel make its input."""
  for count in range(1, len(shape)):
    if math.prod(shape[:count]) == in_features:
      return count
  raise LoraError(f"kernel {shape} has no input part of {in_features}")


def lookup(tree: Any, path: Path) -> Any:
  """The node of a nested dict at ``path``."""
  for key in path:
    tree = tree[key]
  return tree


def put(tree: dict, path: Path, value: Any) -> None:
  """Sets the node at ``path``, creating the dicts above it."""
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _layer_sites(model: Any) -> list[Site]:
  """Every candidate site of the unscanned layout, in checkpoint order."""
  config = model.config
  unscanned = model.config.replace(scan_layers=False)
  axes = type(model)(unscanned).logical_axes()
  prefix = hf_weights.PREFIXES[config.family][0]
  sites = []
  for group in hf_weights.tensor_groups(unscanned):
    paths = group.param_paths
    embedding = paths == (_EMBEDDING,)
    if not embedding and not all(
      p[-1] == "kernel" or p == ("lm_head",) for p in paths
    ):
      continue
    if len(group.hf_names) != 1 or not group.hf_names[0].endswith(".weight"):
      continue
    rows, cols = group.hf_shapes[0]
    conv1d = config.family in CONV1D_FAMILIES and paths != (("lm_head",),)
    # Embedding tables are [vocab, d]: a lookup, vocab is the input.
    in_features = rows if (conv1d or embedding) else cols
    count = _input_dims(group.param_shapes[0], in_features)
    names = tuple(p[-2] if p[-1] == "kernel" else p[0] for p in paths)
    if embedding or paths == (("lm_head",),):
      node = (names[0],)
    else:  # A fused module's node is named after all its kernels.
      node = paths[0][:-2] + ("_".join(names),)
    module = hf_weights.full_name(group.hf_names[0], prefix)[: -len(".weight")]
    kernel_axes = [tuple(lookup(axes, p)) for p in paths]
    sites.append(
      Site(
        path=node,
        kernels=paths,
        names=names,
        layer_paths=("/".join(node),),
        hf_modules=(module,),
        in_shape=tuple(group.param_shapes[0][:count]),
        out_shapes=tuple(tuple(s[count:]) for s in group.param_shapes),
        in_axes=kernel_axes[0][:count],
        out_axes=tuple(a[count:] for a in kernel_axes),
        embedding=embedding,
      )
    )
  return sites


def _stacked(sites: list[Site], num_layers: int) -> list[Site]:
  """Sites of a scanned tree: one per template, blocks on a leading axis."""
  by_path: dict[Path, list[Site]] = {}
  for site in sites:
    key = hf_weights.stacked_path(site.path)
    by_path.setdefault(key, []).append(site)
  stacked = []
  for path, group in by_path.items():
    first = group[0]
    if path == first.path:  # Not a block's: embeddings, head.
      stacked.append(first)
      continue
    stacked.append(
      dataclasses.replace(
        first,
        path=path,
        kernels=tuple(hf_weights.stacked_path(k) for k in first.kernels),
        layer_paths=tuple(s.layer_paths[0] for s in group),
        hf_modules=tuple(s.hf_modules[0] for s in group),
        num_layers=num_layers,
      )
    )
  return stacked


def all_sites(model: Any) -> list[Site]:
  """Every matrix of ``model`` (a ``DecoderLM``) that can carry an adapter."""
  sites = _layer_sites(model)
  if model.config.scan_layers:
    return _stacked(sites, model.config.num_layers)
  return sites


def _pattern(target: str) -> re.Pattern:
  try:
    return re.compile(ALIASES.get(target, target))
  except re.error as error:
    raise LoraError(f"lora target {target!r} is not a regex: {error}") from None


def _kernels_hit(pattern: re.Pattern, site: Site, layer_path: str) -> set:
  """The kernels of ``site`` in one block that ``pattern`` selects."""
  parent = layer_path.rsplit("/", 1)[0] if "/" in layer_path else ""
  return {
    name
    for name in site.names
    if pattern.fullmatch(name)
    or (parent and pattern.fullmatch(f"{parent}/{name}"))
  }


def select_sites(model: Any, config: LoraConfig) -> list[Site]:
  """The sites ``config.targets`` select, checked against ``model``.

  Raises:
    LoraError: a target matching nothing, a rank above a matched matrix's
      dimension, a partial selection a stacked or fused site cannot hold,
      or an embedding target with tied embeddings.
  """
  patterns = {t: _pattern(t) for t in config.targets}
  candidates = all_sites(model)
  selected, used = [], set()
  for site in candidates:
    per_block = []
    for layer_path in site.layer_paths:
      hit = set()
      for target, pattern in patterns.items():
        kernels = _kernels_hit(pattern, site, layer_path)
        if kernels:
          used.add(target)
          hit |= kernels
      per_block.append(hit)
    if not any(per_block):
      continue
    where = "/".join(site.path)
    partial = [sorted(h) for h in per_block if h and h != set(site.names)]
    if partial:
      raise LoraError(
        f"lora targets select {partial[0]} of {where}, which the checkpoint"
        f" stores as one module ({site.hf_modules[0]}): select"
        f" {list(site.names)} together"
      )
    if not all(per_block):
      raise LoraError(
        f"lora targets select {where} in some blocks only; with"
        " model.scan_layers the blocks are stacked: select all or none"
      )
    if site.embedding and model.config.tie_embeddings:
      raise LoraError(
        "lora target 'embed' with tied embeddings would change the output"
        " head as well, which PEFT does not do: drop the target"
      )
    if site.path == HEAD and config.dropout:
      raise LoraError(
        f"lora dropout {config.dropout} with the lm_head target: the loss"
        " head reads the output projection as one merged matrix, where"
        " dropout on the adapter's input cannot act; set dropout 0 or drop"
        " lm_head"
      )
    smallest = min(site.in_features, sum(site.out_features))
    if config.rank > smallest:
      raise LoraError(
        f"lora rank {config.rank} exceeds dimension {smallest} of {where}"
      )
    selected.append(site)
  unused = [t for t in config.targets if t not in used]
  if unused:
    names = sorted({n for s in candidates for n in s.names})
    raise LoraError(
      f"lora target {unused[0]!r} matches no parameter of this"
      f" {model.config.family} model; its module names are {names}"
    )
  return selected


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

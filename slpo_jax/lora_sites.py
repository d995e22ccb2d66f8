"""Where adapters can go: a model's sites, and the targets' choice of them.

A *site* is one matrix that can carry a LoRA adapter, one per Hugging Face
module (see ``slpo_jax.models.hf_weights``): a projection kernel of a block
(several for a module our tree splits, GPT-2's fused ``c_attn``), an
embedding table or the output head. With scanned blocks a site stacks the
blocks' matrices on a leading axis. :func:`select_sites` matches a
configuration's targets against a model's sites and refuses, in one line,
the selections an adapter cannot hold.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import TYPE_CHECKING
from typing import Any

from slpo_jax.models import hf_weights

if TYPE_CHECKING:
  from slpo_jax.lora import LoraConfig

Path = tuple[str, ...]

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

"""Logical axis names of the model parameters and their mesh placement.

Parameters are annotated with logical names; a list of rules maps each name
to zero or more mesh axes. The defaults target a ``("data", "fsdp",
"tensor")`` mesh:

=================  ==============  ===========================================
logical name       mesh axes       why
=================  ==============  ===========================================
embed              fsdp            shards every weight matrix (ZeRO-3 style)
vocab, mlp         tensor          Megatron column/row split of the matmuls
heads, kv_heads    tensor          attention heads stay whole on one device
head_dim, norm,    (replicated)    small or needed whole by every device
positions, layers
activation_batch   data, fsdp      activations follow the batch
activation_vocab   tensor          logits split like the output projection
=================  ==============  ===========================================

A mesh axis is dropped from a dimension it does not divide (e.g. GPT-2's
50257-token vocabulary on a 4-way tensor axis), so any config can be placed
on any mesh; that dimension is then replicated.
"""

from __future__ import annotations

from typing import Any
from typing import Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]


def _axes(*names: str | None) -> MeshAxes:
  kept = tuple(n for n in names if n is not None)
  if not kept:
    return None
  return kept[0] if len(kept) == 1 else kept


def logical_axis_rules(
  *,
  data: str | None = "data",
  fsdp: str | None = "fsdp",
  tensor: str | None = "tensor",
) -> tuple[tuple[str, MeshAxes], ...]:
  """Rules mapping the models' logical axis names to mesh axis names.

  Args:
    data: name of the pure data-parallel mesh axis, or None if absent.
    fsdp: name of the mesh axis that shards parameters and the batch, or
      None.
    tensor: name of the tensor-parallel mesh axis, or None.

  Returns:
    A tuple of ``(logical_name, mesh_axes)`` pairs for
    ``flax.linen.logical_to_mesh_axes``, ``nn.logical_axis_rules``, etc.
  """
  return (
    ("activation_batch", _axes(data, fsdp)),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_vocab", _axes(tensor)),
    ("vocab", _axes(tensor)),
    ("embed", _axes(fsdp)),
    ("mlp", _axes(tensor)),
    ("heads", _axes(tensor)),
    ("kv_heads", _axes(tensor)),
    ("head_dim", None),
    ("positions", None),
    ("norm", None),
    ("layers", None),
  )


DEFAULT_RULES = logical_axis_rules()


def _fit_to_shape(
  spec: PartitionSpec, shape: Sequence[int], mesh: Mesh
) -> PartitionSpec:
  """Replicates the dimensions that the assigned mesh axes don't divide."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      fitted.append(None)
      continue
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    size = 1
    for name in names:
      size *= mesh.shape[name]
    fitted.append(axes if dim % size == 0 else None)
  return PartitionSpec(*fitted)


def param_partition_specs(
  model: Any,
  rules: Rules | None = None,
  *,
  mesh: Mesh | None = None,
) -> Any:
  """Mesh ``PartitionSpec`` for every parameter of ``model``.

  Args:
    model: a ``DecoderLM`` (anything with ``logical_axes()`` and
      ``abstract_params()``).
    rules: logical-to-mesh rules; ``DEFAULT_RULES`` when None.
    mesh: if given, mesh axes that do not divide a dimension are dropped.

  Returns:
    A pytree of ``PartitionSpec`` with the structure of the parameters.
  """
  rules = DEFAULT_RULES if rules is None else tuple(rules)
  specs = nn.logical_to_mesh(model.logical_axes(), rules)
  if mesh is None:
    return specs
  return jax.tree.map(
    lambda spec, leaf: _fit_to_shape(spec, leaf.shape, mesh),
    specs,
    model.abstract_params(),
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


def param_shardings(model: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
  """``NamedSharding`` for every parameter of ``model`` on ``mesh``.

  Pass the result as ``out_shardings`` of a jitted ``model.init`` or as
  ``shardings`` of ``load_hf_model``.
  """
  specs = param_partition_specs(model, rules, mesh=mesh)
  return jax.tree.map(
    lambda spec: NamedSharding(mesh, spec),
    specs,
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )

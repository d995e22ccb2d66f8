"""Device meshes with data, fsdp and tensor axes, and how arrays map onto them.

Parameters carry logical axis names (``"embed"``, ``"mlp"``, ``"vocab"``, ...);
:data:`DEFAULT_RULES` maps those names to mesh axes. Batches are split over
``("data", "fsdp")``: fsdp shards parameters *and* the batch, so both axes
carry distinct examples.
"""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical parameter axis -> mesh axis. Embedding-sized axes are sharded over
# fsdp (ZeRO-3 style); the wide per-layer axes over tensor.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("q_heads", "tensor"),
    ("head_dim", None),
    ("kv", None),
    ("layers", None),
    ("length", None),
    ("positions", None),
    ("norm", None),
)


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """A ``(data, fsdp, tensor)`` mesh over all (or the given) devices.

  Args:
    data: data-parallel size; -1 takes all devices left after fsdp and tensor.
    fsdp: parameter-and-batch sharding size.
    tensor: tensor-parallel size.
    devices: devices to use; defaults to ``jax.devices()``.

  Raises:
    ValueError: when the sizes do not multiply to the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  count = len(devices)
  for name, size in (("fsdp", fsdp), ("tensor", tensor)):
    if size < 1:
      raise ValueError(f"mesh.{name} must be >= 1, got {size}.")
  if data == -1:
    if count % (fsdp * tensor):
      raise ValueError(
          f"{count} devices cannot be split into fsdp={fsdp} x tensor={tensor};"
          " choose sizes whose product divides the device count."
      )
    data = count // (fsdp * tensor)
  if data * fsdp * tensor != count:
    raise ValueError(
        f"mesh data={data} x fsdp={fsdp} x tensor={tensor} ="
        f" {data * fsdp * tensor} devices, but {count} are available; set"
        " mesh.data=-1 or sizes whose product is the device count."
    )
  shape = (data, fsdp, tensor)
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of ``[batch, ...]`` arrays: the leading axis over data and fsdp."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def logical_to_mesh_spec(
    logical_axes: Sequence[str | None], rules=DEFAULT_RULES
) -> PartitionSpec:
  """Translate one tuple of logical axis names into a mesh PartitionSpec.

  A mesh axis is used at most once per array: a later logical axis that maps
  to an axis already taken stays unsharded.
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name in logical_axes:
    target = table.get(name) if name is not None else None
    names = (target,) if isinstance(target, str) else tuple(target or ())
    if not names or used.intersection(names):
      spec.append(None)
      continue
    used.update(names)
    spec.append(names[0] if len(names) == 1 else names)
  return PartitionSpec(*spec)


def shardings_from_logical(logical_tree, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for a pytree whose leaves are tuples of logical names."""
  return jax.tree.map(
      lambda axes: NamedSharding(mesh, logical_to_mesh_spec(axes, rules)),
      logical_tree,
      is_leaf=lambda x: isinstance(x, tuple)
      and all(a is None or isinstance(a, str) for a in x),
  )


def fit_to_shape(sharding: NamedSharding, shape: Sequence[int]) -> NamedSharding:
  """Drop mesh axes from dimensions they do not divide (small tensors)."""
  spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
  mesh_sizes = dict(zip(sharding.mesh.axis_names, sharding.mesh.devices.shape))
  fitted = []
  for dim, axes in zip(shape, spec):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh_sizes[n] for n in names])) if names else 1
    fitted.append(axes if size and dim % size == 0 else None)
  return NamedSharding(sharding.mesh, PartitionSpec(*fitted))

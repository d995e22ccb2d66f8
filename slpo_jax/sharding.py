"""Device meshes with data, fsdp and tensor axes, and how arrays map onto them.

Parameters carry logical axis names that
:mod:`slpo_jax.models.partitioning` maps onto these mesh axes. Batches are
split over ``("data", "fsdp")``: fsdp shards parameters *and* the batch, so
both axes carry distinct examples.
"""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def make_mesh(
  data: int = -1,
  fsdp: int = 1,
  tensor: int = 1,
  *,
  devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """A ``(data, fsdp, tensor)`` mesh over all (or the given) devices.

  Args:
    data: data-parallel size. Any one axis may be -1: it takes all devices
      the others leave.
    fsdp: parameter-and-batch sharding size.
    tensor: tensor-parallel size.
    devices: devices to use; defaults to ``jax.devices()``.

  Raises:
    ValueError: when the sizes do not multiply to the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  count = len(devices)
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
  for name, size in sizes.items():
    if size < 1 and name not in free:
      raise ValueError(f"mesh.{name} must be >= 1 or -1, got {size}")
  fixed = int(np.prod([s for s in sizes.values() if s != -1]))
  if free:
    if count % fixed:
      raise ValueError(
        f"{count} devices cannot be split by the fixed mesh sizes {sizes};"
        " choose sizes whose product divides the device count"
      )
    sizes[free[0]] = count // fixed
  data, fsdp, tensor = sizes["data"], sizes["fsdp"], sizes["tensor"]
  if data * fsdp * tensor != count:
    raise ValueError(
      f"mesh data={data} x fsdp={fsdp} x tensor={tensor} ="
      f" {data * fsdp * tensor} devices, but {count} are available; set one"
      " axis to -1 or sizes whose product is the device count"
    )
  shape = (data, fsdp, tensor)
  # Auto axes: jit propagates shardings from in/out_shardings and the
  # parameters' placement, as on every JAX version.
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of ``[batch, ...]`` arrays: the leading axis over data and fsdp."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(host_batch: Any, mesh: Mesh) -> Any:
  """Each process's rows of a batch -> global arrays split over data x fsdp.

  ``host_batch`` is any pytree of arrays (a dict, a batch dataclass). Every
  process passes its own share (the same number of rows each); the result
  has the same structure, each array's leading axis the global batch.
  """
  spec = batch_sharding(mesh)
  return jax.tree.map(
    lambda value: jax.make_array_from_process_local_data(
      spec, np.asarray(value)
    ),
    host_batch,
  )


def placed_shapes(tree: Any, shardings: Any, dtype: Any = None) -> Any:
  """``jax.ShapeDtypeStruct``s of ``tree``'s leaves in ``shardings``.

  What ``jit(...).lower`` takes in place of arrays when only the shapes are
  wanted (ahead-of-time compiles): ``tree`` may hold arrays or shapes;
  ``dtype`` replaces every leaf's dtype when given.
  """
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype or x.dtype, sharding=s),
    tree,
    shardings,
  )

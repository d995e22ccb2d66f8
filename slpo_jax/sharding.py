"""Device meshes with data, fsdp and tensor axes, and how arrays map onto them.

Parameters carry logical axis names that
:mod:`slpo_jax.models.partitioning` maps onto these mesh axes. Batches are
split over ``("data", "fsdp")``: fsdp shards parameters *and* the batch, so
both axes carry distinct examples.
"""

from collections.abc import Sequence
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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

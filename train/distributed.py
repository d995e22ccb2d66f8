"""JAX's multi-host runtime: when and how to start it."""

import os

import jax


def _auto_detectable() -> bool:
  """True where ``jax.distributed.initialize()`` finds its peers by itself."""
  return (
    any(
      name in os.environ
      for name in (
        "TPU_WORKER_HOSTNAMES",
        "CLOUD_TPU_TASK_ID",
        "SLURM_JOB_ID",
        "OMPI_COMM_WORLD_SIZE",
        "JAX_COORDINATOR_ADDRESS",
      )
    )
    and int(os.environ.get("SLURM_NTASKS", "2")) > 1
  )


def initialize(config) -> None:
  """Start the multi-host runtime when the config or environment asks for it.

  Explicit ``config.distributed`` settings win; otherwise Cloud TPU pods and
  SLURM/Open MPI jobs are detected from their environment. A single process
  with neither runs without it.
  """
  if config.coordinator_address:
    jax.distributed.initialize(
      coordinator_address=config.coordinator_address,
      num_processes=config.num_processes or None,
      process_id=None if config.process_id < 0 else config.process_id,
    )
  elif _auto_detectable():
    jax.distributed.initialize()


def log_devices() -> None:
  if jax.process_index() != 0:
    return
  print(
    f"JAX {jax.__version__}: {jax.process_count()} process(es),"
    f" {jax.local_device_count()} local and {jax.device_count()} global"
    f" devices ({jax.devices()[0].device_kind})."
  )

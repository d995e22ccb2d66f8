"""What the side-by-side step benchmarks share: interleaved timing, the RSS
high-water mark of one variant in its own process, and the machine.

A *variant* is a callable that runs one optimizer step and returns its loss,
with a ``name``. Timing runs every variant in interleaved, rotated rounds
in one process, so background load hits all of them alike.

Peak memory is measured per variant in a fresh subprocess: after set-up
and warm-up steps, freed heap memory is returned to the system
(``malloc_trim``), the kernel's high-water mark is reset
(``/proc/self/clear_refs``), and the rise of ``VmHWM`` over the next steps
is what a step needs beyond what stays resident between steps (weights,
optimizer state, batches). ``VmHWM`` is the counter behind ``getrusage``'s
``ru_maxrss``, read from ``/proc/self/status`` because ``ru_maxrss`` also
carries the parent's mark across ``exec``.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from collections.abc import Sequence

import jax
import jaxlib

from bench.loss_head import cpu_model


def use_compilation_cache(workdir: pathlib.Path) -> None:
  """Shares compiled programs between this process and its RSS workers.

  The workers then load the JAX steps the timing process compiled instead of
  compiling them again: the same executables, at a fraction of the CPU time
  (which matters on a loaded machine).
  """
  jax.config.update("jax_compilation_cache_dir", str(workdir / "xla_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def timed(variant) -> tuple[float, float, float]:
  """Wall seconds, CPU seconds (all threads of the process) and the loss."""
  wall, cpu = time.perf_counter(), time.process_time()
  loss = variant()
  return time.perf_counter() - wall, time.process_time() - cpu, loss


def interleaved_times(variants, rounds: int, steps: int, warmup: int):
  """Per-step (wall, cpu) samples by name, rounds interleaved and rotated."""
  for _ in range(warmup):
    for variant in variants:
      variant()
  samples = {v.name: [] for v in variants}
  for r in range(rounds):
    shift = r % len(variants)
    for variant in variants[shift:] + variants[:shift]:
      for _ in range(steps):
        wall, cpu, _ = timed(variant)
        samples[variant.name].append((wall, cpu))
    print(
      f"  round {r + 1}/{rounds} done, load average {os.getloadavg()[0]:.2f}",
      flush=True,
    )
  return samples


def quartiles(values) -> tuple[float, float]:
  q = statistics.quantiles(values, n=4)
  return q[0], q[2]


# --- RSS high-water mark, one variant per subprocess. ---------------------


def _release_free_heap():
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def _reset_high_water_mark() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _high_water_mark_bytes() -> int:
  """The process's peak RSS: ``VmHWM``, else ``getrusage``'s ``ru_maxrss``.

  On Linux ``ru_maxrss`` is the larger of ``VmHWM`` and a mark inherited at
  ``exec`` from the parent's memory (a worker started by a 700 MB process
  reads 700 MB at least); ``VmHWM`` is the same counter without that.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_rise(variant: Callable[[], float], *, warmup: int, steps: int) -> dict:
  """How far the RSS high-water mark rises over ``steps`` steps.

  ``warmup`` steps first allocate what stays resident (e.g. Adam moments)
  and compile every shape. Without ``/proc/self/clear_refs`` (not Linux),
  the mark cannot be reset and the rise is only what exceeds the set-up's
  peak (compilation included): ``high_water_mark_reset`` is then False.
  """
  for _ in range(warmup):
    variant()
  setup_peak = _high_water_mark_bytes()
  _release_free_heap()
  reset = _reset_high_water_mark()
  before = _high_water_mark_bytes()
  for _ in range(steps):
    variant()
  after = _high_water_mark_bytes()
  return {
    "name": variant.name,
    "rss_rise": after - before,
    "rss_before": before,
    "rss_peak_until_warmup": setup_peak,
    "high_water_mark_reset": reset,
    "steps": steps,
  }


def start_workers(
  module: str, names: Sequence[str], arguments: Sequence[str]
) -> dict:
  """Starts ``python -m module --rss-worker NAME *arguments`` per name.

  They may run at the same time as each other and as the timing process's
  set-up, to save wall time: they measure memory, which does not depend on
  load, and they must finish before any timing starts.
  """
  return {
    name: subprocess.Popen(
      [sys.executable, "-m", module, "--rss-worker", name, *arguments],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for name in names
  }


def worker_results(workers) -> dict:
  """Waits for the workers of `start_workers`; their results by name.

  Each worker prints its result as one JSON line, last.
  """
  results = {}
  for name, worker in workers.items():
    out, err = worker.communicate()
    if worker.returncode:
      raise RuntimeError(f"the RSS worker of {name} failed:\n{err[-3000:]}")
    results[name] = json.loads(out.strip().splitlines()[-1])
    print(
      f"  RSS high-water mark rise, {name}:"
      f" +{mib(results[name]['rss_rise'])} MiB",
      flush=True,
    )
  return results


def stop_workers(workers) -> None:
  for worker in workers.values():
    if worker.poll() is None:
      worker.kill()


def add_run_arguments(parser, *, quick_help, results_dir, workers) -> None:
  """The flags both step benchmarks take: RSS, quick runs, output, and the
  hidden ones of an RSS worker."""
  parser.add_argument(
    "--skip-rss", action="store_true", help="no RSS subprocesses"
  )
  parser.add_argument("--quick", action="store_true", help=quick_help)
  parser.add_argument("--out", type=pathlib.Path, default=results_dir)
  parser.add_argument(
    "--rss-worker", choices=tuple(workers), help=argparse.SUPPRESS
  )
  parser.add_argument(
    "--rss-workdir", type=pathlib.Path, help=argparse.SUPPRESS
  )


# --- Report. ---------------------------------------------------------------


def machine_description() -> dict:
  from bench import trl_dpo

  return {
    "cpu_model": cpu_model(),
    "cpu_count": os.cpu_count(),
    "platform": jax.devices()[0].platform,
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    **trl_dpo.versions(),
    "python": platform.python_version(),
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds"
    ),
  }


def load_average() -> str:
  return " ".join(f"{x:.2f}" for x in os.getloadavg())


def mib(n: float) -> str:
  return f"{n / 2**20:,.1f}"

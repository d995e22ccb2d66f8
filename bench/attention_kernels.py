"""Attention kernels side by side: forward+backward time, memory, agreement.

  python -m bench.attention_kernels            # on a GPU (bench/gpu.sh runs it)
  python -m bench.attention_kernels --smoke    # tiny shapes, any CPU

One attention layer of the Llama 3.2 1B shape (32 query heads, 8 key/value
heads, head_dim 64, bfloat16 on an accelerator, float32 on a CPU) at
row lengths of 1k to 8k tokens, the same number of tokens per call
(``--tokens``, default 16,384: 16 rows of 1k ... 2 rows of 8k), in two
layouts:

* padded: one sequence per row, its length uniform in [T/2, T], then
  padding;
* packed: sequences of lognormal lengths (median T/8) packed in each row,
  positions counting from 0 per sequence, the row's tail padding.

Every kernel of ``slpo_jax.models.ATTENTION_IMPLS`` the layout and the
platform allow is timed (median of ``--repeats`` calls after a warm-up):
the jitted gradient of ``sum(out * w)`` with respect to query, key and
value, so forward and backward. A kernel that cannot take the layout
(cuDNN has no segment ids) is listed with the reason, never run on the
wrong mask. Splash is left out on a GPU and the GPU kernels on a TPU,
where they would only be interpreted; ``--smoke`` runs every kernel
(interpreted ones included) on a CPU. Memory is XLA's compiled scratch
(``temp_size_in_bytes``) of that program; ``max_error`` is the largest
absolute difference of the outputs from the blockwise kernel's.

Prints a table and writes ``--out`` (JSON: one object per row, plus the
device and versions).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax import models
from slpo_jax.models import attention

RESULT = pathlib.Path(__file__).parent / "results" / "gpu_attention.json"


@dataclasses.dataclass(frozen=True)
class Shape:
  heads: int = 32
  kv_heads: int = 8
  head_dim: int = 64
  tokens: int = 16384
  lengths: tuple[int, ...] = (1024, 2048, 4096, 8192)


SMOKE = Shape(heads=4, kv_heads=2, head_dim=16, tokens=512, lengths=(128, 256))


def layout(kind: str, rows: int, length: int, seed: int = 0):
  """``(segment_ids, positions)`` of ``rows`` rows of ``length``."""
  rng = np.random.default_rng(seed)
  seg = np.zeros((rows, length), np.int32)
  pos = np.zeros((rows, length), np.int32)
  for r in range(rows):
    if kind == "padded":
      n = int(rng.integers(length // 2, length + 1))
      seg[r, :n], pos[r, :n] = 1, np.arange(n)
      continue
    start, segment = 0, 1
    while start < length:
      n = max(8, int(rng.lognormal(np.log(length / 8), 0.8)))
      if start + n > length:
        break
      seg[r, start : start + n] = segment
      pos[r, start : start + n] = np.arange(n)
      start, segment = start + n, segment + 1
  return seg, pos


def kernels_for(kind: str, platform: str, smoke: bool) -> dict[str, str | None]:
  """Each kernel name and why it is not run (None: it is)."""
  reasons = {}
  for impl in models.ATTENTION_IMPLS:
    if impl in ("auto", "dense"):
      continue  # auto is one of the others; dense is the [T, T] reference.
    reason = models.unsupported_attention(
      impl, softcap=False, window=False, packed=kind == "packed"
    )
    native = {"splash": "tpu", "pallas_gpu": "gpu", "cudnn": "gpu"}.get(impl)
    if reason is None and native and native != platform and not smoke:
      reason = f"interpreted off its platform ({native})"
    if impl == "cudnn" and platform != "gpu":
      reason = reason or "needs an NVIDIA GPU"
    reasons[impl] = reason
  return reasons


def measure(
  impl: str, kind: str, length: int, shape: Shape, dtype, repeats: int
) -> dict:
  rows = max(1, shape.tokens // length)
  seg, pos = layout(kind, rows, length)
  rng = np.random.default_rng(1)

  def normal(*dims):
    return jnp.asarray(rng.normal(size=(rows, length, *dims)), dtype)

  q, w = (
    normal(shape.heads, shape.head_dim),
    normal(shape.heads, shape.head_dim),
  )
  k, v = (normal(shape.kv_heads, shape.head_dim) for _ in "kv")
  mask = attention.self_attention_mask(jnp.asarray(seg), jnp.asarray(pos))

  def forward(q, k, v):
    return attention.attention(
      q, k, v, mask, impl=impl, scale=shape.head_dim**-0.5, dtype=dtype
    )

  def loss(q, k, v):
    out = forward(q, k, v)
    return jnp.sum(out.astype(jnp.float32) * w.astype(jnp.float32)), out

  step = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))
  start = time.perf_counter()
  compiled = step.lower(q, k, v).compile()
  compile_seconds = time.perf_counter() - start
  (_, out), _ = jax.block_until_ready(compiled(q, k, v))  # Warm-up.
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(q, k, v))
    seconds.append(time.perf_counter() - start)
  return dict(
    impl=impl,
    layout=kind,
    length=length,
    rows=rows,
    real_tokens=int(np.sum(seg != 0)),
    compile_seconds=compile_seconds,
    seconds_median=statistics.median(seconds),
    temp_bytes=int(compiled.memory_analysis().temp_size_in_bytes),
    out=out,
  )


def run(shape: Shape, smoke: bool, repeats: int) -> list[dict]:
  platform = jax.devices()[0].platform
  dtype = jnp.float32 if platform == "cpu" else jnp.bfloat16
  rows = []
  for length in shape.lengths:
    for kind in ("padded", "packed"):
      reasons = kernels_for(kind, platform, smoke)
      reference = None
      for impl, reason in reasons.items():
        if reason:
          rows.append(
            dict(impl=impl, layout=kind, length=length, skipped=reason)
          )
          continue
        row = measure(impl, kind, length, shape, dtype, repeats)
        out = np.asarray(row.pop("out"), np.float32)
        if impl == "blockwise":
          reference = out
        row["max_error"] = float(np.max(np.abs(out - reference)))
        rows.append(row)
        print(_line(row), flush=True)
  for row in rows:
    base = next(
      r
      for r in rows
      if r["impl"] == "blockwise"
      and r["layout"] == row["layout"]
      and r["length"] == row["length"]
    )
    if "seconds_median" in row:
      row["speed_vs_blockwise"] = base["seconds_median"] / row["seconds_median"]
      row["memory_vs_blockwise"] = row["temp_bytes"] / max(
        base["temp_bytes"], 1
      )
  return rows


def _line(row: dict) -> str:
  return (
    f"{row['layout']:>6} T={row['length']:5d} {row['impl']:>10}:"
    f" {row['seconds_median'] * 1e3:9.2f} ms fwd+bwd,"
    f" {row['temp_bytes'] / 2**20:9.1f} MiB scratch,"
    f" max |out - blockwise| {row['max_error']:.2e}"
  )


def table(rows: list[dict]) -> str:
  lines = [
    "| layout | T | kernel | fwd+bwd ms | vs blockwise | scratch MiB "
    "| vs blockwise | max abs error vs blockwise |",
    "|---|---:|---|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    if "skipped" in r:
      lines.append(
        f"| {r['layout']} | {r['length']} | {r['impl']} | not run: "
        f"{r['skipped']} | | | | |"
      )
      continue
    lines.append(
      f"| {r['layout']} | {r['length']} | {r['impl']} "
      f"| {r['seconds_median'] * 1e3:.2f} | {r['speed_vs_blockwise']:.2f}x "
      f"| {r['temp_bytes'] / 2**20:.1f} | {r['memory_vs_blockwise']:.2f}x "
      f"| {r['max_error']:.1e} |"
    )
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--smoke", action="store_true", help=repr(SMOKE))
  parser.add_argument("--tokens", type=int, default=Shape.tokens)
  parser.add_argument("--lengths", type=int, nargs="+", default=None)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", type=pathlib.Path, help="JSON file")
  parser.add_argument("--json", action="store_true", help="print JSON only")
  args = parser.parse_args(argv)
  shape = SMOKE if args.smoke else Shape(tokens=args.tokens)
  if args.lengths:
    shape = dataclasses.replace(shape, lengths=tuple(args.lengths))
  rows = run(shape, args.smoke, args.repeats)
  device = jax.devices()[0]
  result = dict(
    command="python -m bench.attention_kernels",
    device_kind=device.device_kind,
    platform=device.platform,
    jax=jax.__version__,
    shape=dataclasses.asdict(shape),
    rows=rows,
  )
  if args.json:
    print(json.dumps(result, indent=2))
  else:
    print(table(rows))
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(
      f"{device.device_kind}, jax {jax.__version__}. Command: "
      f"`python -m bench.attention_kernels`.\n\n{table(rows)}\n"
    )


if __name__ == "__main__":
  main()

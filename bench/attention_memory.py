"""Dense vs blockwise attention: compiled scratch memory, side by side.

Command (from the repository root)::

  python -m bench.attention_memory          # T = 1k, 4k, 16k (~2 min on CPU)
  python -m bench.attention_memory --quick  # T = 1k, 4k, nothing saved

The program measured is the jitted forward plus backward (gradients for
query, key and value) of one attention layer with realistic head counts
(32 query heads, 8 key/value heads, head_dim 128, batch 1, float32, causal
with right padding expressed as segment ids): ``dense_attention``, the
``[B, heads, T, S]`` score path the model used before, against
``blockwise_attention``, the default now.

Memory is XLA's own accounting of the compiled program
(``compiled.memory_analysis().temp_size_in_bytes``): the scratch the program
needs beyond its arguments and outputs. Programs are compiled, never run, so
the 16k dense case (tens of GiB) costs nothing but compile time. Results are
printed and written to ``bench/results/attention_memory_<platform>.{md,json}``.
"""

import argparse
import datetime
import json
import pathlib
import platform

import jax
import jax.numpy as jnp

from slpo_jax.models import attention

HEADS, KV_HEADS, HEAD_DIM, BATCH = 32, 8, 128, 1
LENGTHS = (1024, 4096, 16384)
RESULTS = pathlib.Path(__file__).parent / "results"


def temp_bytes(kernel: str, length: int) -> int:
  """Scratch bytes of forward + backward of one attention layer."""
  shape = jax.ShapeDtypeStruct
  q = shape((BATCH, length, HEADS, HEAD_DIM), jnp.float32)
  kv = shape((BATCH, length, KV_HEADS, HEAD_DIM), jnp.float32)
  ids = shape((BATCH, length), jnp.int32)
  fn = getattr(attention, f"{kernel}_attention")

  def loss(q, k, v, segment_ids, positions):
    mask = attention.self_attention_mask(segment_ids, positions)
    return jnp.sum(fn(q, k, v, mask, scale=HEAD_DIM**-0.5))

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  compiled = grad.lower(q, kv, kv, ids, ids).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)


def _gib(n: int) -> str:
  return f"{n / 2**30:.3f}"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  lengths = LENGTHS[:2] if args.quick else LENGTHS
  rows = []
  for length in lengths:
    dense = temp_bytes("dense", length)
    blockwise = temp_bytes("blockwise", length)
    rows.append(dict(length=length, dense=dense, blockwise=blockwise))
    print(
      f"T={length:6d}  dense {_gib(dense):>9} GiB  blockwise "
      f"{_gib(blockwise):>7} GiB  dense/blockwise {dense / blockwise:7.1f}x",
      flush=True,
    )
  header = (
    f"Attention forward+backward scratch (XLA temp bytes), {HEADS} query "
    f"heads, {KV_HEADS} kv heads, head_dim {HEAD_DIM}, batch {BATCH}, "
    f"float32, blockwise tiles {attention.DEFAULT_BLOCK}x"
    f"{attention.DEFAULT_BLOCK}; compiled, not run."
  )
  lines = [
    header,
    "",
    "| T | dense GiB | blockwise GiB | dense / blockwise | growth vs "
    "previous T (dense, blockwise) |",
    "|---:|---:|---:|---:|---|",
  ]
  for i, row in enumerate(rows):
    growth = ""
    if i:
      prev = rows[i - 1]
      growth = (
        f"x{row['dense'] / prev['dense']:.1f}, "
        f"x{row['blockwise'] / prev['blockwise']:.1f}"
      )
    lines.append(
      f"| {row['length']} | {_gib(row['dense'])} | {_gib(row['blockwise'])} "
      f"| {row['dense'] / row['blockwise']:.1f}x | {growth} |"
    )
  table = "\n".join(lines)
  print("\n" + table)
  if args.quick:
    return
  backend = jax.devices()[0].platform
  meta = dict(
    date=datetime.date.today().isoformat(),
    jax=jax.__version__,
    platform=backend,
    machine=platform.machine(),
    heads=HEADS,
    kv_heads=KV_HEADS,
    head_dim=HEAD_DIM,
    batch=BATCH,
    block=attention.DEFAULT_BLOCK,
  )
  RESULTS.mkdir(exist_ok=True)
  stem = RESULTS / f"attention_memory_{backend}"
  stem.with_suffix(".json").write_text(
    json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n"
  )
  stem.with_suffix(".md").write_text(
    f"{table}\n\nMachine: {meta['machine']}, JAX {meta['jax']}, "
    f"{meta['date']}. Command: `python -m bench.attention_memory`.\n"
  )


if __name__ == "__main__":
  main()

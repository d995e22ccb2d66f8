"""Compiled memory of a train step: full fine-tuning against LoRA rank 16.

  python -m bench.lora_memory            # prints the table
  python -m bench.lora_memory --out bench/results/lora_memory.md

For each model the jitted DPO step is lowered from abstract shapes
(``jax.ShapeDtypeStruct``, by ``train.aot.abstract_step``; no weight is
allocated) and compiled for this machine's first device; XLA's
``memory_analysis()`` gives the bytes of its arguments (parameters,
optimizer state, the base, the batch) and of its temporaries (activations,
gradients). Full fine-tuning keeps float32 weights with AdamW moments; the
LoRA step keeps the base frozen in bfloat16 and trains rank-16 adapters on
every projection. The tiny model's step is also run, for its time.
"""

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from train import aot
from train import config_schema

SHAPES = pathlib.Path(__file__).resolve().parents[1] / "configs" / "shapes"
# (name, model.checkpoint or '' for the built-in tiny Llama, pairs, length)
MODELS = (
  ("tiny Llama (CPU, run)", "", 8, 64),
  ("Llama 3.2 1B", str(SHAPES / "llama3_2_1b"), 8, 1024),
  ("Llama 3 8B", str(SHAPES / "llama3_8b"), 8, 1024),
)
RANK = 16


def make_config(checkpoint: str, pairs: int, length: int, rank: int):
  config = config_schema.get_config()
  config.steps = 10
  config.batch_size = pairs
  config.mesh.data = 1
  config.model.checkpoint = checkpoint
  config.model.dtype = "bfloat16" if checkpoint else "float32"
  config.model.remat = bool(checkpoint)
  config.model.scan_layers = bool(checkpoint)
  config.data.max_length = length
  config.data.max_prompt_length = length // 4
  config.data.length_buckets = (length,)
  config.model.lora.rank = rank
  config.model.lora.base_dtype = "bfloat16" if checkpoint else "float32"
  return config


def _concrete(tree, rng):
  def make(x):
    if jnp.issubdtype(x.dtype, jnp.integer):
      return jax.device_put(jnp.ones(x.shape, x.dtype), x.sharding)
    values = rng.normal(size=x.shape).astype(np.float32) * 0.02
    return jax.device_put(jnp.asarray(values, x.dtype), x.sharding)

  return jax.tree.map(make, tree)


def measure(checkpoint, pairs, length, rank, *, run_steps: bool) -> dict:
  config = make_config(checkpoint, pairs, length, rank)
  devices = jax.devices()[:1]
  # The step train.aot compiles: the same state, frozen base and batch.
  step = aot.abstract_step(config, devices)
  train_fn, state, base, batch = (
    step.train_fn,
    step.state,
    step.frozen,
    step.batch,
  )
  compiled = train_fn.lower(state, base, batch).compile()
  memory = compiled.memory_analysis()
  figures = {
    "arguments": memory.argument_size_in_bytes,
    "temporaries": memory.temp_size_in_bytes,
  }
  if run_steps:
    rng = np.random.default_rng(0)
    state, base = _concrete(state, rng), _concrete(base, rng)
    host_batch = _concrete(batch, rng)
    host_batch = host_batch.replace(
      example_weight=jnp.ones_like(host_batch.example_weight)
    )
    state, _ = train_fn(state, base, host_batch)  # Warm-up.
    jax.block_until_ready(state)
    start, count = time.perf_counter(), 10
    for _ in range(count):
      state, metrics = train_fn(state, base, host_batch)
    jax.block_until_ready(metrics)
    figures["step_ms"] = 1000 * (time.perf_counter() - start) / count
  return figures


def _gib(count: int) -> str:
  return f"{count / 2**30:.2f}"


def table() -> str:
  lines = [
    f"LoRA rank {RANK} on q k v o gate up down, base frozen in bfloat16 (tiny:"
    " float32), against full fine-tuning (float32 weights, AdamW);"
    f" DPO step on {jax.devices()[0].device_kind}, XLA memory_analysis().",
    "",
    "| model | pairs x length | full: args GiB | full: temp GiB | full: total"
    " GiB | LoRA: args GiB | LoRA: temp GiB | LoRA: total GiB | LoRA / full"
    " | step ms full / LoRA |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, checkpoint, pairs, length in MODELS:
    run = not checkpoint
    full = measure(checkpoint, pairs, length, 0, run_steps=run)
    low = measure(checkpoint, pairs, length, RANK, run_steps=run)
    total_full = full["arguments"] + full["temporaries"]
    total_low = low["arguments"] + low["temporaries"]
    times = (
      f"{full['step_ms']:.1f} / {low['step_ms']:.1f}" if run else "(not run)"
    )
    lines.append(
      f"| {name} | {pairs} x {length} | {_gib(full['arguments'])} |"
      f" {_gib(full['temporaries'])} | {_gib(total_full)} |"
      f" {_gib(low['arguments'])} | {_gib(low['temporaries'])} |"
      f" {_gib(total_low)} | {total_low / total_full:.2f} | {times} |"
    )
    print(lines[-1], flush=True)
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="", help="Also write the table here.")
  args = parser.parse_args()
  text = table()
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text("# LoRA memory\n\n" + text)


if __name__ == "__main__":
  main()

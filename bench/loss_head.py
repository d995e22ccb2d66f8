"""Plain vs fused loss head: compiled memory and wall time, side by side.

Command (from the repository root)::

  python -m bench.loss_head               # the table in README.md, ~5 min
  python -m bench.loss_head --quick       # V = 8,192 only, ~20 s
  python -m bench.loss_head --tune        # fused chunk-size grid at V = 32,768
  python -m bench.loss_head --entropy     # each head with and without the
                                          # entropy metric (bench/loss_head_entropy.py)

Both paths compute ``sequence_logps`` and its gradient for ``hidden`` and
``lm_head``: the plain one as ``sequence_logps(hidden @ lm_head, labels)``,
the fused one as ``sequence_logps_from_hidden(hidden, lm_head, labels)``. The
timed function is the jitted forward plus backward of
``sum(logp) + sum(not_logp)``, so both the sequence values and their
complements are on the path. Runs of the two are interleaved (plain, fused,
plain, fused, ...), so background load hits both alike; each ratio is the
ratio of medians.

Memory is XLA's own accounting of the compiled program
(``compiled.memory_analysis().temp_size_in_bytes``): the scratch the program
needs beyond its arguments and outputs. It is a property of the program, not a
measurement of the machine, and does not depend on load.

On a GPU (``jax.devices()[0].platform == 'gpu'``) the table gets a bfloat16
row per vocabulary with the achieved TFLOP/s as a fraction of the chip's dense
bfloat16 peak. Results are printed and written to ``bench/results/`` as JSON
and Markdown, named by platform.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

import slpo_jax
from slpo_jax import fused

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"

# Dense (no sparsity) bfloat16 tensor-core peaks in TFLOP/s, from the vendor
# data sheets, keyed by a substring of `device.device_kind`. Checked in order,
# so the more specific names come first.
BF16_PEAK_TFLOPS = (
  ("H200", 989.0),
  ("H100 NVL", 835.0),
  ("H100 PCIe", 756.0),
  ("H100", 989.0),  # SXM5 (device_kind "NVIDIA H100 80GB HBM3")
  ("A100", 312.0),
)


def bf16_peak_tflops(device_kind: str) -> float | None:
  for name, peak in BF16_PEAK_TFLOPS:
    if name in device_kind:
      return peak
  return None


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def machine_description() -> dict:
  device = jax.devices()[0]
  return {
    "cpu_model": cpu_model(),
    "cpu_count": os.cpu_count(),
    "platform": device.platform,
    "device_kind": device.device_kind,
    "device_count": jax.device_count(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "python": platform.python_version(),
    # Other work on the machine slows both paths; the runs are interleaved
    # so the ratios hold up, but the absolute seconds do not.
    "load_average_at_start": os.getloadavg()[0],
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds"
    ),
  }


def make_inputs(batch, length, hidden_size, vocab, dtype, seed=0):
  k_hidden, k_head, k_labels = jax.random.split(jax.random.key(seed), 3)
  hidden = jax.random.normal(k_hidden, (batch, length, hidden_size))
  # Scaled so the logits have unit variance, as after a trained final norm.
  lm_head = jax.random.normal(k_head, (hidden_size, vocab)) / np.sqrt(
    hidden_size
  )
  labels = jax.random.randint(k_labels, (batch, length), 0, vocab)
  return hidden.astype(dtype), lm_head.astype(dtype), labels


def plain_loss(hidden, lm_head, labels):
  logits = jnp.dot(hidden, lm_head)
  logp, not_logp = slpo_jax.sequence_logps(logits, labels)
  return jnp.sum(logp) + jnp.sum(not_logp)


def fused_loss(hidden, lm_head, labels, vocab_chunk=None, token_chunk=None):
  logp, not_logp = fused.sequence_logps_from_hidden(
    hidden,
    lm_head,
    labels,
    vocab_chunk_size=vocab_chunk,
    token_chunk_size=token_chunk,
  )
  return jnp.sum(logp) + jnp.sum(not_logp)


def compile_step(loss, args):
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  return step.lower(*args).compile()


def temp_bytes(compiled) -> int:
  return compiled.memory_analysis().temp_size_in_bytes


def time_once(compiled, args) -> tuple[float, float]:
  """Wall seconds and CPU seconds (all of this process's threads) of a call."""
  wall, cpu = time.perf_counter(), time.process_time()
  jax.block_until_ready(compiled(*args))
  return time.perf_counter() - wall, time.process_time() - cpu


def interleaved_medians(compiled_by_name, args, repeats, warmup):
  """Median wall and CPU seconds per call of each step, runs interleaved.

  Returns:
    ``(wall, cpu, samples)``: medians by name, and every (wall, cpu) pair.
  """
  samples = {name: [] for name in compiled_by_name}
  for _ in range(warmup):
    for compiled in compiled_by_name.values():
      time_once(compiled, args)
  for _ in range(repeats):
    for name, compiled in compiled_by_name.items():
      samples[name].append(time_once(compiled, args))
  wall = {n: statistics.median(w for w, _ in t) for n, t in samples.items()}
  cpu = {n: statistics.median(c for _, c in t) for n, t in samples.items()}
  return wall, cpu, samples


def max_relative_difference(plain_out, fused_out) -> float:
  """Largest |fused - plain| / max|plain| over the loss and both gradients."""
  (plain_value, plain_grads), (fused_value, fused_grads) = plain_out, fused_out
  worst = 0.0
  for p, f in zip((plain_value, *plain_grads), (fused_value, *fused_grads)):
    p = np.asarray(p, np.float64)
    f = np.asarray(f, np.float64)
    worst = max(worst, float(np.max(np.abs(f - p)) / np.max(np.abs(p))))
  return worst


def measure(vocab, args, dtype, vocab_chunk=None, token_chunk=None):
  """One row of the table: memory, wall time and agreement at one V."""
  batch = args.batch
  length = args.tokens // batch
  inputs = make_inputs(batch, length, args.hidden_size, vocab, dtype)
  plain = compile_step(plain_loss, inputs)
  fused_step = compile_step(
    lambda h, w, y: fused_loss(h, w, y, vocab_chunk, token_chunk), inputs
  )
  difference = max_relative_difference(plain(*inputs), fused_step(*inputs))
  medians, cpu_medians, samples = interleaved_medians(
    {"plain": plain, "fused": fused_step}, inputs, args.repeats, args.warmup
  )
  tokens = batch * length
  row = {
    "dtype": jnp.dtype(dtype).name,
    "vocab": vocab,
    "tokens": tokens,
    "hidden_size": args.hidden_size,
    "plain_temp_bytes": temp_bytes(plain),
    "fused_temp_bytes": temp_bytes(fused_step),
    "plain_seconds": medians["plain"],
    "fused_seconds": medians["fused"],
    "plain_cpu_seconds": cpu_medians["plain"],
    "fused_cpu_seconds": cpu_medians["fused"],
    "plain_samples_wall_cpu": samples["plain"],
    "fused_samples_wall_cpu": samples["fused"],
    "max_relative_difference": difference,
  }
  row["memory_ratio"] = row["fused_temp_bytes"] / row["plain_temp_bytes"]
  row["time_ratio"] = row["fused_seconds"] / row["plain_seconds"]
  row["cpu_time_ratio"] = row["fused_cpu_seconds"] / row["plain_cpu_seconds"]
  # Matmul FLOPs: the plain path runs 3 products of N x d x V (logits, and
  # the two gradients); the fused one runs a 4th, the recomputed logits.
  model_flops = 3 * 2 * tokens * args.hidden_size * vocab
  row["plain_tflops"] = model_flops / row["plain_seconds"] / 1e12
  row["fused_tflops"] = (4 / 3) * model_flops / row["fused_seconds"] / 1e12
  return row


def mib(n: int) -> str:
  return f"{n / 2**20:,.1f}"


def format_table(machine, rows, gpu_note) -> str:
  """The printed table: one row per (dtype, V), then the GPU lines."""
  lines = [
    f"Machine: {machine['cpu_model']} ({machine['cpu_count']} cores),"
    f" platform {machine['platform']} ({machine['device_kind']}),"
    f" jax {machine['jax']}; load average"
    f" {machine['load_average_at_start']:.1f} at start,"
    f" {machine['load_average_at_end']:.1f} at end.",
    f"Shapes: B*T = {rows[0]['tokens']:,} tokens, d ="
    f" {rows[0]['hidden_size']}; jitted forward + backward of sum(logp) +"
    " sum(not_logp); seconds are medians of interleaved runs.",
    "",
    "| dtype | V | plain temp MiB | fused temp MiB | fused/plain memory"
    " | plain s | fused s | fused/plain wall time | fused/plain CPU time"
    " | max rel. diff |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
      f"| {r['dtype']} | {r['vocab']:,} | {mib(r['plain_temp_bytes'])} |"
      f" {mib(r['fused_temp_bytes'])} | {r['memory_ratio']:.4f}"
      f" (1/{1 / r['memory_ratio']:,.0f}) | {r['plain_seconds']:.3f} |"
      f" {r['fused_seconds']:.3f} | {r['time_ratio']:.2f} |"
      f" {r['cpu_time_ratio']:.2f} | {r['max_relative_difference']:.1e} |"
    )
  lines.append("")
  lines.extend(gpu_note)
  return "\n".join(lines)


def gpu_note(device_kind, bf16_rows) -> list[str]:
  """Lines giving each bf16 row's TFLOP/s and its fraction of the peak."""
  peak = bf16_peak_tflops(device_kind)
  note = [
    f"GPU: {device_kind}, dense bf16 peak "
    + (f"{peak:.0f} TFLOP/s" if peak else "unknown for this device")
    + "; TFLOP/s count executed matmul FLOPs (fused 8NdV, plain 6NdV)"
  ]
  for r in bf16_rows:
    fraction = (
      f" = {100 * r['fused_tflops'] / peak:.1f}% of peak" if peak else ""
    )
    note.append(
      f"  bf16 V = {r['vocab']:,}: fused {r['fused_tflops']:.1f} TFLOP/s"
      f"{fraction}; plain {r['plain_tflops']:.1f} TFLOP/s;"
      f" fused/plain time {r['time_ratio']:.2f}"
    )
  return note


def gpu_rows(args, vocabs):
  """bfloat16 rows and the TFLOP/s note, or a line saying there is no GPU."""
  device = jax.devices()[0]
  if device.platform != "gpu":
    return [], [
      f"GPU: no GPU present (platform {device.platform}); the bfloat16"
      " ratio and TFLOP/s rows were not measured."
    ]
  rows = [measure(v, args, jnp.bfloat16) for v in vocabs]
  return rows, gpu_note(device.device_kind, rows)


def tune(args):
  """Fused wall time over a grid of chunk sizes at one vocabulary size."""
  vocab = args.tune_vocab
  length = args.tokens // args.batch
  inputs = make_inputs(args.batch, length, args.hidden_size, vocab, jnp.float32)
  compiled = {}
  for vocab_chunk in args.tune_vocab_chunks:
    for token_chunk in args.tune_token_chunks:
      compiled[(vocab_chunk, token_chunk)] = compile_step(
        lambda h, w, y, vc=vocab_chunk, tc=token_chunk: fused_loss(
          h, w, y, vc, tc
        ),
        inputs,
      )
  compiled["plain"] = compile_step(plain_loss, inputs)
  wall, cpu, _ = interleaved_medians(
    compiled, inputs, args.repeats, args.warmup
  )
  print(
    f"V = {vocab:,}, B*T = {args.batch * length:,}, d ="
    f" {args.hidden_size}; plain {wall['plain']:.3f} s wall,"
    f" {cpu['plain']:.3f} s CPU"
  )
  print(
    "| vocab chunk | token chunk | fused wall s | fused/plain wall |"
    " fused CPU s | fused/plain CPU | temp MiB |"
  )
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for key in sorted((k for k in cpu if k != "plain"), key=cpu.get):
    print(
      f"| {key[0]} | {key[1]} | {wall[key]:.3f} |"
      f" {wall[key] / wall['plain']:.2f} | {cpu[key]:.3f} |"
      f" {cpu[key] / cpu['plain']:.2f} |"
      f" {mib(temp_bytes(compiled[key]))} |"
    )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--vocab", type=int, nargs="+", default=None)
  parser.add_argument("--tokens", type=int, default=2048, help="B * T")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--hidden-size", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument(
    "--quick",
    action="store_true",
    help="V = 8,192 only, 3 repeats; results not saved",
  )
  parser.add_argument("--tune", action="store_true")
  parser.add_argument("--tune-vocab", type=int, default=32768)
  parser.add_argument(
    "--tune-vocab-chunks", type=int, nargs="+", default=[256, 512, 1024, 2048]
  )
  parser.add_argument(
    "--tune-token-chunks", type=int, nargs="+", default=[256, 512, 1024, 2048]
  )
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS_DIR)
  parser.add_argument(
    "--entropy",
    action="store_true",
    help="each head with and without the entropy metric, side by side",
  )
  parser.add_argument(
    "--json", type=pathlib.Path, default=None, help="with --entropy"
  )
  args = parser.parse_args(argv)
  args.vocab_given = args.vocab is not None
  args.vocab = args.vocab or [8192, 32768, 131072]
  if args.entropy:
    from bench import loss_head_entropy

    loss_head_entropy.run(args)
    return
  if args.tune:
    tune(args)
    return
  if args.quick:
    args.vocab, args.repeats = [8192], 3

  machine = machine_description()
  rows = [measure(v, args, jnp.float32) for v in args.vocab]
  bf16_rows, gpu_note = gpu_rows(args, args.vocab)
  machine["load_average_at_end"] = os.getloadavg()[0]
  table = format_table(machine, rows + bf16_rows, gpu_note)
  print(table)
  if args.quick:
    return
  args.out.mkdir(parents=True, exist_ok=True)
  stem = args.out / f"loss_head_{machine['platform']}"
  stem.with_suffix(".md").write_text(table + "\n")
  stem.with_suffix(".json").write_text(
    json.dumps(
      {
        "machine": machine,
        "command": "python -m bench.loss_head",
        "rows": rows + bf16_rows,
        "gpu": gpu_note,
      },
      indent=2,
    )
    + "\n"
  )
  print(f"\nSaved {stem}.md and {stem}.json")


if __name__ == "__main__":
  main()

"""Compiled memory and FLOPs of a train step: full fine-tuning against LoRA.

  python -m bench.lora_memory                       # this machine's device
  python -m bench.lora_memory --topology v5p:2x2x1  # one v5p-8 host (libtpu)
  python -m bench.lora_memory --json                # the rows as JSON
  python -m bench.lora_memory --topology v5p:2x2x1 --attention blockwise \
      --models "Llama 3.2 1B" --skip-flops
  python -m bench.lora_memory --out bench/results/lora_memory.md

For each model the jitted DPO step is lowered from abstract shapes
(``jax.ShapeDtypeStruct``, by ``train.aot.abstract_step``; no weight is
allocated) and compiled for this machine's first device or, with
``--topology``, for a Cloud TPU host's chips (fsdp over them, per-chip
figures). XLA's ``memory_analysis()`` gives the bytes of its arguments
(parameters, optimizer state, the frozen base, the batch) and of its
temporaries (activations, gradients). Full fine-tuning keeps float32
weights with AdamW moments; each LoRA row keeps the base frozen (bfloat16,
int8 or NF4; tiny: float32) and trains rank-16 adapters on every projection,
inside the layers.

The FLOPs rows compile the Llama 3.2 1B shape unscanned, without remat and
with the reference's log-probs precomputed and the plain loss head, so that
XLA's cost analysis counts every layer and the policy's passes alone: FLOPs per token over N
(the parameters outside the embedding lookup) is about 6 for full
fine-tuning (forward, input and weight gradients) and 4 for LoRA (no weight
gradient of the base).
"""

import argparse
import json
import pathlib

import jax
import numpy as np

from train import aot
from train import config_schema

SHAPES = pathlib.Path(__file__).resolve().parents[1] / "configs" / "shapes"
# (name, model.checkpoint or '' for the built-in tiny Llama, pairs, length)
MODELS = (
  ("tiny Llama", "", 8, 64),
  ("Llama 3.2 1B", str(SHAPES / "llama3_2_1b"), 8, 1024),
  ("Llama 3 8B", str(SHAPES / "llama3_8b"), 8, 1024),
)
RANK = 16
# (row name, lora rank, base dtype of a checkpoint's frozen base)
VARIANTS = (
  ("full", 0, ""),
  ("LoRA", RANK, "bfloat16"),
  ("LoRA, int8 base", RANK, "int8"),
  ("LoRA, NF4 base", RANK, "nf4"),
)


def make_config(
  checkpoint: str,
  pairs: int,
  length: int,
  rank: int,
  base_dtype: str = "bfloat16",
  devices: int = 1,
  attention: str = "auto",
):
  config = config_schema.get_config()
  config.steps = 10
  config.batch_size = pairs
  config.mesh.data = 1
  config.mesh.fsdp = devices
  config.model.checkpoint = checkpoint
  config.model.dtype = "bfloat16" if checkpoint else "float32"
  config.model.remat = bool(checkpoint)
  config.model.scan_layers = bool(checkpoint)
  config.data.max_length = length
  config.data.max_prompt_length = length // 4
  config.data.length_buckets = (length,)
  config.model.lora.rank = rank
  config.model.lora.base_dtype = base_dtype if checkpoint else "float32"
  config.model.attention_impl = attention
  return config


def _devices(topology: str) -> list:
  if topology:
    return aot.topology_devices(topology)
  return jax.devices()[:1]


def measure(config, devices) -> dict:
  """Compiled bytes (and XLA's FLOPs) of ``config``'s step on ``devices``."""
  step = aot.abstract_step(config, devices)
  compiled = step.train_fn.lower(step.state, step.frozen, step.batch).compile()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {
    "arguments": int(memory.argument_size_in_bytes),
    "temporaries": int(memory.temp_size_in_bytes),
    "total": int(memory.argument_size_in_bytes + memory.temp_size_in_bytes),
    "flops": float(cost.get("flops", 0.0)),
    "dense_parameters": _dense_parameters(step.spec.model),
    # ``auto`` resolved for the devices' platform: splash on a TPU.
    "attention": step.spec.model.config.attention_impl,
  }


def _dense_parameters(model) -> int:
  """N: the parameters outside the embedding lookup (a tied table counts,
  as the output projection)."""
  c = model.config
  embedding = c.vocab_size * c.d_model
  return aot.parameter_count(model) - (0 if c.tie_embeddings else embedding)


def memory_rows(
  topology: str, models=MODELS, attention: str = "auto"
) -> list[dict]:
  devices = _devices(topology)
  rows = []
  for name, checkpoint, pairs, length in models:
    variants = VARIANTS if checkpoint else VARIANTS[:2]
    full = None
    for variant, rank, base_dtype in variants:
      config = make_config(
        checkpoint, pairs, length, rank, base_dtype, len(devices), attention
      )
      figures = measure(config, devices)
      full = full or figures
      row = {
        "model": name,
        "pairs": pairs,
        "length": length,
        "variant": variant,
        "attention": figures["attention"],
        "full_bytes": full["total"],
        "bytes": figures["total"],
        "arguments": figures["arguments"],
        "temporaries": figures["temporaries"],
        "of_full": figures["total"] / full["total"],
      }
      rows.append(row)
      print(_memory_line(row), flush=True)
  return rows


def flops_rows(topology: str, length: int = 256) -> list[dict]:
  """FLOPs per token over N of the 1B shape's policy passes, full and LoRA."""
  devices = _devices(topology)
  pairs = len(devices)  # One pair per device: the batch must split.
  rows = []
  for variant, rank, base_dtype in VARIANTS[:2]:
    config = make_config(
      str(SHAPES / "llama3_2_1b"), pairs, length, rank, base_dtype, pairs
    )
    config.model.scan_layers = False
    config.model.remat = False
    config.reference.mode = "precomputed"
    # The fused head walks the vocabulary in a loop, whose body XLA's cost
    # analysis counts once; the plain head's logits are counted whole.
    config.model.loss_head = "plain"
    figures = measure(config, devices)
    tokens = 2 * length * pairs  # A pair: its chosen and rejected rows.
    per_token = figures["flops"] * len(devices) / tokens
    rows.append(
      {
        "model": "Llama 3.2 1B",
        "variant": variant,
        "tokens": tokens,
        "flops": figures["flops"] * len(devices),
        "dense_parameters": figures["dense_parameters"],
        "flops_per_token_over_n": per_token / figures["dense_parameters"],
      }
    )
  return rows


def _gib(count: int) -> str:
  return f"{count / 2**30:.2f}"


def _memory_line(row: dict) -> str:
  return (
    f"| {row['model']} | {row['pairs']} x {row['length']} |"
    f" {row['variant']} | {row['attention']} | {_gib(row['arguments'])} |"
    f" {_gib(row['temporaries'])} | {_gib(row['bytes'])} |"
    f" {row['of_full']:.2f} |"
  )


def table(memory: list[dict], flops: list[dict], device: str) -> str:
  lines = [
    f"DPO step on {device}, XLA memory_analysis(); LoRA rank {RANK} on q k"
    " v o gate up down, inside the layers, over a frozen base; full"
    " fine-tuning: float32 weights, AdamW.",
    "",
    "| model | pairs x length | step | attention | args GiB | temp GiB |"
    " total GiB | of full |",
    "|---|---|---|---|---|---|---|---|",
    *(_memory_line(row) for row in memory),
    "",
    "| model | step (unscanned, no remat, reference precomputed) |"
    " XLA FLOPs | tokens | FLOPs / token / N |",
    "|---|---|---|---|---|",
    *(
      f"| {r['model']} | {r['variant']} | {r['flops']:.3e} | {r['tokens']} |"
      f" {r['flops_per_token_over_n']:.2f} |"
      for r in flops
    ),
  ]
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--topology",
    default="",
    help="Compile for this Cloud TPU host (e.g. v5p:2x2x1; needs libtpu)"
    " instead of this machine's first device.",
  )
  parser.add_argument("--json", action="store_true", help="Print JSON rows.")
  parser.add_argument("--out", default="", help="Also write the table here.")
  parser.add_argument(
    "--attention",
    default="auto",
    help="model.attention_impl of the memory rows (auto: the platform's"
    " kernel, splash on a TPU).",
  )
  parser.add_argument(
    "--models",
    default="",
    help="Comma-separated model names of the memory rows (default: all),"
    " e.g. 'Llama 3.2 1B'.",
  )
  parser.add_argument(
    "--skip-flops", action="store_true", help="Only the memory rows."
  )
  parser.add_argument(
    "--skip-memory", action="store_true", help="Only the FLOPs rows."
  )
  args = parser.parse_args()
  names = [n.strip() for n in args.models.split(",") if n.strip()]
  unknown = set(names) - {m[0] for m in MODELS}
  if unknown:
    parser.error(
      f"unknown --models {sorted(unknown)}; choose from {[m[0] for m in MODELS]}"
    )
  models = [m for m in MODELS if not names or m[0] in names]
  memory = (
    []
    if args.skip_memory
    else memory_rows(args.topology, models, args.attention)
  )
  flops = [] if args.skip_flops else flops_rows(args.topology)
  device = _devices(args.topology)
  name = f"{len(device)} x {device[0].device_kind}"
  if args.json:
    print(json.dumps({"device": name, "memory": memory, "flops": flops}))
  else:
    print(table(memory, flops, name))
  if args.out:
    pathlib.Path(args.out).write_text(
      "# LoRA memory\n\n" + table(memory, flops, name)
    )


if __name__ == "__main__":
  np.set_printoptions(precision=3)
  main()

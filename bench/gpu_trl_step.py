"""TRL's DPOTrainer on the pairs and model shape ``bench.gpu_train_step`` times.

  python -m bench.gpu_trl_step          # -> bench/results/gpu_trl_step.json
  python -m bench.gpu_trl_step --smoke  # tiny Llama, 2 steps, any CPU

``bash bench/gpu.sh`` runs it on a GPU after the JAX step. The model is a
``transformers`` Llama of the same shape (``configs/shapes/llama3_2_1b``, or
the tiny one with ``--smoke``) from random weights; the pairs are
``bench.gpu_train_step.make_pairs`` with the same options and seed, so the
same token ids; the batch is all of them in one step, as on the JAX side.
``bench.trl_dpo.TrlDpoStep`` builds a real ``trl.DPOTrainer`` (DPO, beta
0.1, AdamW, online reference, bfloat16 mixed precision on the GPU, TRL's
defaults otherwise, its fused loss head included where the installed TRL
has it) and times what ``transformers.Trainer`` runs per optimizer step.
Activation checkpointing stands for the JAX step's remat. When all pairs do
not fit in memory, the step is retried with a third of them (then a ninth),
and the rates are per pair of the batch that ran.

Reported as the JAX benchmark reports: median step seconds, pairs/s, real
tokens/s, MFU from the same model-FLOP count, and peak CUDA memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import tempfile
import time

import torch
import transformers

from bench import gpu_train_step as jax_step
from bench import trl_dpo
from bench.loss_head import bf16_peak_tflops
from slpo_jax import models

RESULT = jax_step.ROOT / "bench" / "results" / "gpu_trl_step.json"


def torch_model(config: models.DecoderConfig, seed: int, dtype):
  """A random ``LlamaForCausalLM`` of ``config``'s shape."""
  hf = models.config_to_hf(config)
  hf.pop("torch_dtype", None)
  hf.pop("dtype", None)
  torch.manual_seed(seed)
  return transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf)).to(dtype)


def measure(options: jax_step.Options, pairs_per_step: int) -> dict:
  config = jax_step.model_config(options)
  pairs = jax_step.make_pairs(options, config.vocab_size)[:pairs_per_step]
  device = "cuda" if torch.cuda.is_available() else "cpu"
  settings = dataclasses.replace(
    trl_dpo.settings_from_config(
      jax_step.loss_config(),
      _optimizer_config(),
      precompute_reference=False,
    ),
    gradient_checkpointing=options.remat != "none",
  )
  with tempfile.TemporaryDirectory() as scratch:
    step = trl_dpo.TrlDpoStep(
      torch_model(config, 0, torch.float32),
      torch_model(config, 1, torch.float32),
      pairs,
      vocab_size=config.vocab_size,
      special=trl_dpo.SpecialIds(bos=1, eos=2, pad=0),
      settings=settings,
      output_dir=pathlib.Path(scratch),
      device=device,
    )
    losses, seconds = [], []
    for i in range(options.warmup + options.steps):
      start = time.perf_counter()
      losses.append(step())
      if device == "cuda":
        torch.cuda.synchronize()
      if i >= options.warmup:
        seconds.append(time.perf_counter() - start)
  median = statistics.median(seconds)
  real = sum(jax_step.sequence_lengths(pairs))
  flops = jax_step.step_flops(config, jax_step.sequence_lengths(pairs))
  peak = None
  if device == "cuda":
    peak = bf16_peak_tflops(torch.cuda.get_device_name())
  achieved = flops / median / 1e12
  return dict(
    command="python -m bench.gpu_trl_step",
    options=dataclasses.asdict(options),
    device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
    versions=trl_dpo.versions(),
    pairs=len(pairs),
    real_tokens=real,
    losses=losses,
    step_seconds=seconds,
    step_seconds_median=median,
    pairs_per_second=len(pairs) / median,
    tokens_per_second=real / median,
    model_tflops_per_second=achieved,
    mfu=achieved / peak if peak else None,
    peak_bytes_in_use=(
      torch.cuda.max_memory_allocated() if device == "cuda" else None
    ),
    status="done",
  )


def _optimizer_config():
  from train import config_schema

  return config_schema.get_config().optimizer


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--smoke", action="store_true", help=repr(jax_step.SMOKE))
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--out", type=pathlib.Path, help="JSON file")
  args = parser.parse_args(argv)
  changes = dict(jax_step.SMOKE) if args.smoke else {}
  if args.steps is not None:
    changes["steps"] = args.steps
  options = jax_step.Options(**changes)
  out = args.out or (None if args.smoke else RESULT)
  result = None
  for share in (1, 3, 9):  # All pairs, then a third, then a ninth.
    count = max(1, options.pairs // share)
    try:
      result = measure(options, count)
      break
    except torch.OutOfMemoryError as error:
      print(f"Out of memory with {count} pairs per step: {str(error)[:200]}")
      torch.cuda.empty_cache()
  if result is None:
    result = dict(status="out of memory", options=dataclasses.asdict(options))
  print(
    json.dumps({k: v for k, v in result.items() if k != "losses"}, indent=2)
  )
  if out is not None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Saved {out}")
  if result["status"] != "done":
    raise SystemExit(1)


if __name__ == "__main__":
  main()

"""DPO train step of a ~1B Llama on packed rows in bfloat16: tokens/s, MFU.

  python -m bench.gpu_train_step          # -> bench/results/gpu_train_step.json
  python -m bench.gpu_train_step --smoke  # tiny Llama, 2 steps, any CPU

One step per ``--variants`` entry, ``kernel:layout``: by default the
blockwise and Pallas GPU kernels on packed rows and cuDNN on the same pairs
padded (it takes no segment ids), each with its pairs/s, tokens/s and MFU
side by side (``summary`` in the JSON).

``bash bench/gpu.sh`` runs it on a GPU. **Not yet run on a GPU**: only
``--smoke`` has run, on a CPU.

Timed: ``jax.jit(train.step.train_step)``, state donated, as ``train.loop``
and ``bench/train_step.py`` build it: DPO (beta 0.1), an online frozen
reference (its forward pass is in the step), the fused loss head, AdamW and
clipping. Random weights of the Llama 3.2 1B shape
(``configs/shapes/llama3_2_1b``: 1.24B parameters, vocabulary 128,256) or
``--model 400m``; bfloat16 compute and weights, scanned layers, ``--remat
dots`` (retried with ``full`` when out of memory). One batch: ``--pairs`` random pairs,
HH-like (prompt median 100; prompt plus longer response median ~160, 90th
percentile ~370), packed by ``train.data.row_packing``.

Reported: compile seconds, median step seconds after ``--warmup``, real
tokens/s (attention masks of both rows, as ``train.loop`` counts), peak
device memory (``memory_stats()``; None on CPU), and MFU against the dense
bf16 peak (``bench.loss_head.BF16_PEAK_TFLOPS``: H100 SXM, H200 989
TFLOP/s) of the model FLOPs of the real tokens (no padding, remat or fused
recompute)::

  forward = 2 N tokens + 2 layers (heads * head_dim) sum_s L_s (L_s + 1)
  step    = 3 forward (policy, forward and backward) + forward (reference)

N: the matmul parameters (projections and the d x V head, no embedding
lookup); L_s: each chosen or rejected sequence's length (causal attention
within it). ``utilisation_all_positions`` counts all packed positions.
"""

import argparse
import dataclasses
import functools
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import slpo_jax
from bench.loss_head import bf16_peak_tflops
from bench.loss_head import machine_description
from slpo_jax import models
from train import config_schema
from train import objective
from train import step as step_lib
from train.data import TokenizedPair
from train.data import batching
from train.data import row_packing

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "gpu_train_step.json"
COMMAND = "python -m bench.gpu_train_step"


@dataclasses.dataclass(frozen=True)
class Options:
  model: str = "1b"
  # 96 pairs fill 18 rows of 1,024 (77% real tokens; a pair's shorter
  # response leaves padding in its segment): ~28k real tokens per step.
  pairs: int = 96
  packed_length: int = 1024
  max_length: int = 1024
  dtype: str = "bfloat16"
  param_dtype: str = "bfloat16"
  remat: str = "dots"  # 'none', 'dots' or 'full'.
  steps: int = 10
  warmup: int = 2
  seed: int = 0
  length_scale: float = 1.0  # Shrinks the HH-like lengths (smoke runs).
  attention: str = "blockwise"  # models.ATTENTION_IMPLS, but auto.
  layout: str = "packed"  # 'packed' or 'padded' (cudnn takes padded only).


def model_config(options: Options) -> models.DecoderConfig:
  layout = dict(
    dtype=options.dtype,
    param_dtype=options.param_dtype,
    scan_layers=True,
    remat=options.remat != "none",
    remat_policy="full" if options.remat == "none" else options.remat,
    attention_impl=options.attention,
  )
  if options.model == "1b":
    return models.load_hf_config(ROOT / "configs/shapes/llama3_2_1b", **layout)
  if options.model == "400m":
    shape = dict(d_model=1024, num_layers=24, num_heads=16, num_kv_heads=8)
    shape.update(head_dim=64, mlp_dim=4096, max_len=4096)
    return models.get_config("llama", "small", **shape, **layout)
  if options.model == "tiny":
    return models.tiny_config("llama", **layout)
  raise ValueError(f"unknown --model {options.model!r}")


def make_pairs(options: Options, vocab_size: int) -> list[TokenizedPair]:
  """Random pairs: lognormal prompt and response lengths, HH-like."""
  rng = np.random.default_rng(options.seed)
  s = options.length_scale
  pairs = []
  for i in range(options.pairs):
    prompt = max(2, round(s * rng.lognormal(np.log(100), 0.7)))
    prompt = min(prompt, options.max_length // 2)
    sizes = [max(1, round(s * rng.lognormal(np.log(18), 1.3))) for _ in "cr"]
    sizes = [min(n, options.max_length - prompt) for n in sizes]
    ids = [rng.integers(3, vocab_size, n).astype(np.int32) for n in sizes]
    for x in ids:
      x[-1] = 2  # EOS (truncated ones too: the ids do not matter here).
    words = rng.integers(3, vocab_size, prompt).astype(np.int32)
    words[0] = 1  # BOS.
    pairs.append(TokenizedPair(i, words, ids[0], ids[1]))
  return pairs


def packed_batch(pairs, packed_length: int):
  entries = [(p, 1.0) for p in pairs]
  rows, slots = row_packing.layout_shape([entries], packed_length)
  layout = dict(packed_length=packed_length, num_rows=rows, num_slots=slots)
  return row_packing.pack_pairs(entries, pad_id=0, **layout)


def make_batch(options: Options, pairs):
  """The pairs packed, or padded to the longest one's 256-token bucket."""
  if options.layout == "packed":
    return packed_batch(pairs, options.packed_length)
  entries = [(p, 1.0) for p in pairs]
  buckets = tuple(range(256, options.max_length + 1, 256)) or (
    options.max_length,
  )
  return batching.collate_pairs(entries, buckets=buckets, pad_id=0)


def matmul_params(config) -> int:
  """Layers' projections plus the d x V head (the embedding lookup is free)."""
  d, q = config.d_model, config.num_heads * config.head_dim
  kv = config.num_kv_heads * config.head_dim
  per_layer = d * (q + 2 * kv) + q * d + 3 * d * config.mlp_dim
  return config.num_layers * per_layer + d * config.vocab_size


def step_flops(config, lengths) -> int:
  """Model FLOPs of a step over causal sequences of ``lengths`` tokens."""
  q = config.num_heads * config.head_dim
  attention = 2 * config.num_layers * q * sum(n * (n + 1) for n in lengths)
  return 4 * (2 * matmul_params(config) * sum(lengths) + attention)


def sequence_lengths(pairs) -> list[int]:
  """Real tokens of every chosen and every rejected sequence."""
  return [len(p.prompt) + len(r) for p in pairs for r in (p.chosen, p.rejected)]


def init_policy(model):
  return model.init(jax.random.key(0))


def init_reference(model):  # Not the policy: the first loss is not log 2.
  return model.init(jax.random.key(1))


def loss_config():
  """``config.loss`` of train/config_schema.py: DPO, beta 0.1."""
  config = config_schema.get_config().loss
  config.name, config.beta = "dpo", 0.1
  return config


def build_step(model, batch, *, compiler_options=None):
  """``(jitted step, state, reference, recast)``, as bench/train_step.py.

  The state's dtypes are set to the step's output dtypes, so that the
  second call cannot be a second program. ``recast`` counts the leaves that
  changed; it is 0 since the step keeps every leaf's dtype (a check).
  """
  config = config_schema.get_config()
  config.optimizer.warmup_steps, config.optimizer.decay = 0, "constant"
  optimizer = step_lib.make_optimizer(config.optimizer, 1000)

  def initial():
    policy, step0 = init_policy(model), jnp.zeros((), jnp.int32)
    state = step_lib.TrainState(step0, policy, optimizer.init(policy))
    return state, init_reference(model)

  state, reference = jax.jit(initial, compiler_options=compiler_options)()
  spec = step_lib.StepSpec(
    model=model,
    optimizer=optimizer,
    loss=objective.build_loss(loss_config()),
    head=slpo_jax.HeadOptions(fused=True),
  )
  step = jax.jit(
    functools.partial(step_lib.train_step, spec=spec),
    donate_argnums=(0,),
    compiler_options=compiler_options,
  )
  steady = jax.eval_shape(step, state, reference, batch)[0]
  changed = jax.tree.map(lambda x, s: x.dtype != s.dtype, state, steady)
  state = jax.tree.map(lambda x, s: x.astype(s.dtype), state, steady)
  return step, state, reference, sum(jax.tree.leaves(changed))


def measure(options: Options, write=None, compiler_options=None) -> dict:
  """Builds, compiles and times the step; ``write``s the partial result."""
  config = model_config(options)
  model = models.build(config)
  pairs = make_pairs(options, config.vocab_size)
  host_batch = make_batch(options, pairs)
  batch = jax.device_put(host_batch)
  rows, row_length = host_batch.chosen_input_ids.shape
  real = sum(sequence_lengths(pairs))
  device = jax.devices()[0]
  result = dict(
    command=COMMAND,
    options=dataclasses.asdict(options),
    device_kind=device.device_kind,
    machine=machine_description(),
    model=dict(params=config.num_params, matmul_params=matmul_params(config)),
    batch=dict(pairs=len(pairs), rows_per_side=rows, real_tokens=real),
  )
  result["model"]["config"] = dataclasses.asdict(config)
  result["batch"]["real_token_fraction"] = real / (2 * rows * row_length)
  step, state, reference, recast = build_step(
    model, batch, compiler_options=compiler_options
  )
  start = time.perf_counter()
  compiled = step.lower(state, reference, batch).compile()
  result["compile_seconds"] = time.perf_counter() - start
  result["state_leaves_recast"] = recast
  result["temp_bytes"] = compiled.memory_analysis().temp_size_in_bytes
  result["status"] = "compiled"
  if write:
    write(result)
  losses, seconds = [], []
  for i in range(options.warmup + options.steps):
    start = time.perf_counter()
    state, metrics = compiled(state, reference, batch)
    jax.block_until_ready((state, metrics))
    if i >= options.warmup:
      seconds.append(time.perf_counter() - start)
    losses.append(float(metrics["loss"]))
  median = statistics.median(seconds)
  gpu = device.platform == "gpu"
  peak = bf16_peak_tflops(device.device_kind) if gpu else None
  flops = step_flops(config, sequence_lengths(pairs))
  achieved = flops / median / 1e12
  # Every position instead: each of the 2R rows one causal sequence.
  every = step_flops(config, [row_length] * 2 * rows)
  result.update(
    status="done",
    losses=losses,
    finite=bool(metrics["finite"]),
    step_tokens=int(metrics["tokens"]),
    step_seconds_median=median,
    step_seconds=seconds,
    tokens_per_second=real / median,
    pairs_per_second=len(pairs) / median,
    model_flops_per_step=flops,
    model_tflops_per_second=achieved,
    bf16_peak_tflops=peak,
    mfu=achieved / peak if peak else None,
    utilisation_all_positions=every / median / 1e12 / peak if peak else None,
    peak_bytes_in_use=(device.memory_stats() or {}).get("peak_bytes_in_use"),
  )
  return result


def _out_of_memory(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def measure_with_fallback(options: Options, write=None) -> dict:
  """``measure``; out of memory with ``remat != 'full'`` retries with full."""
  try:
    return measure(options, write)
  except Exception as error:  # XlaRuntimeError has no stable import path.
    if options.remat == "full" or not _out_of_memory(error):
      raise
    print(f"Out of memory with remat={options.remat}: {str(error)[:300]}")
  # Outside the handler, so the failed attempt's buffers can be freed.
  result = measure(dataclasses.replace(options, remat="full"), write)
  result["remat_fallback_from"] = options.remat
  return result


# --smoke: a tiny Llama (vocabulary 512, d 64, 2 layers) for 2 steps.
SMOKE = dict(model="tiny", pairs=8, packed_length=128, max_length=128)
SMOKE.update(steps=2, warmup=1, length_scale=0.25)
# Kernel:layout variants, each a step of its own on the same pairs. cuDNN
# takes no segment ids, so it steps on the pairs padded.
VARIANTS = "blockwise:packed,pallas_gpu:packed,cudnn:padded"
SMOKE_VARIANTS = "blockwise:packed,splash:packed,pallas_gpu:packed,"
SMOKE_VARIANTS += "blockwise:padded"


def parse_variants(text: str) -> list[tuple[str, str]]:
  variants = []
  for item in text.split(","):
    attention, _, layout = item.strip().partition(":")
    if attention not in models.ATTENTION_IMPLS or attention == "auto":
      raise SystemExit(f"--variants: unknown attention kernel {attention!r}")
    if layout not in ("packed", "padded"):
      raise SystemExit(f"--variants: layout must be packed or padded: {item!r}")
    variants.append((attention, layout))
  return variants


def summary(results: list[dict]) -> list[dict]:
  """Each variant's rates side by side, relative to the first variant."""
  base = results[0].get("pairs_per_second")
  return [
    dict(
      attention=r["options"]["attention"],
      layout=r["options"]["layout"],
      status=r.get("status"),
      pairs_per_second=r.get("pairs_per_second"),
      tokens_per_second=r.get("tokens_per_second"),
      mfu=r.get("mfu"),
      peak_bytes_in_use=r.get("peak_bytes_in_use"),
      first_loss=(r.get("losses") or [None])[0],
      pairs_per_second_vs_first=(
        r["pairs_per_second"] / base
        if base and r.get("pairs_per_second")
        else None
      ),
    )
    for r in results
  ]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  for field in dataclasses.fields(Options):
    if field.name in ("attention", "layout"):
      continue
    name = "--" + field.name.replace("_", "-")
    parser.add_argument(name, type=type(field.default), default=field.default)
  parser.add_argument("--smoke", action="store_true", help=SMOKE.__repr__())
  parser.add_argument(
    "--variants",
    default=None,
    help=f"kernel:layout list (default {VARIANTS}; --smoke {SMOKE_VARIANTS})",
  )
  parser.add_argument("--out", type=pathlib.Path, help="JSON file")
  if parser.parse_known_args(argv)[0].smoke:
    parser.set_defaults(**SMOKE)
  args = parser.parse_args(argv)
  variants = parse_variants(
    args.variants or (SMOKE_VARIANTS if args.smoke else VARIANTS)
  )
  # A smoke run saves nothing unless asked to.
  out = args.out or (None if args.smoke else RESULT)
  results: list[dict] = []

  def write(result=None):
    if out is None:
      return
    done = results + ([result] if result is not None else [])
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(variants=done, summary=summary(done)), indent=2)
    out.write_text(text + "\n")

  for attention, layout in variants:
    options = Options(
      **{
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Options)
        if f.name not in ("attention", "layout")
      },
      attention=attention,
      layout=layout,
    )
    print(f"--- {attention} attention, {layout} rows", flush=True)
    try:
      result = measure_with_fallback(options, write)
    except Exception as error:  # One variant failing leaves the others.
      result = dict(options=dataclasses.asdict(options), status="failed")
      result["error"] = str(error)[:2000]
      print(f"FAILED: {str(error)[:500]}", flush=True)
    results.append(result)
    write()
  print(json.dumps(summary(results), indent=2))
  if out is not None:
    print(f"Saved {out}")
  if any(r.get("status") != "done" for r in results):
    raise SystemExit(1)


if __name__ == "__main__":
  main()

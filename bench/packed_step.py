"""DPO on HH-length pairs: slpo-jax padded, packed and shared-prompt, and TRL.

Command (from the repository root; the HH file is Anthropic's hh-rlhf, e.g.
its ``harmless-base/test.jsonl.gz``)::

  python -m bench.packed_step --hh PATH/TO/test.jsonl.gz   # bench/results/packed_step.*
  python -m bench.packed_step --hh PATH --quick            # 1 round, no RSS, not saved
  python -m bench.packed_step --hh PATH --distribution short-prompt \
      --variants jax-packed,jax-shared                     # short prompts

The pairs are real HH pairs, so their lengths are HH's: a byte-level BPE of
8,192 tokens is trained on the file's transcripts (a few seconds), the file
is read and tokenized by the training program's own HH path
(``configs/hh.py``: prompts truncated to 384 tokens, pairs to 512), and a
seeded sample of ``--batches`` x ``--pairs`` pairs is the benchmark's data.
Every variant steps through the same batches in the same order, from the
same weights: a Llama-style model (d_model 256, 4 layers, 4 heads of 64, 2
KV heads, MLP 768, vocabulary 8,192, untied), DPO with beta 0.1 and an
online frozen reference, AdamW at lr 1e-4 with global-norm clipping at 1.

* **slpo-jax, padded**: one row per pair, padded to the batch's length
  bucket (the default buckets, 32 to 512), as ``train.main`` batches them.
* **slpo-jax, packed**: the same pairs packed into 512-token paired rows
  (``data.packing``; ``train.data.row_packing``).
* **slpo-jax, shared prompt**: the same pairs as prompt + chosen + rejected
  segments of 1,024-token rows (``data.share_prompt``, whose default row for
  ``max_length`` 512 this is; ``train.data.shared_rows``).
* **TRL**: ``trl.DPOTrainer`` (``bench/trl_dpo.py``) on
  ``transformers.LlamaForCausalLM`` loaded from the same initial weights,
  its own tokenization and collator (padding to the batch's longest row;
  its padding-free mode is not offered for DPO), with PyTorch on every core
  and, with the same trainer, on one thread.

``--distribution short-prompt`` replaces the HH pairs by random tokens of
``hh_data.SHORT_PROMPT`` lengths (short prompts, long responses), where
sharing the prompt saves less.

Pairs/s is the measure that stays comparable when the positions a pair
takes change. Model FLOP/s (``bench/step_flops.py``) is given as a share
of this CPU's float32 matmul peak measured by the same run, and with
``--breakdown`` the packed and shared-prompt steps' time is split into
their parts (``bench/step_breakdown.py``).

The slpo-jax variants use the fused loss head and the default blockwise
attention, with no rematerialisation (TRL's gradient checkpointing is off
too). Tokens are real tokens (chosen and rejected rows, prompt included),
the same count for every variant; tokens/s is a whole pass over the batches
divided by its median time over the rounds. Timing and memory are as in
``bench/harness.py``: interleaved rotated rounds, and each variant's RSS
high-water-mark rise in its own subprocess; for slpo-jax also XLA's temp
bytes of the largest compiled shape.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import slpo_jax
from bench import harness
from bench import hh_data
from bench import packed_args
from bench import packed_report
from bench import step_breakdown
from bench import step_flops
from bench import train_step as step_bench
from slpo_jax import models
from train.data import TokenizedPair

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
COMMAND = "python -m bench.packed_step --hh PATH/TO/hh.jsonl.gz"
JAX_VARIANTS = packed_args.JAX_VARIANTS
TRL_VARIANTS = packed_args.TRL_VARIANTS


@dataclasses.dataclass(frozen=True)
class Setting:
  """What every variant is given."""

  pairs: int = 16  # Per batch.
  batches: int = 2
  seed: int = 0
  vocab_size: int = 8192
  packed_length: int = 512
  shared_length: int = 1024
  attention_block: int = 512
  distribution: str = "hh"
  # train.main's defaults (train/config_schema.py).
  attention_impl: str = "blockwise"
  loss_head: str = "fused"


def model_config(setting: Setting) -> models.DecoderConfig:
  return models.get_config(
    "llama",
    "tiny",
    vocab_size=setting.vocab_size,
    d_model=256,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
    mlp_dim=768,
    max_len=max(setting.packed_length, setting.shared_length),
    attention_impl=setting.attention_impl,
    attention_block=setting.attention_block,
  )


@dataclasses.dataclass
class Inputs:
  setting: Setting
  model: object
  policy: object
  reference: object
  pairs: list
  workdir: pathlib.Path

  @classmethod
  def build(cls, setting, hh_file, workdir) -> "Inputs":
    """Tokenizer, sample and both models, written to ``workdir``."""
    if setting.distribution == "hh":
      hh_data.train_hh_tokenizer(
        hh_file, workdir / "tokenizer", setting.vocab_size
      )
      pairs = hh_data.hh_sample(hh_file, workdir / "tokenizer", setting)
    else:
      pairs = hh_data.short_prompt_sample(setting)
    model = models.build(model_config(setting))
    policy = model.init(jax.random.key(setting.seed))
    reference = model.init(jax.random.key(setting.seed + 1))
    models.save_hf_checkpoint(model, policy, workdir / "policy")
    models.save_hf_checkpoint(model, reference, workdir / "reference")
    rows = [
      [p.prompt.tolist(), p.chosen.tolist(), p.rejected.tolist()] for p in pairs
    ]
    (workdir / "pairs.json").write_text(json.dumps(rows))
    return cls(setting, model, policy, reference, pairs, workdir)

  @classmethod
  def load(cls, setting, workdir) -> "Inputs":
    """What `build` wrote (in another process)."""
    model, policy = models.load_hf_model(workdir / "policy")
    _, reference = models.load_hf_model(workdir / "reference")
    rows = json.loads((workdir / "pairs.json").read_text())
    pairs = [
      TokenizedPair(k, *(np.asarray(x, np.int32) for x in row))
      for k, row in enumerate(rows)
    ]
    return cls(setting, model, policy, reference, pairs, workdir)


class JaxSteps:
  """``train.step.train_step``, compiled per batch shape, cycling batches."""

  def __init__(self, name: str, inputs: Inputs):
    self.name = name
    make = {
      "jax-padded": hh_data.padded_batches,
      "jax-packed": hh_data.packed_batches,
      "jax-shared": hh_data.shared_batches,
    }[name]
    host_batches = make(inputs.pairs, inputs.setting)
    self.pairs = len(inputs.pairs)
    self.tokens = [hh_data.real_tokens(b) for b in host_batches]
    self.positions = [
      b.input_ids.size if b.shares_prompt else 2 * b.chosen_input_ids.size
      for b in host_batches
    ]
    counts = [step_flops.batch_counts(b) for b in host_batches]
    # Positions holding a token (a shared prompt once).
    self.computed = [c[0] for c in counts]
    self.flops = step_flops.step_flops(
      inputs.model.config, *(sum(c[i] for c in counts) for i in (0, 1))
    )
    self.batches = [jax.tree.map(jnp.asarray, b) for b in host_batches]
    self.reference = inputs.reference
    self.state, step = step_bench.state_and_step(
      inputs.model,
      inputs.policy,
      benchmark_config(),
      slpo_jax.HeadOptions(fused=inputs.setting.loss_head == "fused"),
    )
    self.compiled = {}
    for batch in self.batches:
      key = _shape_key(batch)
      if key not in self.compiled:
        self.compiled[key] = step.lower(
          self.state, self.reference, batch
        ).compile()
    self._next = 0

  def memory(self) -> dict:
    temps = [
      c.memory_analysis().temp_size_in_bytes for c in self.compiled.values()
    ]
    return {"largest_temp": max(temps), "programs": len(temps)}

  def __call__(self) -> float:
    batch = self.batches[self._next % len(self.batches)]
    self._next += 1
    compiled = self.compiled[_shape_key(batch)]
    self.state, metrics = compiled(self.state, self.reference, batch)
    jax.block_until_ready((self.state, metrics))
    return float(metrics["loss"])


def _shape_key(batch) -> tuple:
  return tuple(x.shape for x in jax.tree.leaves(batch))


def benchmark_config():
  """``bench.train_step``'s loss and optimizer: DPO beta 0.1, AdamW 1e-4."""
  return step_bench.train_config(step_bench.Setting())


def trl_step(inputs: Inputs):
  from bench import trl_dpo

  config = benchmark_config()
  step = trl_dpo.TrlDpoStep(
    inputs.workdir / "policy",
    inputs.workdir / "reference",
    inputs.pairs,
    vocab_size=inputs.setting.vocab_size,
    special=trl_dpo.SpecialIds(bos=1, eos=2, pad=0),
    settings=trl_dpo.settings_from_config(
      config.loss, config.optimizer, precompute_reference=False
    ),
    output_dir=inputs.workdir / "trl",
    batch_size=inputs.setting.pairs,
  )
  step.name = "trl"
  step.pairs = len(inputs.pairs)
  step.flops = step_flops.step_flops(
    inputs.model.config, *step_flops.trl_counts(step.batches)
  )
  return step


def breakdowns(variants, inputs: Inputs) -> dict:
  """``step_breakdown`` on the first batch of each packed variant."""
  head = slpo_jax.HeadOptions(fused=inputs.setting.loss_head == "fused")
  return {
    v.name: step_breakdown.breakdown(
      inputs.model, inputs.policy, inputs.reference, v.batches[0], head
    )
    for v in variants
    if v.name in ("jax-packed", "jax-shared")
  }


def build_variants(names, inputs: Inputs) -> list:
  built = {}
  for name in names:
    if name.startswith("jax"):
      built[name] = JaxSteps(name, inputs)
    elif name == "trl-1thread":
      built.setdefault("trl", trl_step(inputs))
      built[name] = built["trl"].with_threads(1)
      built[name].name = name
    else:
      built.setdefault("trl", trl_step(inputs))
  return [built[name] for name in names]


def run(args) -> None:
  start = time.perf_counter()

  def say(text):
    print(f"[{time.perf_counter() - start:.0f} s] {text}", flush=True)

  setting = packed_args.setting_of(args, Setting)
  names = args.variants.split(",")
  jax_names = [n for n in names if n in JAX_VARIANTS]
  trl_names = [n for n in names if n in TRL_VARIANTS]
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp)
    harness.use_compilation_cache(workdir)
    say("Making the pairs (HH: training the tokenizer) and the models...")
    inputs = Inputs.build(setting, args.hh, workdir)
    workers = {}
    try:
      measure = not args.skip_rss
      if measure:
        workers.update(
          harness.start_workers(
            "bench.packed_step",
            ["trl"] if "trl" in trl_names else [],
            packed_args.worker_arguments(args, workdir),
          )
        )
      say("Compiling the JAX steps...")
      variants = build_variants(jax_names, inputs)
      if measure:
        workers.update(
          harness.start_workers(
            "bench.packed_step",
            jax_names,
            packed_args.worker_arguments(args, workdir),
          )
        )
      say("Building the TRL trainer...")
      variants += build_variants(trl_names, inputs)
      # One untimed pass per variant: compiles nothing new, and its steps
      # from the shared weights give the first-step losses.
      losses = {}
      for variant in variants:
        values = [variant() for _ in range(setting.batches)]
        if variant.name != "trl-1thread":  # Its trainer has moved on.
          losses[variant.name] = values
      rss = harness.worker_results(workers)
    finally:
      harness.stop_workers(workers)
    load_before = harness.load_average()
    say(
      f"Timing: {args.rounds} rounds x {setting.batches} steps of"
      f" {len(variants)} variants, interleaved..."
    )
    samples = harness.interleaved_times(
      variants, args.rounds, setting.batches, warmup=0
    )
    load = {"before": load_before, "after": harness.load_average()}
    memory = {v.name: v.memory() for v in variants if isinstance(v, JaxSteps)}
    say("Measuring the float32 matmul peak...")
    peak = step_flops.matmul_peak()
    parts = {}
    if args.breakdown:
      say("Timing the parts of the packed steps...")
      parts = breakdowns(variants, inputs)
  say("done")
  machine = harness.machine_description()
  rows = packed_report.summarise(variants, samples, memory, rss, setting, peak)
  speedups = packed_report.ratios(rows)
  table = packed_report.format_table(
    machine, setting, load, rows, speedups, losses, peak, parts
  )
  print("\n" + table)
  if args.json:
    for row in rows:
      print(json.dumps({**row, "breakdown_seconds": parts.get(row["name"])}))
  if args.quick:
    return
  args.out.mkdir(parents=True, exist_ok=True)
  stem = args.out / (
    "packed_step" if setting.distribution == "hh" else "packed_step_short"
  )
  header = (
    f"`{COMMAND}`, {machine['date']}, {time.perf_counter() - start:.0f} s."
    f" {args.rounds} interleaved rounds, each one pass over the batches per"
    " variant; see the docstring of bench/packed_step.py.\n\n"
  )
  stem.with_suffix(".md").write_text(header + table + "\n")
  record = {
    "command": COMMAND,
    "machine": machine,
    "load_average": load,
    "setting": dataclasses.asdict(setting),
    "rounds": args.rounds,
    "losses_warmup_pass": losses,
    "ratios": speedups,
    "rows": rows,
    "matmul_peak_flops": peak,
    "breakdown_seconds": parts,
  }
  stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
  print(f"\nSaved {stem}.md and {stem}.json")


def main(argv=None):
  parser = packed_args.parser(__doc__, Setting, RESULTS_DIR)
  args = parser.parse_args(argv)
  setting = packed_args.setting_of(args, Setting)
  if args.rss_worker:
    harness.use_compilation_cache(args.rss_workdir)
    inputs = Inputs.load(setting, args.rss_workdir)
    (variant,) = build_variants([args.rss_worker], inputs)
    result = harness.rss_rise(
      variant, warmup=setting.batches, steps=setting.batches
    )
    print(json.dumps(result))
    return
  needs_file = args.distribution == "hh"
  if needs_file and (args.hh is None or not args.hh.is_file()):
    parser.error(f"--hh must name an HH-RLHF .jsonl.gz file, got {args.hh}")
  if args.quick:
    args.rounds, args.skip_rss = 1, True
  run(args)


if __name__ == "__main__":
  main()

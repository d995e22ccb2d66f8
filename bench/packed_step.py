"""DPO on HH-length pairs: slpo-jax padded, slpo-jax packed and TRL.

Command (from the repository root; the HH file is Anthropic's hh-rlhf, e.g.
its ``harmless-base/test.jsonl.gz``)::

  python -m bench.packed_step --hh PATH/TO/test.jsonl.gz   # bench/results/packed_step.*
  python -m bench.packed_step --hh PATH --quick            # 1 round, no RSS, not saved

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
* **TRL**: ``trl.DPOTrainer`` (``bench/trl_dpo.py``) on
  ``transformers.LlamaForCausalLM`` loaded from the same initial weights,
  its own tokenization and collator (padding to the batch's longest row;
  its padding-free mode is not offered for DPO), with PyTorch on every core
  and, with the same trainer, on one thread.

Both slpo-jax variants use the fused loss head and the default blockwise
attention, with no rematerialisation (TRL's gradient checkpointing is off
too). Tokens are real tokens (chosen and rejected rows, prompt included),
the same count for every variant; tokens/s is a whole pass over the batches
divided by its median time over the rounds. Timing and memory are as in
``bench/harness.py``: interleaved rotated rounds, and each variant's RSS
high-water-mark rise in its own subprocess; for slpo-jax also XLA's temp
bytes of the largest compiled shape.
"""

from __future__ import annotations

import argparse
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
from bench import packed_report
from bench import train_step as step_bench
from slpo_jax import models
from train.data import TokenizedPair

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
COMMAND = "python -m bench.packed_step --hh PATH/TO/hh.jsonl.gz"
JAX_VARIANTS = ("jax-padded", "jax-packed")
TRL_VARIANTS = ("trl", "trl-1thread")


@dataclasses.dataclass(frozen=True)
class Setting:
  """What every variant is given."""

  pairs: int = 16  # Per batch.
  batches: int = 2
  seed: int = 0
  vocab_size: int = 8192
  packed_length: int = 512
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
    max_len=setting.packed_length,
    attention_impl=setting.attention_impl,
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
    hh_data.train_hh_tokenizer(
      hh_file, workdir / "tokenizer", setting.vocab_size
    )
    pairs = hh_data.hh_sample(hh_file, workdir / "tokenizer", setting)
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
    make = (
      hh_data.padded_batches if name == "jax-padded" else hh_data.packed_batches
    )
    host_batches = make(inputs.pairs, inputs.setting)
    self.tokens = [hh_data.real_tokens(b) for b in host_batches]
    self.positions = [2 * b.chosen_input_ids.size for b in host_batches]
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
  return step


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


def setting_of(args) -> Setting:
  return Setting(
    pairs=args.pairs,
    batches=args.batches,
    seed=args.seed,
    attention_impl=args.attention_impl,
    loss_head=args.loss_head,
  )


def worker_arguments(args, workdir) -> list[str]:
  return [
    "--rss-workdir",
    str(workdir),
    "--pairs",
    str(args.pairs),
    "--batches",
    str(args.batches),
    "--seed",
    str(args.seed),
    "--attention-impl",
    args.attention_impl,
    "--loss-head",
    args.loss_head,
  ]


def run(args) -> None:
  start = time.perf_counter()

  def say(text):
    print(f"[{time.perf_counter() - start:.0f} s] {text}", flush=True)

  setting = setting_of(args)
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp)
    harness.use_compilation_cache(workdir)
    say("Training the tokenizer, reading the HH file, writing the models...")
    inputs = Inputs.build(setting, args.hh, workdir)
    workers = {}
    try:
      measure = not args.skip_rss
      if measure:
        workers.update(
          harness.start_workers(
            "bench.packed_step", ["trl"], worker_arguments(args, workdir)
          )
        )
      say("Compiling the JAX steps...")
      variants = build_variants(JAX_VARIANTS, inputs)
      if measure:
        workers.update(
          harness.start_workers(
            "bench.packed_step", JAX_VARIANTS, worker_arguments(args, workdir)
          )
        )
      say("Building the TRL trainer...")
      variants += build_variants(TRL_VARIANTS, inputs)
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
  say("done")
  machine = harness.machine_description()
  rows = packed_report.summarise(variants, samples, memory, rss, setting)
  speedups = packed_report.ratios(rows)
  table = packed_report.format_table(
    machine, setting, load, rows, speedups, losses
  )
  print("\n" + table)
  if args.quick:
    return
  args.out.mkdir(parents=True, exist_ok=True)
  stem = args.out / "packed_step"
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
  }
  stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
  print(f"\nSaved {stem}.md and {stem}.json")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--hh", type=pathlib.Path, help="an HH-RLHF .jsonl.gz")
  parser.add_argument(
    "--pairs", type=int, default=Setting.pairs, help="pairs per batch"
  )
  parser.add_argument(
    "--batches", type=int, default=Setting.batches, help="batches per pass"
  )
  parser.add_argument(
    "--attention-impl",
    choices=("blockwise", "dense"),
    default=Setting.attention_impl,
    help="model.attention_impl of both slpo-jax variants",
  )
  parser.add_argument(
    "--loss-head",
    choices=("fused", "plain"),
    default=Setting.loss_head,
    help="model.loss_head of both slpo-jax variants",
  )
  parser.add_argument(
    "--rounds", type=int, default=4, help="interleaved timed passes per variant"
  )
  parser.add_argument(
    "--seed", type=int, default=0, help="seeds the sample and the weights"
  )
  harness.add_run_arguments(
    parser,
    quick_help="1 round, no RSS subprocesses, nothing saved",
    results_dir=RESULTS_DIR,
    workers=JAX_VARIANTS + ("trl",),
  )
  args = parser.parse_args(argv)
  setting = setting_of(args)
  if args.rss_worker:
    harness.use_compilation_cache(args.rss_workdir)
    inputs = Inputs.load(setting, args.rss_workdir)
    (variant,) = build_variants([args.rss_worker], inputs)
    result = harness.rss_rise(
      variant, warmup=setting.batches, steps=setting.batches
    )
    print(json.dumps(result))
    return
  if args.hh is None or not args.hh.is_file():
    parser.error(f"--hh must name an HH-RLHF .jsonl.gz file, got {args.hh}")
  if args.quick:
    args.rounds, args.skip_rss = 1, True
  run(args)


if __name__ == "__main__":
  main()

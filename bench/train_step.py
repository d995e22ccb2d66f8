"""Whole DPO train step: slpo-jax against TRL's DPOTrainer, side by side.

Command (from the repository root)::

  python -m bench.train_step            # bench/results/train_step.*
  python -m bench.train_step --quick    # 2 rounds, no RSS, nothing saved

On a shared 2-core CPU the default run took 1 minute at load average 2.5 and
3.5 minutes at 6 to 8.

Both sides train the same tiny GPT-2 (``get_config("gpt2", "tiny")``: vocab
512, d 64, 2 layers, 4 heads) from identical weights on one fixed batch of
random token ids (8 pairs, right-padded to 128 tokens, prompt and response
lengths drawn at random, responses ending with EOS), with the DPO loss
(beta 0.1), AdamW (lr 1e-4, constant schedule) and global-norm clipping at 1:

* slpo-jax: ``jax.jit(train.step.train_step)`` with the state donated, as in
  ``train.loop``; the reference either online (the frozen tree is an argument
  of the step) or precomputed (its log-probs are in the batch), each with the
  fused and the plain loss head.
* TRL: a real ``trl.DPOTrainer`` (see ``bench/trl_dpo.py``) on
  ``transformers.GPT2LMHeadModel`` loaded from this library's initial
  parameters written with ``save_hf_checkpoint``; the timed step is
  ``trainer.training_step`` followed by the clipping, ``optimizer.step``,
  ``lr_scheduler.step`` and ``zero_grad`` that ``Trainer`` runs per step.
  The reference is online (``ref_model``) or precomputed
  (``precompute_ref_log_probs=True``). Gradient checkpointing, TRL's default,
  is turned off, since the slpo-jax model does not rematerialise either.

The reference starts from a different initialisation than the policy, so that
the first step's loss is not the trivial log 2 and the loss comparison means
something. The runtime does not depend on the weights' values.

Timing: all variants live in one process and run in interleaved rounds
(each round runs a few steps of every variant, in a rotated order), so
background load hits all of them alike. A step's time is from the call to
``block_until_ready`` of its outputs (PyTorch on CPU is synchronous). The
table gives medians over every timed step; ratios are ratios of medians.
Tokens are the real (non-padding) tokens of the chosen and rejected rows,
as in ``train.loop``. XLA uses every core (its default). PyTorch runs with
as many intra-op threads as the machine has cores, and again, with the same
trainer, with one thread: on a loaded machine OpenMP's barriers wait for
descheduled threads, and one thread can be several times faster.

Memory, two measures:

* XLA: the compiled step's ``memory_analysis()``, temp + argument + output
  bytes: a property of the program, independent of load. With the state
  donated, outputs alias arguments (``alias`` bytes in the JSON), so the sum
  counts those bytes twice.
* RSS: each variant again, alone in a fresh subprocess: after set-up and
  one warm-up step, freed heap memory is returned to the system
  (``malloc_trim``), the kernel's high-water mark is reset
  (``/proc/self/clear_refs``), and the table gives how far it rises over the
  next steps: the peak memory a step needs beyond what stays resident
  between steps (weights, optimizer state, the batch). The mark is
  ``VmHWM``, the counter behind ``getrusage``'s ``ru_maxrss``, read from
  ``/proc/self/status`` because ``ru_maxrss`` also carries the parent's mark
  across ``exec``. These subprocesses run during the untimed set-up of the
  timing process and end before any timing starts.
"""

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import slpo_jax
from bench import harness
from slpo_jax import models
from train import config_schema
from train import objective
from train import step as step_lib
from train.batch import PaddedBatch
from train.data import TokenizedPair
from train.data import collate_pairs

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
COMMAND = "python -m bench.train_step"
MODES = ("online", "precomputed")
JAX_VARIANTS = tuple(f"jax-{m}-{h}" for m in MODES for h in ("fused", "plain"))
TRL_VARIANTS = tuple(f"trl-{m}" for m in MODES)
# TRL again with one PyTorch thread: on a loaded machine OpenMP's barriers
# wait on descheduled threads, so one thread can beat all cores.
ONE_THREAD = "-1thread"
# slpo-jax and TRL losses of the same step must agree this closely (float32).
LOSS_TOLERANCE = 1e-4
TIMED_VARIANTS = (
  JAX_VARIANTS + TRL_VARIANTS + tuple(n + ONE_THREAD for n in TRL_VARIANTS)
)


@dataclasses.dataclass(frozen=True)
class Setting:
  """What both frameworks are given."""

  pairs: int = 8
  length: int = 128
  seed: int = 0
  beta: float = 0.1
  learning_rate: float = 1e-4
  min_prompt: int = 16
  max_prompt: int = 48
  min_response: int = 16
  special: tuple[int, int, int] = (1, 2, 0)  # BOS, EOS, padding ids.


def make_pairs(setting: Setting, vocab_size: int) -> list[TokenizedPair]:
  """Random pairs: BOS + prompt, responses ending with EOS.

  The first pair's chosen response fills the whole length, so every batch
  pads to exactly ``setting.length`` tokens on both sides.
  """
  bos, eos, _ = setting.special
  rng = np.random.default_rng(setting.seed)

  def words(n):
    return rng.integers(3, vocab_size, n).astype(np.int32)

  pairs = []
  for i in range(setting.pairs):
    prompt_length = int(rng.integers(setting.min_prompt, setting.max_prompt))
    room = setting.length - prompt_length
    lengths = rng.integers(setting.min_response, room + 1, 2)
    if i == 0:
      lengths[0] = room
    chosen, rejected = (np.append(words(n - 1), np.int32(eos)) for n in lengths)
    prompt = np.insert(words(prompt_length - 1), 0, np.int32(bos))
    pairs.append(TokenizedPair(i, prompt, chosen, rejected))
  return pairs


def real_tokens(batch) -> int:
  return batch.count_tokens()


def train_config(setting: Setting):
  """``train/config_schema.py`` with the benchmark's loss and optimizer."""
  config = config_schema.get_config()
  config.loss.name = "dpo"
  config.loss.beta = setting.beta
  config.optimizer.learning_rate = setting.learning_rate
  config.optimizer.warmup_steps = 0
  config.optimizer.decay = "constant"
  return config


@dataclasses.dataclass
class Inputs:
  """Everything the variants are built from, identical for all of them."""

  setting: Setting
  model: object
  policy: object
  reference: object
  pairs: list
  batch: PaddedBatch
  checkpoints: pathlib.Path

  @classmethod
  def build(cls, setting: Setting, workdir: pathlib.Path) -> "Inputs":
    """Initialises both models and writes them as Hugging Face folders."""
    model = models.build(models.get_config("gpt2", "tiny"))
    policy = model.init(jax.random.key(setting.seed))
    reference = model.init(jax.random.key(setting.seed + 1))
    models.save_hf_checkpoint(model, policy, workdir / "policy")
    models.save_hf_checkpoint(model, reference, workdir / "reference")
    return cls._with_batch(setting, model, policy, reference, workdir)

  @classmethod
  def load(cls, setting: Setting, workdir: pathlib.Path) -> "Inputs":
    """The inputs `build` wrote to ``workdir`` (in another process)."""
    model, policy = models.load_hf_model(workdir / "policy")
    _, reference = models.load_hf_model(workdir / "reference")
    return cls._with_batch(setting, model, policy, reference, workdir)

  @classmethod
  def _with_batch(cls, setting, model, policy, reference, workdir):
    pairs = make_pairs(setting, model.config.vocab_size)
    batch = collate_pairs(
      [(p, 1.0) for p in pairs],
      buckets=[setting.length],
      pad_id=setting.special[2],
    )
    return cls(setting, model, policy, reference, pairs, batch, workdir)


def state_and_step(model, policy, config, head):
  """A fresh AdamW state of a copy of ``policy``, and the jitted step.

  The step is ``train.step.train_step`` with the state donated, as
  ``train.loop`` runs it.
  """
  optimizer = step_lib.make_optimizer(config.optimizer, total_steps=1000)
  state = jax.jit(
    lambda p: step_lib.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=jax.tree.map(jnp.copy, p),
      opt_state=optimizer.init(p),
    )
  )(policy)
  spec = step_lib.StepSpec(
    model=model,
    optimizer=optimizer,
    loss=objective.build_loss(config.loss),
    head=head,
  )
  step = jax.jit(
    functools.partial(step_lib.train_step, spec=spec), donate_argnums=(0,)
  )
  return state, step


class JaxVariant:
  """``train.step.train_step``, jitted and compiled, on the fixed batch."""

  def __init__(self, name: str, inputs: Inputs):
    _, mode, head_name = name.split("-")
    config = train_config(inputs.setting)
    self.name = name
    self.head = slpo_jax.HeadOptions(
      fused=head_name == "fused",
      vocab_chunk_size=config.model.vocab_chunk_size,
      token_chunk_size=config.model.token_chunk_size,
    )
    batch = jax.tree.map(jnp.asarray, inputs.batch)
    self.reference = inputs.reference
    if mode == "precomputed":
      batch = batch.with_reference(
        *self._reference_logps(inputs.model, inputs.reference, batch)
      )
      self.reference = None
    self.batch = batch
    self.state, step = state_and_step(
      inputs.model, inputs.policy, config, self.head
    )
    self.compiled = step.lower(self.state, self.reference, batch).compile()

  def _reference_logps(self, model, reference, batch):
    """As ``train.reference`` computes them: the step's own loss head."""
    stats = jax.jit(
      lambda p, b: objective.batch_stats(
        model, p, b, pair_values=False, head=self.head
      )
    )(reference, batch)
    return stats.chosen_logps, stats.rejected_logps

  def memory(self) -> dict:
    analysis = self.compiled.memory_analysis()
    return {
      "temp": analysis.temp_size_in_bytes,
      "argument": analysis.argument_size_in_bytes,
      "output": analysis.output_size_in_bytes,
      "alias": analysis.alias_size_in_bytes,
    }

  def __call__(self) -> float:
    self.state, metrics = self.compiled(self.state, self.reference, self.batch)
    jax.block_until_ready((self.state, metrics))
    return float(metrics["loss"])


def trl_variant(name: str, inputs: Inputs):
  """A `bench.trl_dpo.TrlDpoStep` with every core's worth of threads."""
  from bench import trl_dpo

  setting = inputs.setting
  config = train_config(setting)
  settings = trl_dpo.settings_from_config(
    config.loss,
    config.optimizer,
    precompute_reference=name == "trl-precomputed",
  )
  bos, eos, pad = setting.special
  step = trl_dpo.TrlDpoStep(
    inputs.checkpoints / "policy",
    inputs.checkpoints / "reference",
    inputs.pairs,
    vocab_size=inputs.model.config.vocab_size,
    special=trl_dpo.SpecialIds(bos=bos, eos=eos, pad=pad),
    settings=settings,
    output_dir=inputs.checkpoints / name,
  )
  step.name = name
  return step


def build_variants(names, inputs: Inputs) -> list:
  """The named variants; a ``-1thread`` TRL one shares its trainer."""
  built = {}
  for name in names:
    if name.startswith("jax"):
      built[name] = JaxVariant(name, inputs)
    elif name.endswith(ONE_THREAD):
      base = name.removesuffix(ONE_THREAD)
      if base not in built:
        built[base] = trl_variant(base, inputs)
      built[name] = built[base].with_threads(1)
      built[name].name = name
    else:
      built[name] = trl_variant(name, inputs)
  return [built[name] for name in names]


def reference_logps_difference(variants) -> float:
  """Largest |slpo-jax - TRL| of the precomputed reference log-probs."""
  by_name = {v.name: v for v in variants}
  trl_values = by_name["trl-precomputed"].reference_logps
  worst = 0.0
  for name in JAX_VARIANTS:
    if "precomputed" in name:
      batch = by_name[name].batch
      for side, trl_value in zip(("chosen", "rejected"), trl_values):
        ours = np.asarray(getattr(batch, f"reference_{side}_logps"), np.float64)
        worst = max(worst, float(np.max(np.abs(ours - trl_value))))
  return worst


def measure_rss(
  name: str, setting: Setting, workdir: pathlib.Path, steps: int
) -> dict:
  """`harness.rss_rise` of one variant, after one warm-up step."""
  harness.use_compilation_cache(workdir)
  inputs = Inputs.load(setting, workdir)
  (variant,) = build_variants([name], inputs)
  return harness.rss_rise(variant, warmup=1, steps=steps)


def start_rss_workers(
  names, setting: Setting, workdir: pathlib.Path, steps: int
) -> dict:
  """`measure_rss` of each variant in its own subprocess."""
  return harness.start_workers(
    "bench.train_step",
    names,
    [
      "--rss-workdir",
      str(workdir),
      "--rss-steps",
      str(steps),
      "--seed",
      str(setting.seed),
    ],
  )


# --- Report. ---------------------------------------------------------------


def _label(name: str, cores: int) -> tuple[str, str]:
  """(what, reference mode) of a variant, for the table."""
  parts = name.split("-")
  if parts[0] == "jax":
    return f"slpo-jax, {parts[2]} head", parts[1]
  threads = 1 if name.endswith(ONE_THREAD) else cores
  return f"TRL DPOTrainer, {threads} thread{'s' * (threads > 1)}", parts[1]


def summarise(samples, tokens, memory, rss, cores) -> list[dict]:
  rows = []
  for name, pairs in samples.items():
    walls = [w for w, _ in pairs]
    label, mode = _label(name, cores)
    row = {
      "name": name,
      "label": label,
      "reference": mode,
      "steps_timed": len(pairs),
      "seconds": statistics.median(walls),
      "seconds_quartiles": harness.quartiles(walls),
      "cpu_seconds": statistics.median(c for _, c in pairs),
      "samples_wall_cpu": pairs,
    }
    row["tokens_per_second"] = tokens / row["seconds"]
    if name in memory:
      row["xla_bytes"] = memory[name]
    if name in rss:
      row["rss"] = rss[name]
    rows.append(row)
  by_name = {r["name"]: r for r in rows}
  for row in rows:
    if row["name"].startswith("jax"):
      for key, trl_name in (
        ("over_trl", f"trl-{row['reference']}"),
        ("over_trl_1thread", f"trl-{row['reference']}{ONE_THREAD}"),
      ):
        if trl_name in by_name:
          row[f"speedup_{key}"] = by_name[trl_name]["seconds"] / row["seconds"]
  return rows


def format_table(
  machine, setting, tokens, load, rows, losses, reference_difference
) -> str:
  cores = machine["cpu_count"]
  lines = [
    f"Machine: {machine['cpu_model']}, {cores} cores, shared;"
    f" jax {machine['jax']}, torch {machine['torch']},"
    f" transformers {machine['transformers']}, trl {machine['trl']}.",
    f"Load average (1/5/15 min) during the timing: before {load['before']},"
    f" after {load['after']}.",
    f"Step: tiny GPT-2 (vocab 512, d 64, 2 layers), DPO beta"
    f" {setting.beta}, AdamW + clipping; {setting.pairs} pairs x"
    f" {setting.length} tokens = {2 * setting.pairs * setting.length:,}"
    f" positions, {tokens:,} real tokens per step.",
    "",
    "| variant | reference | ms/step [IQR] | tokens/s | CPU ms/step"
    f" | slpo-jax/TRL ({cores} threads) | slpo-jax/TRL (1 thread)"
    " | XLA temp MiB | XLA temp+arg+out MiB | RSS HWM rise MiB |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    xla = r.get("xla_bytes")
    temp = harness.mib(xla["temp"]) if xla else "-"
    total = (
      harness.mib(xla["temp"] + xla["argument"] + xla["output"]) if xla else "-"
    )
    rss = harness.mib(r["rss"]["rss_rise"]) if "rss" in r else "-"
    ratios = [
      f"{r[k]:.2f}x" if k in r else "-"
      for k in ("speedup_over_trl", "speedup_over_trl_1thread")
    ]
    low, high = r["seconds_quartiles"]
    lines.append(
      f"| {r['label']} | {r['reference']} | {1e3 * r['seconds']:.0f}"
      f" [{1e3 * low:.0f}-{1e3 * high:.0f}] |"
      f" {r['tokens_per_second']:,.0f} | {1e3 * r['cpu_seconds']:.0f} |"
      f" {ratios[0]} | {ratios[1]} | {temp} | {total} | {rss} |"
    )
  differences = [
    abs(ours - theirs)
    for name, pair in losses.items()
    if name.startswith("jax")
    for ours, theirs in zip(pair, losses[f"trl-{name.split('-')[1]}"])
  ]
  verdict = (
    "all within" if max(differences) <= LOSS_TOLERANCE else "NOT all within"
  )
  lines += [
    "",
    "DPO loss, same weights and batch (first step; after one"
    f" update); {verdict} {LOSS_TOLERANCE:.0e}:",
  ]
  for name, (first, second) in losses.items():
    if not name.startswith("jax"):
      continue
    trl_first, trl_second = losses[f"trl-{name.split('-')[1]}"]
    lines.append(
      f"  {_label(name, cores)[0]}, {name.split('-')[1]}:"
      f" slpo-jax {first:.7f}, TRL {trl_first:.7f}, |diff|"
      f" {abs(first - trl_first):.1e}; slpo-jax {second:.7f}, TRL"
      f" {trl_second:.7f}, |diff| {abs(second - trl_second):.1e}"
    )
  lines.append(
    "  Precomputed reference log-probs (sequence sums), max |slpo-jax -"
    f" TRL|: {reference_difference:.1e}"
  )
  return "\n".join(lines)


def run(args) -> None:
  start = time.perf_counter()
  setting = Setting(seed=args.seed)
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp)
    harness.use_compilation_cache(workdir)
    inputs = Inputs.build(setting, workdir)
    workers = {}
    try:
      # Set-up is not timed, so the RSS workers run alongside it; the JAX
      # ones start once the steps they load from the cache are compiled.
      start_rss = not args.skip_rss
      if start_rss:
        workers.update(
          start_rss_workers(TRL_VARIANTS, setting, workdir, args.rss_steps)
        )
      print(
        f"[{time.perf_counter() - start:.0f} s] Compiling the JAX steps...",
        flush=True,
      )
      variants = build_variants(JAX_VARIANTS, inputs)
      if start_rss:
        workers.update(
          start_rss_workers(JAX_VARIANTS, setting, workdir, args.rss_steps)
        )
      print(
        f"[{time.perf_counter() - start:.0f} s] Building the TRL trainers...",
        flush=True,
      )
      variants += build_variants(TIMED_VARIANTS[len(JAX_VARIANTS) :], inputs)
      # The first two steps of every variant with its own trainer: the loss
      # of the shared weights, and the loss after one update. They are also
      # the variants' warm-up.
      losses = {
        v.name: (v(), v()) for v in variants if not v.name.endswith(ONE_THREAD)
      }
      reference_difference = reference_logps_difference(variants)
      rss = harness.worker_results(workers)
    finally:
      harness.stop_workers(workers)
    load_before = os.getloadavg()
    print(
      f"[{time.perf_counter() - start:.0f} s] Timing: {args.rounds}"
      f" rounds x {args.steps} steps of each of {len(variants)} variants,"
      " interleaved...",
      flush=True,
    )
    samples = harness.interleaved_times(
      variants, args.rounds, args.steps, args.warmup
    )
    load_after = os.getloadavg()
    memory = {v.name: v.memory() for v in variants if isinstance(v, JaxVariant)}
  print(f"[{time.perf_counter() - start:.0f} s] done", flush=True)
  tokens = real_tokens(inputs.batch)
  machine = harness.machine_description()
  load = {
    "before": " ".join(f"{x:.2f}" for x in load_before),
    "after": " ".join(f"{x:.2f}" for x in load_after),
  }
  rows = summarise(samples, tokens, memory, rss, machine["cpu_count"])
  table = format_table(
    machine, setting, tokens, load, rows, losses, reference_difference
  )
  print()
  print(table)
  if args.quick:
    return
  args.out.mkdir(parents=True, exist_ok=True)
  stem = args.out / "train_step"
  header = (
    f"`{COMMAND}`, {machine['date']}. Medians over {args.rounds} rounds x"
    f" {args.steps} interleaved steps per variant; ms/step and tokens/s are"
    " wall time, CPU ms is the process's CPU time over all threads. XLA"
    " bytes: `memory_analysis()` of the compiled step. RSS: rise of the"
    " kernel's high-water mark (`VmHWM`) over the steps, each variant"
    " alone in a subprocess (see the docstring of bench/train_step.py).\n\n"
  )
  stem.with_suffix(".md").write_text(header + table + "\n")
  stem.with_suffix(".json").write_text(
    json.dumps(
      {
        "command": COMMAND,
        "machine": machine,
        "load_average": load,
        "setting": dataclasses.asdict(setting),
        "real_tokens_per_step": tokens,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "warmup": args.warmup,
        "losses_first_and_second_step": {k: list(v) for k, v in losses.items()},
        "reference_logps_max_abs_difference": reference_difference,
        "rows": rows,
      },
      indent=2,
    )
    + "\n"
  )
  print(f"\nSaved {stem}.md and {stem}.json")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--rounds", type=int, default=4, help="interleaved rounds over all variants"
  )
  parser.add_argument(
    "--steps", type=int, default=3, help="steps of one variant per round"
  )
  parser.add_argument(
    "--warmup",
    type=int,
    default=0,
    help="untimed steps of each variant before timing, on"
    " top of the two steps whose losses are compared",
  )
  parser.add_argument(
    "--rss-steps",
    type=int,
    default=2,
    help="steps over which the RSS high-water mark rise"
    " is measured, after one warm-up step",
  )
  parser.add_argument(
    "--seed",
    type=int,
    default=0,
    help="seeds the batch and the initial weights",
  )
  harness.add_run_arguments(
    parser,
    quick_help="2 rounds, no RSS subprocesses; results not saved",
    results_dir=RESULTS_DIR,
    workers=JAX_VARIANTS + TRL_VARIANTS,
  )
  args = parser.parse_args(argv)
  if args.rss_worker:
    result = measure_rss(
      args.rss_worker, Setting(seed=args.seed), args.rss_workdir, args.rss_steps
    )
    print(json.dumps(result))
    return
  if args.quick:
    args.rounds, args.skip_rss = 2, True
  run(args)


if __name__ == "__main__":
  main()

"""SLPO's mechanism by ablation on section 4's task (docs/RESULTS.md, sec. 5).

Each arm changes one thing against section 4's ``slpo_normalized`` or DPO:
the per-pair weighting alone (DPO weighted by 2s), the pairs (length-matched,
so that s follows per-token likelihood), the share (per-token means, leaving
Eq. 6), the learning rate and the schedule. Everything else is section 4's:
the reference, 360 steps of 32 pairs, evaluation every 40 steps. The report
compares each arm with section 4's phase-B frontier (its rule) and with each
seed's own DPO/IPO envelope (:mod:`experiments.paired_gap`).

Run::

  python -m experiments.ablation run [--seeds 5] [--only ARMS]
  python -m experiments.ablation report [--out docs/figures]
  python -m experiments.ablation pairs   # s on seed 0's pairs, both ways

Runs are cached in ``--workdir`` (a rerun skips finished ones) and go
seed-major, so an interrupted study has every arm at its first seeds.
"""

import argparse
import contextlib
import dataclasses
import pathlib
import time
from collections.abc import Callable
from unittest import mock

import numpy as np

from configs import controlled_generation as cg_config
from experiments import ablation_losses
from experiments import controlled_generation as cg
from experiments import frontier
from experiments import paired_gap
from experiments import sampling_eval
from experiments import stats
from slpo_jax import losses
from slpo_jax import models
from slpo_jax.tasks.vocab import EOS_ID
from train import objective
from train import setup as setup_lib
from train import task_reference
from train import validate
from train.data.task_pairs import synthetic_prompts

STEM = "ablation"
# Draws of the second response per prompt when pairs are length-matched.
LENGTH_MATCH_DRAWS = 8


@dataclasses.dataclass(frozen=True)
class Arm:
  """One ablation arm.

  Attributes:
    name: the arm's name (CSV ``loss`` column and run folder).
    point: section 4's grid point it derives from (table loss, overrides).
    custom_loss: an experiment-only loss function (read as a table line)
      that replaces the point's loss; None keeps it.
    learning_rate: peak learning rate.
    decay: ``optimizer.decay`` after warm-up.
    length_matched: whether each pair's responses are drawn to one length.
  """

  name: str
  point: cg.GridPoint
  custom_loss: Callable | None = None
  learning_rate: float = 3e-4
  decay: str = "cosine"
  length_matched: bool = False


def _point(family, loss, hparam="", overrides=()) -> cg.GridPoint:
  return cg.GridPoint(family, loss, hparam, tuple(overrides))


ARMS = (
  Arm(
    "dpo_share_weighted_beta0.2",
    _point("dpo", "dpo", "beta=0.2", [("beta", 0.2)]),
    ablation_losses.dpo_share_weighted_loss,
  ),
  Arm(
    "dpo_share_weighted_beta1",
    _point("dpo", "dpo", "beta=1", [("beta", 1.0)]),
    ablation_losses.dpo_share_weighted_loss,
  ),
  Arm(
    "slpo_normalized_length_matched",
    _point("slpo_normalized", "slpo_normalized"),
    length_matched=True,
  ),
  Arm(
    "dpo_beta0.2_length_matched",
    _point("dpo", "dpo", "beta=0.2", [("beta", 0.2)]),
    length_matched=True,
  ),
  Arm(
    "slpo_share_per_token",
    _point("slpo_normalized", "slpo_normalized"),
    ablation_losses.slpo_share_per_token_loss,
  ),
  Arm(
    "slpo_normalized_lr1e-4",
    _point("slpo_normalized", "slpo_normalized"),
    learning_rate=1e-4,
  ),
  Arm(
    "slpo_normalized_constant",
    _point("slpo_normalized", "slpo_normalized"),
    decay="constant",
  ),
)


def custom_loss(arm: Arm, loss_config) -> objective.Loss:
  """The arm's experiment-only loss, built as the program builds its own."""
  spec = losses.LossSpec(arm.name, arm.custom_loss)
  terms = losses.WeightedLoss(((spec, 1.0),))
  hparams = tuple((name, loss_config[name]) for name in spec.hparams)
  return objective.Loss(
    terms=terms, hparams=hparams, beta=float(loss_config.beta)
  )


def response_lengths(tokens: np.ndarray) -> np.ndarray:
  """Tokens up to and including the first EOS (all of them if none)."""
  is_eos = tokens == EOS_ID
  return np.where(is_eos.any(1), is_eos.argmax(1) + 1, tokens.shape[1])


def length_matched_sampler(base_sampler):
  """Wraps ``task_reference.reference_sampler``: second responses matched.

  The pipeline asks for every prompt twice (first halves, then second
  halves). The first responses are drawn as usual; each second one is the
  first of ``LENGTH_MATCH_DRAWS`` draws with the first response's length,
  or the closest in length when none has it.
  """

  def make(model, params, *, max_new_tokens, seed):
    sample = base_sampler(
      model, params, max_new_tokens=max_new_tokens, seed=seed
    )

    def sample_fn(prompts, rng):
      half = len(prompts) // 2
      first = sample(prompts[:half], rng)
      draws = sample(np.tile(prompts[half:], (LENGTH_MATCH_DRAWS, 1)), rng)
      draws = draws.reshape((LENGTH_MATCH_DRAWS, half) + draws.shape[1:])
      target = response_lengths(first)
      distance = np.stack([np.abs(response_lengths(d) - target) for d in draws])
      pick = distance.argmin(0)  # The first draw at the least distance.
      second = draws[pick, np.arange(half)]
      width = max(first.shape[1], second.shape[1])
      pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])))  # noqa: E731
      return np.concatenate([pad(first), pad(second)])

    return sample_fn

  return make


def train_arm(arm: Arm, seed: int, base, reference_dir, evaluator, runs):
  """Trains one (arm, seed), or reads it back; returns its CSV rows."""
  run_dir = runs / f"{arm.name}_seed{seed}"
  config = cg.run_config(base, arm.point, seed, reference_dir)
  config.optimizer.learning_rate = arm.learning_rate
  config.optimizer.decay = arm.decay
  point = dataclasses.replace(arm.point, loss=arm.name)

  def build(run_dir):
    checked = validate.validate(config)
    if arm.custom_loss is not None:
      checked = dataclasses.replace(checked, loss=custom_loss(arm, config.loss))
    patch = contextlib.nullcontext()
    if arm.length_matched:
      # The program builds its pair sampler inside build_run; the experiment
      # swaps in the matched one there and nowhere else.
      patch = mock.patch.object(
        task_reference,
        "reference_sampler",
        length_matched_sampler(task_reference.reference_sampler),
      )
    with patch:
      return setup_lib.build_run(config, run_dir, checked)

  return cg.train_point(config, point, evaluator, run_dir, build_run=build)


def run(workdir: pathlib.Path, out: pathlib.Path, seeds: int, only=()):
  start = time.perf_counter()
  base = cg_config.get_config("cpu")
  base.steps = frontier.STEPS
  base.eval_every = frontier.EVAL_EVERY
  arms = [a for a in ARMS if not only or a.name in only]
  import jax

  jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  reference_dir = cg.fit_reference(base, workdir / "reference_fit")
  model, reference_params = models.load_hf_model(
    reference_dir, dtype=base.model.dtype
  )
  prompts = synthetic_prompts(base.data, "eval")
  sweep = cg_config.get_sweep("cpu")
  rows = []
  for seed in range(seeds):
    evaluator = sampling_eval.SamplingEvaluator(
      model,
      reference_params,
      prompts,
      max_new_tokens=base.data.synthetic.max_new_tokens + 1,
      samples_per_prompt=sweep.samples_per_prompt,
      seed=seed,
    )
    rows.append(cg.reference_row(evaluator, reference_params, seed))
    ref = rows[-1]
    print(
      f"seed {seed} reference: reward {ref['reward']:.6g},"
      f" length {ref['length']:.6g}",
      flush=True,
    )
    for arm in arms:
      run_start = time.perf_counter()
      arm_rows = train_arm(
        arm, seed, base, reference_dir, evaluator, workdir / "ablation_runs"
      )
      rows.extend(arm_rows)
      last = arm_rows[-1]
      print(
        f"[{time.perf_counter() - start:6.0f} s] {arm.name} seed {seed}:"
        f" reward {last['reward']:.3f}, KL {last['kl']:.2f}"
        f" ({time.perf_counter() - run_start:.0f} s)",
        flush=True,
      )
      cg.write_points_csv(rows, out / f"{STEM}.csv")
  print(f"runtime: {time.perf_counter() - start:.0f} s")


def report(out: pathlib.Path) -> str:
  """The arms against section 4's frontier and each seed's envelope."""
  rows = frontier.read_csv(out / f"{STEM}.csv")
  baseline_rows = paired_gap.phase_b_rows(out)
  curve = _frontier_curve(baseline_rows)
  trajectories = _baseline_trajectories(baseline_rows)
  lines = [
    "| arm | seeds | KL (nats) | reward | frontier rule (lower end) |"
    " paired gap | reading | best DPO/IPO evaluation at that KL |"
    " sample length | eval accuracy | shift of log pi(y_w) |"
    " shift of log pi(y_l) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for arm in ARMS:
    finals = [
      r
      for r in cg.final_rows(rows)
      if r["loss"] == arm.name and r["family"] != "reference"
    ]
    if not finals:
      lines.append(f"| {arm.name} | 0 | not run |" + " |" * 9)
      continue
    kl = np.mean([r["kl"] for r in finals])
    reward = np.mean([r["reward"] for r in finals])
    level, low, _ = frontier.interpolate(curve, kl)
    rule = (
      "not comparable"
      if np.isnan(level)
      else f"{'yes' if reward >= low else 'no'} ({low:.3f})"
    )
    gaps = paired_gap.paired_gaps(finals, baseline_rows)
    lines.append(
      f"| {arm.name} | {len(finals)} |"
      + " |".join(
        " " + _cell([r[c] for r in finals], d)
        for c, d in (("kl", 2), ("reward", 3))
      )
      + f" | {rule} | {paired_gap.gap_cell(gaps)} |"
      f" {paired_gap.verdict(gaps)} | {_best_at(trajectories, kl)} |"
      + " |".join(
        " " + _cell([r[c] for r in finals], d)
        for c, d in (
          ("length", 1),
          ("eval_accuracy", 3),
          ("eval_chosen_logp_shift", 1),
          ("eval_rejected_logp_shift", 1),
        )
      )
      + " |"
    )
  lines += ["", *readings(rows, baseline_rows)]
  return "\n".join(lines)


def _arm_finals(rows, name) -> list[dict]:
  return [
    r
    for r in cg.final_rows(rows)
    if r["loss"] == name and r["family"] != "reference"
  ]


def readings(rows: list[dict], baseline_rows: list[dict]) -> list[str]:
  """The protocol's mechanism, length and schedule readings."""
  section4 = paired_gap.run_finals(baseline_rows)["slpo_normalized lr0.0003"]
  slpo_gaps = paired_gap.paired_gaps(section4, baseline_rows)
  ours = {r["seed"]: r for r in rows if r["family"] == "reference"}
  theirs = {r["seed"]: r for r in baseline_rows if r["family"] == "reference"}
  same = all(
    np.isclose(ours[s][c], theirs[s][c], rtol=1e-4)
    for s in ours
    for c in ("reward", "length")
  )
  out = [
    f"reference rows of seeds {sorted(ours)} equal section 4's"
    f" (reward and length, 4 digits): {'yes' if same else 'NO'}",
    "slpo_normalized (section 4, seeds 0-4): paired gap"
    f" {paired_gap.gap_cell(slpo_gaps)}",
  ]
  for name in ("dpo_share_weighted_beta0.2", "dpo_share_weighted_beta1"):
    gaps = paired_gap.paired_gaps(_arm_finals(rows, name), baseline_rows)
    difference = {s: g - slpo_gaps[s] for s, g in gaps.items()}
    out.append(
      f"{name} minus slpo_normalized, paired by seed:"
      f" {paired_gap.gap_cell(difference)}"
    )
  matched = paired_gap.paired_gaps(
    _arm_finals(rows, "slpo_normalized_length_matched"), baseline_rows
  )
  if matched:
    seeds = sorted(matched)
    closed = 1 - np.mean([matched[s] for s in seeds]) / np.mean(
      [slpo_gaps[s] for s in seeds]
    )
    out.append(
      f"length matching closes {closed:.0%} of slpo_normalized's gap"
      f" (same seeds {seeds})"
    )
  constant = [r for r in rows if r["loss"] == "slpo_normalized_constant"]
  if constant:
    seeds = sorted({r["seed"] for r in constant})
    kl = np.mean([r["kl"] for r in _arm_finals(rows, constant[0]["loss"])])
    cosine = np.mean([r["kl"] for r in section4 if r["seed"] in seeds])
    rise = np.mean(
      [
        next(
          r["reward"] for r in constant if r["seed"] == s and r["step"] == 360
        )
        - next(
          r["reward"] for r in constant if r["seed"] == s and r["step"] == 240
        )
        for s in seeds
      ]
    )
    out.append(
      f"constant schedule: KL {kl:.2f} against cosine {cosine:.2f}"
      f" ({kl / cosine - 1:+.0%}); reward rise over steps 240-360 {rise:+.3f}"
    )
  return out


def share_histogram(seed: int, workdir: pathlib.Path) -> str:
  """s and s̄ on seed ``seed``'s training pairs, sampled and length-matched.

  Bins of s: the fraction of pairs below 0.1, 0.1-0.5, 0.5-0.9, above 0.9.
  """
  base = cg_config.get_config("cpu")
  reference_dir = cg.fit_reference(base, workdir / "reference_fit")
  sampled = task_reference.reference_sampler
  lines = [
    "| pairs | share | pairs | same length | s < 0.1 | 0.1-0.5 |"
    " 0.5-0.9 | s > 0.9 |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for name, sampler in (
    ("sampled", sampled),
    ("length-matched", length_matched_sampler(sampled)),
  ):
    values = cg.pair_values(base, reference_dir, seed, sampler)
    same = np.mean(values["chosen_lengths"] == values["rejected_lengths"])
    shares = {
      "s": ablation_losses.loser_share(
        values["chosen_logps"], values["rejected_logps"]
      ),
      "s̄ (per token)": ablation_losses.loser_share(
        values["chosen_logps"] / values["chosen_lengths"],
        values["rejected_logps"] / values["rejected_lengths"],
      ),
    }
    for label, share in shares.items():
      share = np.asarray(share, np.float64)
      counts = np.histogram(share, bins=(0.0, 0.1, 0.5, 0.9, 1.0))[0]
      lines.append(
        f"| {name} | {label} | {len(share)} | {same:.3f} | "
        + " | ".join(f"{c / len(share):.3f}" for c in counts)
        + " |"
      )
  return "\n".join(lines)


def _baseline_trajectories(baseline_rows) -> list[list[tuple]]:
  """Each section-4 baseline run's per-evaluation means over seeds, from
  the reference (section 4's KL-budget reading)."""
  reference = np.mean(
    [r["reward"] for r in baseline_rows if r["family"] == "reference"]
  )
  runs: dict[tuple, list[dict]] = {}
  for row in baseline_rows:
    if row["family"] in frontier.BASELINES:
      key = (row["loss"], row["hyperparameter"], row["learning_rate"])
      runs.setdefault(key, []).append(row)
  trajectories = []
  for members in runs.values():
    steps = sorted({r["step"] for r in members})
    trajectories.append(
      [(0.0, reference)]
      + [
        (
          np.mean([r["kl"] for r in members if r["step"] == s]),
          np.mean([r["reward"] for r in members if r["step"] == s]),
        )
        for s in steps
      ]
    )
  return trajectories


def _best_at(trajectories, kl: float) -> str:
  """The most reward a baseline's mean trajectory has when it first spends
  ``kl`` (linear between evaluations)."""
  values = [frontier.first_crossing(t, kl) for t in trajectories]
  values = [v for v in values if v is not None]
  return f"{max(values):.3f}" if values else "not reached"


def _frontier_curve(baseline_rows):
  """Section 4's phase-B frontier: (kl, mean, low, high) from KL 0."""
  reference = [r["reward"] for r in baseline_rows if r["family"] == "reference"]
  ref = stats.mean_interval(np.array(reference))
  points = []
  for finals in paired_gap.run_finals(baseline_rows).values():
    if finals[0]["family"] in frontier.BASELINES:
      kl = np.mean([r["kl"] for r in finals])
      points.append(
        (kl, *stats.mean_interval(np.array([r["reward"] for r in finals])))
      )
  return [(0.0, *ref)] + sorted(points)


def _cell(values, digits: int) -> str:
  mean, low, high = stats.mean_interval(np.asarray(values, np.float64))
  return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("command", choices=("run", "report", "pairs"))
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--only", default="", help="comma-separated arm names")
  parser.add_argument(
    "--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/cg")
  )
  parser.add_argument(
    "--out", type=pathlib.Path, default=pathlib.Path("docs/figures")
  )
  args = parser.parse_args(argv)
  start = time.perf_counter()
  if args.command == "run":
    only = tuple(o for o in args.only.split(",") if o)
    run(args.workdir, args.out, args.seeds, only)
  elif args.command == "pairs":
    print(share_histogram(0, args.workdir))
  else:
    print(report(args.out))
  print(f"{args.command}: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()

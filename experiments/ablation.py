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
  python -m experiments.ablation run --seeds 3 --only EXPLORATORY_ARMS
  python -m experiments.ablation report [--out docs/figures]
  python -m experiments.ablation pairs   # s on seed 0's pairs, both ways
  python -m experiments.ablation run --only tilted   # 5.7; noisy 5.8, summed 5.9

Runs are cached in ``--workdir`` (a rerun skips finished ones) and go
seed-major, so an interrupted study has every arm at its first seeds.
"""

import argparse
import dataclasses
import pathlib
import time
from collections.abc import Callable

from configs import controlled_generation as cg_config
from experiments import ablation_losses
from experiments import controlled_generation as cg
from experiments import frontier
from experiments import pair_regimes
from experiments import sampling_eval
from slpo_jax import losses
from slpo_jax import models
from slpo_jax.tasks import synthetic
from train import objective
from train import setup as setup_lib
from train import task_reference
from train import validate
from train.data.task_pairs import synthetic_prompts

STEM = "ablation"


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
    best_of: if above 1, each pair's first response is the best (true
      reward) of that many reference samples: off-policy chosen responses.
    regime: sections 5.7-5.9's pairs and reward, or None for section 4's.
  """

  name: str
  point: cg.GridPoint
  custom_loss: Callable | None = None
  learning_rate: float = 3e-4
  decay: str = "cosine"
  length_matched: bool = False
  best_of: int = 1
  regime: pair_regimes.Regime | None = None


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

# Added after the pre-registered arms had run, and reported as exploratory:
# the per-token share at section 4's other rates, and a frontier of DPO and
# IPO on length-matched pairs.
EXPLORATORY = (
  Arm(
    "slpo_share_per_token_lr1e-3",
    _point("slpo_normalized", "slpo_normalized"),
    ablation_losses.slpo_share_per_token_loss,
    learning_rate=1e-3,
  ),
  Arm(
    "slpo_share_per_token_lr3e-3",
    _point("slpo_normalized", "slpo_normalized"),
    ablation_losses.slpo_share_per_token_loss,
    learning_rate=3e-3,
  ),
  Arm(
    "dpo_beta1_length_matched",
    _point("dpo", "dpo", "beta=1", [("beta", 1.0)]),
    length_matched=True,
  ),
  Arm(
    "ipo_beta0.2_length_matched",
    _point("ipo", "ipo", "beta=0.2", [("beta", 0.2)]),
    length_matched=True,
  ),
)

# Section 5.5: off-policy chosen responses (best of 8), reduced to 2 seeds.
OFF_POLICY = tuple(
  Arm(f"{name}_best_of_8", point, best_of=8)
  for name, point in (
    ("dpo_beta0.2", _point("dpo", "dpo", "beta=0.2", [("beta", 0.2)])),
    ("dpo_beta1", _point("dpo", "dpo", "beta=1", [("beta", 1.0)])),
    ("ipo_beta0.2", _point("ipo", "ipo", "beta=0.2", [("beta", 0.2)])),
    (
      "slpo_normalized",
      _point("slpo_normalized", "slpo_normalized"),
    ),
  )
)


# Sections 5.7-5.9: the same five arms under each pair regime.
REGIMES = {
  "tilted": pair_regimes.Regime(
    "tilted", sampler=pair_regimes.tilted_sampler(pair_regimes.TILT_DELTA)
  ),
  "noisy": pair_regimes.Regime(
    "noisy", label_temperature=pair_regimes.LABEL_TEMPERATURE
  ),
  "summed": pair_regimes.Regime(
    "summed", reward_fn=pair_regimes.summed_sentiment_reward
  ),
}
REGIME_ARMS = {
  key: tuple(
    Arm(f"{name}_{key}", point, learning_rate=rate, regime=regime)
    for name, point, rate in (
      ("dpo_beta0.2", _point("dpo", "dpo", "beta=0.2", [("beta", 0.2)]), 3e-4),
      ("dpo_beta1", _point("dpo", "dpo", "beta=1", [("beta", 1.0)]), 3e-4),
      ("ipo_beta0.2", _point("ipo", "ipo", "beta=0.2", [("beta", 0.2)]), 3e-4),
      ("slpo_normalized", _point("slpo_normalized", "slpo_normalized"), 3e-4),
      (
        "slpo_normalized_lr1e-4",
        _point("slpo_normalized", "slpo_normalized"),
        1e-4,
      ),
    )
  )
  for key, regime in REGIMES.items()
}
# Added after 5.7's pre-registered arms had run, and reported as
# exploratory: 5.1's per-token share (the one arm that reached section 4's
# frontier) on the tilted pairs, where s follows the tilted response's length.
REGIME_ARMS["tilted_exploratory"] = (
  Arm(
    "slpo_share_per_token_tilted",
    _point("slpo_normalized", "slpo_normalized"),
    ablation_losses.slpo_share_per_token_loss,
    regime=REGIMES["tilted"],
  ),
)
# Also exploratory: IPO tau = 1, a baseline point at low KL, where the
# SLPO arms of 5.8 and 5.9 end and the envelope is otherwise a chord from
# the reference.
for _key in ("noisy", "summed"):
  REGIME_ARMS[f"{_key}_exploratory"] = (
    Arm(
      f"ipo_beta1_{_key}",
      _point("ipo", "ipo", "beta=1", [("beta", 1.0)]),
      regime=REGIMES[_key],
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


# The samplers of 5.1 and 5.5 live with the other pair regimes.
LENGTH_MATCH_DRAWS = pair_regimes.LENGTH_MATCH_DRAWS
response_lengths = pair_regimes.response_lengths
length_matched_sampler = pair_regimes.length_matched_sampler
best_of_n_sampler = pair_regimes.best_of_n_sampler


def pair_sampler(arm: Arm, base_sampler):
  """The arm's pair sampler around ``base_sampler`` (None: unchanged)."""
  if arm.regime is not None:
    return arm.regime.sampler
  if arm.length_matched:
    return length_matched_sampler(base_sampler)
  if arm.best_of > 1:
    return best_of_n_sampler(base_sampler, arm.best_of)
  return None


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
    sampler = pair_sampler(arm, task_reference.reference_sampler)
    make_pairs = None
    if arm.regime is not None:
      make_pairs = arm.regime.make_pairs(config.data, seed)
    return setup_lib.build_run(
      config,
      run_dir,
      checked,
      sampler=sampler or task_reference.reference_sampler,
      make_pairs=make_pairs,
    )

  return cg.train_point(config, point, evaluator, run_dir, build_run=build)


def run(workdir: pathlib.Path, out: pathlib.Path, seeds: int, only=()):
  start = time.perf_counter()
  base = cg_config.get_config("cpu")
  base.steps = frontier.STEPS
  base.eval_every = frontier.EVAL_EVERY
  groups = {"": ARMS, "_exploratory": EXPLORATORY, "_off_policy": OFF_POLICY}
  groups.update({f"_{key}": arms for key, arms in REGIME_ARMS.items()})
  # A regime's name stands for all its arms.
  only = tuple(a.name for o in only for a in REGIME_ARMS.get(o, ())) + tuple(
    o for o in only if o not in REGIME_ARMS
  )
  chosen = {
    suffix: [a for a in arms if a.name in only or not only]
    for suffix, arms in groups.items()
  }
  if not only:
    chosen = {"": list(ARMS)}
  chosen = {suffix: arms for suffix, arms in chosen.items() if arms}
  if len(chosen) != 1:
    raise SystemExit("run the arms of one group at a time")
  # Each group has its own CSV, so no run overwrites another's.
  ((suffix, arms),) = chosen.items()
  stem = STEM + suffix
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
  regime = arms[0].regime
  reward_fn = regime.reward_fn if regime else synthetic.sentiment_reward
  for seed in range(seeds):
    evaluator = sampling_eval.SamplingEvaluator(
      model,
      reference_params,
      prompts,
      max_new_tokens=base.data.synthetic.max_new_tokens + 1,
      samples_per_prompt=sweep.samples_per_prompt,
      seed=seed,
      reward_fn=reward_fn,
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
      cg.write_points_csv(rows, out / f"{stem}.csv")
  print(f"runtime: {time.perf_counter() - start:.0f} s")


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
  # Imported here: the report module reads this one's arms.
  from experiments import ablation_report

  start = time.perf_counter()
  if args.command == "run":
    only = tuple(o for o in args.only.split(",") if o)
    run(args.workdir, args.out, args.seeds, only)
  elif args.command == "pairs":
    print(ablation_report.share_histogram(0, args.workdir))
  else:
    print(ablation_report.report(args.out))
    print()
    print(ablation_report.off_policy_report(args.out))
  print(f"{args.command}: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()

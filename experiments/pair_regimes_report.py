"""Sections 5.7-5.9: the regimes' report (and the choice of delta and T).

* ``choose``, ``noise``: :mod:`experiments.pair_regimes_choice` (seed 0's s
  histograms and expected label noise; the realised noise per seed). No
  training.
* ``report``: each regime's arms at step 360 (mean [95% interval] over
  seeds), each SLPO arm's paired gap to each seed's envelope of the
  pre-registered DPO/IPO runs on the same pairs, the frontier rule on those
  runs' frontier (and on section 4's where the reward is section 4's), the
  best DPO/IPO evaluation at the same KL, the exploratory arms apart; the
  noisy arms against the same arms on clean pairs; writes
  ``figures/regimes_summary.csv`` and ``figures/regimes.png`` (every
  evaluation is in ``figures/ablation_{tilted,noisy,summed}*.csv``).

Run::

  python -m experiments.pair_regimes_report choose --workdir /tmp/cg
  python -m experiments.pair_regimes_report noise --workdir /tmp/cg
  python -m experiments.pair_regimes_report report [--out docs/figures]
"""

import argparse
import csv
import pathlib
import time

import numpy as np

from experiments import ablation
from experiments import ablation_report
from experiments import controlled_generation as cg
from experiments import frontier
from experiments import pair_regimes_choice
from experiments import paired_gap
from experiments import stats


def regime_arms(key: str) -> tuple:
  """A regime's arms, its exploratory ones (added after its runs) last."""
  return ablation.REGIME_ARMS[key] + ablation.REGIME_ARMS.get(
    f"{key}_exploratory", ()
  )


def regime_rows(key: str, out: pathlib.Path) -> list[dict] | None:
  """A regime's evaluations, its exploratory arms' included; None if the
  regime has not run."""
  path = out / f"{ablation.STEM}_{key}.csv"
  if not path.exists():
    return None
  rows = frontier.read_csv(path)
  extra = out / f"{ablation.STEM}_{key}_exploratory.csv"
  if extra.exists():
    # Its reference rows repeat the regime's own.
    rows += [r for r in frontier.read_csv(extra) if r["family"] != "reference"]
  return rows


def registered_baselines(key: str, rows: list[dict]) -> list[dict]:
  """The reference rows and the pre-registered DPO/IPO arms' evaluations:
  what the decision rules read (exploratory baselines left out)."""
  names = {a.name for a in ablation.REGIME_ARMS[key]}
  return [
    r
    for r in rows
    if r["family"] == "reference"
    or (r["family"] in frontier.BASELINES and r["loss"] in names)
  ]


def _finals(rows, name):
  return [
    r
    for r in cg.final_rows(rows)
    if r["loss"] == name and r["family"] != "reference"
  ]


def regime_report(key: str, out: pathlib.Path) -> str:
  """One regime's table, paired gaps and frontier rules."""
  rows = regime_rows(key, out)
  if rows is None:
    return f"{key}: not run"
  baselines = registered_baselines(key, rows)
  every_baseline = [
    r for r in rows if r["family"] in frontier.BASELINES + ("reference",)
  ]
  exploratory_lines = []
  own_curve = ablation_report._frontier_curve(baselines)
  # Every baseline here ran at one rate; the trajectories are keyed by it.
  trajectories = ablation_report._baseline_trajectories(
    [dict(r, learning_rate=3e-4) for r in baselines]
  )
  section4_curve = None
  if key != "summed":
    section4_curve = ablation_report._frontier_curve(
      paired_gap.phase_b_rows(out)
    )
  lines = [
    f"{key}:",
    "",
    "| arm | seeds | KL (nats) | reward | sample length | eval accuracy |"
    " shift of log pi(y_w) | shift of log pi(y_l) | paired gap | reading |"
    " frontier rule, these DPO/IPO runs (lower end) |"
    " frontier rule, section 4 (lower end) |"
    " best DPO/IPO evaluation at that KL |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for arm in regime_arms(key):
    finals = _finals(rows, arm.name)
    if not finals:
      lines.append(f"| {arm.name} | 0 | not run |" + " |" * 10)
      continue
    cells = ablation_report.final_cells(finals)
    if finals[0]["family"] in frontier.BASELINES:
      extra = ["(baseline)"] * 5
    else:
      gaps = paired_gap.paired_gaps(finals, baselines)
      kl = np.mean([r["kl"] for r in finals])
      reward = np.mean([r["reward"] for r in finals])
      extra = [
        paired_gap.gap_cell(gaps)
        + " ("
        + ", ".join(f"{g:+.3f}" for g in gaps.values())
        + ")",
        paired_gap.verdict(gaps),
        _rule(own_curve, kl, reward),
        _rule(section4_curve, kl, reward) if section4_curve else "n/a",
        ablation_report._best_at(trajectories, kl),
      ]
      if len(every_baseline) > len(baselines):
        more = paired_gap.paired_gaps(finals, every_baseline)
        exploratory_lines.append(
          f"exploratory: {arm.name}, paired gap to each seed's envelope with"
          f" the exploratory baselines added: {paired_gap.gap_cell(more)}"
          f" ({paired_gap.verdict(more)})"
        )
    label = arm.name
    if arm in ablation.REGIME_ARMS.get(f"{key}_exploratory", ()):
      label += " (exploratory)"
    lines.append(
      f"| {label} | {len(finals)} | " + " | ".join(cells + extra) + " |"
    )
  lines += exploratory_lines
  references = [r for r in rows if r["family"] == "reference"]
  theirs = {
    r["seed"]: r
    for r in paired_gap.phase_b_rows(out)
    if r["family"] == "reference"
  }
  # The summed reward is in other units: only the length can agree.
  columns = ("length",) if key == "summed" else ("reward", "length")
  same = all(
    np.isclose(r[c], theirs[r["seed"]][c], rtol=1e-4)
    for r in references
    for c in columns
  )
  lines.append(
    f"reference rows of seeds {[r['seed'] for r in references]} equal"
    f" section 4's ({' and '.join(columns)}, 4 digits):"
    f" {'yes' if same else 'NO'}"
  )
  lines.append(
    "reference reward by seed: "
    + ", ".join(f"{r['reward']:.5g}" for r in references)
  )
  return "\n".join(lines)


def _rule(curve, kl: float, reward: float) -> str:
  _, low, _ = frontier.interpolate(curve, kl)
  if np.isnan(low):
    return "not comparable"
  return f"{'yes' if reward >= low else 'no'} ({low:.3f})"


def summary_rows(key: str, out: pathlib.Path) -> list[dict]:
  """Each arm of a regime at step 360: means, intervals, paired gaps."""
  rows = regime_rows(key, out)
  if rows is None:
    return []
  baselines = registered_baselines(key, rows)
  summary = []
  for arm in regime_arms(key):
    finals = _finals(rows, arm.name)
    if not finals:
      continue
    row = {"regime": key, "arm": arm.name, "seeds": len(finals)}
    for column in (
      "kl",
      "reward",
      "length",
      "eval_accuracy",
      "eval_chosen_logp_shift",
      "eval_rejected_logp_shift",
    ):
      mean, low, high = stats.mean_interval(
        np.array([r[column] for r in finals], np.float64)
      )
      row.update({column: mean, f"{column}_low": low, f"{column}_high": high})
    gap = low = high = float("nan")
    if finals[0]["family"] not in frontier.BASELINES:
      gaps = paired_gap.paired_gaps(finals, baselines)
      gap, low, high = stats.mean_interval(np.array(list(gaps.values())))
    row.update(
      {"paired_gap": gap, "paired_gap_low": low, "paired_gap_high": high}
    )
    summary.append(row)
  return summary


def write_summary(out: pathlib.Path) -> pathlib.Path:
  rows = [r for key in ablation.REGIMES for r in summary_rows(key, out)]
  path = out / "regimes_summary.csv"
  with open(path, "w", newline="") as file:
    writer = csv.DictWriter(
      file, fieldnames=list(rows[0]) if rows else ["regime"]
    )
    writer.writeheader()
    writer.writerows(rows)
  return path


# Each noisy arm and the same arm on clean pairs: section 4's phase B
# (rate 3e-4) or, for the lower rate, section 5.1's arm.
CLEAN_TWINS = (
  ("dpo_beta0.2_noisy", "phase_b", "dpo", "beta=0.2"),
  ("dpo_beta1_noisy", "phase_b", "dpo", "beta=1"),
  ("ipo_beta0.2_noisy", "phase_b", "ipo", "beta=0.2"),
  ("slpo_normalized_noisy", "phase_b", "slpo_normalized", ""),
  ("slpo_normalized_lr1e-4_noisy", "ablation", "slpo_normalized_lr1e-4", ""),
)


def noise_cost(out: pathlib.Path) -> str:
  """Each noisy arm against its clean twin at step 360 (means over seeds),
  and its highest mean reward over the evaluations (over-fitting shows as a
  final reward below it)."""
  path = out / f"{ablation.STEM}_noisy.csv"
  if not path.exists():
    return "noisy: not run"
  noisy = frontier.read_csv(path)
  sources = {
    "phase_b": [
      r for r in paired_gap.phase_b_rows(out) if r["learning_rate"] == 3e-4
    ],
    "ablation": frontier.read_csv(out / f"{ablation.STEM}.csv"),
  }
  lines = [
    "| arm | clean pairs: KL, reward, held-out accuracy | noisy labels:"
    " KL, reward, held-out accuracy (true order) | noisy: highest mean"
    " reward over evaluations (step) |",
    "|---|---|---|---|",
  ]
  for name, source, loss, hyper in CLEAN_TWINS:
    clean = [
      r
      for r in sources[source]
      if r["loss"] == loss and r["hyperparameter"] == hyper
    ]
    ours = [r for r in noisy if r["loss"] == name]
    if not ours or not clean:
      continue
    at = lambda rows, step, c: np.mean(
      [r[c] for r in rows if r["step"] == step]
    )  # noqa: E731
    steps = sorted({r["step"] for r in ours})
    best = max(steps, key=lambda s: at(ours, s, "reward"))
    cells = [
      ", ".join(
        f"{at(rows, 360, c):.{d}f}"
        for c, d in (("kl", 2), ("reward", 3), ("eval_accuracy", 3))
      )
      for rows in (clean, ours)
    ]
    lines.append(
      f"| {name} | {cells[0]} | {cells[1]} |"
      f" {at(ours, best, 'reward'):.3f} ({best}) |"
    )
  return "\n".join(lines)


def report(out: pathlib.Path) -> str:
  parts = [regime_report(key, out) for key in ablation.REGIMES]
  parts.append(noise_cost(out))
  write_summary(out)
  from experiments import pair_regimes_plot

  pair_regimes_plot.figure(out)
  return "\n\n".join(parts)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("command", choices=("choose", "noise", "report"))
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument(
    "--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/cg")
  )
  parser.add_argument(
    "--out", type=pathlib.Path, default=pathlib.Path("docs/figures")
  )
  args = parser.parse_args(argv)
  start = time.perf_counter()
  if args.command == "choose":
    print(pair_regimes_choice.choose(args.workdir))
  elif args.command == "noise":
    print(pair_regimes_choice.realised_noise(args.workdir, args.seeds))
  else:
    print(report(args.out))
  print(f"{args.command}: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()

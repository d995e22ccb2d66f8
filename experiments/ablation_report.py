"""The report of the ablation study (``experiments.ablation``).

Reads the arms' CSVs and section 4's phase-B CSVs, and prints each arm
against section 4's frontier (its rule), each seed's own DPO/IPO envelope
(:mod:`experiments.paired_gap`), and the best DPO/IPO evaluation at the
same KL; then the protocol's readings. ``share_histogram`` measures s on
sampled and length-matched pairs.
"""

import pathlib

import numpy as np

from configs import controlled_generation as cg_config
from experiments import ablation
from experiments import ablation_losses
from experiments import controlled_generation as cg
from experiments import frontier
from experiments import paired_gap
from experiments import stats
from train import task_reference

STEM = ablation.STEM
ARMS = ablation.ARMS
EXPLORATORY = ablation.EXPLORATORY
length_matched_sampler = ablation.length_matched_sampler


def report(out: pathlib.Path) -> str:
  """The arms against section 4's frontier and each seed's envelope."""
  rows = frontier.read_csv(out / f"{STEM}.csv")
  if (out / f"{STEM}_exploratory.csv").exists():
    rows += frontier.read_csv(out / f"{STEM}_exploratory.csv")
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
  for arm in ARMS + EXPLORATORY:
    if arm == EXPLORATORY[0]:
      lines.append("| *exploratory, not pre-registered:* |" + " |" * 11)
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
  matched_baselines = [
    r
    for r in rows
    if r["family"] == "reference"
    or r["loss"]
    in (
      "dpo_beta0.2_length_matched",
      "dpo_beta1_length_matched",
      "ipo_beta0.2_length_matched",
    )
  ]
  matched_seeds = {
    r["seed"]
    for r in matched_baselines
    if r["loss"] == "ipo_beta0.2_length_matched"
  }
  if matched_seeds:
    finals = [
      r
      for r in _arm_finals(rows, "slpo_normalized_length_matched")
      if r["seed"] in matched_seeds
    ]
    gaps = paired_gap.paired_gaps(finals, matched_baselines)
    out.append(
      "exploratory: slpo_normalized_length_matched against each seed's"
      " envelope of DPO beta 0.2, 1 and IPO tau 0.2 on the same matched"
      f" pairs (seeds {sorted(matched_seeds)}): {paired_gap.gap_cell(gaps)}"
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
    ("best of 8 vs sampled", ablation.best_of_n_sampler(sampled, 8)),
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


# The columns of a final-step table, with their decimals.
FINAL_COLUMNS = (
  ("kl", 2),
  ("reward", 3),
  ("length", 1),
  ("eval_accuracy", 3),
  ("eval_chosen_logp_shift", 1),
  ("eval_rejected_logp_shift", 1),
)


def final_cells(finals: list[dict]) -> list[str]:
  """Mean [95% interval] over seeds of each of FINAL_COLUMNS."""
  return [_cell([r[c] for r in finals], d) for c, d in FINAL_COLUMNS]


def _cell(values, digits: int) -> str:
  mean, low, high = stats.mean_interval(np.asarray(values, np.float64))
  return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def off_policy_report(out: pathlib.Path) -> str:
  """Section 5.5: the arms on best-of-8 pairs, and slpo_normalized's paired
  gap to each seed's envelope of the DPO/IPO runs on the same pairs."""
  path = out / f"{STEM}_off_policy.csv"
  if not path.exists():
    return "off-policy arms: not run"
  rows = frontier.read_csv(path)
  lines = [
    "| arm | seeds | KL (nats) | reward | sample length | eval accuracy |"
    " shift of log pi(y_w) | shift of log pi(y_l) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for arm in ablation.OFF_POLICY:
    finals = _arm_finals(rows, arm.name)
    if not finals:
      lines.append(f"| {arm.name} | 0 | not run |" + " |" * 5)
      continue
    lines.append(
      f"| {arm.name} | {len(finals)} |"
      + " |".join(" " + cell for cell in final_cells(finals))
      + " |"
    )
  finals = _arm_finals(rows, "slpo_normalized_best_of_8")
  baselines = [
    r for r in rows if r["family"] in frontier.BASELINES + ("reference",)
  ]
  if finals and len(paired_gap.run_finals(baselines)):
    gaps = paired_gap.paired_gaps(finals, baselines)
    lines += [
      "",
      "slpo_normalized_best_of_8, paired gap to each seed's envelope of the"
      f" DPO/IPO runs on the same pairs: {paired_gap.gap_cell(gaps)}"
      f" ({paired_gap.verdict(gaps)}; per seed"
      f" {', '.join(f'{g:+.3f}' for g in gaps.values())})",
    ]
  return "\n".join(lines)

"""Each seed's gap to its own DPO/IPO envelope (docs/RESULTS.md, sec. 5).

Section 4's frontier rule compares a form's mean over seeds with the
frontier's interval, so the spread of the references between seeds widens
both sides. Pairing removes it: seed i of a form is compared with the
DPO/IPO runs of the same seed i, which saw the same pairs and evaluation
samples.

* :func:`seed_envelope`: seed i's upper envelope of the baselines' final
  (KL, reward) points, from that seed's reference reward at KL 0.
* :func:`paired_gaps`: a run's final reward minus its seed's envelope at its
  final KL, per seed; with :func:`experiments.stats.mean_interval`, the
  paired gap and its 95% interval.
* :func:`section4_table`: section 4's phase-B table with the columns added
  in section 5 (sample length, mean shift of log pi(y_w) and log pi(y_l),
  paired gap), recomputed from its CSV files.

Run::

  python -m experiments.paired_gap [--out docs/figures]
"""

import argparse
import pathlib
import time

import numpy as np

from experiments import controlled_generation as cg
from experiments import frontier
from experiments import stats

BASELINES = frontier.BASELINES


def phase_b_rows(out: pathlib.Path) -> list[dict]:
  """Every row of section 4's phase-B CSVs, each tagged with its rate."""
  rows = []
  for lr in frontier.LEARNING_RATES:
    path = out / f"frontier_b_s{frontier.STEPS}_lr{lr:g}.csv"
    if path.exists():
      for row in frontier.read_csv(path):
        row["learning_rate"] = lr
        rows.append(row)
  return rows


def seed_envelope(rows: list[dict], seed: int) -> list[tuple[float, float]]:
  """(kl, reward) of seed ``seed``'s envelope, sorted by KL, from KL 0.

  ``rows`` hold the baselines' evaluations and the reference rows; each
  baseline's last evaluation of that seed is a candidate.
  """
  reference = [
    r["reward"]
    for r in rows
    if r["family"] == "reference" and r["seed"] == seed
  ]
  if not reference:
    raise ValueError(f"no reference row for seed {seed}")
  finals = [
    (r["kl"], r["reward"])
    for r in cg.final_rows(_by_run(rows))
    if r["family"] in BASELINES and r["seed"] == seed
  ]
  kept = [finals[i] for i in frontier.envelope(finals)]
  return [(0.0, float(reference[0]))] + sorted(kept)


def _by_run(rows: list[dict]) -> list[dict]:
  """Rows with the learning rate folded into the hyperparameter, so that
  :func:`controlled_generation.final_rows` keeps one last row per run."""
  out = []
  for row in rows:
    row = dict(row)
    if "learning_rate" in row and row["family"] != "reference":
      rate = f"lr{row['learning_rate']:g}"
      row["hyperparameter"] = " ".join(
        part for part in (row["hyperparameter"], rate) if part
      )
    out.append(row)
  return out


def paired_gaps(
  finals: list[dict], baseline_rows: list[dict]
) -> dict[int, float]:
  """Seed -> a run's final reward minus its seed's envelope at its KL.

  ``finals``: one run's last evaluation per seed. NaN where the KL lies
  beyond that seed's last baseline point.
  """
  gaps = {}
  for row in finals:
    curve = seed_envelope(baseline_rows, row["seed"])
    (level,) = frontier.interpolate(curve, row["kl"])
    gaps[row["seed"]] = row["reward"] - level
  return gaps


def gap_cell(gaps: dict[int, float]) -> str:
  values = np.array([gaps[s] for s in sorted(gaps)])
  if np.any(np.isnan(values)):
    return "not comparable"
  mean, low, high = stats.mean_interval(values)
  return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def verdict(gaps: dict[int, float]) -> str:
  """below / on / above from the paired gap's 95% interval."""
  values = np.array([gaps[s] for s in sorted(gaps)])
  if np.any(np.isnan(values)):
    return "not comparable"
  _, low, high = stats.mean_interval(values)
  if high < 0:
    return "below"
  return "above" if low > 0 else "on"


def run_finals(rows: list[dict]) -> dict[str, list[dict]]:
  """Run label -> its last evaluation per seed (references left out)."""
  groups: dict[str, list[dict]] = {}
  for row in cg.final_rows(_by_run(rows)):
    if row["family"] != "reference":
      label = f"{row['loss']} {row['hyperparameter']}".strip()
      groups.setdefault(label, []).append(row)
  return groups


def _cell(values, digits: int) -> str:
  mean, low, high = stats.mean_interval(np.asarray(values, np.float64))
  return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def section4_table(out: pathlib.Path) -> str:
  """Section 4's phase B with sample length, mean shift and paired gap."""
  rows = phase_b_rows(out)
  lines = [
    "| run | seeds | KL (nats) | reward | sample length | shift of"
    " log pi(y_w) | shift of log pi(y_l) | mean of the two shifts |"
    " paired gap to the seed's envelope |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  groups = run_finals(rows)
  for label, finals in sorted(
    groups.items(), key=lambda kv: np.mean([r["kl"] for r in kv[1]])
  ):
    chosen = [r["eval_chosen_logp_shift"] for r in finals]
    rejected = [r["eval_rejected_logp_shift"] for r in finals]
    mean_shift = [(c + r) / 2 for c, r in zip(chosen, rejected)]
    baseline = finals[0]["family"] in BASELINES
    gap = "(baseline)" if baseline else gap_cell(paired_gaps(finals, rows))
    lines.append(
      f"| {label} | {len(finals)} | {_cell([r['kl'] for r in finals], 2)} |"
      f" {_cell([r['reward'] for r in finals], 3)} |"
      f" {_cell([r['length'] for r in finals], 1)} |"
      f" {_cell(chosen, 1)} | {_cell(rejected, 1)} | {_cell(mean_shift, 1)} |"
      f" {gap} |"
    )
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--out", type=pathlib.Path, default=pathlib.Path("docs/figures")
  )
  args = parser.parse_args(argv)
  start = time.perf_counter()
  print(section4_table(args.out))
  print(f"runtime: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  main()

"""Sections 5.7-5.9: choosing delta and T, and the regimes' report.

* ``choose``: on seed 0's training pairs, the histogram of s at each tilt
  delta of the grid (and the share of pairs whose tilted response is the
  preferred one), and the expected share of flipped labels at each noise
  temperature T; prints the values the pre-registered rules pick. No
  training.
* ``report``: each regime's arms at step 360 (mean [95% interval] over
  seeds), each SLPO arm's paired gap to each seed's envelope of the DPO/IPO
  runs on the same pairs, the frontier rule on those runs' frontier (and on
  section 4's where the reward is section 4's), the realised label noise;
  writes ``figures/regimes.png``.

Run::

  python -m experiments.pair_regimes_report choose --workdir /tmp/cg
  python -m experiments.pair_regimes_report noise --workdir /tmp/cg
  python -m experiments.pair_regimes_report report [--out docs/figures]
"""

import argparse
import csv
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import controlled_generation as cg_config
from experiments import ablation
from experiments import ablation_report
from experiments import controlled_generation as cg
from experiments import frontier
from experiments import pair_regimes
from experiments import paired_gap
from experiments import stats
from slpo_jax import models
from slpo_jax.tasks import synthetic
from slpo_jax.tasks.vocab import BOS_ID
from train import task_reference
from train.data import task_pairs

DELTA_GRID = (0.5, 1.0, 2.0, 3.0)
TEMPERATURE_GRID = (0.05, 0.1, 0.2, 0.3, 0.5)
TARGET_FLIP_SHARE = 0.25
SHARE_BINS = (0.0, 0.1, 0.5, 0.9, 1.0)


def response_logps(model, params, prompts, responses, masks) -> np.ndarray:
  """log pi(response | BOS, prompt), EOS included, one value per row."""
  ids = np.concatenate(
    [np.full((len(prompts), 1), BOS_ID), prompts, responses], axis=1
  ).astype(np.int32)
  start = 1 + prompts.shape[1]
  logits = model.apply(params, jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32))
  logp = jax.nn.log_softmax(logits[:, start - 1 : -1], axis=-1)
  picked = jnp.take_along_axis(logp, jnp.asarray(ids[:, start:, None]), -1)
  return np.asarray(jnp.sum(picked[..., 0] * jnp.asarray(masks), axis=1))


def measure_pairs(base, model, params, seed: int, sampler) -> dict:
  """Seed ``seed``'s training pairs as the pipeline makes them (two samples
  per prompt, ties dropped, the higher true reward preferred), with which
  response came first (the tilted one, for the tilted sampler)."""
  data = base.data
  sample_fn = sampler(
    model, params, max_new_tokens=data.synthetic.max_new_tokens, seed=seed
  )
  prompts = task_pairs.synthetic_prompts(data, "train")
  chunk = data.synthetic.sample_batch_size
  firsts, seconds = [], []
  for start in range(0, len(prompts), chunk):
    part = prompts[start : start + chunk]
    out = np.asarray(sample_fn(np.concatenate([part, part]), None))
    firsts.append(out[: len(part)])
    seconds.append(out[len(part) :])
  width = max(x.shape[1] for x in firsts + seconds)
  pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])))  # noqa: E731
  first = np.concatenate([pad(x) for x in firsts])
  second = np.concatenate([pad(x) for x in seconds])
  first_mask = synthetic.response_mask(first)
  second_mask = synthetic.response_mask(second)
  first_reward = synthetic.sentiment_reward(first, first_mask)
  second_reward = synthetic.sentiment_reward(second, second_mask)
  keep = first_reward != second_reward
  first_logp = response_logps(model, params, prompts, first, first_mask)
  second_logp = response_logps(model, params, prompts, second, second_mask)
  first_wins = (first_reward > second_reward)[keep]
  chosen = np.where(first_wins, first_logp[keep], second_logp[keep])
  rejected = np.where(first_wins, second_logp[keep], first_logp[keep])
  share = 1.0 / (1.0 + np.exp(chosen - rejected))  # pi_l / (pi_w + pi_l)
  return {
    "share": share,
    "first_wins": first_wins,
    "first_length": first_mask.sum(1)[keep],
    "second_length": second_mask.sum(1)[keep],
    "margin": np.abs(first_reward - second_reward)[keep],
  }


def _histogram_row(label: str, values: dict) -> str:
  share = values["share"]
  counts = np.histogram(share, bins=SHARE_BINS)[0] / len(share)
  return (
    f"| {label} | {len(share)} | {np.mean(values['first_wins']):.3f} |"
    f" {np.mean(values['first_length']):.1f} |"
    f" {np.mean(values['second_length']):.1f} | "
    + " | ".join(f"{c:.3f}" for c in counts)
    + " |"
  )


def choose(workdir: pathlib.Path) -> str:
  """The histograms and shares the rules of 5.7 and 5.8 read, seed 0."""
  base = cg_config.get_config("cpu")
  reference_dir = cg.fit_reference(base, workdir / "reference_fit")
  model, params = models.load_hf_model(reference_dir, dtype=base.model.dtype)
  lines = [
    "| first response | pairs | first preferred | first length |"
    " second length | s < 0.1 | 0.1-0.5 | 0.5-0.9 | s > 0.9 |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  plain = measure_pairs(
    base, model, params, 0, task_reference.reference_sampler
  )
  lines.append(_histogram_row("reference (section 4's pairs)", plain))
  picked = None
  for delta in DELTA_GRID:
    values = measure_pairs(
      base, model, params, 0, pair_regimes.tilted_sampler(delta)
    )
    lines.append(_histogram_row(f"tilted, delta = {delta:g}", values))
    if picked is None and np.mean(values["share"] > 0.9) > 0.5:
      picked = delta
  lines.append(f"\nrule of 5.7 picks delta = {picked}")
  pairs = task_pairs.synthetic_pairs(
    base.data,
    "train",
    task_reference.reference_sampler(
      model,
      params,
      max_new_tokens=base.data.synthetic.max_new_tokens,
      seed=0,
    ),
  )
  margin = pairs.chosen_reward - pairs.rejected_reward
  expected = {
    t: float(np.mean(pair_regimes.flip_probability(margin, t)))
    for t in TEMPERATURE_GRID
  }
  lines.append(
    "expected share of flipped labels, seed 0's training pairs: "
    + ", ".join(f"T = {t:g}: {e:.3f}" for t, e in expected.items())
  )
  best = min(expected, key=lambda t: abs(expected[t] - TARGET_FLIP_SHARE))
  lines.append(f"rule of 5.8 picks T = {best:g}")
  return "\n".join(lines)


def realised_noise(workdir: pathlib.Path, seeds: int) -> str:
  """The share of each seed's training labels that disagree with the true
  order, at the chosen T (the labels the runs train on)."""
  base = cg_config.get_config("cpu")
  reference_dir = cg.fit_reference(base, workdir / "reference_fit")
  model, params = models.load_hf_model(reference_dir, dtype=base.model.dtype)
  regime = ablation.REGIMES["noisy"]
  shares = []
  for seed in range(seeds):
    sample_fn = task_reference.reference_sampler(
      model,
      params,
      max_new_tokens=base.data.synthetic.max_new_tokens,
      seed=seed,
    )
    pairs = regime.make_pairs(base.data, seed)("train", sample_fn)
    shares.append(float(np.mean(pairs.chosen_reward < pairs.rejected_reward)))
  return (
    f"labels against the true order at T = {regime.label_temperature:g}: "
    + ", ".join(f"seed {s}: {v:.3f}" for s, v in enumerate(shares))
    + f"; mean {np.mean(shares):.3f}"
  )


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
    cells = [
      ablation_report._cell([r[c] for r in finals], d)
      for c, d in (
        ("kl", 2),
        ("reward", 3),
        ("length", 1),
        ("eval_accuracy", 3),
        ("eval_chosen_logp_shift", 1),
        ("eval_rejected_logp_shift", 1),
      )
    ]
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


def report(out: pathlib.Path) -> str:
  parts = [regime_report(key, out) for key in ablation.REGIMES]
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
    print(choose(args.workdir))
  elif args.command == "noise":
    print(realised_noise(args.workdir, args.seeds))
  else:
    print(report(args.out))
  print(f"{args.command}: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()

"""Exact-enumeration experiment: where each loss sends the whole distribution.

Policies are logit tables (:mod:`experiments.sequence_space`) small enough
that every response's probability can be listed, so the final pi(y_w),
pi(y_l), the mass on responses outside the data and KL(pi || pi_ref) are exact
rather than estimated. Settings:

* ``bandit_uniform``: three actions, uniform reference (the IPO paper's
  illustrative bandit); deterministic, so one run;
* ``bandit_random``: three actions, reference logits drawn N(0, 1) per seed;
* ``tiny_lm_random``: vocabulary 3 + end token, up to 3 tokens (40
  responses), reference logits drawn N(0, 1) per table entry and seed, with
  a = "0 1 $", b = "0 2 $" (sharing the prefix "0") and c = "1 $".

Seeds vary only the reference; the policy always starts at the reference and
is trained with full-batch Adam. Each loss is run on each data set of
:mod:`experiments.preference_sets`.

Run::

  python -m experiments.enumeration [--seeds 10] [--out docs/figures]
"""

import argparse
import pathlib
import time

import jax
import numpy as np

from experiments import objectives
from experiments import plots
from experiments import preference_sets
from experiments import stats
from experiments import training
from experiments.sequence_space import BANDIT
from experiments.sequence_space import TINY_LM
from experiments.sequence_space import SequenceSpace

# name -> (space, responses called a, b, c, reference kind)
SETTINGS = {
  "bandit_uniform": (BANDIT, {"a": (0,), "b": (1,), "c": (2,)}, "uniform"),
  "bandit_random": (BANDIT, {"a": (0,), "b": (1,), "c": (2,)}, "random"),
  "tiny_lm_random": (TINY_LM, {"a": (0, 1), "b": (0, 2), "c": (1,)}, "random"),
}

METRICS = (
  "pi_a",
  "pi_b",
  "pi_c",
  "unobserved",
  "unobserved_change",
  "rest_kl",
  "kl",
  "margin_ab",
  "slpo_target_gap",
  "slpo_target_abs_gap",
  "slpo_fixed_point_gap",
  "normalized_fixed_point_gap",
  "pi_a_half",
  "ref_a",
  "ref_b",
  "ref_c",
  "final_loss",
)


def reference_tables(space: SequenceSpace, kind: str, seeds: int):
  """``[runs, nodes, vocab]`` reference logits; one run if uniform."""
  if kind == "uniform":
    return space.uniform_table()[None]
  keys = jax.random.split(jax.random.PRNGKey(0), seeds)
  return jax.vmap(space.random_table)(keys)


def ipo_margin_closed_form(dataset: str, tau: float) -> float:
  """Optimal log-ratio margin h(a, b) of IPO on ``dataset``.

  Single pair: 1 / (2 tau). Transitive: minimising
  (x - c)^2 + (y - c)^2 + (x + y - c)^2 with c = 1 / (2 tau) gives
  x = y = 2c / 3 = 1 / (3 tau). Contradictory: (h - c)^2 + (-h - c)^2 is
  minimal at h = 0. Every margin is reachable by both policy shapes here.
  """
  return {
    "single_pair": 1.0 / (2.0 * tau),
    "transitive": 1.0 / (3.0 * tau),
    "contradictory": 0.0,
  }[dataset]


def slpo_fixed_point(preference_set, reference_probs):
  """Where hard SLPO (Eq. 8) should settle, per named response.

  Each term of Eq. 8 involves one response y and its complement 1 - pi(y), so
  the loss separates over responses: y is pulled to target w = pi_ref(y_w) +
  pi_ref(y_l) by each pair it wins and to 0 by each pair it loses, and
  minimising ``-sum_i [t_i log p + (1 - t_i) log(1 - p)]`` gives p = mean_i
  t_i. Feasible here because the targets sum to at most 1.

  Args:
    preference_set: the data.
    reference_probs: ``[seeds, responses]`` pi_ref.

  Returns:
    ``{name: [seeds]}`` predicted pi(name).
  """
  index = {
    name: preference_set.response_index(name) for name in preference_set.named
  }
  totals = {name: np.zeros(reference_probs.shape[0]) for name in index}
  counts = {name: 0 for name in index}
  for winner, loser in preference_set.pairs:
    target = np.minimum(
      reference_probs[:, index[winner]] + reference_probs[:, index[loser]], 1.0
    )
    totals[winner] = totals[winner] + target
    counts[winner] += 1
    counts[loser] += 1
  return {name: totals[name] / counts[name] for name in index}


def slpo_normalized_fixed_point(preference_set, reference_probs):
  """Where ``slpo_normalized`` should settle, per named response.

  Dividing pair i's Eq. 8 term by its w_i weighs the targets: y minimises
  ``-sum_i [t_i log p + (w_i - t_i) log(1 - p)] / w_i`` over the pairs it
  is in, with t_i = w_i where it wins and 0 where it loses, so
  p = (pairs won) / sum_i (1 / w_i). A lone pair still gives Eq. 6.

  Returns:
    ``{name: [seeds]}`` predicted pi(name).
  """
  index = {
    name: preference_set.response_index(name) for name in preference_set.named
  }
  wins = {name: 0 for name in index}
  inverse = {name: np.zeros(reference_probs.shape[0]) for name in index}
  for winner, loser in preference_set.pairs:
    w = np.minimum(
      reference_probs[:, index[winner]] + reference_probs[:, index[loser]], 1.0
    )
    wins[winner] += 1
    inverse[winner] = inverse[winner] + 1 / w
    inverse[loser] = inverse[loser] + 1 / w
  return {name: wins[name] / inverse[name] for name in index}


def _kl(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
  """``sum p log(p / q)`` over the last axis, with ``0 log 0 = 0``."""
  p = np.exp(log_p)
  return np.sum(np.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def summarize(
  result: training.TrainResult, preference_set: preference_sets.PreferenceSet
) -> dict[str, np.ndarray]:
  """Per-seed values of every metric in :data:`METRICS`."""
  final = result.log_probs[:, -1]
  half = result.log_probs[:, (result.log_probs.shape[1] - 1) // 2]
  reference = result.reference_log_probs
  seeds = final.shape[0]
  nan = np.full(seeds, np.nan)
  index = {
    name: preference_set.response_index(name) for name in preference_set.named
  }
  out = {}
  for name in preference_sets.NAMES:
    out[f"pi_{name}"] = np.exp(final[:, index[name]]) if name in index else nan
    out[f"ref_{name}"] = (
      np.exp(reference[:, index[name]]) if name in index else nan
    )
  out["pi_a_half"] = np.exp(half[:, index["a"]])

  unobserved = np.ones(final.shape[1], dtype=bool)
  unobserved[preference_set.observed_indices] = False
  # Summed directly rather than as 1 - observed: the mass can be ~1e-8.
  out["unobserved"] = np.exp(final[:, unobserved]).sum(axis=1)
  out["unobserved_change"] = out["unobserved"] - np.exp(
    reference[:, unobserved]
  ).sum(axis=1)
  if unobserved.sum() > 1:
    # KL between the two distributions conditioned on the unobserved set:
    # 0 when the rest keeps its reference shape, whatever its total.
    def conditional(log_p):
      rest = log_p[:, unobserved]
      return rest - np.logaddexp.reduce(rest, axis=1, keepdims=True)

    out["rest_kl"] = _kl(conditional(final), conditional(reference))
  else:
    out["rest_kl"] = nan
  out["kl"] = _kl(final, reference)
  out["margin_ab"] = (final[:, index["a"]] - reference[:, index["a"]]) - (
    final[:, index["b"]] - reference[:, index["b"]]
  )
  if preference_set.name == "single_pair":
    out["slpo_target_gap"] = out["pi_a"] - (out["ref_a"] + out["ref_b"])
    out["slpo_target_abs_gap"] = np.abs(out["slpo_target_gap"])
  else:
    out["slpo_target_gap"] = out["slpo_target_abs_gap"] = nan
  predicted = slpo_fixed_point(preference_set, np.exp(reference))
  out["slpo_fixed_point_gap"] = np.max(
    [np.abs(out[f"pi_{name}"] - predicted[name]) for name in predicted],
    axis=0,
  )
  normalized = slpo_normalized_fixed_point(preference_set, np.exp(reference))
  out["normalized_fixed_point_gap"] = np.max(
    [np.abs(out[f"pi_{name}"] - normalized[name]) for name in normalized],
    axis=0,
  )
  out["final_loss"] = result.final_loss
  return out


def run_grid(
  seeds: int,
  config: training.TrainConfig,
  grid=None,
  settings=None,
  datasets=None,
  log=print,
):
  """Trains every objective on every setting and data set.

  Settings that share a space (and reference tables of every kind) are
  trained by one compiled program per objective.

  Returns:
    ``(rows, curves)``: one CSV row per (setting, data set, objective) with
    mean, low and high of each metric, and ``curves[(setting, dataset,
    label)] = (record_steps, [seeds, records, 3] pi of a, b, c)``.
  """
  grid = objectives.objective_grid() if grid is None else grid
  settings = list(SETTINGS) if settings is None else settings
  datasets = list(preference_sets.DATASETS) if datasets is None else datasets
  by_space = {}
  for setting in settings:
    by_space.setdefault(SETTINGS[setting][0], []).append(setting)
  found = {}
  for space, group in by_space.items():
    responses = SETTINGS[group[0]][1]
    if any(SETTINGS[setting][1] != responses for setting in group):
      raise ValueError(f"settings {group} share a space but not a, b, c")
    tables = [
      reference_tables(space, SETTINGS[setting][2], seeds) for setting in group
    ]
    bounds = np.cumsum([0] + [table.shape[0] for table in tables])
    sets = [
      preference_sets.make(dataset, space, responses) for dataset in datasets
    ]
    for objective in grid:
      start = time.perf_counter()
      results = training.train(objective, sets, np.concatenate(tables), config)
      log(
        f"{'+'.join(group)}: {objective.label}"
        f"  [{time.perf_counter() - start:.1f} s]"
      )
      for preference_set, result in zip(sets, results):
        for number, setting in enumerate(group):
          part = slice(bounds[number], bounds[number + 1])
          found[(setting, preference_set.name, objective.label)] = (
            objective,
            preference_set,
            training.TrainResult(
              result.reference_log_probs[part],
              result.log_probs[part],
              result.final_loss[part],
              result.record_steps,
            ),
          )
  rows, curves = [], {}
  for setting in settings:
    space, responses, _ = SETTINGS[setting]
    abc = [space.index(responses[name]) for name in preference_sets.NAMES]
    for dataset in datasets:
      for objective in grid:
        _, preference_set, result = found[(setting, dataset, objective.label)]
        values = summarize(result, preference_set)
        row = {
          "setting": setting,
          "dataset": dataset,
          "loss": objective.family,
          "hparam": objective.hparam_name,
          "value": "" if objective.hparam is None else objective.hparam,
          "seeds": result.log_probs.shape[0],
          "steps": config.steps,
        }
        for metric in METRICS:
          mean, low, high = stats.mean_interval(values[metric])
          row[metric] = mean
          row[f"{metric}_lo"] = low
          row[f"{metric}_hi"] = high
        row["ipo_margin_closed_form"] = (
          ipo_margin_closed_form(dataset, objective.hparam)
          if objective.family == "ipo"
          else float("nan")
        )
        rows.append(row)
        curves[(setting, dataset, objective.label)] = (
          result.record_steps,
          np.exp(result.log_probs[:, :, abc]),
        )
        log(
          f"{setting:15s} {dataset:14s} {objective.label:20s}"
          f" pi(a)={row['pi_a']:.4f} pi(b)={row['pi_b']:.4f}"
          f" unobserved={row['unobserved']:.4f} kl={row['kl']:.3f}"
        )
  return rows, curves


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, default=10)
  parser.add_argument("--steps", type=int, default=10_000)
  parser.add_argument("--learning-rate", type=float, default=0.01)
  parser.add_argument(
    "--out", type=pathlib.Path, default=pathlib.Path("docs/figures")
  )
  parser.add_argument(
    "--grid",
    choices=("paper", "forms"),
    default="paper",
    help="'paper': the losses of section 1; 'forms': the SLPO forms of"
    " section 4 (outputs named enumeration_forms_*)",
  )
  args = parser.parse_args(argv)
  config = training.TrainConfig(
    steps=args.steps, learning_rate=args.learning_rate
  )
  start = time.perf_counter()
  if args.grid == "forms":
    rows, _ = run_grid(
      args.seeds, config, grid=objectives.forms_grid(args.steps // 10)
    )
    for setting in SETTINGS:
      stats.write_csv(
        args.out / f"enumeration_forms_{setting}.csv",
        [row for row in rows if row["setting"] == setting],
      )
    plots.final_mass(rows, args.out / "enumeration_forms_final_mass")
    print(f"enumeration (forms): {time.perf_counter() - start:.0f} s in all")
    return
  rows, curves = run_grid(args.seeds, config)
  for setting in SETTINGS:
    stats.write_csv(
      args.out / f"enumeration_{setting}.csv",
      [row for row in rows if row["setting"] == setting],
    )
  plots.learning_curves(
    curves,
    "bandit_uniform",
    "transitive",
    args.out / "enumeration_curves_bandit_transitive",
  )
  plots.final_mass(rows, args.out / "enumeration_final_mass")
  print(
    f"enumeration: {time.perf_counter() - start:.0f} s in all"
    f" ({jax.device_count()} {jax.default_backend()} device(s))"
  )


if __name__ == "__main__":
  main()

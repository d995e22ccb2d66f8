"""Likelihood displacement and the mass outside the data, exactly.

Section 1's policies are free logit tables, where lowering y_l cannot lower
y_w. Here the policy is a small network shared by every prefix, so a step
that moves one prefix's next-token distribution moves the others too, and
the whole distribution over responses is still listed exactly
(docs/RESULTS.md, section 5.2):

* space: tokens 0-3 plus an end token, at most 5 content tokens (1,365
  responses, 341 prefixes);
* policy: features of a prefix (its last two tokens and its length, one-hot)
  -> tanh layer of 16 units -> 5 logits; the logits of every prefix form the
  table that :mod:`experiments.sequence_space` scores;
* references: 10 random initialisations (seeds 0-9); the policy starts at
  its reference;
* data: 8 near-duplicate pairs, y_w and y_l sharing their first four tokens
  and differing in the fifth (the same pairs for every seed);
* full-batch Adam, float64, the losses of the library's table.

Reported at matched total KL (first crossing, linear between records) and at
the end: the mean change of log pi(y_w) and log pi(y_l) over the pairs, the
change of the total mass outside the pairs, and the KL of the rest's
conditional distribution.

Run::

  python -m experiments.displacement [--out docs/figures]
"""

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import objectives
from experiments import stats
from experiments.objectives import PairBatch
from experiments.sequence_space import SequenceSpace

SPACE = SequenceSpace(num_tokens=4, max_length=5, has_eos=True)
HIDDEN = 16
PAIRS = 8
SEEDS = 10
STEPS = 3000
RECORD_EVERY = 10
LEARNING_RATE = 0.01
KL_BUDGETS = (0.1, 0.3)
METRICS = ("kl", "chosen_shift", "rejected_shift", "outside_change", "rest_kl")


def prefix_features(space: SequenceSpace) -> np.ndarray:
  """``[num_nodes, F]``: one-hot last token, token before it, and length.

  "No token" (a prefix shorter than 1 or 2) has its own slot.
  """
  slots = space.num_tokens + 1
  rows = np.zeros((space.num_nodes, 2 * slots + space.max_length))
  for length in range(space.max_length):
    for prefix in np.ndindex(*(space.num_tokens,) * length):
      node = space.node_id(tuple(prefix))
      last = prefix[-1] if length >= 1 else space.num_tokens
      before = prefix[-2] if length >= 2 else space.num_tokens
      rows[node, last] = 1.0
      rows[node, slots + before] = 1.0
      rows[node, 2 * slots + length] = 1.0
  return rows


def init_params(key: jax.Array, num_features: int, vocab: int) -> dict:
  """N(0, 1) weights, so the reference's next-token laws differ by prefix."""
  k1, k2, k3 = jax.random.split(key, 3)
  return {
    "w1": jax.random.normal(k1, (num_features, HIDDEN)),
    "b1": jax.random.normal(k2, (HIDDEN,)),
    "w2": jax.random.normal(k3, (HIDDEN, vocab)),
  }


def table(params: dict, features: jax.Array) -> jax.Array:
  """The logits of every prefix, ``[num_nodes, vocab]``."""
  return jnp.tanh(features @ params["w1"] + params["b1"]) @ params["w2"]


def near_duplicate_pairs(space: SequenceSpace, count: int, seed: int = 0):
  """``count`` pairs of full-length responses differing only at the end."""
  rng = np.random.default_rng(seed)
  prefixes = set()
  while len(prefixes) < count:
    prefixes.add(tuple(int(t) for t in rng.integers(0, space.num_tokens, 4)))
  pairs = []
  for prefix in sorted(prefixes):
    winner, loser = rng.choice(space.num_tokens, 2, replace=False)
    pairs.append((prefix + (int(winner),), prefix + (int(loser),)))
  return pairs


def _encode(space, pairs):
  columns = []
  for role in (0, 1):
    encoded = [space.encode(pair[role]) for pair in pairs]
    columns.append([np.stack(part) for part in zip(*encoded)])
  (cl, cw, cn), (rl, rw, rn) = columns
  batch = PairBatch(*(jnp.asarray(x) for x in (cl, cw, rl, rw)))
  return batch, cn, rn


def measures(log_probs, reference_log_probs, chosen, rejected, outside):
  """The reported quantities of one distribution against the reference."""
  p, q = jnp.exp(log_probs), jnp.exp(reference_log_probs)
  kl = jnp.sum(p * (log_probs - reference_log_probs))
  p_out, q_out = jnp.sum(p * outside), jnp.sum(q * outside)
  rest = (log_probs - jnp.log(p_out)) - (reference_log_probs - jnp.log(q_out))
  rest_kl = jnp.sum(jnp.where(outside, p / p_out * rest, 0.0))
  return {
    "kl": kl,
    "chosen_shift": jnp.mean(log_probs[chosen] - reference_log_probs[chosen]),
    "rejected_shift": jnp.mean(
      log_probs[rejected] - reference_log_probs[rejected]
    ),
    "outside_change": p_out - q_out,
    "rest_kl": rest_kl,
  }


def train(
  objective: objectives.Objective,
  pairs,
  seeds: int = SEEDS,
  steps: int = STEPS,
):
  """Records of :func:`measures` per seed: ``{metric: [seeds, records]}``,
  one record every ``RECORD_EVERY`` steps from the reference."""
  features = jnp.asarray(prefix_features(SPACE))
  batch, chosen_nodes, rejected_nodes = _encode(SPACE, pairs)
  chosen = np.array([SPACE.index(w) for w, _ in pairs])
  rejected = np.array([SPACE.index(loser) for _, loser in pairs])
  outside = np.ones(len(SPACE.responses), bool)
  outside[chosen] = outside[rejected] = False
  optimizer = optax.adam(LEARNING_RATE)

  def one_run(key):
    reference = init_params(key, features.shape[1], SPACE.vocab_size)

    def terms(params):
      logits = table(params, features)
      return objectives.pair_terms(
        logits[chosen_nodes], logits[rejected_nodes], batch
      )

    frozen = jax.tree.map(jax.lax.stop_gradient, terms(reference))
    reference_log_probs = SPACE.log_probs(table(reference, features))

    def loss_fn(params):
      return jnp.mean(objective.loss(terms(params), frozen))

    def step(carry, _):
      params, opt_state = carry
      grads = jax.grad(loss_fn)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    def record(carry, _):
      carry, _ = jax.lax.scan(step, carry, None, length=RECORD_EVERY)
      log_probs = SPACE.log_probs(table(carry[0], features))
      return carry, measures(
        log_probs, reference_log_probs, chosen, rejected, outside
      )

    init = (reference, optimizer.init(reference))
    _, records = jax.lax.scan(record, init, None, length=steps // RECORD_EVERY)
    start = measures(
      reference_log_probs, reference_log_probs, chosen, rejected, outside
    )
    return jax.tree.map(
      lambda s, r: jnp.concatenate([s[None], r]), start, records
    )

  keys = jax.random.split(jax.random.PRNGKey(0), seeds)
  with jax.enable_x64(True):
    out = jax.jit(jax.vmap(one_run))(keys)
  return {name: np.asarray(value, np.float64) for name, value in out.items()}


def reference_pair_mass(pairs, seeds: int = SEEDS) -> np.ndarray:
  """Per seed, the reference's total mass on the paired responses."""
  features = jnp.asarray(prefix_features(SPACE))
  indices = np.array([SPACE.index(r) for pair in pairs for r in pair])
  keys = jax.random.split(jax.random.PRNGKey(0), seeds)
  with jax.enable_x64(True):
    masses = [
      float(
        jnp.sum(
          jnp.exp(
            SPACE.log_probs(
              table(
                init_params(key, features.shape[1], SPACE.vocab_size),
                features,
              )
            )[indices]
          )
        )
      )
      for key in keys
    ]
  return np.array(masses)


def at_budget(records: dict, budget: float) -> dict | None:
  """Per seed, every metric where KL first reaches ``budget``; None where a
  seed never spends that much."""
  result = {name: [] for name in METRICS}
  for seed in range(records["kl"].shape[0]):
    kl = records["kl"][seed]
    above = np.nonzero(kl >= budget)[0]
    if len(above) == 0:
      return None
    j = above[0]
    frac = (budget - kl[j - 1]) / (kl[j] - kl[j - 1]) if j > 0 else 1.0
    for name in METRICS:
      series = records[name][seed]
      value = (
        series[j]
        if j == 0
        else series[j - 1] + frac * (series[j] - series[j - 1])
      )
      result[name].append(value)
  return {name: np.array(values) for name, values in result.items()}


def grid() -> list[objectives.Objective]:
  return [
    objectives.dpo(0.1),
    objectives.dpo(0.5),
    objectives.ipo(0.1),
    objectives.ipo(0.5),
    objectives.slpo(),
    objectives.slpo_normalized(),
    objectives.slpo_soft(0.9),
  ]


def _cell(values, digits=3) -> str:
  mean, low, high = stats.mean_interval(np.asarray(values))
  return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def report(results: dict) -> tuple[str, list[dict]]:
  """Markdown tables and CSV rows (mean, low, high per metric)."""
  lines, csv_rows = [], []
  for where in [f"KL = {b:g}" for b in KL_BUDGETS] + ["end"]:
    lines += [
      "",
      f"At {where}:",
      "",
      "| loss | KL | change of log pi(y_w) | change of log pi(y_l) |"
      " change of mass outside the pairs | KL of the rest's shape |",
      "|---|---|---|---|---|---|",
    ]
    for label, records in results.items():
      if where == "end":
        values = {name: records[name][:, -1] for name in METRICS}
      else:
        values = at_budget(records, float(where.split("= ")[1]))
      if values is None:
        lines.append(f"| {label} | not reached | | | | |")
        continue
      lines.append(
        f"| {label} | {np.mean(values['kl']):.3f} |"
        + " |".join(
          " " + _cell(values[name], 4 if name == "rest_kl" else 3)
          for name in METRICS[1:]
        )
        + " |"
      )
      row = {"loss": label, "at": where}
      for name in METRICS:
        row[name], row[f"{name}_lo"], row[f"{name}_hi"] = stats.mean_interval(
          values[name]
        )
      csv_rows.append(row)
  return "\n".join(lines), csv_rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--out", type=pathlib.Path, default=pathlib.Path("docs/figures")
  )
  parser.add_argument("--seeds", type=int, default=SEEDS)
  args = parser.parse_args(argv)
  start = time.perf_counter()
  pairs = near_duplicate_pairs(SPACE, PAIRS)
  print(
    "pairs:",
    "; ".join(f"{SPACE.name(w)} > {SPACE.name(loser)}" for w, loser in pairs),
  )
  mass = reference_pair_mass(pairs, args.seeds)
  print(
    f"reference mass of the {2 * len(pairs)} paired responses: mean"
    f" {mass.mean():.2e}, range {mass.min():.2e} - {mass.max():.2e}"
  )
  results = {}
  for objective in grid():
    results[objective.label] = train(objective, pairs, args.seeds)
    print(f"{objective.label}: {time.perf_counter() - start:.0f} s", flush=True)
  text, rows = report(results)
  print(text)
  stats.write_csv(args.out / "displacement.csv", rows)
  print(f"runtime: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()

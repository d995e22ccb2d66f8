"""Sections 5.7 and 5.8: the measurements that choose delta and T.

Both on seed 0's training pairs, before any training: the histogram of s
(section 5.1's bins) at each tilt delta of the grid, with the share of
pairs whose tilted response is the preferred one, and the expected share of
labels against the true order at each noise temperature T; then, for the
chosen T, the realised share on every seed's training labels. Run through
``python -m experiments.pair_regimes_report choose|noise``.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from configs import controlled_generation as cg_config
from experiments import ablation
from experiments import controlled_generation as cg
from experiments import pair_regimes
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


def measure_pairs(
  base, model, params, seed: int, sampler, reward_fn=synthetic.sentiment_reward
) -> dict:
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
  first_reward = reward_fn(first, first_mask)
  second_reward = reward_fn(second, second_mask)
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
  wins = values["first_wins"]
  chosen = np.where(wins, values["first_length"], values["second_length"])
  rejected = np.where(wins, values["second_length"], values["first_length"])
  longer, shorter = chosen > rejected, chosen < rejected
  return (
    f"| {label} | {len(share)} | {np.mean(values['first_wins']):.3f} |"
    f" {np.mean(values['first_length']):.1f} |"
    f" {np.mean(values['second_length']):.1f} | "
    + " | ".join(f"{c:.3f}" for c in counts)
    + f" | {np.mean(longer):.3f} | {np.mean(share[longer] > 0.9):.3f} |"
    f" {np.mean(share[shorter] > 0.9):.3f} |"
  )


def choose(workdir: pathlib.Path) -> str:
  """The histograms and shares the rules of 5.7 and 5.8 read, seed 0."""
  base = cg_config.get_config("cpu")
  reference_dir = cg.fit_reference(base, workdir / "reference_fit")
  model, params = models.load_hf_model(reference_dir, dtype=base.model.dtype)
  lines = [
    "| first response | pairs | first preferred | first length |"
    " second length | s < 0.1 | 0.1-0.5 | 0.5-0.9 | s > 0.9 |"
    " chosen longer | s > 0.9, chosen longer | s > 0.9, chosen shorter |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  plain = measure_pairs(
    base, model, params, 0, task_reference.reference_sampler
  )
  lines.append(_histogram_row("reference (section 4's pairs)", plain))
  summed = measure_pairs(
    base,
    model,
    params,
    0,
    task_reference.reference_sampler,
    pair_regimes.summed_sentiment_reward,
  )
  lines.append(
    _histogram_row("reference, ranked by summed reward (5.9)", summed)
  )
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

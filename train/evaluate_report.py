"""``train.evaluate``'s statistics and its reward-against-KL figure."""

import math

import numpy as np

from train.errors import ConfigError

# Two-sided 95% normal quantile.
_Z95 = 1.959964


def interval(values) -> dict[str, float]:
  """Mean, standard error and a 95% normal interval of per-prompt values."""
  values = np.asarray(values, np.float64)
  mean = float(np.mean(values))
  stderr = (
    float(np.std(values, ddof=1) / math.sqrt(len(values)))
    if len(values) > 1
    else float("nan")
  )
  return {
    "mean": mean,
    "stderr": stderr,
    "low": mean - _Z95 * stderr,
    "high": mean + _Z95 * stderr,
  }


def win_rate(rewards, baseline_rewards) -> dict[str, float]:
  """Paired by prompt: 1 for a higher reward, 1/2 for a tie, else 0."""
  rewards = np.asarray(rewards, np.float64)
  baseline_rewards = np.asarray(baseline_rewards, np.float64)
  wins = (rewards > baseline_rewards) + 0.5 * (rewards == baseline_rewards)
  result = interval(wins)
  result["low"] = max(result["low"], 0.0)
  result["high"] = min(result["high"], 1.0)
  return result


def figure(report: dict, path) -> None:
  """Reward against KL across the checkpoints, with 95% intervals: the
  true reward where the task has one, else the reward model's."""
  points = report["checkpoints"]
  key = next(
    (k for k in ("reward", "reward_model/reward") if points and k in points[0]),
    None,
  )
  if key is None:
    raise ConfigError(
      "--figure plots a reward: this run's data has no true reward (only"
      " the synthetic task's has one); give --reward_model DIR"
    )
  # Only --figure needs matplotlib; its import takes a while.
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  drawing, axes = plt.subplots(figsize=(5.5, 4))
  kl = [p["kl"]["mean"] for p in points]
  reward = [p[key]["mean"] for p in points]
  axes.errorbar(
    kl,
    reward,
    xerr=[_Z95 * p["kl"]["stderr"] for p in points],
    yerr=[_Z95 * p[key]["stderr"] for p in points],
    marker="o",
    capsize=3,
    label="policy checkpoints",
  )
  for point in points:
    axes.annotate(
      str(point["step"]),
      (point["kl"]["mean"], point[key]["mean"]),
      textcoords="offset points",
      xytext=(4, 4),
      fontsize=8,
    )
  base = report["baseline"]
  axes.errorbar(
    [base["kl"]["mean"]],
    [base[key]["mean"]],
    yerr=[_Z95 * base[key]["stderr"]],
    marker="s",
    color="gray",
    capsize=3,
    label=base["of"] if base["of"] == "reference" else "--against run",
  )
  axes.set_xlabel("KL(pi || pi_ref) along samples (nats)")
  axes.set_ylabel(
    "mean true reward" if key == "reward" else "mean reward model score"
  )
  axes.set_title(f"{report['num_prompts']} held-out prompts, 95% intervals")
  axes.legend(fontsize=8)
  drawing.tight_layout()
  drawing.savefig(path, dpi=120)
  plt.close(drawing)

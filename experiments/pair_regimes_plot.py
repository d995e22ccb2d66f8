"""The figure of sections 5.7-5.9: reward against KL in each pair regime.

One panel per regime: every arm's seeds at step 360 (small markers), their
mean (large marker), and the upper envelope of the pre-registered DPO/IPO
means (exploratory baselines are drawn, not joined) from the
reference's reward at KL 0 (the frontier those regimes' rules read);
where the reward is section 4's, section 4's phase-B frontier for scale.
"""

import pathlib

import matplotlib

matplotlib.use("Agg")  # Files only; no display on the machines that run this.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments import ablation  # noqa: E402
from experiments import ablation_report  # noqa: E402
from experiments import controlled_generation as cg  # noqa: E402
from experiments import frontier  # noqa: E402
from experiments import pair_regimes_report  # noqa: E402
from experiments import paired_gap  # noqa: E402

TITLES = {
  "tilted": "5.7 tilted chosen responses (s near 1)",
  "noisy": "5.8 noisy labels (T = 0.2)",
  "summed": "5.9 summed sentiment (reward in its units)",
}
STYLE = {
  "dpo_beta0.2": ("tab:blue", "o", "DPO beta=0.2"),
  "dpo_beta1": ("tab:cyan", "o", "DPO beta=1"),
  "ipo_beta0.2": ("tab:green", "s", "IPO tau=0.2"),
  "ipo_beta1": ("tab:olive", "s", "IPO tau=1 (exploratory)"),
  "slpo_normalized": ("tab:red", "D", "slpo_normalized 3e-4"),
  "slpo_normalized_lr1e-4": ("tab:orange", "D", "slpo_normalized 1e-4"),
  "slpo_share_per_token": ("tab:purple", "P", "per-token share (exploratory)"),
}


def figure(out: pathlib.Path) -> pathlib.Path | None:
  """Writes ``out/regimes.png`` from the regimes' CSVs; None if none ran."""
  keys = [k for k in ablation.REGIMES if (out / f"ablation_{k}.csv").exists()]
  if not keys:
    return None
  fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4.2))
  axes = np.atleast_1d(axes)
  for ax, key in zip(axes, keys):
    rows = pair_regimes_report.regime_rows(key, out)
    finals = cg.final_rows(rows)
    reference = np.mean(
      [r["reward"] for r in rows if r["family"] == "reference"]
    )
    means = {}
    for arm in pair_regimes_report.regime_arms(key):
      name = arm.name[: -len(key) - 1]
      seeds = [r for r in finals if r["loss"] == arm.name]
      if not seeds:
        continue
      color, marker, label = STYLE[name]
      kl = [r["kl"] for r in seeds]
      reward = [r["reward"] for r in seeds]
      ax.scatter(kl, reward, s=12, color=color, marker=marker, alpha=0.4)
      means[name] = (np.mean(kl), np.mean(reward))
      ax.scatter(
        *means[name],
        s=70,
        color=color,
        marker=marker,
        edgecolor="black",
        label=f"{label} ({len(seeds)} seeds)",
      )
    registered = {a.name[: -len(key) - 1] for a in ablation.REGIME_ARMS[key]}
    baselines = [
      v
      for n, v in means.items()
      if n in registered and not n.startswith("slpo")
    ]
    kept = sorted(baselines[i] for i in frontier.envelope(baselines))
    line = [(0.0, reference)] + kept
    ax.plot(*zip(*line), color="black", lw=1, ls="--", label="DPO/IPO envelope")
    if key != "summed":  # Section 4's reward: its frontier, for scale.
      section4 = ablation_report._frontier_curve(paired_gap.phase_b_rows(out))
      ax.plot(
        [p[0] for p in section4],
        [p[1] for p in section4],
        color="gray",
        lw=1,
        ls=":",
        label="section 4's frontier (on-policy pairs)",
      )
    ax.set_title(TITLES[key], fontsize=10)
    ax.set_xlabel("KL(pi || pi_ref), nats")
    ax.set_ylabel("true reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  path = out / "regimes.png"
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path

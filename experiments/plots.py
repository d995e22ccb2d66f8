"""Figures of the enumeration experiment (PNG, with the plotted data as CSV)."""

import math
import pathlib

import matplotlib

matplotlib.use("Agg")  # Files only; no display on the machines that run this.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments import stats  # noqa: E402

_COLORS = {
  "a": "tab:blue",
  "b": "tab:orange",
  "c": "tab:green",
  "unobserved": "tab:gray",
}
_MARKERS = {"a": "o", "b": "v", "c": "s", "unobserved": "x"}
# Probabilities below this are drawn at it, so that a loser driven to 1e-9
# stays on a log axis.
_FLOOR = 1e-6


def _log_spaced(count: int, points: int = 40) -> np.ndarray:
  """About ``points`` record indices, log-spaced, always with 0 and the last."""
  picks = np.unique(np.geomspace(1, count, points).astype(int) - 1)
  return np.unique(np.concatenate([[0], picks, [count - 1]]))


def learning_curves(
  curves, setting: str, dataset: str, stem: pathlib.Path
) -> None:
  """pi(a), pi(b), pi(c) over training, one panel per loss (mean over seeds).

  Writes ``stem.png`` and ``stem.csv``.
  """
  labels = [label for (s, d, label) in curves if s == setting and d == dataset]
  columns = 4
  rows_count = math.ceil(len(labels) / columns)
  fig, axes = plt.subplots(
    rows_count,
    columns,
    sharex=True,
    sharey=True,
    figsize=(3.0 * columns, 2.2 * rows_count),
    squeeze=False,
  )
  table = []
  for ax, label in zip(axes.flat, labels):
    steps, probs = curves[(setting, dataset, label)]
    mean = probs.mean(axis=0)
    for column, name in enumerate("abc"):
      ax.plot(steps, mean[:, column], color=_COLORS[name], label=f"pi({name})")
    ax.set_title(label, fontsize=9)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    for index in _log_spaced(len(steps)):
      table.append(
        {
          "loss": label,
          "step": int(steps[index]),
          **{
            f"pi_{name}": float(mean[index, column])
            for column, name in enumerate("abc")
          },
        }
      )
  for ax in list(axes.flat)[len(labels) :]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=8)
  for ax in axes[-1]:
    ax.set_xlabel("Adam step")
  fig.suptitle(
    f"{setting}, {dataset} set: action probabilities during training",
    fontsize=11,
  )
  fig.tight_layout()
  stem.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(stem.with_suffix(".png"), dpi=80)
  plt.close(fig)
  stats.write_csv(stem.with_suffix(".csv"), table)


def final_mass(
  rows, stem: pathlib.Path, settings=("bandit_random", "tiny_lm_random")
) -> None:
  """Final pi(a), pi(b), pi(c) and unobserved mass per loss, on a log axis.

  Horizontal lines are the reference's values (mean over seeds). Writes
  ``stem.png``; the numbers are in the ``enumeration_<setting>.csv`` tables.
  """
  datasets = list(dict.fromkeys(row["dataset"] for row in rows))
  fig, axes = plt.subplots(
    len(settings),
    len(datasets),
    sharey=True,
    figsize=(5.0 * len(datasets), 3.6 * len(settings)),
    squeeze=False,
  )
  for ax_row, setting in zip(axes, settings):
    for ax, dataset in zip(ax_row, datasets):
      chosen = [
        row
        for row in rows
        if row["setting"] == setting and row["dataset"] == dataset
      ]
      if not chosen:
        ax.axis("off")
        continue
      x = np.arange(len(chosen))
      first = chosen[0]
      names = ["a", "b", "c"] if not math.isnan(first["pi_c"]) else ["a", "b"]
      reference = {name: first[f"ref_{name}"] for name in names}
      reference["unobserved"] = first["unobserved"] - first["unobserved_change"]
      for name in names + ["unobserved"]:
        key = "unobserved" if name == "unobserved" else f"pi_{name}"
        values = np.maximum([row[key] for row in chosen], _FLOOR)
        if name == "unobserved" and np.all(values <= _FLOOR):
          continue  # Nothing is unobserved (the bandit's transitive set).
        ax.scatter(
          x,
          values,
          color=_COLORS[name],
          marker=_MARKERS[name],
          s=22,
          label=name if name == "unobserved" else f"pi({name})",
          zorder=3,
        )
        ax.axhline(
          max(reference[name], _FLOOR),
          color=_COLORS[name],
          linestyle=":",
          linewidth=1,
        )
      ax.set_yscale("log")
      ax.set_ylim(_FLOOR / 2, 2.0)
      ax.set_xticks(x)
      ax.set_xticklabels(
        [f"{row['loss']} {row['value']}".strip() for row in chosen],
        rotation=70,
        fontsize=7,
        ha="right",
      )
      ax.set_title(f"{setting}, {dataset}", fontsize=9)
      ax.grid(alpha=0.3, axis="y")
  axes[0, 0].legend(fontsize=7, loc="lower left")
  fig.suptitle(
    "Final probabilities (markers) against the reference (dotted),"
    " mean over seeds",
    fontsize=11,
  )
  fig.tight_layout()
  stem.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(stem.with_suffix(".png"), dpi=80)
  plt.close(fig)

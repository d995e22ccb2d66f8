"""Gradient scale of the SLPO forms of section 4, to T = 1024, in three dtypes.

The measurement of :mod:`experiments.gradient_scale` (the norm of each loss's
gradient with respect to the teacher-forced logits, at policy = reference,
one random pair of length T) for the forms that keep Eq. 6's target, with
hard SLPO and DPO beside them, in bfloat16, float32 and float64. Reference
sync does not change the gradient at the reference (the first sync happens
after training has started), so ``slpo_normalized`` stands for both.

Run::

  python -m experiments.gradient_scale_forms [--out docs/figures]

Writes ``gradient_scale_forms.csv`` (every loss, length and dtype, with the
cosine to the float64 gradient) and ``gradient_scale_forms.png``.
"""

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import gradient_scale
from experiments import objectives
from experiments import stats

MAX_LENGTH = 1024
LENGTHS = (
  tuple(range(1, 17))
  + tuple(range(24, 257, 8))
  + tuple(range(288, MAX_LENGTH + 1, 32))
)
DTYPES = (jnp.bfloat16, jnp.float32, jnp.float64)
REPORTED = (1, 16, 64, 256, 1024)


def forms():
  return [
    objectives.dpo(0.1),
    objectives.slpo(),
    objectives.slpo_normalized(),
    objectives.slpo_length_tempered(),
    objectives.slpo_diff(0.5),
    objectives.slpo_token(),
  ]


def run(lengths=LENGTHS, grid=None, seed: int = 0) -> list[dict]:
  """Long-format rows: length, loss, dtype, grad_norm, cosine_to_float64."""
  grid = forms() if grid is None else grid
  pair = gradient_scale.make_pair(seed, max_length=MAX_LENGTH)
  results, log_pi = {}, None
  with jax.enable_x64(True):
    for dtype in DTYPES:
      pullback = gradient_scale.Pullback(pair, lengths, dtype)
      for objective in grid:
        results[(objective.label, jnp.dtype(dtype).name)] = (
          gradient_scale.gradients(objective, pullback)
        )
      if dtype == jnp.float64:
        log_pi = np.asarray(pullback.terms.chosen_logps, np.float64)
  rows = []
  for (label, dtype), grads in results.items():
    norms = gradient_scale.norm(grads)
    agreement = gradient_scale.cosine(grads, results[(label, "float64")])
    for index, length in enumerate(lengths):
      rows.append(
        {
          "length": int(length),
          "loss": label,
          "dtype": dtype,
          "grad_norm": float(norms[index]),
          "cosine_to_float64": float(agreement[index]),
          "log_pi_w": float(log_pi[index]),
        }
      )
  return rows


def table(rows) -> str:
  """Norms at the reported lengths, and where each gradient is exactly 0."""
  lines = [
    "| loss | dtype | "
    + " | ".join(f"T = {t}" for t in REPORTED)
    + " | first T with exactly 0 | min cosine to float64 |",
    "|---|---|" + "---|" * (len(REPORTED) + 2),
  ]
  keys = list(dict.fromkeys((r["loss"], r["dtype"]) for r in rows))
  for loss, dtype in keys:
    chosen = {
      r["length"]: r for r in rows if (r["loss"], r["dtype"]) == (loss, dtype)
    }
    zero = [t for t, r in sorted(chosen.items()) if r["grad_norm"] == 0]
    cosines = [r["cosine_to_float64"] for r in chosen.values()]
    lines.append(
      f"| {loss} | {dtype} | "
      + " | ".join(f"{chosen[t]['grad_norm']:.2g}" for t in REPORTED)
      + f" | {zero[0] if zero else '—'} | {np.nanmin(cosines):.3f} |"
    )
  return "\n".join(lines)


def plot(rows, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  floor = 1e-90
  labels = list(dict.fromkeys(r["loss"] for r in rows))
  dtypes = [jnp.dtype(d).name for d in DTYPES]
  fig, axes = plt.subplots(1, len(dtypes), sharey=True, figsize=(15, 4.8))
  for ax, dtype in zip(axes, dtypes):
    for number, label in enumerate(labels):
      chosen = [r for r in rows if r["loss"] == label and r["dtype"] == dtype]
      lengths = np.array([r["length"] for r in chosen])
      values = np.array([r["grad_norm"] for r in chosen])
      ax.plot(
        lengths, np.maximum(values, floor), label=label, color=f"C{number}"
      )
      zeros = values == 0
      if zeros.any():
        ax.scatter(
          lengths[zeros],
          np.full(zeros.sum(), floor),
          marker="x",
          s=12,
          color=f"C{number}",
        )
    ax.axhline(1e-8, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_ylim(floor / 100, 1e3)
    ax.set_xlabel("response length T (tokens)")
    ax.set_title(f"{dtype} (x on the bottom edge: exactly 0)", fontsize=10)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("||dL/d logits|| at policy = reference")
  axes[-1].legend(fontsize=7, loc="lower left")
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--out", type=pathlib.Path, default=pathlib.Path("docs/figures")
  )
  args = parser.parse_args(argv)
  start = time.perf_counter()
  rows = run()
  stats.write_csv(args.out / "gradient_scale_forms.csv", rows)
  plot(rows, args.out / "gradient_scale_forms.png")
  print(table(rows))
  print(f"gradient_scale_forms: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()

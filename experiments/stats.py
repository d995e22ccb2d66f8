"""Means with 95% Student-t intervals over seeds, and CSV output."""

import csv
import math
import pathlib
from typing import Iterable
from typing import Mapping

import numpy as np

# Two-sided 95% quantiles t_{0.975, df} for df = 1..30 (standard tables);
# kept here so that the experiments need nothing beyond NumPy.
_T_975 = (
  12.706,
  4.303,
  3.182,
  2.776,
  2.571,
  2.447,
  2.365,
  2.306,
  2.262,
  2.228,
  2.201,
  2.179,
  2.160,
  2.145,
  2.131,
  2.120,
  2.110,
  2.101,
  2.093,
  2.086,
  2.080,
  2.074,
  2.069,
  2.064,
  2.060,
  2.056,
  2.052,
  2.048,
  2.045,
  2.042,
)


def t_quantile_975(df: int) -> float:
  """``t_{0.975}`` with ``df`` degrees of freedom (normal beyond 30)."""
  if df < 1:
    raise ValueError(f"df must be at least 1, got {df}")
  return _T_975[df - 1] if df <= len(_T_975) else 1.960


def mean_interval(values: np.ndarray) -> tuple[float, float, float]:
  """Mean and 95% t-interval of i.i.d. values along the first axis.

  A single value, or values that are all NaN, gives a zero-width interval or
  NaN rather than failing: the uniform reference is one deterministic run.

  Returns:
    ``(mean, low, high)``.
  """
  values = np.asarray(values, np.float64)
  values = values[~np.isnan(values)]
  if values.size == 0:
    return math.nan, math.nan, math.nan
  mean = float(np.mean(values))
  if values.size == 1:
    return mean, mean, mean
  half = t_quantile_975(values.size - 1) * float(
    np.std(values, ddof=1) / math.sqrt(values.size)
  )
  return mean, mean - half, mean + half


def write_csv(path: pathlib.Path, rows: Iterable[Mapping[str, object]]):
  """Writes dict rows; floats with 6 significant digits to keep diffs small."""
  rows = list(rows)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as file:
    writer = csv.DictWriter(file, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
      writer.writerow(
        {
          key: f"{value:.6g}" if isinstance(value, float) else value
          for key, value in row.items()
        }
      )

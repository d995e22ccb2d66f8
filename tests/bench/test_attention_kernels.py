"""bench/attention_kernels.py at smoke size on the CPU: layouts and rows."""

import numpy as np
import pytest

from bench import attention_kernels as bench


@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_layouts_hold_contiguous_segments_counting_from_zero(kind):
  seg, pos = bench.layout(kind, rows=3, length=256)
  assert np.mean(seg != 0) > 0.5
  for seg_row, pos_row in zip(seg, pos):
    ids = sorted(set(seg_row.tolist()) - {0})
    assert len(ids) == 1 if kind == "padded" else len(ids) > 1
    for segment in ids:
      where = np.flatnonzero(seg_row == segment)
      np.testing.assert_array_equal(where, np.arange(where[0], where[-1] + 1))
      np.testing.assert_array_equal(pos_row[where], np.arange(len(where)))


def test_kernels_a_layout_cannot_take_are_listed_with_the_reason():
  packed = bench.kernels_for("packed", "gpu", smoke=False)
  assert "segment ids" in packed["cudnn"]
  assert packed["blockwise"] is None and packed["pallas_gpu"] is None
  assert "interpreted" in packed["splash"]
  assert bench.kernels_for("padded", "gpu", smoke=False)["cudnn"] is None


def test_smoke_rows_agree_with_blockwise():
  shape = bench.SMOKE.__class__(**{**vars(bench.SMOKE), "lengths": (128,)})
  rows = bench.run(shape, smoke=True, repeats=1)
  ran = [r for r in rows if "seconds_median" in r]
  assert {r["impl"] for r in ran} == {"blockwise", "splash", "pallas_gpu"}
  assert all(r["max_error"] < 1e-5 for r in ran)
  assert all(r["speed_vs_blockwise"] > 0 for r in ran)
  assert "| packed | 128 | cudnn | not run" in bench.table(rows)

"""The metrics file on resume: records after the checkpoint, and a record
cut short by a kill or a full disk, are dropped (their steps run again)."""

import json

from train.metrics_writer import MetricsWriter


def test_resume_keeps_whole_records_up_to_the_checkpoint(tmp_path):
  records = [json.dumps({"step": step, "loss": 0.5}) for step in (1, 2, 3, 4)]
  cut_short = records[3][: len(records[3]) // 2]
  (tmp_path / "metrics.jsonl").write_text(
    "\n".join(records[:3] + ["", cut_short]) + "\n"
  )
  writer = MetricsWriter(tmp_path, resume_step=2)
  writer.close()
  kept = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in kept] == [1, 2]
  writer = MetricsWriter(tmp_path, resume_step=4)
  writer.close()
  assert (tmp_path / "metrics.jsonl").read_text().splitlines() == kept

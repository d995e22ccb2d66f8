"""The details of a prepared HH workdir that sections 5.6 and 5.10 quote.

  python -m experiments.hh_real_details /tmp/hh56 /tmp/hh510

Reads the training pairs and the reference's saved log-probabilities (no
model is run): how many pairs were cut, how far apart the two responses'
log-probabilities are, how s falls on pairs of equal length, and the
reference's nats per byte on the training responses (a response's nats,
its EOS included, over its bytes, EOS excluded).
"""

import pathlib
import sys

import numpy as np

from experiments import hh_real
from experiments import hh_reference


def share_details(logps: np.ndarray, chosen_len, rejected_len) -> dict:
  """How decided s is, and how it falls where the lengths are equal."""
  gap = logps[:, 1] - logps[:, 0]
  share = 1.0 / (1.0 + np.exp(-np.clip(gap, -700, 700)))
  equal = chosen_len == rejected_len
  return dict(
    median_abs_logp_gap=float(np.median(np.abs(gap))),
    s_within_0p1_of_0_or_1=float(np.mean((share < 0.1) | (share > 0.9))),
    equal_length_pairs=int(equal.sum()),
    s_above_half_when_equal=float(np.mean(share[equal] > 0.5)),
  )


def details(workdir: pathlib.Path) -> dict:
  name, reference = hh_real.setting(workdir)
  tokenizer = hh_reference.make_tokenizer(reference, workdir)
  pairs = hh_real._encoded_pairs(
    workdir / "train.jsonl.gz", tokenizer, reference
  )
  logps = np.load(workdir / "reference_logps.npy")

  def text_bytes(ids) -> int:
    kept = [int(i) for i in ids if int(i) != tokenizer.eos_id]
    return len(tokenizer.decode(kept).encode("utf-8"))

  lengths = np.array([(len(p.chosen), len(p.rejected)) for p in pairs])
  sizes = np.array(
    [(text_bytes(p.chosen), text_bytes(p.rejected)) for p in pairs]
  )
  return dict(
    reference=name,
    pairs=len(pairs),
    prompts_cut=int(sum(p.prompt_truncated for p in pairs)),
    responses_cut=int(sum(p.responses_truncated for p in pairs)),
    mean_chosen_tokens=float(lengths[:, 0].mean()),
    mean_chosen_bytes=float(sizes[:, 0].mean()),
    chosen_nats_per_byte=float(-logps[:, 0].sum() / sizes[:, 0].sum()),
    rejected_nats_per_byte=float(-logps[:, 1].sum() / sizes[:, 1].sum()),
    **share_details(logps, lengths[:, 0], lengths[:, 1]),
  )


if __name__ == "__main__":
  for folder in sys.argv[1:]:
    print(
      {
        k: round(v, 3) if isinstance(v, float) else v
        for k, v in details(pathlib.Path(folder)).items()
      }
    )

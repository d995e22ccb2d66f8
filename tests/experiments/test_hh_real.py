"""Section 5.6's split, response log-probabilities and share summary."""

import random

import jax
import numpy as np

from experiments import hh_real
from slpo_jax import models
from train.data import encode


def _record(i: int) -> dict:
  prompt = f"\n\nHuman: question {i}?\n\nAssistant:"
  return {"chosen": prompt + f" yes {i}", "rejected": prompt + f" no, {i}!"}


def test_split_is_disjoint_and_does_not_depend_on_file_order():
  records = [_record(i) for i in range(1400)]
  records.append({"chosen": "no assistant turn", "rejected": "x"})
  parts = hh_real.split_records(records)
  assert [len(parts[k]) for k in ("reference", "held_out", "train")] == [
    1000,
    300,
    100,
  ]
  texts = [{r["chosen"] for r in part} for part in parts.values()]
  assert sum(map(len, texts)) == len(set().union(*texts)) == 1400
  shuffled = records[:]
  random.Random(0).shuffle(shuffled)
  assert hh_real.split_records(shuffled) == parts


def test_response_logps_match_numpy_on_each_unpadded_sequence():
  model = models.build(models.tiny_config("llama", vocab_size=259, max_len=320))
  params = model.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  pairs = [
    encode.TokenizedPair(
      example_id=i,
      prompt=np.array([256, *rng.integers(0, 256, 3 + i)], np.int32),
      chosen=np.array([*rng.integers(0, 256, 2 + 2 * i), 257], np.int32),
      rejected=np.array([*rng.integers(0, 256, 5), 257], np.int32),
    )
    for i in range(3)
  ]
  got = hh_real.response_logps(model, params, pairs, batch=4)
  for i, pair in enumerate(pairs):
    for j, response in enumerate((pair.chosen, pair.rejected)):
      ids = np.concatenate([pair.prompt, response])[None]
      logits = np.asarray(
        model.apply(params, ids, np.ones_like(ids, bool)), np.float64
      )[0]
      shifted = logits - logits.max(-1, keepdims=True)
      log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
      positions = np.arange(len(pair.prompt) - 1, ids.shape[1] - 1)
      want = log_probs[positions, ids[0, positions + 1]].sum()
      np.testing.assert_allclose(got[i, j], want, rtol=1e-4, atol=1e-3)


def test_share_summary_counts_bins_and_lengths():
  # s = sigmoid(log pi(y_l) - log pi(y_w)): 0.047, 0.27, 0.73, 0.99.
  logps = np.array([[-1.0, -4.0], [-1.0, -2.0], [-2.0, -1.0], [-5.0, 0.0]])
  summary = hh_real.share_summary(
    logps, np.array([1, 2, 5, 3]), np.array([3, 2, 1, 3])
  )
  assert summary["share_bins"] == {
    "0-0.1": 0.25,
    "0.1-0.5": 0.25,
    "0.5-0.9": 0.25,
    "0.9-1": 0.25,
  }
  assert summary["chosen_shorter"] == 0.25
  assert summary["equal_length"] == 0.5
  assert summary["s_above_half_when_chosen_shorter"] == 0.0
  assert summary["s_above_half_when_chosen_longer"] == 1.0

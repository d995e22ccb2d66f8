"""Samples at every evaluation: metrics, samples.jsonl, the end summary, and
the synthetic reward and KL against the experiments' evaluation."""

import json

import jax
import numpy as np
import pytest

from experiments import sampling_eval
from train import loop
from train import samples as samples_lib
from train import setup as setup_lib
from train import validate
from train.data import task_pairs

from train_testing import make_tiny_config

NUM_SAMPLES = 8
MAX_NEW_TOKENS = 13


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory):
  """A tiny synthetic run (fsdp 2) that samples at steps 0, 2 and 4."""
  config = make_tiny_config(
    **{
      "eval_every": 2,
      "eval.num_samples": NUM_SAMPLES,
      "eval.max_new_tokens": MAX_NEW_TOKENS,
      "mesh.fsdp": 2,
      "export.at_end": False,
    }
  )
  workdir = tmp_path_factory.mktemp("sampled")
  run = setup_lib.build_run(config, workdir, validate.validate(config))
  result = loop.train_and_evaluate(config, workdir, run=run)
  return config, workdir, run, result


def _read(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_samples_file_and_metrics(sampled_run, capsys):
  config, workdir, _, result = sampled_run
  rows = _read(workdir / samples_lib.SAMPLES_FILE)
  assert [(r["step"], r["model"]) for r in rows[::NUM_SAMPLES]] == [
    (0, "reference"),
    (2, "policy"),
    (4, "policy"),
  ]
  for row in rows:
    assert 1 <= row["length"] <= MAX_NEW_TOKENS
    # A response that did not end used every token it was allowed.
    assert row["ended"] or row["length"] == MAX_NEW_TOKENS
    assert row["kl"] >= 0 and -1 <= row["reward"] <= 1
  # The reference against itself.
  assert all(r["kl"] == 0 for r in rows[:NUM_SAMPLES])
  records = {r["step"]: r for r in _read(workdir / "metrics.jsonl")}
  for step in (0, 2, 4):
    shown = [r for r in rows if r["step"] == step]
    assert records[step]["eval/samples/reward"] == pytest.approx(
      np.mean([r["reward"] for r in shown]), rel=1e-6
    )
    assert records[step]["eval/samples/ended"] == pytest.approx(
      np.mean([r["ended"] for r in shown])
    )
    assert records[step]["eval/samples/kl"] == pytest.approx(
      np.mean([r["kl"] for r in shown]), rel=1e-6
    )
  assert result.eval_metrics["eval/samples/kl"] > 0
  # TensorBoard's text tab: the summaries name the tag and hold the text.
  events = b"".join(
    path.read_bytes() for path in (workdir / "tensorboard").glob("events.*")
  )
  assert b"eval/samples" in events
  assert rows[-NUM_SAMPLES]["prompt"].encode() in events
  assert rows[-NUM_SAMPLES]["response"].encode() in events
  summary = samples_lib.summary(workdir / samples_lib.SAMPLES_FILE)
  assert rows[0]["prompt"] in summary
  assert "reference (step 0)" in summary and "policy (step 4)" in summary


@pytest.mark.slow
def test_reward_and_kl_match_the_experiments_evaluation(sampled_run):
  """One checkpoint's samples, scored by both: the same prompts and key give
  the same responses, true rewards and KL."""
  config, _, run, result = sampled_run
  params = run.policy_params(result.state.params)
  sampler = samples_lib.Sampler(
    config, run.spec.model, run.spec.mesh, run.sample_prompts
  )
  ours = sampler(4, params, run.sample_reference)
  evaluator = sampling_eval.SamplingEvaluator(
    run.spec.model,
    run.sample_reference,
    task_pairs.synthetic_prompts(config.data, "eval")[:NUM_SAMPLES],
    max_new_tokens=MAX_NEW_TOKENS,
    seed=config.seed,
  )
  theirs = evaluator.per_sequence(4, params, run.sample_reference)
  np.testing.assert_array_equal(ours["lengths"], theirs["length"])
  np.testing.assert_array_equal(ours["reward"], theirs["reward"])
  np.testing.assert_allclose(ours["kl"], theirs["kl"], rtol=1e-4, atol=1e-6)
  assert jax.device_count() == 8  # The sampler ran on the 8-device mesh.

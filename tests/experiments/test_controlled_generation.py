"""The controlled-generation experiment, end to end at a tiny size.

One SFT reference fitted for a few steps, one short DPO run with a large
learning rate evaluated through the loop's ``eval_callback``, and the CSV and
PNG writers, in well under a minute on a CPU.
"""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import controlled_generation as cg_config
from experiments import controlled_generation as cg
from experiments import sampling_eval
from slpo_jax import models
from train import validate
from train.data.task_pairs import synthetic_prompts
from train.data.validation import validate_data_config

NUM_EVAL_PROMPTS = 8
SAMPLES_PER_PROMPT = 2


def _tiny_config():
  config = cg_config.get_config("cpu")
  config.steps = 6
  config.eval_every = 3
  config.batch_size = 8
  config.reference.sft_steps = 40
  config.reference.sft_batch_size = 32
  config.optimizer.learning_rate = 2e-2  # Large, so six steps move it.
  config.optimizer.warmup_steps = 0
  config.optimizer.decay = "constant"
  config.model.loss_head = "plain"
  config.data.synthetic.num_prompts = 64
  config.data.synthetic.num_eval_prompts = NUM_EVAL_PROMPTS
  config.data.synthetic.num_sft_sequences = 256
  config.data.synthetic.sample_batch_size = 64
  return config


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
  """A briefly fitted reference, its folder and an evaluator on it."""
  workdir = tmp_path_factory.mktemp("cg")
  config = _tiny_config()
  reference_dir = cg.fit_reference(config, workdir / "reference_fit")
  model, reference_params = models.load_hf_model(reference_dir)
  evaluator = sampling_eval.SamplingEvaluator(
    model,
    reference_params,
    synthetic_prompts(config.data, "eval"),
    max_new_tokens=config.data.synthetic.max_new_tokens + 1,
    samples_per_prompt=SAMPLES_PER_PROMPT,
    seed=0,
  )
  return workdir, config, reference_dir, reference_params, evaluator


def test_sequence_kl_matches_float64_numpy():
  rng = np.random.default_rng(0)
  p_logits = rng.normal(size=(3, 5, 7)) * 2
  q_logits = rng.normal(size=(3, 5, 7)) * 2
  where = rng.random((3, 5)) < 0.7

  def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))

  lp, lq = log_softmax(p_logits), log_softmax(q_logits)
  expected = ((np.exp(lp) * (lp - lq)).sum(-1) * where).sum(-1)
  got = sampling_eval.sequence_kl(
    jnp.asarray(p_logits, jnp.float32),
    jnp.asarray(q_logits, jnp.float32),
    where,
  )
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  same = sampling_eval.sequence_kl(p_logits, p_logits, where)
  np.testing.assert_array_equal(same, np.zeros(3))


def test_reference_has_zero_kl_and_bounded_rewards(fitted):
  _, _, _, reference_params, evaluator = fitted
  values = evaluator.per_sequence(0, reference_params)
  assert values["kl"].shape == (NUM_EVAL_PROMPTS * SAMPLES_PER_PROMPT,)
  np.testing.assert_allclose(values["kl"], 0.0, atol=1e-6)
  assert np.all((values["reward"] >= -1.0) & (values["reward"] <= 1.0))
  assert np.all(values["length"] >= 1)
  metrics = evaluator(0, reference_params)
  assert abs(metrics["sample/kl"]) <= 1e-6


@pytest.mark.slow  # A whole DPO run on the task (about 30 s).
def test_dpo_run_moves_away_from_the_reference(fitted):
  workdir, config, reference_dir, reference_params, evaluator = fitted
  point = cg.GridPoint("dpo", "dpo", "beta=0.1", (("beta", 0.1),))
  run_config = cg.run_config(config, point, 0, reference_dir)
  assert run_config.model.checkpoint == str(reference_dir)
  assert run_config.reference.sft_steps == 0
  rows = cg.train_point(run_config, point, evaluator, workdir / "dpo")
  assert [row["step"] for row in rows] == [3, 6]
  for row in rows:
    assert -1.0 <= row["reward"] <= 1.0
    assert row["kl"] >= 0.0
    assert 0.0 <= row["eval_accuracy"] <= 1.0
  reference = cg.reference_row(evaluator, reference_params, 0)
  assert reference["kl"] == 0.0
  final = rows[-1]
  assert final["reward"] > reference["reward"] or final["kl"] > 1e-3
  # A finished run is read back, not trained again.
  assert cg.train_point(run_config, point, evaluator, workdir / "dpo") == rows

  # The writers: every column of the CSV, a PNG, a summary with intervals.
  all_rows = [reference] + rows + [dict(row, seed=1) for row in rows]
  out = workdir / "figures"
  cg.write_points_csv(all_rows, out / "controlled_generation.csv")
  with open(out / "controlled_generation.csv") as file:
    read = list(csv.DictReader(file))
  assert tuple(read[0]) == cg.COLUMNS
  assert len(read) == len(all_rows)
  assert float(read[0]["kl"]) == 0.0
  cg.plot_frontier(all_rows, out / "controlled_generation.png", title="test")
  png = (out / "controlled_generation.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 10_000
  table = cg.summarize(all_rows)
  assert [e["family"] for e in table] == ["reference", "dpo"]
  assert table[1]["seeds"] == 2 and table[1]["step"] == 6
  mean, low, high = table[1]["kl"]
  assert low <= mean <= high
  assert "| DPO | beta=0.1 | 2 | 6 |" in cg.markdown_table(table)


def test_grid_covers_every_family():
  # The presets' sweep and the frontier study's points between them.
  points = cg.grid(cg_config.get_sweep("cpu"))
  study = cg.frontier_grid()
  assert {p.family for p in points + study} == set(cg.FAMILIES)
  assert len({p.name for p in points}) == len(points)
  assert len({p.name for p in study}) == len(study)
  hard = [p for p in points if p.family == "slpo_hard"]
  assert hard and all(dict(p.overrides)["temperature"] == 1.0 for p in hard)
  assert jax.tree.leaves(cg_config.get_sweep("gpu").to_dict())


@pytest.mark.parametrize("preset", cg_config.PRESETS)
def test_presets_are_valid_training_configs(preset):
  config = cg_config.get_config(preset)
  validate.validate(config)
  validate_data_config(config.data, "train")
  assert config.steps % config.eval_every == 0
  with pytest.raises(ValueError, match="preset"):
    cg_config.get_config("tpu")


def test_a_point_sets_its_program_settings(tmp_path):
  (synced,) = [p for p in cg.frontier_grid() if p.program]
  config = cg.run_config(cg_config.get_config("cpu"), synced, 3, tmp_path)
  assert config.reference.sync_every == 60
  assert config.reference.sync_mix == 1.0
  assert config.loss.name == "slpo_normalized" and config.seed == 3
  plain = cg.run_config(
    cg_config.get_config("cpu"),
    cg.grid(cg_config.get_sweep("cpu"))[0],
    3,
    tmp_path,
  )
  assert plain.reference.sync_every == 0

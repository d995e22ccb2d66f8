"""The training loop end to end, in this process, on 8 simulated devices."""

import math

import jax
import numpy as np
import pytest

from train import reference as reference_lib
from train import validate
from train.errors import ConfigError
from train.errors import NonFiniteError

from train_testing import BASELINE
from train_testing import TOLERANCE
from train_testing import assert_trees_equal
from train_testing import checkpoint_steps
from train_testing import load_checkpoint_params
from train_testing import read_metrics
from train_testing import train
from train_testing import train_losses

TRL_NAMES = (
  "rewards/chosen",
  "rewards/rejected",
  "rewards/accuracies",
  "rewards/margins",
  "logps/chosen",
  "logps/rejected",
)


def _leaves_differ(a, b) -> bool:
  return any(
    not np.array_equal(x, y)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def test_online_reference_is_untouched_and_policy_moves(baseline):
  run = baseline.run
  assert run.reference_params is not None
  # Still alive (never donated) and bitwise what it was before step 1.
  assert_trees_equal(
    jax.device_get(run.reference_params), baseline.initial_reference
  )
  final = jax.device_get(baseline.result.state.params)
  assert _leaves_differ(final, baseline.initial_params)
  assert int(baseline.result.state.step) == BASELINE["steps"]


def test_metrics_records_every_step_with_trl_names_and_eval(baseline):
  records = read_metrics(baseline.workdir)
  assert [r["step"] for r in records] == list(range(1, BASELINE["steps"] + 1))
  for record in records:
    for name in ("loss", "grad_norm", *TRL_NAMES):
      assert math.isfinite(record[name]), (record["step"], name)
    assert 0.0 <= record["rewards/accuracies"] <= 1.0
  eval_steps = [r["step"] for r in records if "eval/loss" in r]
  assert eval_steps == [2, 4]
  for record in records:
    if record["step"] in eval_steps:
      for name in TRL_NAMES:
        assert math.isfinite(record[f"eval/{name}"])
  assert baseline.result.eval_metrics == {
    k: v for k, v in records[-1].items() if k.startswith("eval/")
  }


def test_tensorboard_events_are_written(baseline):
  directory = baseline.workdir / "tensorboard"
  events = list(directory.glob("events.out.tfevents.*"))
  assert events and all(e.stat().st_size > 0 for e in events)


def test_non_finite_loss_stops_without_a_non_finite_checkpoint(
  make_config, tmp_path
):
  # Adam's first update moves every weight by ~1e30: the second forward pass
  # overflows.
  config = make_config(
    **{"optimizer.learning_rate": 1e30, "checkpoint_every": 1, "steps": 4}
  )
  with pytest.raises(NonFiniteError, match="non-finite .* at step 2"):
    train(config, tmp_path)
  assert checkpoint_steps(tmp_path) == [1]
  params = load_checkpoint_params(tmp_path, 1)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
  assert [r["step"] for r in read_metrics(tmp_path)] == [1]


@pytest.fixture(scope="module")
def precomputed(make_config, tmp_path_factory):
  """The baseline with precomputed reference log-probs; its workdir."""
  workdir = tmp_path_factory.mktemp("precomputed")
  train(make_config(**BASELINE, **{"reference.mode": "precomputed"}), workdir)
  return workdir


def test_precomputed_reference_matches_online(precomputed, baseline):
  online = read_metrics(baseline.workdir)
  offline = read_metrics(precomputed)
  assert [r["step"] for r in offline] == [r["step"] for r in online]
  for a, b in zip(offline, online):
    for name in ("loss", "eval/loss", *TRL_NAMES):
      if name in b:
        np.testing.assert_allclose(
          a[name],
          b[name],
          rtol=TOLERANCE,
          atol=TOLERANCE,
          err_msg=f"step {b['step']} {name}",
        )


def test_precomputed_reference_cache_is_reused(
  precomputed, make_config, monkeypatch
):
  (cache,) = (precomputed / "reference_logps").glob("*.npz")
  stamp = cache.stat().st_mtime_ns

  def no_rebuild(*args, **kwargs):
    raise AssertionError("the reference log-probs were computed again")

  monkeypatch.setattr(reference_lib, "_stats_fn", no_rebuild)
  # Same workdir: the cache is loaded and the finished run resumes at its end.
  train(
    make_config(**BASELINE, **{"reference.mode": "precomputed"}), precomputed
  )
  assert list((precomputed / "reference_logps").glob("*.npz")) == [cache]
  assert cache.stat().st_mtime_ns == stamp


def test_precomputed_reference_refuses_per_token_losses(make_config, tmp_path):
  config = make_config(
    **{"loss.name": "slpo_token", "reference.mode": "precomputed"}
  )
  with pytest.raises(ConfigError, match="reference.mode='online'"):
    train(config, tmp_path)
  assert not any(tmp_path.iterdir())  # Failed before any work.


def test_soft_slpo_reads_only_sequence_values_of_the_reference(make_config):
  # Its pair complement is the policy's; the reference enters through
  # log pi_ref(y_w) and log pi_ref(y_l), which can be precomputed.
  validate.validate(
    make_config(**{"loss.name": "slpo_soft", "reference.mode": "precomputed"})
  )


MESHES = {
  "one_device": (1, {"mesh.data": 1}),
  "fsdp": (None, {"mesh.data": 2, "mesh.fsdp": 4}),
  "tensor": (None, {"mesh.data": 4, "mesh.tensor": 2}),
  # The fused head runs on each device's own rows (shard_map): the same
  # losses as the plain head over the whole batch.
  "fused_fsdp": (
    None,
    {
      "mesh.data": 2,
      "mesh.fsdp": 2,
      "mesh.tensor": 2,
      "model.loss_head": "fused",
    },
  ),
}


# fused_fsdp splits all three axes at once; the two-axis meshes run as slow.
_TWO_AXIS = ("fsdp", "tensor")


@pytest.mark.parametrize(
  "mesh",
  [
    pytest.param(name, marks=pytest.mark.slow) if name in _TWO_AXIS else name
    for name in sorted(MESHES)
  ],
)
def test_sharding_gives_the_data_parallel_losses(
  mesh, baseline, make_config, tmp_path
):
  devices, changes = MESHES[mesh]
  config = make_config(
    **{**BASELINE, "eval_every": 0, "checkpoint_every": 0, **changes}
  )
  trained = train(config, tmp_path, devices=devices)
  assert trained.run.spec.mesh.devices.size == (devices or 8)
  expected = train_losses(baseline.workdir)
  actual = train_losses(tmp_path)
  assert sorted(actual) == sorted(expected)
  np.testing.assert_allclose(
    [actual[s] for s in sorted(actual)],
    [expected[s] for s in sorted(expected)],
    rtol=TOLERANCE,
    atol=TOLERANCE,
  )


# A whole run; with -m slow (each term of a sum is checked against an
# independent step in test_step_against_reference).
@pytest.mark.slow
def test_a_weighted_sum_of_losses_logs_each_term(make_config, tmp_path):
  # TRL's MPO recipe: loss_type ["sigmoid", "bco_pair", "sft"] with
  # loss_weights [0.8, 0.2, 1.0].
  weights = {"sigmoid": 0.8, "bco_pair": 0.2, "sft": 1.0}
  train(
    make_config(
      **{
        "loss.name": ",".join(weights),
        "loss.weights": tuple(weights.values()),
      }
    ),
    tmp_path,
  )
  records = [r for r in read_metrics(tmp_path) if "loss" in r]
  assert records
  for record in records:
    total = sum(w * record[f"loss/{name}"] for name, w in weights.items())
    np.testing.assert_allclose(record["loss"], total, rtol=1e-5)
    assert record["loss/sft"] > 0


def test_precomputed_reference_refuses_reference_free_losses(make_config):
  with pytest.raises(ConfigError, match="reads no reference model"):
    validate.validate(
      make_config(**{"loss.name": "simpo", "reference.mode": "precomputed"})
    )


def test_metrics_carry_trl_names(baseline):
  records = [r for r in read_metrics(baseline.workdir) if "loss" in r]
  trl_metrics = ("logits/chosen", "logits/rejected", "entropy", "grad_norm")
  for name in (*TRL_NAMES, *trl_metrics):
    assert all(np.isfinite(r[name]) for r in records), name
  evals = [r for r in read_metrics(baseline.workdir) if "eval/loss" in r]
  assert evals
  accuracies = [r["mean_token_accuracy"] for r in records]
  accuracies += [r["eval/mean_token_accuracy"] for r in evals]
  assert all(0 <= a <= 1 for a in accuracies)
  # Real tokens so far: each record's step adds a batch's worth, at least
  # one response token per row (8 pairs, 2 rows).
  tokens = [r["num_tokens"] for r in records]
  steps = [r["step"] for r in records]
  assert all(
    later - earlier >= 16 * (s1 - s0)
    for earlier, later, s0, s1 in zip(tokens, tokens[1:], steps, steps[1:])
  )
  assert all(float(t).is_integer() for t in tokens)
  # A constant schedule in the tiny config: the peak rate at every step.
  config = baseline.run.config.optimizer
  assert [r["learning_rate"] for r in records] == pytest.approx(
    [config.learning_rate] * len(records)
  )

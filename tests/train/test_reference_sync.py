"""Reference sync (``reference.sync_every``, ``reference.sync_mix``)."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from train import step as step_lib
from train import validate
from train.errors import ConfigError

from train_testing import assert_trees_equal
from train_testing import load_checkpoint_params
from train_testing import read_metrics
from train_testing import train

SYNC = {"steps": 4, "reference.sync_every": 2, "checkpoint_every": 2}


def _checkpoint_reference(workdir, step: int):
  path = (
    pathlib.Path(workdir).absolute() / "checkpoints" / str(step) / "reference"
  )
  with ocp.StandardCheckpointer() as checkpointer:
    return jax.tree.map(np.asarray, checkpointer.restore(path))


def test_synced_reference_mixes_in_float32_and_keeps_dtypes():
  rng = np.random.default_rng(0)
  reference = {
    "a": rng.normal(size=(3, 4)).astype(np.float32),
    "b": jnp.asarray(rng.normal(size=5), jnp.bfloat16),
  }
  params = {
    "a": rng.normal(size=(3, 4)).astype(np.float32),
    "b": jnp.asarray(rng.normal(size=5), jnp.bfloat16),
  }
  mixed = step_lib.synced_reference(reference, params, mix=0.25)
  want_a = 0.75 * reference["a"].astype(np.float64) + 0.25 * params["a"]
  np.testing.assert_allclose(mixed["a"], want_a, rtol=1e-6)
  assert mixed["b"].dtype == jnp.bfloat16
  want_b = 0.75 * np.asarray(reference["b"], np.float64) + 0.25 * np.asarray(
    params["b"], np.float64
  )
  np.testing.assert_allclose(
    np.asarray(mixed["b"], np.float64), want_b, rtol=1e-2
  )
  copied = step_lib.synced_reference(reference, params, mix=1.0)
  np.testing.assert_array_equal(copied["a"], params["a"])


# Whole runs, one of them resumed: with -m slow (the sync's mixing and
# dtypes are checked above).
@pytest.mark.slow
def test_sync_copies_the_policy_and_resumes_bitwise(make_config, tmp_path):
  whole = train(make_config(**SYNC), tmp_path / "whole")
  for step in (2, 4):
    assert_trees_equal(
      _checkpoint_reference(tmp_path / "whole", step),
      load_checkpoint_params(tmp_path / "whole", step),
    )
  # Right after a sync the policy is its own reference: DPO's margin is 0
  # and its loss log 2, exactly, at step 3 (and not without the sync).
  losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "whole")}
  assert losses[3] == pytest.approx(math.log(2), abs=1e-6)
  train(make_config(**{**SYNC, "reference.sync_every": 0}), tmp_path / "frozen")
  frozen_losses = {
    r["step"]: r["loss"] for r in read_metrics(tmp_path / "frozen")
  }
  assert abs(frozen_losses[3] - math.log(2)) > 1e-3

  # Interrupted after the first sync and resumed: the moved reference comes
  # back from the checkpoint, so the run ends exactly like the whole one.
  train(make_config(**{**SYNC, "steps": 2}), tmp_path / "resumed")
  resumed = train(make_config(**SYNC), tmp_path / "resumed")
  assert_trees_equal(
    jax.tree.map(np.asarray, resumed.result.state.params),
    jax.tree.map(np.asarray, whole.result.state.params),
  )


@pytest.mark.parametrize(
  ("changes", "message"),
  [
    ({"reference.sync_every": -1}, "reference.sync_every is -1"),
    ({"reference.sync_mix": 0.0}, "reference.sync_mix is 0.0"),
    ({"reference.sync_mix": 1.5}, "reference.sync_mix is 1.5"),
    ({"loss.name": "simpo"}, "nothing to sync"),
    ({"reference.mode": "precomputed"}, "cannot be precomputed"),
  ],
)
def test_bad_sync_settings_are_refused(make_config, changes, message):
  config = make_config(**{"reference.sync_every": 2, **changes})
  with pytest.raises(ConfigError, match=message):
    validate.validate(config)

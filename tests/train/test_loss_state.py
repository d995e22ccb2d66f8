"""A loss that carries state (BCO's running reward mean) through the program:
checkpointed with the policy, restored on resume, and absent otherwise."""

import jax
import numpy as np
import orbax.checkpoint as ocp

from train_testing import BASELINE
from train_testing import assert_trees_equal
from train_testing import train

RUNNING_BCO = {**BASELINE, "loss.name": "sigmoid,bco_pair_running"}


def _stored_state(workdir, step: int) -> dict:
  path = workdir.absolute() / "checkpoints" / str(step) / "state"
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path)


def test_running_mean_is_checkpointed_and_resumed_bitwise(
  make_config, baseline, tmp_path
):
  whole = train(make_config(**RUNNING_BCO), tmp_path / "whole")
  stored = _stored_state(tmp_path / "whole", 2)["loss_state"][
    "bco_pair_running"
  ]
  # One batch mean per step (no accumulation in the tiny config), and a
  # moving mean: the policy's rewards change from step to step.
  assert float(stored["count"]) == 2
  final = whole.result.state.loss_state["bco_pair_running"]
  assert float(final.count) == 4 and float(final.mean) != float(stored["mean"])

  # Resumed at its end: the mean comes back from the checkpoint (a fresh
  # start would hold RunningMean.zero()).
  again = train(make_config(**RUNNING_BCO), tmp_path / "whole")
  assert int(again.result.state.step) == 4
  assert_trees_equal(
    jax.tree.map(np.asarray, again.result.state.loss_state),
    jax.tree.map(np.asarray, whole.result.state.loss_state),
  )

  # Without a stateful loss nothing is stored for it: the checkpoint has
  # the layout it had before loss states existed.
  assert set(_stored_state(baseline.workdir, 2)) == {
    "step",
    "params",
    "opt_state",
  }

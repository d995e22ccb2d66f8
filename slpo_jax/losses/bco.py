"""BCO on pairs, without and with its running reward baseline.

Binary Classifier Optimization (Jung et al., "Binary Classifier Optimization
for Large Language Model Alignment", arXiv:2404.04656) trains a classifier
whose logit is the implicit reward ``r(y) = beta (log pi(y) - log pi_ref(y))``:
chosen responses are the positive class, rejected ones the negative, and a
reward shift delta, the running mean of the rewards seen so far, centres the
logits (the paper's binary cross-entropy loss and its reward shift).

Two forms, both in the loss table:

* ``bco_pair`` (:func:`bco_pair_loss`) is TRL 1.x's: delta = 0.
* ``bco_pair_running`` (:func:`bco_pair_running_loss`) keeps delta as the
  paper and TRL before 0.29 do. The running mean is explicit state: the
  caller passes a :class:`RunningMean` in and gets the updated one back, and
  a training program carries it in its checkpointed state.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from slpo_jax.losses._common import log_ratios


class RunningMean(NamedTuple):
  """The mean of the values seen so far, and how many there were.

  Attributes:
    mean: float32 scalar, 0 before any value.
    count: float32 scalar, the number of values averaged.
  """

  mean: jax.Array
  count: jax.Array

  @classmethod
  def zero(cls, dtype=jnp.float32) -> "RunningMean":
    """The state before any value."""
    return cls(jnp.zeros((), dtype), jnp.zeros((), dtype))

  def update(self, value: ArrayLike) -> "RunningMean":
    """The state after one more value (every value weighs the same)."""
    count = self.count + 1.0
    value = jnp.asarray(value, self.mean.dtype)
    return RunningMean(self.mean + (value - self.mean) / count, count)


def _shifted_bco(chosen, rejected, beta, shift):
  shift = jax.lax.stop_gradient(shift)
  return -jax.nn.log_sigmoid(beta * chosen - shift) - jax.nn.log_sigmoid(
    -(beta * rejected - shift)
  )


def bco_pair_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  *,
  beta: float = 0.1,
) -> jax.Array:
  r"""BCO on pairs without a reward shift, as TRL 1.x computes it.

  .. math:: L = -\log\sigma(\beta r_w) - \log\sigma(-\beta r_l)

  with ``r = log pi(y) - log pi_ref(y)``.

  Args:
    policy_chosen_logps: ``[...]`` log pi(y_w | x).
    policy_rejected_logps: ``[...]`` log pi(y_l | x).
    reference_chosen_logps: ``[...]`` log pi_ref(y_w | x).
    reference_rejected_logps: ``[...]`` log pi_ref(y_l | x).
    beta: inverse temperature of the implicit reward.

  Returns:
    ``[...]`` per-example losses.

  References:
    Jung et al., arXiv:2404.04656: the binary cross-entropy loss, applied
    to both responses of a pair, with the reward shift left at 0.
  """
  chosen, rejected = log_ratios(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  return _shifted_bco(chosen, rejected, beta, 0.0)


def bco_pair_running_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  counted: ArrayLike,
  loss_state: RunningMean,
  *,
  beta: float = 0.1,
) -> tuple[jax.Array, RunningMean]:
  r"""BCO on pairs, shifted by the running mean of the batches' rewards.

  .. math::
    L = -\log\sigma(\beta r_w - \delta) - \log\sigma(-(\beta r_l - \delta))

  The batch's mean reward ``mean over counted pairs of (beta r_w + beta
  r_l) / 2`` is added to ``loss_state`` first, and delta is the updated mean:
  so the first batch is centred on itself, and each later one on the mean of
  all batch means so far (each batch weighs the same). This is TRL 0.28's
  ``bco_pair`` with its ``RunningMoments``, whose update, on one scalar per
  batch, is this mean. A batch without a counted pair leaves the state as it
  is.

  Args:
    policy_chosen_logps: ``[B]`` log pi(y_w | x).
    policy_rejected_logps: ``[B]`` log pi(y_l | x).
    reference_chosen_logps: ``[B]`` log pi_ref(y_w | x).
    reference_rejected_logps: ``[B]`` log pi_ref(y_l | x).
    counted: ``[B]`` bool, False for padding rows (left out of the mean).
    loss_state: the running mean before this batch
      (:meth:`RunningMean.zero` at the start of training).
    beta: inverse temperature of the implicit reward.

  Returns:
    ``([B]`` per-example losses, the running mean after this batch``)``.

  References:
    Jung et al., arXiv:2404.04656: the loss with its running reward shift.
  """
  chosen, rejected = log_ratios(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  counted = jnp.asarray(counted, bool)
  pair_rewards = jax.lax.stop_gradient(beta * (chosen + rejected) / 2.0)
  pairs = jnp.sum(counted)
  batch_mean = jnp.sum(jnp.where(counted, pair_rewards, 0.0)) / jnp.maximum(
    pairs, 1
  )
  updated = loss_state.update(batch_mean)
  new_state = jax.tree.map(
    lambda new, old: jnp.where(pairs > 0, new, old), updated, loss_state
  )
  return _shifted_bco(chosen, rejected, beta, new_state.mean), new_state

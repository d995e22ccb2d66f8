"""AOT: preference alignment by optimal transport, a loss of the whole batch.

Unlike the other losses, a pair's AOT loss depends on the other pairs of its
batch: the batch's margins are sorted and matched by rank. Following TRL
1.16 (``tests/golden/make_trl_golden.py``), row i holds the term of the
position its margin sorts to, so that the mean over the rows is AOT's loss;
rows not ``counted`` (padding) are left out of the sort.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from slpo_jax.losses._common import log_ratios
from slpo_jax.losses.dpo_variants import _check_smoothing


def _sorted_pairing(
  policy_margin: jax.Array,
  reference_margin: jax.Array,
  counted: jax.Array,
  beta: float,
  label_smoothing: float,
) -> jax.Array:
  """AOT's loss: the i-th smallest policy margin against the i-th smallest
  reference margin, over the counted rows; per row, 0 where not counted.

  The batch's sum is what AOT sums over sorted positions; row i carries the
  term of the position its policy margin sorts to.
  """
  big = jnp.finfo(policy_margin.dtype).max
  # Rows not counted sort past every counted one, on both sides.
  policy_sorted = jnp.sort(jnp.where(counted, policy_margin, big), axis=-1)
  reference_sorted = jnp.sort(
    jnp.where(counted, reference_margin, big), axis=-1
  )
  # Sorted, the counted rows take the first positions.
  real = jnp.arange(counted.shape[-1]) < jnp.sum(counted, -1, keepdims=True)
  delta = beta * jnp.where(real, policy_sorted - reference_sorted, 0.0)
  per_position = (
    -jax.nn.log_sigmoid(delta) * (1.0 - label_smoothing)
    - jax.nn.log_sigmoid(-delta) * label_smoothing
  )
  rank = jnp.argsort(
    jnp.argsort(jnp.where(counted, policy_margin, big), axis=-1), axis=-1
  )
  return jnp.where(
    counted, jnp.take_along_axis(per_position, rank, axis=-1), 0.0
  )


def aot_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  counted: ArrayLike,
  *,
  beta: float = 0.1,
  label_smoothing: float = 0.0,
) -> jax.Array:
  r"""AOT: DPO between the sorted margins of the policy and the reference.

  With m = log pi(y_w) - log pi(y_l) and m_ref likewise, both sorted over
  the batch (the last axis), and d_k = m_(k) - m_ref(k):

  .. math:: L_k = -(1-\epsilon)\log\sigma(\beta d_k) - \epsilon\log\sigma(-\beta d_k)

  A loss of the batch, not of each pair: row i holds L_k for the position k
  its policy margin sorts to, so the rows' mean is AOT's. Rows not
  ``counted`` (padding) are left out of the sort and hold 0. Under gradient accumulation the sort is per micro-batch, as
  TRL's is per device batch.

  References:
    Melnyk et al., "Distributional Preference Alignment of LLMs via Optimal
    Transport", arXiv:2406.05882 (the paired AOT loss).
  """
  _check_smoothing(label_smoothing)
  counted = jnp.asarray(counted, bool)
  return _sorted_pairing(
    jnp.asarray(policy_chosen_logps) - policy_rejected_logps,
    jnp.asarray(reference_chosen_logps) - reference_rejected_logps,
    counted,
    beta,
    label_smoothing,
  )


def aot_unpaired_loss(
  policy_chosen_logps: ArrayLike,
  policy_rejected_logps: ArrayLike,
  reference_chosen_logps: ArrayLike,
  reference_rejected_logps: ArrayLike,
  counted: ArrayLike,
  *,
  beta: float = 0.1,
  label_smoothing: float = 0.0,
) -> jax.Array:
  r"""AOT for unpaired data: the sorted chosen log-ratios against the sorted
  rejected ones.

  With r_w and r_l sorted over the batch separately, d_k = r_w(k) - r_l(k),
  and the same per-position loss as :func:`aot_loss` (row i holds the term
  of the position its r_w sorts to; rows not ``counted`` hold 0).

  References:
    Melnyk et al., "Distributional Preference Alignment of LLMs via Optimal
    Transport", arXiv:2406.05882 (the unpaired AOT loss).
  """
  _check_smoothing(label_smoothing)
  counted = jnp.asarray(counted, bool)
  chosen, rejected = log_ratios(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
  )
  return _sorted_pairing(chosen, rejected, counted, beta, label_smoothing)

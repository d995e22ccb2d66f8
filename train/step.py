"""The optimizer, the training state, the step spec and the pure train and
eval steps.

A :class:`StepSpec` is everything the compiled steps close over, built once
from a validated config (:func:`train.setup.step_spec`) and shared by the
loop, ``train.aot`` and the benchmarks.
"""

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

import slpo_jax
from train import objective
from train import policy as policy_lib
from train.batch import Batch


class TrainState(flax.struct.PyTreeNode):
  """What training updates: step, policy parameters, optimizer state, and
  the state of a loss that carries one from batch to batch.

  The reference parameters are deliberately not in here: they are a separate
  argument of :func:`train_step`, never optimized or donated (and
  checkpointed beside the state only when ``reference.sync_every`` moves
  them).

  Attributes:
    step: optimizer steps taken.
    params: the policy's parameters.
    opt_state: the optimizer's state.
    loss_state: the stateful loss terms' states by name (BCO's running
      reward mean, :meth:`slpo_jax.losses.WeightedLoss.initial_state`);
      None when no term has one.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  loss_state: Any = None


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
  """Linear warm-up to the peak, then cosine, linear or constant."""
  peak = config.learning_rate
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  rest = max(total_steps - warmup, 1)
  if config.decay == "cosine":
    after = optax.cosine_decay_schedule(peak, rest)
  elif config.decay == "linear":
    after = optax.linear_schedule(peak, 0.0, rest)
  elif config.decay == "constant":
    after = optax.constant_schedule(peak)
  else:
    raise ValueError(
      f"unknown optimizer.decay {config.decay!r}; use 'cosine', 'linear' or"
      " 'constant'"
    )
  if warmup == 0:
    return after
  return optax.join_schedules(
    [optax.linear_schedule(0.0, peak, warmup), after], [warmup]
  )


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  """Clipping followed by AdamW or RMSprop on the schedule."""
  return optimizer_and_schedule(config, total_steps)[0]


def optimizer_and_schedule(
  config, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """:func:`make_optimizer` and the schedule it follows, built once."""
  schedule = learning_rate_schedule(config, total_steps)
  if config.name == "adamw":
    update = optax.adamw(
      schedule,
      b1=config.b1,
      b2=config.b2,
      eps=config.eps,
      weight_decay=config.weight_decay,
    )
  elif config.name == "rmsprop":
    update = optax.rmsprop(schedule, decay=config.b2, eps=config.eps)
  else:
    raise ValueError(
      f"unknown optimizer.name {config.name!r}; use 'adamw' or 'rmsprop'"
    )
  if config.grad_clip_norm > 0:
    update = optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm), update
    )
  return update, schedule


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """What the train and eval steps close over.

  Attributes:
    model: the model object (``apply``, ``hidden_states``).
    optimizer: from :func:`make_optimizer`.
    loss: the built loss (:func:`train.objective.build_loss`).
    head: fused or plain per-token computation.
    policy: what trains and what the frozen tree is (:mod:`train.policy`).
    mesh: the mesh the batch is split over (see
      :func:`train.objective.batch_stats`); None on one device.
    grad_accum_steps: micro-batches per step.
  """

  model: Any
  optimizer: optax.GradientTransformation
  loss: objective.Loss
  head: slpo_jax.HeadOptions
  policy: policy_lib.Policy = policy_lib.FullPolicy()
  mesh: jax.sharding.Mesh | None = None
  grad_accum_steps: int = 1


def _split_micro_batches(batch, count: int):
  return jax.tree.map(
    lambda x: x.reshape((count, x.shape[0] // count) + x.shape[1:]), batch
  )


def train_step(
  state: TrainState,
  frozen: Any,
  batch: Batch,
  *,
  spec: StepSpec,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step over ``grad_accum_steps`` micro-batches.

  The loss is the example-weighted mean over the whole (global) batch; the
  gradient of each micro-batch is of its weighted *sum*, and the total is
  divided once by the total weight, so accumulation gives the same update as
  one large batch.

  Args:
    state: the training state; its ``params`` are the policy's trainable
      tree.
    frozen: the policy's frozen tree (:mod:`train.policy`): the reference
      parameters, or with LoRA the base; None when the batch carries
      precomputed reference log-probs and the policy needs nothing frozen.
    batch: the pipeline's batch, leading axis the global batch.
    spec: the model, optimizer, loss, head, policy, mesh and accumulation.

  Returns:
    The new state and metrics averaged by example weight, plus ``grad_norm``
    and ``finite`` (False if the loss or gradient has a non-finite value).
  """

  reference = spec.policy.step_reference(frozen)

  def summed_loss(params, micro, loss_state, index):
    rng = spec.policy.training_rng(state.step, index)
    return objective.batch_loss(
      spec.model,
      spec.policy.step_params(params, frozen, rng),
      reference,
      micro,
      loss=spec.loss,
      head=spec.head,
      mesh=spec.mesh,
      loss_state=loss_state,
    )

  grad_accum_steps = spec.grad_accum_steps
  grad_fn = jax.grad(summed_loss, has_aux=True)
  micro_batches = _split_micro_batches(batch, grad_accum_steps)

  def accumulate(carry, indexed):
    grads, sums, loss_state = carry
    index, micro = indexed
    # A loss state moves micro-batch by micro-batch, as TRL's moves with
    # each forward pass.
    micro_grads, (micro_sums, loss_state) = grad_fn(
      state.params, micro, loss_state, index
    )
    grads, sums = jax.tree.map(
      jnp.add, (grads, sums), (micro_grads, micro_sums)
    )
    return (grads, sums, loss_state), None

  first = jax.tree.map(lambda x: x[0], micro_batches)
  grads, (sums, loss_state) = grad_fn(state.params, first, state.loss_state, 0)
  carry = (grads, sums, loss_state)
  if grad_accum_steps > 1:
    rest = jax.tree.map(lambda x: x[1:], micro_batches)
    indices = jnp.arange(1, grad_accum_steps)
    carry, _ = jax.lax.scan(accumulate, carry, (indices, rest))
  grads, sums, loss_state = carry
  total_weight = jnp.maximum(sums["weight"], 1e-9)
  # In the gradients' own dtype: bf16 parameters keep bf16 optimizer state.
  grads = jax.tree.map(lambda g: (g / total_weight).astype(g.dtype), grads)
  metrics = objective.metric_means(sums)

  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
  updates, opt_state = spec.optimizer.update(
    grads, state.opt_state, state.params
  )
  params = optax.apply_updates(state.params, updates)
  # A non-finite step leaves the state untouched; the loop then stops, so no
  # checkpoint ever holds non-finite values.
  new_state = jax.tree.map(
    lambda new, old: jnp.where(finite, new, old),
    state.replace(
      step=state.step + 1,
      params=params,
      opt_state=opt_state,
      loss_state=loss_state,
    ),
    state,
  )
  metrics["grad_norm"] = grad_norm
  metrics["finite"] = finite
  # Real tokens of the global batch (both rows of every pair), as TRL counts
  # them for ``num_tokens``; a shared prompt counts twice here too, KTO's
  # mismatched rows not at all.
  metrics["tokens"] = batch.real_tokens()
  if batch.packed:
    # How well the rows are filled: positions holding a token over all.
    filled, positions = batch.filled_positions()
    metrics["real_token_fraction"] = filled / positions
  return new_state, metrics


def synced_reference(reference: Any, params: Any, *, mix: float) -> Any:
  """TR-DPO's reference update: ``mix * params + (1 - mix) * reference``.

  Mixed in float32 and stored in the reference's own dtypes; ``mix = 1``
  copies the policy exactly. (Gorbatovski et al. 2024, "Learn Your
  Reference Model for Real Good Alignment", arXiv:2404.09656, Eq. 5 and 6.)
  """
  if mix == 1.0:
    return jax.tree.map(lambda r, p: p.astype(r.dtype), reference, params)
  return jax.tree.map(
    lambda r, p: (
      (1.0 - mix) * r.astype(jnp.float32) + mix * p.astype(jnp.float32)
    ).astype(r.dtype),
    reference,
    params,
  )


def eval_step(
  params: Any,
  frozen: Any,
  batch: Batch,
  loss_state: Any = None,
  *,
  spec: StepSpec,
) -> dict[str, jax.Array]:
  """Weighted metric sums (and ``weight``) of the policy on one batch.

  A stateful loss is evaluated at the training state's ``loss_state``,
  which evaluation does not move. ``frozen``: see :func:`train_step`.
  """
  _, (sums, _) = objective.batch_loss(
    spec.model,
    spec.policy.step_params(params, frozen),
    spec.policy.step_reference(frozen),
    batch,
    loss=spec.loss,
    head=spec.head,
    mesh=spec.mesh,
    loss_state=loss_state,
  )
  return sums

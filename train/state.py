"""The training state on the mesh, and the jitted steps that update it.

Shapes first, then shardings, then one jitted initialisation that writes
every array directly in its final layout (as nanodo and big_vision do): the
optimizer state's shapes come from ``jax.eval_shape(optimizer.init, ...)``,
and each of its leaves that mirrors a parameter takes that parameter's
sharding, which comes from the parameter's logical axis names.
"""

import contextlib
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from slpo_jax import models
from slpo_jax import sharding
from train import checkpoint as checkpoint_lib
from train import step as step_lib


def state_shardings(
  optimizer: optax.GradientTransformation,
  abstract_params: Any,
  param_shardings: Any,
  mesh: jax.sharding.Mesh,
  loss_state: Any = None,
) -> step_lib.TrainState:
  """A TrainState of shardings: parameters and optimizer moments alike.

  Optimizer-state leaves that correspond to a parameter (Adam's moments)
  follow its sharding; the rest (counts, schedule state) are replicated, as
  is a ``loss_state`` (scalars), when there is one.
  """
  replicated = sharding.replicated(mesh)
  abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
  opt_state = optax.tree_map_params(
    optimizer,
    lambda _, spec: spec,
    abstract_opt_state,
    param_shardings,
    transform_non_params=lambda _: replicated,
  )
  return step_lib.TrainState(
    step=replicated,
    params=param_shardings,
    opt_state=opt_state,
    loss_state=jax.tree.map(lambda _: replicated, loss_state),
  )


def initial_state(
  optimizer, params, shardings, loss_state=None
) -> step_lib.TrainState:
  """Step 0 with ``params``, created directly in ``shardings``."""

  def init(params):
    return step_lib.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=optimizer.init(params),
      loss_state=loss_state,
    )

  return jax.jit(init, out_shardings=shardings)(params)


def restore_or_init(run, checkpointer: checkpoint_lib.Checkpointer):
  """The newest readable checkpoint's state (and data position), else step 0.

  Returns:
    ``(state, shardings, restored)``: ``restored`` is the
    :class:`~train.checkpoint.Restored` checkpoint (its progress counters
    and moving reference), or None at step 0. On restore the run's train
    iterator is moved to the checkpoint's data position.
  """
  abstract_params = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), run.initial_params
  )
  spec = run.spec
  loss_state = spec.loss.initial_state()
  shardings = state_shardings(
    spec.optimizer, abstract_params, run.param_shardings, spec.mesh, loss_state
  )
  state = initial_state(
    spec.optimizer, run.initial_params, shardings, loss_state
  )
  moving_reference = None
  if run.config.reference.sync_every:
    moving_reference = checkpoint_lib.abstract_like(run.reference_params)
  restored = checkpointer.restore_latest(
    checkpoint_lib.abstract_like(state), moving_reference
  )
  if restored is not None:
    state = restored.state
    run.train_iterator.set_state(restored.data_state)
    if jax.process_index() == 0:
      print(f"Resumed from the checkpoint of step {int(state.step)}.")
  return state, shardings, restored


def reference_sync(run, restored: checkpoint_lib.Restored | None):
  """The reference to start from, and the jitted sync (None when frozen).

  With ``reference.sync_every`` the reference changes during training, so a
  resumed run takes it from the checkpoint, not from its source.

  Returns:
    ``(reference, sync_fn)``, ``sync_fn(reference, params)`` returning the
    new reference in the same shardings.
  """
  config = run.config.reference
  if not config.sync_every:
    return run.reference_params, None
  reference = run.reference_params
  if restored is not None:
    reference = restored.reference
  reference_shardings = jax.tree.map(lambda x: x.sharding, reference)
  sync_fn = jax.jit(
    functools.partial(step_lib.synced_reference, mix=config.sync_mix),
    out_shardings=reference_shardings,
  )
  return reference, sync_fn


class OnMesh:
  """A jitted step, traced and run on its mesh with the models' axis rules.

  The models constrain their activations by logical names (the batch over
  data x fsdp). Those constraints bind only while Flax's logical-axis rules
  and the mesh are in context at trace time; without them XLA's propagation
  places the activations, and on an fsdp mesh it keeps whole-batch
  activations on every device.
  """

  def __init__(self, jitted, mesh: jax.sharding.Mesh):
    self._jitted = jitted
    self._mesh = mesh

  @contextlib.contextmanager
  def _context(self):
    with jax.set_mesh(self._mesh):
      with nn.logical_axis_rules(models.logical_axis_rules()):
        yield

  def __call__(self, *args):
    with self._context():
      return self._jitted(*args)

  def lower(self, *args):
    with self._context():
      return self._jitted.lower(*args)


def jit_steps(
  spec: step_lib.StepSpec, shardings: step_lib.TrainState, frozen: Any
):
  """The train and eval steps of ``spec``, jitted with their shardings.

  The state is donated (updated in place); the frozen tree (the reference,
  or with LoRA the base) never is, and is passed with its own sharding so
  it stays exactly as loaded.

  Args:
    spec: what the steps compute.
    shardings: the train state's (:func:`state_shardings`).
    frozen: the frozen tree, or sharded shapes of it; None when the step
      takes none.

  Returns:
    ``(train_fn(state, frozen, batch), eval_fn(params, frozen, batch,
    loss_state))``.
  """
  batch_spec = sharding.batch_sharding(spec.mesh)
  frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
  train_fn = jax.jit(
    functools.partial(step_lib.train_step, spec=spec),
    in_shardings=(shardings, frozen_shardings, batch_spec),
    out_shardings=(shardings, None),
    donate_argnums=(0,),
  )
  eval_fn = jax.jit(
    functools.partial(step_lib.eval_step, spec=spec),
    in_shardings=(
      shardings.params,
      frozen_shardings,
      batch_spec,
      shardings.loss_state,
    ),
  )
  return OnMesh(train_fn, spec.mesh), OnMesh(eval_fn, spec.mesh)

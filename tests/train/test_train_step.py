"""The train step on one device: every loss, both heads, accumulation."""

import functools

import jax
import numpy as np
import optax
import pytest

import slpo_jax
from slpo_jax import losses
from train import objective
from train import step as step_lib

from train_testing import TOLERANCE
from train_testing import assert_trees_close
from train_testing import build
from train_testing import one_loss_per_set_of_inputs

SLOW = pytest.mark.slow

# Small tiles, so the fused head really works tile by tile (V = 259 bytes).
FUSED = slpo_jax.HeadOptions(
  fused=True, vocab_chunk_size=128, token_chunk_size=64
)
PLAIN = slpo_jax.HeadOptions(fused=False)


class Pieces:
  """A built run's model, reference, batches and a policy unlike the reference.

  At the reference itself every preference margin is zero and a DPO loss is
  log 2 whatever the batch or head; the policy is therefore the reference
  plus noise.
  """

  def __init__(self, config, workdir):
    run = build(config, workdir, devices=1)
    self.config = config
    self.model = run.spec.model
    self.reference = run.reference_params
    self.batches = [run.to_device(next(run.train_iterator)) for _ in range(2)]
    leaves, treedef = jax.tree.flatten(self.reference)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    self.policy = jax.tree.unflatten(
      treedef,
      [
        x + 0.02 * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys)
      ],
    )
    self.optimizer = step_lib.make_optimizer(config.optimizer, config.steps)
    self._plain_results = {}

  def state(self, loss: str = "dpo"):
    return step_lib.TrainState(
      step=jax.numpy.zeros((), jax.numpy.int32),
      params=self.policy,
      opt_state=self.optimizer.init(self.policy),
      loss_state=losses.weighted_loss(loss.split(",")).initial_state() or None,
    )

  def step_fn(self, loss: str, head, grad_accum_steps: int = 1):
    loss_config = self.config.loss.copy_and_resolve_references()
    loss_config.name = loss
    if loss == "exo_pair":  # Its KL to the labels is infinite at eps = 0.
      loss_config.label_smoothing = 0.1
    # Compiled without backend optimisation: half the compile time on CPU,
    # and every step compared here is compiled alike.
    return jax.jit(
      functools.partial(
        step_lib.train_step,
        spec=step_lib.StepSpec(
          model=self.model,
          optimizer=self.optimizer,
          loss=objective.build_loss(loss_config),
          head=head,
          grad_accum_steps=grad_accum_steps,
        ),
      ),
      compiler_options={"xla_backend_optimization_level": 0},
    )

  def plain_step(self, loss: str):
    """One plain-head step's ``(state, metrics)`` on the first batch, cached."""
    if loss not in self._plain_results:
      self._plain_results[loss] = jax.device_get(
        self.step_fn(loss, PLAIN)(
          self.state(loss), self.reference, self.batches[0]
        )
      )
    return self._plain_results[loss]


@pytest.fixture(scope="module")
def pieces(make_config, tmp_path_factory):
  return Pieces(make_config(), tmp_path_factory.mktemp("train_step"))


@pytest.mark.parametrize("loss", sorted(losses.LOSSES))
def test_every_loss_takes_a_finite_step(loss, pieces):
  state, metrics = pieces.plain_step(loss)
  assert bool(metrics["finite"])
  assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
  assert int(state.step) == 1
  policy = jax.device_get(pieces.policy)
  assert any(
    not np.array_equal(new, old)
    for new, old in zip(jax.tree.leaves(state.params), jax.tree.leaves(policy))
  )


def _with_precomputed_reference(pieces, batch):
  stats = jax.jit(
    functools.partial(
      objective.batch_stats, pieces.model, pair_values=False, head=PLAIN
    )
  )(pieces.reference, batch)
  return batch.with_reference(stats.chosen_logps, stats.rejected_logps)


# Three paths in the default run: token-level values with pair complements,
# a loss of the whole batch, and complements; the rest with -m slow.
_FUSED_DEFAULT_RUN = ("aot", "slpo", "slpo_token")


@pytest.mark.parametrize(
  "loss",
  [
    name if name in _FUSED_DEFAULT_RUN else pytest.param(name, marks=SLOW)
    for name in one_loss_per_set_of_inputs()
  ],
)
def test_fused_head_accumulation_and_precomputed_reference_agree(loss, pieces):
  # The step three ways at once: the fused head, two micro-batches (one for
  # a loss of the whole batch), and (where the loss allows it) reference
  # log-probs that come with the batch, against the plain head, one batch,
  # online.
  spec = losses.LOSSES[loss]
  batch, reference = pieces.batches[0], pieces.reference
  if spec.needs_reference and not spec.needs_reference_tokens:
    batch, reference = _with_precomputed_reference(pieces, batch), None
  plain_state, plain = pieces.plain_step(loss)
  # A loss of the whole batch (AOT's sort) changes with the micro-batches.
  accumulation = 1 if spec.batch_level else 2
  state, metrics = jax.device_get(
    pieces.step_fn(loss, FUSED, grad_accum_steps=accumulation)(
      pieces.state(loss), reference, batch
    )
  )
  assert bool(metrics["finite"])
  for name in plain:
    np.testing.assert_allclose(
      metrics[name], plain[name], rtol=TOLERANCE, atol=TOLERANCE, err_msg=name
    )
  # Adam's first moment is (1 - b1) times the (clipped) gradient.
  assert_trees_close(
    optax.tree_utils.tree_get(state.opt_state, "mu"),
    optax.tree_utils.tree_get(plain_state.opt_state, "mu"),
  )


def test_gradient_accumulation_matches_one_batch(pieces):
  # Unequal micro-batch weights (5 of 8 rows count): a mean of micro-batch
  # means would differ from the weighted mean over the batch.
  first = pieces.batches[0]
  weight = np.asarray(first.example_weight)
  first = first.replace(
    example_weight=jax.numpy.asarray(
      np.array([1, 1, 1, 1, 1, 0, 0, 0], weight.dtype)
    )
  )
  batches = [first, pieces.batches[1]]
  results = {}
  # Four micro-batches of weights 2, 2, 1 and 0 (one all padding).
  for accumulation in (1, 4):
    step = pieces.step_fn("dpo", PLAIN, grad_accum_steps=accumulation)
    state, history = pieces.state(), []
    for batch in batches:
      state, metrics = step(state, pieces.reference, batch)
      history.append(jax.device_get(metrics))
    results[accumulation] = jax.device_get(state.params), history
  params, history = results[1]
  for accumulation in (4,):
    other_params, other_history = results[accumulation]
    for step, (expected, actual) in enumerate(zip(history, other_history)):
      assert expected.keys() == actual.keys()
      for name in expected:
        np.testing.assert_allclose(
          actual[name],
          expected[name],
          rtol=TOLERANCE,
          atol=TOLERANCE,
          err_msg=f"accumulation {accumulation}, step {step + 1}, {name}",
        )
      assert 0.0 <= actual["rewards/accuracies"] <= 1.0
    assert_trees_close(other_params, params)


def test_bfloat16_parameters_keep_their_dtypes_through_a_step(pieces):
  """The step's outputs have its inputs' dtypes (so a donated, jitted step
  compiles once, and bf16 weights keep bf16 Adam moments)."""
  policy = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), pieces.policy)
  state = step_lib.TrainState(
    step=jax.numpy.zeros((), jax.numpy.int32),
    params=policy,
    opt_state=pieces.optimizer.init(policy),
  )
  new_state, _ = pieces.step_fn("dpo", PLAIN)(
    state, pieces.reference, pieces.batches[0]
  )
  dtypes = lambda tree: [x.dtype for x in jax.tree.leaves(tree)]  # noqa: E731
  assert dtypes(new_state) == dtypes(state)

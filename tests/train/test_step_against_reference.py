"""One whole train step of every loss against a computation without the program.

The program's step (``train.step.train_step``: the model, the loss head, the
loss table, the example weighting, the gradient, AdamW) runs in float32 on a
fixed batch, with policy and reference weights that differ. The same step is
then computed without any of the program's code:

* per-example statistics from a float64 ``transformers`` forward of the same
  weights (:mod:`torch_reference`), naive log-softmax sums;
* the library's loss function, in float64, on those statistics, and the
  example-weighted mean over the batch;
* the gradient by ``torch.autograd`` through that forward;
* AdamW's first update written out by hand.

The loss, the gradient (read back from Adam's first moment, which after one
step is exactly ``(1 - b1) * gradient``), the gradient norm and the updated
parameters must agree.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import slpo_jax
from slpo_jax import losses
from slpo_jax import models
from train import batch as batch_lib
from train import config_schema
from train import objective
from train import step as step_lib

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
import torch_reference  # noqa: E402
from train_testing import one_loss_per_set_of_inputs  # noqa: E402

# float32 program against the float64 reference: composite ops.
RTOL = 1e-4
# Gradients per leaf: the absolute tolerance is relative to the leaf's
# largest entry (float32 rounding of sums over the whole batch).
GRAD_RTOL, GRAD_ATOL = 1e-4, 2e-5
DIFFERENTIABLE = torch_reference.DIFFERENTIABLE
# Weighted sums of losses, as TRL's loss_weights: the MPO recipe.
COMBINATIONS = {"sigmoid,bco_pair,sft": (0.8, 0.2, 1.0)}
# The last row is padding: weight 0, so it must count for nothing.
WEIGHTS = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])


def _optimizer_config():
  config = config_schema.get_config().optimizer
  config.learning_rate = 1e-3
  config.warmup_steps = 0
  config.decay = "constant"
  config.weight_decay = 0.1
  # Off, so that Adam's first moment holds the gradient itself.
  config.grad_clip_norm = 0.0
  return config


@pytest.fixture(scope="module")
def setup():
  """Weights, the batch and the float64 statistics of both models."""
  config = torch_reference.tiny_config()
  reference = torch_reference.random_params(config, seed=0)
  noise = torch_reference.random_params(config, seed=1)
  # The policy: the reference moved by a tenth of another random draw.
  policy = jax.tree.map(lambda r, n: r + 0.1 * n, reference, noise)
  policy_model = torch_reference.torch_model(config, policy)
  reference_model = torch_reference.torch_model(config, reference)
  batch = dict(torch_reference.pairs_batch(reference_model))
  batch["example_weight"] = WEIGHTS.astype(np.float32)
  policy_stats = torch_reference.pair_statistics(policy_model, batch)
  with torch.no_grad():
    reference_stats = torch_reference.pair_statistics(reference_model, batch)
  return dict(
    config=config,
    policy=policy,
    reference=reference,
    batch=batch,
    policy_model=policy_model,
    policy_stats=policy_stats,
    reference_stats=reference_stats,
  )


def _numpy(stats) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in stats.items()}


def _expected_step(setup, loss_name, loss_config, optimizer_config):
  """Loss, gradient and updated parameters, without the program."""
  spec = losses.weighted_loss(loss_name.split(","), loss_config.weights)
  hparams = {name: loss_config[name] for name in spec.hparams}
  policy = _numpy(setup["policy_stats"])
  reference = _numpy(setup["reference_stats"])
  data = {k: policy[k] for k in policy if k not in DIFFERENTIABLE}
  with jax.enable_x64(True):
    reference_stats = slpo_jax.PairStats(**reference)
    weights = jnp.asarray(WEIGHTS)

    def mean_loss(values):
      # A stateful loss (BCO's running mean) from its initial state.
      parts, _ = spec.apply(
        slpo_jax.PairStats(**values, **data),
        reference_stats,
        spec.initial_state(),
        **hparams,
      )
      per_example = sum(w * parts[term.name] for term, w in spec.terms)
      return jnp.sum(jnp.where(weights > 0, weights * per_example, 0.0)) / (
        jnp.sum(weights)
      )

    values = {k: jnp.asarray(policy[k]) for k in DIFFERENTIABLE}
    loss, cotangents = jax.value_and_grad(mean_loss)(values)
    loss = float(loss)
    cotangents = {k: np.asarray(v) for k, v in cotangents.items()}
  grads = torch_reference.gradients(
    setup["policy_model"], setup["policy_stats"], cotangents, setup["config"]
  )
  # AdamW's first step: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected to
  # g and g^2, then decoupled weight decay, all scaled by the rate.
  c = optimizer_config

  def adamw(param, grad):
    param = np.asarray(param, np.float64)
    m_hat = (1 - c.b1) * grad / (1 - c.b1)
    v_hat = (1 - c.b2) * grad**2 / (1 - c.b2)
    return param - c.learning_rate * (
      m_hat / (np.sqrt(v_hat) + c.eps) + c.weight_decay * param
    )

  updated = jax.tree.map(adamw, setup["policy"], grads)
  return loss, grads, updated


@functools.cache
def _program_step(loss_name: str):
  """The program's train step for ``loss_name``, jitted once."""
  config = torch_reference.tiny_config()
  loss_config = config_schema.get_config().loss
  loss_config.name = loss_name
  loss_config.weights = COMBINATIONS.get(loss_name, ())
  # Label noise for the losses that read it (exo_pair needs it above 0).
  loss_config.label_smoothing = 0.1
  optimizer = step_lib.make_optimizer(_optimizer_config(), total_steps=10)
  spec = step_lib.StepSpec(
    model=models.build(config),
    optimizer=optimizer,
    loss=objective.build_loss(loss_config),
    head=slpo_jax.HeadOptions(fused=False),
  )
  step = jax.jit(
    functools.partial(step_lib.train_step, spec=spec),
    compiler_options={"xla_backend_optimization_level": 0},
  )
  return step, optimizer, loss_config


def _assert_leaves_close(actual, expected, what):
  for (path, a), e in zip(
    jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)
  ):
    scale = float(np.max(np.abs(e)))
    np.testing.assert_allclose(
      np.asarray(a, np.float64),
      e,
      rtol=GRAD_RTOL,
      atol=GRAD_ATOL * max(scale, 1e-30),
      err_msg=f"{what} {jax.tree_util.keystr(path)}",
    )


# One loss per set of statistics read, and the combinations, in the default
# run (each loss's formula is also checked on its own against float64 and
# TRL references in tests/test_losses.py); every loss with -m slow.
_DEFAULT_RUN = set(one_loss_per_set_of_inputs()) | set(COMBINATIONS)


@pytest.mark.parametrize(
  "loss_name",
  [
    name if name in _DEFAULT_RUN else pytest.param(name, marks=pytest.mark.slow)
    for name in sorted(losses.LOSSES) + list(COMBINATIONS)
  ],
)
def test_train_step_matches_an_independent_computation(loss_name, setup):
  step, optimizer, loss_config = _program_step(loss_name)
  state = step_lib.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=setup["policy"],
    opt_state=optimizer.init(setup["policy"]),
    loss_state=losses.weighted_loss(loss_name.split(",")).initial_state()
    or None,
  )
  batch = jax.tree.map(jnp.asarray, batch_lib.padded(setup["batch"]))
  new_state, metrics = jax.device_get(step(state, setup["reference"], batch))
  loss, grads, updated = _expected_step(
    setup, loss_name, loss_config, _optimizer_config()
  )

  assert bool(metrics["finite"])
  np.testing.assert_allclose(metrics["loss"], loss, rtol=RTOL, atol=1e-6)
  stats = _numpy(setup["policy_stats"])
  for side in ("chosen", "rejected"):
    np.testing.assert_allclose(
      metrics[f"logits/{side}"],
      np.sum(WEIGHTS * stats[f"{side}_mean_logits"]) / np.sum(WEIGHTS),
      rtol=RTOL,
      err_msg=side,
    )
  # TRL's mean_token_accuracy: a share of the batch's chosen tokens.
  top1 = np.sum(WEIGHTS * stats["chosen_top1_tokens"])
  assert top1 > 0
  np.testing.assert_allclose(
    metrics["mean_token_accuracy"],
    top1 / np.sum(WEIGHTS * stats["chosen_lengths"]),
    rtol=RTOL,
  )
  # The gradient must be worth comparing: not zero at these weights.
  norm = np.sqrt(sum(np.sum(g**2) for g in jax.tree.leaves(grads)))
  assert norm > 1e-3, f"{loss_name}: gradient norm {norm}"
  np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=RTOL)
  b1 = _optimizer_config().b1
  program_grads = jax.tree.map(
    lambda mu: np.asarray(mu, np.float64) / (1 - b1),
    optax.tree_utils.tree_get(new_state.opt_state, "mu"),
  )
  _assert_leaves_close(program_grads, grads, "gradient")
  # Where the gradient is resolved, Adam's first step is the rate times its
  # sign plus the decay: compare the updated parameters there.
  for (path, new), want, g in zip(
    jax.tree_util.tree_leaves_with_path(new_state.params),
    jax.tree.leaves(updated),
    jax.tree.leaves(grads),
  ):
    resolved = np.abs(g) > 1e-2 * np.max(np.abs(g))
    np.testing.assert_allclose(
      np.asarray(new, np.float64)[resolved],
      want[resolved],
      rtol=0,
      atol=1e-6,
      err_msg=f"updated {jax.tree_util.keystr(path)}",
    )
  assert int(new_state.step) == 1

"""A train step on packed rows equals the step on the same pairs unpacked."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import slpo_jax
from slpo_jax import models
from tests.models import models_testing
from train import config_schema
from train import objective
from train import step as step_lib
from train import validate
from train.data import batching
from train.data import encode
from train.data import row_packing
from train.errors import ConfigError

from train_testing import read_metrics
from train_testing import train
from train_testing import train_losses

_LENGTH = 32


def _pairs(count=6, seed=0):
  rng = np.random.default_rng(seed)
  pairs = []
  for i in range(count):
    prompt = rng.integers(1, 500, rng.integers(2, 6)).astype(np.int32)
    chosen = rng.integers(1, 500, rng.integers(1, 8)).astype(np.int32)
    rejected = rng.integers(1, 500, rng.integers(1, 8)).astype(np.int32)
    if i % 3 == 1:  # A shared first response token.
      rejected[0] = chosen[0]
    pairs.append(encode.TokenizedPair(i, prompt, chosen, rejected))
  return pairs


def _reference_and_policy(model):
  """Random reference parameters and a policy a small step away from them."""
  reference = models_testing.random_params(model, seed=0, scale=0.3)
  noise = models_testing.random_params(model, seed=1, scale=1.0)
  return reference, jax.tree.map(lambda r, n: r + 0.05 * n, reference, noise)


_PLAIN_HEAD = slpo_jax.HeadOptions(fused=False)


# Compiled without backend optimisation: half the compile time on CPU.
@functools.partial(
  jax.jit,
  static_argnames=("model", "loss", "head", "precomputed"),
  compiler_options={"xla_backend_optimization_level": 0},
)
def sgd_step(
  params, reference, batch, *, model, loss, head=_PLAIN_HEAD, precomputed=False
):
  """The step's metrics and its gradient, from one SGD step of rate 1; with
  ``precomputed`` the batch carries the reference's log-probs."""
  loss_config = config_schema.get_config().loss
  loss_config.name = loss
  # Plain SGD with rate 1: the parameter change is minus the gradient.
  state = step_lib.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optax.sgd(1.0).init(params),
  )
  new_state, metrics = step_lib.train_step(
    state,
    None if precomputed else reference,
    batch,
    spec=step_lib.StepSpec(
      model=model,
      optimizer=optax.sgd(1.0),
      loss=objective.build_loss(loss_config),
      head=head,
    ),
  )
  grads = jax.tree.map(jnp.subtract, params, new_state.params)
  return metrics, grads


def test_packed_step_equals_unpacked_step():
  # DPO, soft SLPO (which reads the pair complement) and AOT (which sorts
  # the batch's pairs) as one summed loss: one compilation per layout, and
  # the metrics hold each term's loss.
  loss = "dpo,slpo_soft,aot"
  model = models.build(models.tiny_config("llama"))
  reference, policy = _reference_and_policy(model)
  entries = [(pair, 1.0) for pair in _pairs()]
  unpacked = batching.collate_pairs(entries, buckets=(_LENGTH,), pad_id=0)
  rows, slots = row_packing.layout_shape([entries], _LENGTH)
  packed = row_packing.pack_pairs(
    entries, packed_length=_LENGTH, pad_id=0, num_rows=rows, num_slots=slots
  )
  assert rows < len(entries)  # Several pairs share a row.
  want_metrics, want_grads = sgd_step(
    policy, reference, unpacked, model=model, loss=loss
  )
  got_metrics, got_grads = sgd_step(
    policy, reference, packed, model=model, loss=loss
  )
  assert bool(got_metrics["finite"])
  fraction = got_metrics.pop("real_token_fraction")
  real = np.sum(packed.chosen_attention_mask + packed.rejected_attention_mask)
  np.testing.assert_allclose(fraction, real / (2 * rows * _LENGTH), rtol=1e-6)
  assert got_metrics.keys() == want_metrics.keys()
  assert {"loss/dpo", "loss/slpo_soft", "loss/aot"} <= want_metrics.keys()
  for name in want_metrics:
    np.testing.assert_allclose(
      got_metrics[name], want_metrics[name], rtol=1e-5, atol=1e-5, err_msg=name
    )
  for (path, got), want in zip(
    jax.tree_util.tree_leaves_with_path(got_grads), jax.tree.leaves(want_grads)
  ):
    np.testing.assert_allclose(
      got, want, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path)
    )


def test_packed_rows_split_over_devices_give_the_same_step():
  """Four devices on the batch axis, each holding some of the packed rows."""
  devices = 4
  model = models.build(models.tiny_config("llama"))
  reference, policy = _reference_and_policy(model)
  entries = [(pair, 1.0) for pair in _pairs(count=8, seed=3)]
  unpacked = batching.collate_pairs(entries, buckets=(_LENGTH,), pad_id=0)
  rows, slots = row_packing.layout_shape(
    [entries], _LENGTH, row_multiple=devices
  )
  assert rows % devices == 0 and rows < len(entries)
  packed = row_packing.pack_pairs(
    entries, packed_length=_LENGTH, pad_id=0, num_rows=rows, num_slots=slots
  )
  mesh = slpo_jax.sharding.make_mesh(devices, devices=jax.devices()[:devices])
  spread = slpo_jax.sharding.global_batch(packed, mesh)
  assert len(spread.chosen_input_ids.sharding.device_set) == devices
  on_mesh = jax.device_put(
    (policy, reference), slpo_jax.sharding.replicated(mesh)
  )
  want, want_grads = sgd_step(
    policy, reference, unpacked, model=model, loss="dpo"
  )
  got, got_grads = sgd_step(*on_mesh, spread, model=model, loss="dpo")
  got.pop("real_token_fraction")
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_allclose(
      got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name
    )
  for got_leaf, want_leaf in zip(
    jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)
  ):
    np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["online", "precomputed"])
def test_training_on_packed_batches_matches_unpacked(
  mode, make_config, tmp_path
):
  """The whole program with data.packing: the same pairs in the same order,
  so the same losses, evaluation included (and the reference cache). The
  packed run splits its rows over two devices."""
  runs = {}
  for packed in (False, True):
    config = make_config(
      **{
        "data.packing": packed,
        "data.packed_length": 64,
        "reference.mode": mode,
        "eval_every": 2,
      }
    )
    workdir = tmp_path / f"packed_{packed}"
    runs[packed] = (train(config, workdir, devices=1 + packed), workdir)
  (unpacked, unpacked_dir), (packed, packed_dir) = runs[False], runs[True]
  assert int(packed.result.state.step) == 4
  np.testing.assert_allclose(
    list(train_losses(packed_dir).values()),
    list(train_losses(unpacked_dir).values()),
    rtol=1e-4,
  )
  np.testing.assert_allclose(
    packed.result.eval_metrics["eval/loss"],
    unpacked.result.eval_metrics["eval/loss"],
    rtol=1e-4,
  )
  logged = [m for m in read_metrics(packed_dir) if "real_token_fraction" in m]
  assert logged and all(0 < m["real_token_fraction"] <= 1 for m in logged)


def test_packing_refuses_accumulation(make_config):
  # Several devices are accepted; accumulation is not.
  validate.validate(make_config(**{"data.packing": True}), jax.devices()[:4])
  config = make_config(**{"data.packing": True, "grad_accum_steps": 2})
  with pytest.raises(ConfigError, match="data.packing"):
    validate.validate(config, jax.devices()[:1])

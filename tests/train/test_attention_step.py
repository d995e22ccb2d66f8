"""The train step with each fused attention kernel equals the blockwise step.

Splash and the Pallas GPU kernel run interpreted here; they mask by row
index, so the program's batches must hold contiguous segments whose
positions count from 0 (checked below for both layouts), and a whole step
on packed and on padded batches must equal the blockwise step to 1e-5 in
loss, metrics and gradients.
"""

import jax
import numpy as np
import pytest
from test_packed_step import _pairs
from test_packed_step import _reference_and_policy
from test_packed_step import sgd_step

import slpo_jax
from slpo_jax import models
from train import config_schema
from train import setup as setup_lib
from train import validate
from train.data import batching
from train.data import row_packing
from train.errors import ConfigError

_LENGTH = 40


def _batches():
  entries = [(pair, 1.0) for pair in _pairs(count=6, seed=5)]
  padded = batching.collate_pairs(entries, buckets=(_LENGTH,), pad_id=0)
  rows, slots = row_packing.layout_shape([entries], _LENGTH)
  packed = row_packing.pack_pairs(
    entries, packed_length=_LENGTH, pad_id=0, num_rows=rows, num_slots=slots
  )
  return {"padded": padded, "packed": packed}


def _model_masks(batch):
  """The segment ids and positions the model sees, as ``objective`` builds
  them (both sides stacked)."""
  mask = np.concatenate(
    [batch.chosen_attention_mask, batch.rejected_attention_mask]
  )
  if not batch.packed:
    return mask, np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  segments = np.concatenate([batch.segment_ids] * 2) * mask
  return segments, np.concatenate([batch.positions] * 2)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_batches_hold_contiguous_segments_counting_from_zero(layout):
  """The precondition of the row-index masks of splash and pallas_gpu."""
  segments, positions = _model_masks(_batches()[layout])
  for seg_row, pos_row in zip(segments, positions):
    for segment in set(seg_row.tolist()) - {0}:
      where = np.flatnonzero(seg_row == segment)
      np.testing.assert_array_equal(where, np.arange(where[0], where[-1] + 1))
      np.testing.assert_array_equal(pos_row[where], np.arange(len(where)))


def _step(kernel, batch, loss="dpo,slpo_soft"):
  model = models.build(
    models.tiny_config("llama", attention_impl=kernel, attention_block=128)
  )
  reference, policy = _reference_and_policy(model)
  head = slpo_jax.HeadOptions(fused=True, token_chunk_size=32)
  return sgd_step(policy, reference, batch, model=model, loss=loss, head=head)


def _assert_same_step(got, want):
  got_metrics, got_grads = got
  want_metrics, want_grads = want
  assert got_metrics.keys() == want_metrics.keys()
  for name in want_metrics:
    np.testing.assert_allclose(
      got_metrics[name], want_metrics[name], rtol=1e-5, atol=1e-5, err_msg=name
    )
  for (path, g), w in zip(
    jax.tree_util.tree_leaves_with_path(got_grads), jax.tree.leaves(want_grads)
  ):
    np.testing.assert_allclose(
      g, w, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path)
    )


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_splash_step_equals_blockwise_step(layout):
  batch = _batches()[layout]
  _assert_same_step(_step("splash", batch), _step("blockwise", batch))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_pallas_gpu_step_equals_blockwise_step(layout):
  batch = _batches()[layout]
  _assert_same_step(_step("pallas_gpu", batch), _step("blockwise", batch))


def _config(**changes):
  config = config_schema.get_config()
  for key, value in changes.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def test_cudnn_with_packing_is_one_config_error():
  config = _config(**{"model.attention_impl": "cudnn", "data.packing": True})
  with pytest.raises(ConfigError, match="cudnn takes no segment ids"):
    validate.validate(config, jax.devices()[:1])


@pytest.mark.parametrize(
  "impl,changes,message",
  [
    ("pallas_gpu", dict(sliding_window=8), "no sliding window"),
    ("cudnn", dict(attn_logit_softcap=20.0), "cannot cap attention logits"),
    ("cudnn", dict(dtype="float32"), "needs bfloat16 or float16"),
  ],
)
def test_a_kernel_the_model_cannot_use_is_one_config_error(
  impl, changes, message
):
  model_config = models.tiny_config("llama", **changes)
  config = _config(**{"model.attention_impl": impl})
  with pytest.raises(ConfigError, match=message):
    setup_lib.attention_kernel(config, model_config, "gpu")


@pytest.mark.parametrize(
  "platform,changes,expected",
  [
    ("tpu", {"data.packing": True}, "splash"),
    ("gpu", {"model.dtype": "bfloat16"}, "cudnn"),
    ("gpu", {"model.dtype": "float32"}, "pallas_gpu"),  # cuDNN: 16 bits.
    ("gpu", {"data.packing": True}, "pallas_gpu"),
  ],
)
def test_auto_becomes_the_platforms_kernel(platform, changes, expected):
  config = _config(**changes)
  model = setup_lib.abstract_model(config, 512, platform)
  assert model.config.attention_impl == expected

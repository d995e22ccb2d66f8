"""bench/gpu_train_step.py at tiny size, on the CPU: batch, FLOPs, step."""

import dataclasses
import functools

import jax
import numpy as np
import pytest

import slpo_jax
from bench import gpu_train_step as bench
from slpo_jax import models
from train import objective
from train.data import batching

# Compiled without backend optimisation: about half the compile time on CPU.
_FAST = {"xla_backend_optimization_level": 0}


def _options(**changes):
  return dataclasses.replace(bench.Options(**bench.SMOKE), **changes)


def test_packed_batch_holds_every_real_token_and_the_flops_count_them():
  options = _options(pairs=16)
  config = bench.model_config(options)
  pairs = bench.make_pairs(options, config.vocab_size)
  assert all(p.length <= options.max_length for p in pairs)
  batch = bench.packed_batch(pairs, options.packed_length)
  real = sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs)
  masks = batch.chosen_attention_mask + batch.rejected_attention_mask
  assert int(masks.sum()) == sum(bench.sequence_lengths(pairs)) == real
  assert batch.chosen_input_ids.shape[0] < len(pairs)  # Rows are shared.
  # 8 N per token, and attention: 8 layers (heads * head_dim) L (L + 1).
  n, width = bench.matmul_params(config), config.num_heads * config.head_dim
  want = 8 * n * 5 + 8 * config.num_layers * width * 5 * 6
  assert bench.step_flops(config, [5]) == want
  assert n == config.num_params - config.d_model * (
    config.vocab_size + 2 * config.num_layers + 1  # Embedding and norms.
  )


def test_measure_runs_steps_whose_first_loss_is_the_unpacked_loss():
  # bfloat16 weights (whose optimizer state the step keeps in bfloat16),
  # float32 compute so the packed and unpacked losses agree closely.
  options = _options(dtype="float32")
  result = bench.measure(options, compiler_options=_FAST)
  assert result["status"] == "done" and result["finite"]
  assert result["state_leaves_recast"] == 0
  assert len(result["step_seconds"]) == options.steps
  assert len(result["losses"]) == options.warmup + options.steps
  assert np.all(np.isfinite(result["losses"]))
  assert result["step_tokens"] == result["batch"]["real_tokens"]
  assert result["tokens_per_second"] > 0 and result["mfu"] is None

  # The first step's loss is at the initial weights: the same pairs
  # unpacked give the same DPO loss.
  model = models.build(bench.model_config(options))
  pairs = bench.make_pairs(options, model.config.vocab_size)
  unpacked = batching.collate_pairs(
    [(p, 1.0) for p in pairs], buckets=(options.max_length,), pad_id=0
  )
  loss = objective.build_loss(bench.loss_config())

  @functools.partial(jax.jit, compiler_options=_FAST)
  def mean_loss(batch):
    _, (sums, _) = objective.batch_loss(
      model,
      bench.init_policy(model),
      bench.init_reference(model),
      batch,
      loss=loss,
      head=slpo_jax.HeadOptions(fused=True),
    )
    return sums["loss"] / sums["weight"]

  want = float(mean_loss(unpacked))
  assert result["losses"][0] == pytest.approx(want, rel=1e-5, abs=1e-5)

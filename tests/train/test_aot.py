"""Compiling the train step ahead of time (``train.aot``)."""

import jax
import numpy as np
import pytest

from slpo_jax import models
from train import aot
from train import policy as policy_lib
from train import validate

from train_testing import build


@pytest.mark.parametrize("loss", ["dpo", "kto"])
def test_abstract_batch_is_the_pipelines_batch(make_config, tmp_path, loss):
  config = make_config(**{"loss.name": loss})
  run = build(config, tmp_path)
  real = run.to_device(next(run.train_iterator))
  mesh = validate.validate(config).mesh
  abstract = aot.abstract_batch(config, mesh, needs_reference_logps=False)
  assert type(abstract) is type(real)
  abstract, real = abstract.arrays(), real.arrays()
  assert abstract.keys() == real.keys()
  for name, value in real.items():
    assert abstract[name].shape == value.shape, name
    assert abstract[name].dtype == value.dtype, name
    assert abstract[name].sharding == value.sharding, name


@pytest.mark.parametrize("mode", ["online", "precomputed"])
def test_abstract_packed_batch_is_the_pipelines_batch(
  mode, make_config, tmp_path
):
  config = make_config(
    **{
      "data.packing": True,
      "data.packed_length": 256,
      "reference.mode": mode,
      "batch_size": 32,
    }
  )
  run = build(config, tmp_path)
  real = run.to_device(next(run.train_iterator))
  rows, slots = real.pair_example_weight.shape
  assert rows < config.batch_size  # Pairs share rows.
  mesh = validate.validate(config).mesh
  abstract = aot.abstract_batch(
    config,
    mesh,
    needs_reference_logps=mode == "precomputed",
    layout=aot.PackedLayout(rows, slots),
  )
  assert type(abstract) is type(real)
  abstract, real = abstract.arrays(), real.arrays()
  assert abstract.keys() == real.keys()
  for name, value in real.items():
    assert abstract[name].shape == value.shape, name
    assert abstract[name].dtype == value.dtype, name
    assert abstract[name].sharding == value.sharding, name


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_model_flops_match_the_compiled_step_on_cpu(make_config, lora_rank):
  # The same program compiled for this CPU: XLA's count of an unrolled
  # step is the matmuls of the analytic count plus the elementwise work
  # (softmax, norms, Adam), a few percent at this size but not more. With
  # LoRA the base's weight gradients are gone (4 N per token, not 6 N).
  config = make_config(
    **{
      "model.loss_head": "plain",
      "batch_size": 16,
      "model.lora.rank": lora_rank,
    }
  )
  compiled, spec = aot.compile_step(config, jax.devices())
  model = spec.model
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic = aot.model_flops(model, config, spec.loss)
  # cost_analysis counts the per-device program; the batch is split 8 ways.
  ratio = cost["flops"] * len(jax.devices()) / analytic
  assert 1.0 <= ratio <= 1.6, ratio


def test_unknown_generation_is_one_clear_error():
  with pytest.raises(ValueError, match="unknown TPU generation 'v9'"):
    aot.topology_devices("v9:2x2")


def _has_libtpu() -> bool:
  try:
    import libtpu  # noqa: F401
  except ImportError:
    return False
  return True


@pytest.mark.skipif(
  not _has_libtpu(),
  reason="libtpu is not installed (pip install -e '.[tpu-aot]')",
)
def test_tiny_step_compiles_for_a_v5e_topology(make_config):
  figures = aot.analyse(make_config(), "v5e:2x2")
  assert figures["devices"] == 4 and "v5" in figures["device_kind"]
  assert 0 < figures["total_bytes"] < figures["hbm_bytes"]
  assert figures["flops"] > 0 and 0 < figures["estimated_mfu"] <= 1
  assert np.isfinite(figures["roofline_step_seconds"])


def test_the_fused_head_never_gathers_the_batch(make_config):
  # Under plain jit, the fused head's walk over the flattened tokens of a
  # batch-sharded array (several tiles of 64 tokens here) made XLA gather
  # every device's rows, so each device ran the head on the whole batch;
  # run per shard, nothing with a row per token of the batch is gathered.
  config = make_config(
    **{"model.loss_head": "fused", "mesh.data": 8, "model.token_chunk_size": 64}
  )
  compiled, _ = aot.compile_step(config, jax.devices())
  tokens = config.batch_size * aot.sequence_length(config)  # One side.
  gathered = [
    line
    for line in compiled.as_text().splitlines()
    if "all-gather(" in line and f"[{tokens}" in line.split("=")[1]
  ]
  assert not gathered, gathered[0][:200]


def test_the_step_binds_the_models_activation_constraints(make_config):
  # The models name their activations' axes; traced without the rules and
  # the mesh in context (train.state.OnMesh) those names bind nothing and
  # the lowered step holds no sharding constraint at all.
  config = make_config(**{"mesh.data": 2, "mesh.fsdp": 4})
  lowered, spec = aot.lower_step(config, jax.devices())
  model = spec.model
  constraints = lowered.as_text().count("sharding_constraint")
  # One per block output and one after the embedding, at least.
  assert constraints >= model.config.num_layers + 1, constraints


def test_a_lora_step_takes_the_runs_adapters_and_base(make_config, tmp_path):
  # With LoRA the state holds the adapters and the frozen base (in
  # lora.base_dtype) comes as the reference, as in train.main's run.
  config = make_config(
    **{"model.lora.rank": 4, "mesh.data": 2, "mesh.fsdp": 4, "steps": 2}
  )
  run = build(config, tmp_path)
  lowered, _ = aot.lower_step(config, jax.devices())
  (state, reference, _), _ = lowered.args_info
  model, mesh = run.spec.model, run.spec.mesh
  _, adapters, adapter_shardings, base = policy_lib.abstract(
    config, model, model.shardings(mesh, models.logical_axis_rules()), mesh
  )
  for lowered_tree, abstract, real in (
    (state.params, adapters, run.initial_params),
    (reference, base, run.reference_params),
  ):
    assert jax.tree.structure(abstract) == jax.tree.structure(real)
    for info, a, r in zip(
      jax.tree.leaves(lowered_tree),
      jax.tree.leaves(abstract),
      jax.tree.leaves(real),
    ):
      assert info.shape == a.shape == r.shape
      assert info.dtype == a.dtype == r.dtype
      assert a.sharding == r.sharding
  assert adapter_shardings == jax.tree.map(
    lambda x: x.sharding, run.initial_params
  )


@pytest.mark.slow
@pytest.mark.skipif(
  not _has_libtpu(),
  reason="libtpu is not installed (pip install -e '.[tpu-aot]')",
)
@pytest.mark.parametrize(
  "module, shape, topology",
  [
    ("llama8b_tpu_pod", "llama3_8b", "v5p:4x4x2"),
    ("llama1b_tpu_v6e8", "llama3_2_1b", "v6e:2x4"),
    ("llama8b_lora_tpu_v6e8", "llama3_8b", "v6e:2x4"),
  ],
)
def test_tpu_configs_fit_as_their_docstrings_say(module, shape, topology):
  # Each TPU config's docstring quotes a compile; a fresh compile must agree
  # (total bytes per chip to 1%), so the numbers cannot go stale.
  import importlib
  import re

  config_module = importlib.import_module(f"configs.{module}")
  config = config_module.get_config("hh.jsonl.gz")  # Not read.
  config.model.checkpoint = str(
    aot.__file__.rsplit("/train/", 1)[0] + f"/configs/shapes/{shape}"
  )
  figures = aot.analyse(config, topology)
  quoted = re.search(
    r"([\d.]+) GiB in all", " ".join(config_module.__doc__.split())
  )
  assert quoted, "the docstring quotes no total"
  total_gib = figures["total_bytes"] / 1024**3
  assert total_gib == pytest.approx(float(quoted.group(1)), rel=0.01)
  assert figures["hbm_fraction"] <= 0.9  # At least 10% headroom.

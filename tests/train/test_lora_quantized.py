"""LoRA over a quantized frozen base (``model.lora.base_dtype`` int8, nf4)."""

import math

import jax
import numpy as np
import pytest

from slpo_jax import lora
from slpo_jax import models
from slpo_jax import quantize
from train import validate
from train.errors import ConfigError
from train.errors import IncompatibleCheckpointError

from train_testing import train
from train_testing import train_losses

LORA = {
  "model.lora.rank": 4,
  "mesh.data": 1,
  "steps": 2,
  "export.at_end": False,
}


def _write_base(folder):
  model = models.build(models.tiny_config("llama"))
  models.save_hf_checkpoint(model, model.init(jax.random.key(0)), folder)


def test_nf4_base_trains_exports_and_resumes_only_as_nf4(make_config, tmp_path):
  from tests.models import models_testing
  from train import export
  from train import sample

  _write_base(tmp_path / "base")
  config = make_config(
    **LORA,
    **{
      "model.checkpoint": str(tmp_path / "base"),
      "model.lora.base_dtype": "nf4",
      "model.lora.double_quant": True,
      "model.lora.dropout": 0.1,
      "optimizer.learning_rate": 1e-2,
    },
  )
  trained = train(config, tmp_path / "run", devices=1)
  run = trained.run
  base = run.reference_params
  # The frozen tree holds the projections as NF4 codes, nothing else moved.
  q = base["layers_0"]["attn"]["q"]
  assert "kernel" not in q and q["kernel_nf4"].dtype == np.uint8
  assert base["embed"]["embedding"].dtype == np.float32
  # The reference is the quantized base with adapters off: DPO starts at
  # log 2 exactly.
  assert train_losses(tmp_path / "run")[1] == pytest.approx(math.log(2))

  # The merged export: the dequantized base plus scale * A @ B, which gives
  # the logits of the policy the step trained (adapters in the layers).
  export.export_checkpoint(
    tmp_path / "run", tmp_path / "merged", format_name="merged"
  )
  merged_model, merged = models.load_hf_model(tmp_path / "merged")
  ids, mask = models_testing.right_padded_batch(300, (9, 6))
  adapters = trained.result.state.params
  policy = run.spec.policy
  in_layers = lora.layer_params(
    base, adapters, list(policy.sites), policy.config
  )
  ours = models_testing.apply(run.spec.model, in_layers, ids, mask)
  theirs = models_testing.apply(merged_model, merged, ids, mask)
  assert models_testing.max_masked_diff(ours, theirs, mask) <= 1e-4
  plain = models_testing.apply(run.spec.model, base, ids, mask)
  assert models_testing.max_masked_diff(ours, plain, mask) > 1e-3

  # train.sample reads the run back: the policy (merged from the
  # dequantized base) and the reference (the quantized base itself).
  for reference in (False, True):
    drawn = sample.sample(
      tmp_path / "run",
      prompt="ab",
      reference=reference,
      temperature=0.0,
      max_new_tokens=4,
    )
    assert 0 < len(drawn.token_ids[0]) <= 4

  config.steps = 3
  config.model.lora.base_dtype = "int8"
  with pytest.raises(IncompatibleCheckpointError, match="lora_base_dtype"):
    train(config, tmp_path / "run", devices=1)


@pytest.mark.parametrize(
  "changes, message",
  [
    (
      {"model.lora.base_dtype": "nf4", "mesh.tensor": 2},
      "base_dtype=nf4 with mesh.tensor=2",
    ),
    (
      {"model.lora.base_dtype": "nf4", "model.lora.targets": ("q",)},
      None,
    ),
  ],
)
def test_quantized_settings(make_config, changes, message):
  config = make_config(**{"model.lora.rank": 4, **changes})
  if message is None:
    validate.validate(config, jax.devices()[:1])
    return
  with pytest.raises(ConfigError, match=message) as info:
    validate.validate(config, jax.devices()[:8])
  assert "\n" not in str(info.value)


def test_a_kernel_nf4_cannot_cut_is_a_one_line_error():
  model = models.build(
    models.tiny_config("llama", d_model=24, num_heads=2, head_dim=6)
  )
  with pytest.raises(quantize.QuantizeError, match="NF4 block of 64") as info:
    quantize.check(model, "nf4")
  assert "\n" not in str(info.value)


@pytest.mark.slow
def test_int8_base_on_a_mesh_trains_like_on_one_device(make_config, tmp_path):
  """fsdp x data = 4 x 2: the stored kernels and adapters are split over the
  mesh, and the losses are those of the one-device run."""
  settings = {**LORA, "model.lora.base_dtype": "int8", "steps": 3}
  alone = train(make_config(**settings), tmp_path / "one", devices=1)
  meshed = train(
    make_config(**{**settings, "mesh.data": 2, "mesh.fsdp": 4}),
    tmp_path / "mesh",
    devices=8,
  )
  down = meshed.run.reference_params["layers_0"]["mlp"]["down"]
  assert "fsdp" in str(down["kernel_int8"].sharding.spec)
  assert "fsdp" in str(down["kernel_scale"].sharding.spec)
  lora_a = meshed.result.state.params["layers_0"]["mlp"]["down"]["lora_a"]
  assert len(lora_a.sharding.device_set) == 8
  want = train_losses(tmp_path / "one")
  for step, loss in train_losses(tmp_path / "mesh").items():
    assert loss == pytest.approx(want[step], abs=1e-5)
  del alone


@pytest.mark.slow
def test_adapters_on_packed_rows_with_a_precomputed_reference(
  make_config, tmp_path
):
  """The adapters inside the layers over an int8 base, on packed rows split
  over two devices with the reference precomputed once: the losses and the
  evaluation of the padded one-device run whose step computes the
  reference."""
  settings = {
    **LORA,
    "model.lora.base_dtype": "int8",
    "steps": 4,
    "eval_every": 2,
    "data.packed_length": 64,
    "optimizer.learning_rate": 1e-2,
  }
  padded = train(make_config(**settings), tmp_path / "padded", devices=1)
  packed_settings = {
    **settings,
    "data.packing": True,
    "mesh.data": 2,
    "reference.mode": "precomputed",
  }
  packed = train(make_config(**packed_settings), tmp_path / "packed", devices=2)
  assert packed.run.reference_params is not None  # The base stays.
  want = train_losses(tmp_path / "padded")
  got = train_losses(tmp_path / "packed")
  assert list(got) == list(want) == [1, 2, 3, 4]
  # Adapters start at zero: the first step's loss is log 2; later steps move.
  assert got[1] == pytest.approx(math.log(2), abs=1e-6)
  assert abs(got[4] - got[1]) > 1e-3
  np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=1e-4)
  np.testing.assert_allclose(
    packed.result.eval_metrics["eval/loss"],
    padded.result.eval_metrics["eval/loss"],
    rtol=1e-4,
  )

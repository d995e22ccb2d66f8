"""LoRA runs: adapters trained over a frozen base (``config.model.lora``)."""

import math

import jax
import numpy as np
import optax
import pytest

from slpo_jax import models
from train import validate
from train.errors import ConfigError
from train.errors import IncompatibleCheckpointError

from train_testing import assert_trees_equal
from train_testing import build
from train_testing import host_copy
from train_testing import train
from train_testing import train_losses

LORA = {
  "model.lora.rank": 4,
  "mesh.data": 1,
  "steps": 2,
  "export.at_end": False,
}


def _logits(model, params, ids):
  return np.asarray(jax.jit(model.apply)(params, ids))


def test_lora_trains_only_the_adapters(make_config, tmp_path):
  config = make_config(**LORA)
  run = build(config, tmp_path / "run", devices=1)
  base = host_copy(run.reference_params)
  adapters = run.initial_params
  # The state's params are the adapters alone, sharded like their kernels.
  assert set(adapters) == {"layers_0", "layers_1"}
  assert set(adapters["layers_0"]["attn"]["q"]) == {"lora_a", "lora_b"}
  ids = np.arange(24, dtype=np.int32).reshape(2, 12)
  np.testing.assert_array_equal(
    _logits(run.spec.model, run.policy_params(adapters), ids),
    _logits(run.spec.model, run.reference_params, ids),
  )
  from train import loop

  result = loop.train_and_evaluate(config, tmp_path / "run", run=run)
  # Policy = reference at step 0: DPO's first loss is log 2 exactly.
  losses = train_losses(tmp_path / "run")
  assert losses[1] == pytest.approx(math.log(2), abs=1e-6)
  assert_trees_equal(host_copy(run.reference_params), base)
  # Optimizer moments mirror the adapters, nothing of the base.
  adapter_size = sum(x.size for x in jax.tree.leaves(adapters))
  moments = [
    x
    for x in jax.tree.leaves(result.state.opt_state)
    if getattr(x, "ndim", 0) > 0
  ]
  assert sum(x.size for x in moments) == 2 * adapter_size
  mu = optax.tree_utils.tree_get(result.state.opt_state, "mu")
  assert jax.tree.structure(mu) == jax.tree.structure(adapters)
  assert not np.array_equal(
    result.state.params["layers_0"]["attn"]["q"]["lora_b"], 0
  )


@pytest.mark.slow
def test_precomputed_reference_trains_like_the_online_one(
  make_config, tmp_path
):
  train(make_config(**LORA), tmp_path / "online", devices=1)
  precomputed = train(
    make_config(**LORA, **{"reference.mode": "precomputed"}),
    tmp_path / "precomputed",
    devices=1,
  )
  assert precomputed.run.reference_params is not None  # The base stays.
  online = train_losses(tmp_path / "online")
  for step, loss in train_losses(tmp_path / "precomputed").items():
    assert loss == pytest.approx(online[step], abs=1e-5)


def _write_base(folder, seed):
  model = models.build(models.tiny_config("llama"))
  params = model.init(jax.random.key(seed))
  models.save_hf_checkpoint(model, params, folder)


@pytest.mark.slow
def test_exports_and_resume_against_another_base(make_config, tmp_path):
  """PEFT and merged exports give the same logits in peft and transformers;
  resuming after the base's weights changed is refused."""
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  from tests.models import models_testing
  from train import export

  _write_base(tmp_path / "base", seed=0)
  config = make_config(
    **{**LORA, "model.checkpoint": str(tmp_path / "base")},
    **{"optimizer.learning_rate": 1e-2},
  )
  trained = train(config, tmp_path / "run", devices=1)
  export.export_checkpoint(
    tmp_path / "run", tmp_path / "peft", format_name="peft"
  )
  export.export_checkpoint(
    tmp_path / "run", tmp_path / "merged", format_name="merged"
  )
  ids, mask = models_testing.right_padded_batch(300, (9, 6))
  base_model = transformers.AutoModelForCausalLM.from_pretrained(
    tmp_path / "base"
  )
  base_logits = models_testing.hf_logits(base_model, ids, mask)
  with_adapters = peft.PeftModel.from_pretrained(base_model, tmp_path / "peft")
  peft_logits = models_testing.hf_logits(with_adapters.eval(), ids, mask)
  merged = transformers.AutoModelForCausalLM.from_pretrained(
    tmp_path / "merged"
  )
  merged_logits = models_testing.hf_logits(merged, ids, mask)
  ours = _logits(
    trained.run.spec.model,
    trained.run.policy_params(trained.result.state.params),
    ids,
  )
  assert (
    models_testing.max_masked_diff(peft_logits, merged_logits, mask) <= 1e-4
  )
  assert models_testing.max_masked_diff(ours, merged_logits, mask) <= 1e-4
  assert models_testing.max_masked_diff(ours, base_logits, mask) > 1e-3

  _write_base(tmp_path / "base", seed=1)  # Same path, other weights.
  config.steps = 3
  with pytest.raises(IncompatibleCheckpointError, match="lora_base_weights"):
    train(config, tmp_path / "run", devices=1)


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"model.lora.targets": ("q", "c_attn")}, "'c_attn' matches no parameter"),
    ({"model.lora.rank": 64}, "rank 64 exceeds dimension 32"),
    ({"model.lora.dropout": -0.1}, "dropout"),
    (
      {"model.lora.dropout": 0.1, "model.lora.targets": ("q", "lm_head")},
      "dropout 0.1 with the lm_head target",
    ),
    ({"model.lora.rank": -1}, "integer >= 0"),
    ({"model.lora.base_dtype": "float16"}, "base_dtype"),
    ({"reference.sync_every": 2}, "reference.sync_every"),
    ({"reference.checkpoint": "/some/model"}, "reference.checkpoint"),
    ({"model.lora.init_from": "/no/such/folder"}, "init_from"),
  ],
)
def test_bad_lora_settings_are_one_line_errors(make_config, changes, message):
  config = make_config(**{"model.lora.rank": 4, **changes})
  with pytest.raises(ConfigError, match=message) as info:
    validate.validate(config, jax.devices()[:1])
  assert "\n" not in str(info.value)

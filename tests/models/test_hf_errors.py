"""Bad checkpoint folders raise a ``CheckpointError`` naming file and tensor."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from slpo_jax import models

from models_testing import random_params


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
  """A valid tiny Llama checkpoint written by our exporter."""
  folder = tmp_path_factory.mktemp("good")
  model = models.build(models.tiny_config("llama", vocab_size=64))
  models.save_hf_checkpoint(model, random_params(model), folder)
  return folder


def _copy(src, dst, *, tensors=None, config=None):
  """Copies a checkpoint folder, optionally replacing tensors or config."""
  dst.mkdir(parents=True, exist_ok=True)
  hf_config = json.loads((src / "config.json").read_text())
  if config is not None:
    hf_config.update(config)
  (dst / "config.json").write_text(json.dumps(hf_config))
  weights = load_file(src / "model.safetensors")
  if tensors is not None:
    weights = tensors(weights)
  save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
  return dst


def test_error_is_a_value_error():
  assert issubclass(models.CheckpointError, ValueError)


def test_missing_folder(tmp_path):
  with pytest.raises(models.CheckpointError, match="not a checkpoint folder"):
    models.load_hf_model(tmp_path / "nowhere")


def test_missing_config(good_checkpoint, tmp_path):
  (tmp_path / "model.safetensors").write_bytes(
    (good_checkpoint / "model.safetensors").read_bytes()
  )
  with pytest.raises(
    models.CheckpointError, match=r"config\.json: missing"
  ) as info:
    models.load_hf_checkpoint(tmp_path)
  assert str(tmp_path) in str(info.value)


def test_unreadable_config(tmp_path):
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(models.CheckpointError, match="unreadable JSON"):
    models.load_hf_config(tmp_path)


@pytest.mark.parametrize("model_type", ["bert", "falcon", None])
def test_unsupported_architecture(good_checkpoint, tmp_path, model_type):
  _copy(good_checkpoint, tmp_path, config={"model_type": model_type})
  with pytest.raises(
    models.CheckpointError, match=f"unsupported model_type {model_type!r}"
  ) as info:
    models.load_hf_model(tmp_path)
  assert "config.json" in str(info.value)
  assert "gpt2, llama, mistral, qwen2" in str(info.value)


@pytest.mark.parametrize(
  "model_type,named",
  [("qwen3_moe", "Qwen3 MoE"), ("gemma3", "multimodal Gemma 3")],
)
def test_refused_architecture_is_named(
  good_checkpoint, tmp_path, model_type, named
):
  _copy(good_checkpoint, tmp_path, config={"model_type": model_type})
  with pytest.raises(models.CheckpointError, match=named) as info:
    models.load_hf_model(tmp_path)
  assert f"({model_type})" in str(info.value)


@pytest.mark.parametrize(
  "changes,field",
  [
    ({"model_type": "qwen3", "use_sliding_window": True}, "use_sliding_window"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
    ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ({"pretraining_tp": 2}, "pretraining_tp"),
    (
      {
        "rope_parameters": {
          "rope_type": "default",
          "partial_rotary_factor": 0.5,
        }
      },
      "partial_rotary_factor",
    ),
  ],
)
def test_unsupported_field_is_named(good_checkpoint, tmp_path, changes, field):
  _copy(good_checkpoint, tmp_path, config=changes)
  with pytest.raises(models.CheckpointError, match=field):
    models.load_hf_model(tmp_path)


def test_unsupported_rope_type(good_checkpoint, tmp_path):
  _copy(
    good_checkpoint,
    tmp_path,
    config={
      "rope_scaling": None,
      "rope_parameters": {
        "rope_type": "yarn",
        "factor": 4.0,
        "rope_theta": 1e4,
      },
    },
  )
  with pytest.raises(models.CheckpointError, match="rope type 'yarn'"):
    models.load_hf_model(tmp_path)


def test_missing_tensor(good_checkpoint, tmp_path):
  name = "model.layers.1.mlp.up_proj.weight"
  _copy(
    good_checkpoint,
    tmp_path,
    tensors=lambda w: {k: v for k, v in w.items() if k != name},
  )
  with pytest.raises(
    models.CheckpointError, match=f"missing tensor '{name}'"
  ) as info:
    models.load_hf_model(tmp_path)
  assert "model.safetensors" in str(info.value)


def test_missing_embedding_under_any_prefix(good_checkpoint, tmp_path):
  name = "model.embed_tokens.weight"
  _copy(
    good_checkpoint,
    tmp_path,
    tensors=lambda w: {k: v for k, v in w.items() if k != name},
  )
  with pytest.raises(models.CheckpointError, match=f"missing tensor '{name}'"):
    models.load_hf_model(tmp_path)


def test_misshaped_tensor(good_checkpoint, tmp_path):
  name = "model.layers.0.self_attn.k_proj.weight"

  def truncate(weights):
    weights[name] = weights[name][:-1]
    return weights

  _copy(good_checkpoint, tmp_path, tensors=truncate)
  with pytest.raises(models.CheckpointError) as info:
    models.load_hf_model(tmp_path)
  message = str(info.value)
  assert f"tensor '{name}'" in message
  assert "model.safetensors" in message
  assert "shape [31, 64], expected [32, 64]" in message


def test_config_and_tensors_disagree(good_checkpoint, tmp_path):
  _copy(good_checkpoint, tmp_path, config={"intermediate_size": 100})
  with pytest.raises(
    models.CheckpointError, match="mlp.gate_proj.weight' has shape"
  ):
    models.load_hf_model(tmp_path)


def test_integer_tensor(good_checkpoint, tmp_path):
  name = "model.norm.weight"

  def quantise(weights):
    weights[name] = weights[name].astype(np.int8)
    return weights

  _copy(good_checkpoint, tmp_path, tensors=quantise)
  with pytest.raises(
    models.CheckpointError, match=f"tensor '{name}' has dtype int8"
  ):
    models.load_hf_model(tmp_path)


@pytest.mark.parametrize("dtype", ["int8", "float64", "complex64", "nonsense"])
def test_unusable_compute_dtype(good_checkpoint, dtype):
  with pytest.raises(models.CheckpointError, match="dtype"):
    models.load_hf_model(good_checkpoint, dtype=dtype)
  with pytest.raises(models.CheckpointError, match="dtype"):
    models.load_hf_checkpoint(good_checkpoint, param_dtype=dtype)


def test_no_safetensors(good_checkpoint, tmp_path):
  (tmp_path / "config.json").write_text(
    (good_checkpoint / "config.json").read_text()
  )
  (tmp_path / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(
    models.CheckpointError, match="no model.safetensors .*pytorch_model.bin"
  ):
    models.load_hf_model(tmp_path)


def test_corrupt_safetensors(good_checkpoint, tmp_path):
  (tmp_path / "config.json").write_text(
    (good_checkpoint / "config.json").read_text()
  )
  (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
  with pytest.raises(models.CheckpointError, match="model.safetensors"):
    models.load_hf_model(tmp_path)


def test_index_names_missing_shard(good_checkpoint, tmp_path):
  (tmp_path / "config.json").write_text(
    (good_checkpoint / "config.json").read_text()
  )
  (tmp_path / "model.safetensors.index.json").write_text(
    json.dumps(
      {"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}
    )
  )
  with pytest.raises(
    models.CheckpointError, match="shard file model-00001-of-00002.safetensors"
  ):
    models.load_hf_model(tmp_path)


def test_wrong_sharding_tree(good_checkpoint):
  with pytest.raises(ValueError, match="structure of the parameters"):
    models.load_hf_model(good_checkpoint, shardings={"embed": None})


def test_abstract_load_reads_only_config(good_checkpoint, tmp_path):
  (tmp_path / "config.json").write_text(
    (good_checkpoint / "config.json").read_text()
  )
  model, shapes = models.load_hf_model(tmp_path, abstract=True)
  assert shapes["embed"]["embedding"].shape == (64, 64)
  assert model.config.vocab_size == 64


def test_load_onto_a_mesh(good_checkpoint):
  """Each tensor is placed on its sharding as it is read."""
  mesh = jax.sharding.Mesh(
    np.array(jax.devices()[:8]).reshape(1, 2, 4), ("data", "fsdp", "tensor")
  )
  model, params = models.load_hf_model(good_checkpoint, shardings=mesh)
  _, plain = models.load_hf_model(good_checkpoint)
  expected = model.shardings(mesh)
  for leaf, sharding, reference in zip(
    jax.tree.leaves(params), jax.tree.leaves(expected), jax.tree.leaves(plain)
  ):
    assert leaf.sharding == sharding
    np.testing.assert_array_equal(leaf, reference)
  embedding = params["embed"]["embedding"]
  assert embedding.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  assert embedding.addressable_shards[0].data.shape == (16, 32)

"""Helpers shared by the model tests.

* Tiny randomly initialised ``transformers`` reference models, built locally
  (no hub access), with every parameter, norms and biases included,
  randomised so that a mix-up of any two tensors or a dropped bias changes
  the logits.
* ``random_params``: parameters drawn with NumPy. Compiling ``DecoderLM.init``
  costs seconds of CPU per configuration (one threefry program per
  parameter), so tests that only need some weights use this instead.
* ``apply``: ``DecoderLM.apply`` jitted with the model static, so every test
  with the same configuration and shapes shares one compilation.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

# Shapes small enough that a forward pass takes milliseconds, with
# num_kv_heads < num_heads so grouped-query attention is exercised.
_LLAMA_SHAPE = dict(
  vocab_size=128,
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=64,
)


def hf_config(kind: str) -> Any:
  """A ``transformers`` config for one of the reference model kinds."""
  import transformers

  if kind == "gpt2":
    return transformers.GPT2Config(
      vocab_size=128,
      n_positions=64,
      n_embd=32,
      n_layer=2,
      n_head=4,
      activation_function="gelu_new",
      resid_pdrop=0.0,
      embd_pdrop=0.0,
      attn_pdrop=0.0,
      bos_token_id=1,
      eos_token_id=2,
    )
  if kind == "llama":
    return transformers.LlamaConfig(**_LLAMA_SHAPE, tie_word_embeddings=True)
  if kind == "llama3":
    # head_dim 8 with theta 1e4 gives wavelengths 6.3, 63, 628, 6283: with
    # an original length of 16 they fall in the kept, smoothed and divided
    # bands of the Llama 3 scaling. Untied head, attention and MLP biases.
    return transformers.LlamaConfig(
      **_LLAMA_SHAPE,
      tie_word_embeddings=False,
      attention_bias=True,
      mlp_bias=True,
      rope_theta=10000.0,
      rope_scaling={
        "rope_type": "llama3",
        "factor": 4.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
      },
    )
  if kind == "qwen2":
    return transformers.Qwen2Config(
      **_LLAMA_SHAPE, tie_word_embeddings=True, rope_theta=1000000.0
    )
  if kind == "mistral":
    # A window shorter than the test sequences, so it masks something.
    return transformers.MistralConfig(
      **_LLAMA_SHAPE, sliding_window=4, tie_word_embeddings=False
    )
  if kind == "qwen3":
    # head_dim 16 is not hidden_size / heads (8), and the q/k norms are
    # randomised like every other norm.
    return transformers.Qwen3Config(
      **_LLAMA_SHAPE, head_dim=16, tie_word_embeddings=False
    )
  if kind == "gemma":
    # Multi-query attention and head_dim 16 independent of d_model / heads.
    return transformers.GemmaConfig(
      **{**_LLAMA_SHAPE, "num_key_value_heads": 1}, head_dim=16
    )
  if kind == "gemma2":
    # Window 4 < the test's 12 tokens on the sliding layer (layer 0), a
    # query_pre_attn_scalar that is not head_dim, and caps low enough to
    # bite on random weights.
    return transformers.Gemma2Config(
      **_LLAMA_SHAPE,
      head_dim=16,
      sliding_window=4,
      query_pre_attn_scalar=24,
      attn_logit_softcapping=2.0,
      final_logit_softcapping=3.0,
    )
  if kind == "gemma3":
    # Local layers on their own rotary base (100, so that it differs within
    # 12 positions), linear scaling on the global one, q/k norms.
    return transformers.Gemma3TextConfig(
      **_LLAMA_SHAPE,
      head_dim=16,
      sliding_window=4,
      layer_types=["sliding_attention", "full_attention"],
      query_pre_attn_scalar=24,
      rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
        "full_attention": {
          "rope_type": "linear",
          "factor": 4.0,
          "rope_theta": 10000.0,
        },
      },
    )
  if kind == "phi3":
    # Fused qkv_proj and gate_up_proj; a window shorter than the batch.
    return transformers.Phi3Config(
      **_LLAMA_SHAPE,
      sliding_window=5,
      pad_token_id=0,
      bos_token_id=1,
      eos_token_id=2,
    )
  raise ValueError(kind)


HF_KINDS = (
  "gpt2",
  "llama",
  "llama3",
  "qwen2",
  "mistral",
  "qwen3",
  "gemma",
  "gemma2",
  "gemma3",
  "phi3",
)


def randomize(hf_model: Any, seed: int) -> Any:
  """Draws every parameter at random (norm scales around one)."""
  import torch

  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in hf_model.named_parameters():
      noise = torch.randn(param.shape, generator=generator) * 0.2
      is_norm = "norm" in name or "ln_" in name
      param.copy_(noise + 1.0 if is_norm and name.endswith("weight") else noise)
  return hf_model.eval()


def make_hf_model(kind: str, seed: int = 0) -> Any:
  import transformers

  config = hf_config(kind)
  config._attn_implementation = "eager"
  return randomize(transformers.AutoModelForCausalLM.from_config(config), seed)


def hf_logits(hf_model: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  import torch

  with torch.no_grad():
    out = hf_model(
      input_ids=torch.from_numpy(np.asarray(ids, np.int64)),
      attention_mask=torch.from_numpy(np.asarray(mask, np.int64)),
    )
  return out.logits.float().numpy()


def right_padded_batch(
  vocab_size: int, lengths: tuple[int, ...], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Random ids, right-padded with 0, and the matching mask."""
  rng = np.random.default_rng(seed)
  width = max(lengths)
  ids = rng.integers(3, vocab_size, size=(len(lengths), width)).astype(np.int32)
  mask = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(
    np.int32
  )
  return ids * mask, mask


def max_masked_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
  """Largest |a - b| over the positions where ``mask`` is 1."""
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))[mask.astype(bool)]))


def random_params(model: Any, seed: int = 0, scale: float = 0.2) -> Any:
  """Random float32 parameters for ``model`` (norm scales around one)."""
  rng = np.random.default_rng(seed)
  flat, treedef = jax.tree_util.tree_flatten_with_path(model.abstract_params())
  leaves = []
  for path, leaf in flat:
    noise = rng.normal(size=leaf.shape).astype(np.float32) * scale
    is_scale = getattr(path[-1], "key", None) == "scale"
    leaves.append(jax.numpy.asarray(noise + 1.0 if is_scale else noise))
  return jax.tree_util.tree_unflatten(treedef, leaves)


@functools.partial(jax.jit, static_argnums=0)
def apply(model: Any, params: Any, ids: Any, mask: Any) -> jax.Array:
  return model.apply(params, ids, mask)


@functools.partial(jax.jit, static_argnums=0)
def hidden_states(model: Any, params: Any, ids: Any, mask: Any) -> Any:
  return model.hidden_states(params, ids, mask)

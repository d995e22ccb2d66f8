"""Flax decoder language models, Hugging Face checkpoints, and sampling.

Two families cover GPT-2 and the rotary, RMSNorm, gated-MLP models (Llama,
Mistral, Qwen2, Qwen3, Gemma 1-3 text, Phi-3):

>>> import jax
>>> from slpo_jax import models
>>> model = models.build(models.tiny_config("llama"))
>>> params = model.init(jax.random.key(0))
>>> logits = model.apply(params, jax.numpy.ones((2, 8), "int32"))
>>> logits.shape, logits.dtype
((2, 8, 512), dtype('float32'))

Checkpoints written by ``save_pretrained`` load with ``load_hf_model`` /
``load_hf_checkpoint`` and are written back with ``save_hf_checkpoint``.
"""

from slpo_jax.models.attention import AttentionMask
from slpo_jax.models.attention_choice import ATTENTION_IMPLS
from slpo_jax.models.attention_choice import choose as choose_attention
from slpo_jax.models.attention_choice import (
  unsupported as unsupported_attention,
)
from slpo_jax.models.config import REMAT_POLICIES
from slpo_jax.models.config import DecoderConfig
from slpo_jax.models.config import RopeScaling
from slpo_jax.models.hf_config import SUPPORTED_MODEL_TYPES
from slpo_jax.models.hf_config import CheckpointError
from slpo_jax.models.hf_config import config_from_hf
from slpo_jax.models.hf_config_export import config_to_hf
from slpo_jax.models.hf_io import load_hf_checkpoint
from slpo_jax.models.hf_io import load_hf_config
from slpo_jax.models.hf_io import load_hf_model
from slpo_jax.models.hf_io import save_hf_checkpoint
from slpo_jax.models.model import DecoderLM
from slpo_jax.models.model import build
from slpo_jax.models.model import logits_from_hidden
from slpo_jax.models.model import position_ids
from slpo_jax.models.partitioning import DEFAULT_RULES
from slpo_jax.models.partitioning import logical_axis_rules
from slpo_jax.models.partitioning import param_partition_specs
from slpo_jax.models.partitioning import param_shardings
from slpo_jax.models.presets import SIZES
from slpo_jax.models.presets import get_config
from slpo_jax.models.presets import tiny_config
from slpo_jax.models.reward_model import RewardModel
from slpo_jax.models.reward_model import load_hf_reward_model
from slpo_jax.models.reward_model import save_hf_reward_model
from slpo_jax.models.reward_model import write_score_head
from slpo_jax.models.sample_scores import SampleScores
from slpo_jax.models.sample_scores import score_samples
from slpo_jax.models.sample_scores import sequence_kl
from slpo_jax.models.sampling import SampleOutput
from slpo_jax.models.sampling import generate

__all__ = [
  "ATTENTION_IMPLS",
  "AttentionMask",
  "CheckpointError",
  "DEFAULT_RULES",
  "DecoderConfig",
  "DecoderLM",
  "REMAT_POLICIES",
  "RewardModel",
  "RopeScaling",
  "SIZES",
  "SUPPORTED_MODEL_TYPES",
  "SampleOutput",
  "SampleScores",
  "build",
  "choose_attention",
  "config_from_hf",
  "config_to_hf",
  "generate",
  "get_config",
  "load_hf_checkpoint",
  "load_hf_config",
  "load_hf_model",
  "load_hf_reward_model",
  "logical_axis_rules",
  "logits_from_hidden",
  "param_partition_specs",
  "param_shardings",
  "position_ids",
  "save_hf_checkpoint",
  "save_hf_reward_model",
  "score_samples",
  "sequence_kl",
  "tiny_config",
  "unsupported_attention",
  "write_score_head",
]

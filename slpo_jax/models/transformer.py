"""The Flax decoder: embeddings, a stack of blocks, the final norm.

``Decoder`` returns the final hidden states, not logits: the output projection
is applied by ``DecoderLM`` (or fused into a log-probability kernel by the
caller), so a ``[B, T, V]`` tensor is only built when someone asks for it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from slpo_jax.models import adapted
from slpo_jax.models import layers
from slpo_jax.models.attention import AttentionMask
from slpo_jax.models.config import DecoderConfig

Array = jax.Array
# Unscanned: a tuple with one {"k", "v"} dict per layer. Scanned: one dict of
# arrays with a leading layer axis.
Cache = tuple[layers.KVCache, ...] | layers.KVCache


class Embed(nn.Embed):
  """``nn.Embed`` that adds a LoRA adapter when its node carries one."""

  def __call__(self, inputs: Array) -> Array:
    out = super().__call__(inputs)
    if adapted.has_adapter(self):
      out = out + adapted.embedding_update(self, inputs, self.dtype)
    return out


_REMAT_POLICIES = {
  "full": None,
  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _block_class(config: DecoderConfig) -> type[nn.Module]:
  if not config.remat:
    return layers.DecoderBlock
  # ``prevent_cse`` is only needed outside a scan; inside one it blocks
  # useful optimisations (see the ``flax.linen.remat`` docs).
  return nn.remat(
    layers.DecoderBlock,
    prevent_cse=not config.scan_layers,
    policy=_REMAT_POLICIES[config.remat_policy],
  )


class Decoder(nn.Module):
  """Token ids to final hidden states, ``[B, T] -> [B, T, d_model]``."""

  config: DecoderConfig

  @nn.compact
  def __call__(
    self,
    input_ids: Array,
    mask: AttentionMask,
    cache: Cache | None = None,
    cache_index: Array | None = None,
  ) -> tuple[Array, Cache | None]:
    """Runs the decoder.

    Args:
      input_ids: ``[B, T]`` int token ids.
      mask: the ``AttentionMask``; its query positions are the tokens'
        position ids.
      cache: optional KV cache from ``DecoderLM.init_cache``.
      cache_index: cache slot of the first token of ``input_ids``.

    Returns:
      ``(hidden [B, T, d_model] in the compute dtype, updated cache)``.
    """
    cfg = self.config
    embed = Embed(
      cfg.vocab_size,
      cfg.d_model,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      embedding_init=nn.with_logical_partitioning(
        nn.initializers.normal(layers.INIT_STDDEV), ("vocab", "embed")
      ),
      name="embed",
    )
    x = embed(input_ids)
    if cfg.embed_scale:
      # Gemma rounds sqrt(d_model) to the compute dtype first (55.4 becomes
      # 55.5 in bfloat16 at d = 3072), as transformers does.
      x = x * jnp.asarray(cfg.d_model**0.5, cfg.dtype)
    if cfg.family == "gpt2":
      pos_embed = nn.Embed(
        cfg.max_len,
        cfg.d_model,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        embedding_init=nn.with_logical_partitioning(
          nn.initializers.normal(layers.INIT_STDDEV), ("positions", "embed")
        ),
        name="pos_embed",
      )
      x = x + pos_embed(mask.query_positions)
    x = nn.with_logical_constraint(
      x, ("activation_batch", "activation_length", "activation_embed")
    )

    block = _block_class(cfg)
    sliding = tuple(w is not None for w in cfg.layer_windows())
    if cfg.scan_layers:
      # Layers of both kinds share one scanned block; each reads its kind
      # from a scanned flag. Alike layers keep the kind static.
      mixed = len(set(sliding)) > 1
      layer_sliding = jnp.asarray(sliding) if mixed else None
      stack = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, 0, nn.broadcast, nn.broadcast),
        length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )
      x, cache = stack(cfg, None if mixed else sliding[0], name="layers")(
        x, cache, layer_sliding, mask, cache_index
      )
    else:
      new_cache = []
      for i in range(cfg.num_layers):
        layer_cache = None if cache is None else cache[i]
        x, layer_cache = block(cfg, sliding[i], name=f"layers_{i}")(
          x, layer_cache, None, mask, cache_index
        )
        new_cache.append(layer_cache)
      cache = None if cache is None else tuple(new_cache)

    x = layers.norm(cfg, "final_norm")(x)
    if not cfg.tie_embeddings:
      # Declared here so that ``init`` creates it; ``DecoderLM`` applies it.
      self.param(
        "lm_head",
        nn.with_logical_partitioning(
          nn.initializers.normal(layers.INIT_STDDEV), ("embed", "vocab")
        ),
        (cfg.d_model, cfg.vocab_size),
        cfg.param_dtype,
      )
    return x, cache


def init_cache(config: DecoderConfig, batch_size: int, length: int) -> Cache:
  """Zero KV cache for ``batch_size`` rows of ``length`` slots."""
  shape = (batch_size, length, config.num_kv_heads, config.head_dim)
  if config.scan_layers:
    zeros = jnp.zeros((config.num_layers, *shape), config.dtype)
    return {"k": zeros, "v": zeros}
  return tuple(
    {"k": jnp.zeros(shape, config.dtype), "v": jnp.zeros(shape, config.dtype)}
    for _ in range(config.num_layers)
  )

"""Building blocks shared by the GPT-2 and Llama (rotary) families.

Every parameter is created through ``nn.with_logical_partitioning``, so the
abstract parameter tree carries logical axis names (see ``partitioning.py``).
Parameter shapes keep heads as their own axis (``[embed, heads, head_dim]``)
so tensor parallelism can split heads without reshapes.

The numerics follow the Hugging Face reference implementations: norms and
softmax run in float32 whatever the compute dtype, and rotary embeddings use
the "rotate half" layout that the released Llama/Qwen2/Mistral weights are
stored in.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax.models import adapted
from slpo_jax.models.attention import NO_WINDOW
from slpo_jax.models.attention import AttentionMask
from slpo_jax.models.attention import attention
from slpo_jax.models.config import DecoderConfig

Array = jax.Array
KVCache = dict[str, Array]

# Standard deviation of the normal initialiser used by GPT-2 and Llama.
INIT_STDDEV = 0.02


def _kernel_init(names: tuple[str, ...]) -> nn.initializers.Initializer:
  return nn.with_logical_partitioning(
    nn.initializers.normal(INIT_STDDEV), names
  )


def _zeros_init(names: tuple[str, ...]) -> nn.initializers.Initializer:
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _ones_init(names: tuple[str, ...]) -> nn.initializers.Initializer:
  return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


class DenseGeneral(nn.Module):
  """``x @ kernel (+ bias)`` contracting the trailing ``num_in`` axes of ``x``.

  ``nn.DenseGeneral`` creates its kernel flat and reshapes the boxed value,
  which applies a rank-mismatched sharding constraint when logical axis
  rules and a mesh are active; creating the kernel in its final shape
  avoids that.

  This is the one place LoRA and a quantized base act: a node holding a
  LoRA adapter adds its low-rank path, and a quantized kernel is
  dequantized here, per call (see :mod:`slpo_jax.models.adapted`).
  """

  features: tuple[int, ...]
  kernel_names: tuple[str, ...]
  use_bias: bool
  num_in: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[x.ndim - self.num_in :]
    kernel = adapted.kernel(
      self,
      "kernel",
      lambda: self.param(
        "kernel",
        _kernel_init(self.kernel_names),
        in_shape + self.features,
        self.param_dtype,
      ),
      self.dtype,
      in_shape + self.features,
    )
    x_axes = tuple(range(x.ndim - self.num_in, x.ndim))
    y = jax.lax.dot_general(
      x.astype(self.dtype),
      kernel,
      ((x_axes, tuple(range(self.num_in))), ((), ())),
    )
    if adapted.has_adapter(self):
      y = y + adapted.dense_update(self, x, self.num_in, self.dtype)
    if self.use_bias:
      bias = self.param(
        "bias",
        _zeros_init(self.kernel_names[self.num_in :]),
        self.features,
        self.param_dtype,
      )
      y = y + bias.astype(self.dtype)
    return y


def dense(
  config: DecoderConfig,
  features: int | tuple[int, ...],
  kernel_names: tuple[str, ...],
  *,
  use_bias: bool,
  name: str,
  num_in: int = 1,
) -> DenseGeneral:
  """A ``DenseGeneral`` in the config's dtypes."""
  features = features if isinstance(features, tuple) else (features,)
  return DenseGeneral(
    features,
    kernel_names,
    use_bias,
    num_in=num_in,
    dtype=config.dtype,
    param_dtype=config.param_dtype,
    name=name,
  )


class RMSNorm(nn.Module):
  """Root-mean-square norm over the last axis, statistics in float32.

  Llama scales the normalised value by ``weight`` after casting to the
  compute dtype; Gemma (``norm_plus_one``) scales by ``1 + weight`` in
  float32 and casts last. Each rounds where its reference does, so bfloat16
  runs match.
  """

  config: DecoderConfig
  axis_name: str = "norm"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    init = _zeros_init if cfg.norm_plus_one else _ones_init
    scale = self.param(
      "scale", init((self.axis_name,)), (x.shape[-1],), cfg.param_dtype
    )
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(
      jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + cfg.norm_eps
    )
    if cfg.norm_plus_one:
      return (normed * (1.0 + scale.astype(jnp.float32))).astype(cfg.dtype)
    return normed.astype(cfg.dtype) * scale.astype(cfg.dtype)


def layer_norm(config: DecoderConfig, name: str) -> nn.LayerNorm:
  """LayerNorm (GPT-2). The two-pass variance matches PyTorch in float32."""
  return nn.LayerNorm(
    epsilon=config.norm_eps,
    dtype=config.dtype,
    param_dtype=config.param_dtype,
    use_fast_variance=False,
    scale_init=_ones_init(("norm",)),
    bias_init=_zeros_init(("norm",)),
    name=name,
  )


def norm(config: DecoderConfig, name: str) -> nn.Module:
  """The family's normalisation layer."""
  if config.family == "gpt2":
    return layer_norm(config, name)
  return RMSNorm(config, name=name)


def activation(name: str, x: Array) -> Array:
  """Applies the named MLP non-linearity."""
  if name == "gelu_tanh":
    return jax.nn.gelu(x, approximate=True)
  if name == "gelu":
    return jax.nn.gelu(x, approximate=False)
  if name == "relu":
    return jax.nn.relu(x)
  if name == "silu":
    return jax.nn.silu(x)
  raise ValueError(f"unknown activation {name!r}")


class Mlp(nn.Module):
  """GPT-2's two-matrix MLP or Llama's SwiGLU, chosen by the family."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    bias = cfg.mlp_bias
    if cfg.family == "gpt2":
      h = dense(cfg, cfg.mlp_dim, ("embed", "mlp"), use_bias=bias, name="fc")(x)
      h = activation(cfg.activation, h)
      return dense(
        cfg, cfg.d_model, ("mlp", "embed"), use_bias=bias, name="proj"
      )(h)
    gate = dense(
      cfg, cfg.mlp_dim, ("embed", "mlp"), use_bias=bias, name="gate"
    )(x)
    up = dense(cfg, cfg.mlp_dim, ("embed", "mlp"), use_bias=bias, name="up")(x)
    h = activation(cfg.activation, gate) * up
    return dense(
      cfg, cfg.d_model, ("mlp", "embed"), use_bias=bias, name="down"
    )(h)


def rope_inverse_frequencies(
  config: DecoderConfig, local: bool = False
) -> np.ndarray:
  """Inverse frequencies of the rotary embedding, ``[head_dim // 2]``.

  Computed in NumPy float32 from the static config, as the reference does,
  including the Llama 3 scaling: long wavelengths are divided by ``factor``,
  short ones kept, and the band between interpolated smoothly. ``local``
  selects Gemma 3's sliding-layer base, which is never scaled.
  """
  dim = config.head_dim
  exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
  theta = config.rope_local_theta if local else config.rope_theta
  inv_freq = (1.0 / (theta**exponents)).astype(np.float32)
  scaling = None if local else config.rope_scaling
  if scaling is None:
    return inv_freq
  if scaling.rope_type == "linear":
    return (inv_freq / scaling.factor).astype(np.float32)
  old_len = scaling.original_max_len
  low_freq_wavelen = old_len / scaling.low_freq_factor
  high_freq_wavelen = old_len / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(
    wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq
  )
  smooth = (old_len / wavelen - scaling.low_freq_factor) / (
    scaling.high_freq_factor - scaling.low_freq_factor
  )
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
  """Rotates ``x`` of shape ``[B, T, heads, head_dim]`` by ``positions [B, T]``.

  Uses the "rotate half" layout: the first and second halves of each head
  form the (real, imaginary) pairs.
  """
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos = jnp.cos(angles).astype(x.dtype)
  sin = jnp.sin(angles).astype(x.dtype)
  first, second = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-second, first], axis=-1)
  return x * cos + rotated * sin


def _per_layer(sliding: bool | Array, local: Any, other: Any) -> Any:
  """``local`` on sliding layers: chosen statically, or traced under scan."""
  if isinstance(sliding, bool):
    return local if sliding else other
  return jnp.where(sliding, local, other)


class Attention(nn.Module):
  """Multi-head / grouped-query self-attention with an optional KV cache."""

  config: DecoderConfig

  @nn.compact
  def __call__(
    self,
    x: Array,
    mask: AttentionMask,
    sliding: bool | Array,
    cache: KVCache | None = None,
    cache_index: Array | None = None,
  ) -> tuple[Array, KVCache | None]:
    """Attends over ``x`` (and the cache, when given).

    Args:
      x: ``[B, T, d_model]``.
      mask: the ``AttentionMask``; its keys are ``x``'s tokens without a
        cache, else the cache slots.
      sliding: whether this layer uses the sliding window (a traced bool
        when layers of both kinds are scanned).
      cache: optional ``{"k", "v"}`` of ``[B, S, kv_heads, head_dim]``.
      cache_index: slot at which ``x``'s keys and values are written.

    Returns:
      ``([B, T, d_model], updated cache or None)``.
    """
    cfg = self.config
    q = dense(
      cfg,
      (cfg.num_heads, cfg.head_dim),
      ("embed", "heads", "head_dim"),
      use_bias=cfg.qkv_bias,
      name="q",
    )(x)
    k = dense(
      cfg,
      (cfg.num_kv_heads, cfg.head_dim),
      ("embed", "kv_heads", "head_dim"),
      use_bias=cfg.qkv_bias,
      name="k",
    )(x)
    v = dense(
      cfg,
      (cfg.num_kv_heads, cfg.head_dim),
      ("embed", "kv_heads", "head_dim"),
      use_bias=cfg.qkv_bias,
      name="v",
    )(x)
    if cfg.qk_norm:
      # Per head, over head_dim, before the rotation (Qwen3, Gemma 3).
      q = RMSNorm(cfg, "head_dim", name="q_norm")(q)
      k = RMSNorm(cfg, "head_dim", name="k_norm")(k)
    if cfg.family == "llama":
      inv_freq = jnp.asarray(rope_inverse_frequencies(cfg))
      if cfg.rope_local_theta is not None:
        local = jnp.asarray(rope_inverse_frequencies(cfg, local=True))
        inv_freq = _per_layer(sliding, local, inv_freq)
      q = apply_rope(q, mask.query_positions, inv_freq)
      k = apply_rope(k, mask.query_positions, inv_freq)
    new_cache = None
    if cache is not None:
      k = jax.lax.dynamic_update_slice_in_dim(
        cache["k"], k.astype(cache["k"].dtype), cache_index, axis=1
      )
      v = jax.lax.dynamic_update_slice_in_dim(
        cache["v"], v.astype(cache["v"].dtype), cache_index, axis=1
      )
      new_cache = {"k": k, "v": v}
    window = None
    if cfg.sliding_window is not None and sliding is not False:
      window = _per_layer(sliding, cfg.sliding_window, NO_WINDOW)
    out = attention(
      q,
      k,
      v,
      mask,
      impl=cfg.attention_impl,
      scale=cfg.query_scale,
      softcap=cfg.attn_logit_softcap,
      window=window,
      window_size=cfg.sliding_window,
      dtype=cfg.dtype,
      block=cfg.attention_block,
    )
    out = dense(
      cfg,
      cfg.d_model,
      ("heads", "head_dim", "embed"),
      use_bias=cfg.out_bias,
      num_in=2,
      name="o",
    )(out)
    return out, new_cache


class DecoderBlock(nn.Module):
  """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

  With ``sandwich_norms`` (Gemma 2 and 3) each branch's output is normed
  too before it joins the residual stream.

  Attributes:
    config: the model config.
    sliding: whether the block uses the sliding window; None when that is
      passed per call (scanned layers of both kinds).
  """

  config: DecoderConfig
  sliding: bool | None = None

  @nn.compact
  def __call__(
    self,
    x: Array,
    cache: KVCache | None,
    layer_sliding: Array | None,
    mask: AttentionMask,
    cache_index: Array | None,
  ) -> tuple[Array, KVCache | None]:
    # The argument order (carry, scanned..., broadcast...) is the one
    # ``nn.scan`` expects when the blocks are stacked.
    cfg = self.config
    sliding = self.sliding if layer_sliding is None else layer_sliding
    h = norm(cfg, "attn_norm")(x)
    h, cache = Attention(cfg, name="attn")(h, mask, sliding, cache, cache_index)
    if cfg.sandwich_norms:
      h = norm(cfg, "attn_out_norm")(h)
    x = x + h
    h = Mlp(cfg, name="mlp")(norm(cfg, "mlp_norm")(x))
    if cfg.sandwich_norms:
      h = norm(cfg, "mlp_out_norm")(h)
    x = x + h
    x = nn.with_logical_constraint(
      x, ("activation_batch", "activation_length", "activation_embed")
    )
    return x, cache

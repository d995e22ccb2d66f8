"""``DecoderLM``: the model object users hold.

It wraps the Flax ``Decoder`` behind pure functions of ``(params, inputs)``
with plain nested-dict parameters, builds position ids and attention masks
from a padding mask, and applies the output projection in float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from slpo_jax.models import partitioning
from slpo_jax.models import transformer
from slpo_jax.models.config import DecoderConfig

Array = jax.Array
Params = dict[str, Any]


def position_ids(attention_mask: Array) -> Array:
  """Position of each token among the real tokens of its row, ``[B, T]``.

  Right-padded rows get ``0..L-1`` followed by a repeat of ``L-1``;
  left-padded rows get zeros then ``0..L-1``, so a row's real tokens see the
  same positions however it is padded.
  """
  return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), -1) - 1, 0)


def attention_mask_3d(
  query_slots: Array,
  query_positions: Array,
  key_positions: Array,
  key_valid: Array,
  sliding_window: int | None,
) -> Array:
  """Boolean ``[B, T, S]`` mask: causal in slot order and over real keys.

  Args:
    query_slots: ``[T]`` slot index of each query (its cache slot when
      decoding, else its index in the sequence).
    query_positions: ``[B, T]`` position ids of the queries.
    key_positions: ``[B, S]`` position ids of the keys.
    key_valid: ``[B, S]`` True for real (non-padding, already written) keys.
    sliding_window: if set, keys more than ``sliding_window - 1`` positions
      behind the query are masked (Mistral).
  """
  key_slots = jnp.arange(key_valid.shape[1])
  causal = key_slots[None, :] <= query_slots[:, None]  # [T, S]
  mask = causal[None] & key_valid[:, None, :].astype(bool)
  if sliding_window is not None:
    distance = query_positions[:, :, None] - key_positions[:, None, :]
    mask &= distance < sliding_window
  return mask


@dataclasses.dataclass(frozen=True)
class DecoderLM:
  """A decoder-only causal LM: a config plus pure functions of the params.

  The object is hashable (it only holds the frozen config) and every method
  is a pure function of its array arguments, so methods can be passed to
  ``jax.jit`` and the object can be a static argument.
  """

  config: DecoderConfig

  @property
  def module(self) -> transformer.Decoder:
    """The underlying Flax module."""
    return transformer.Decoder(self.config)

  def _init_boxed(self, rng: Array) -> Any:
    ids = jnp.zeros((1, 1), jnp.int32)
    mask = jnp.ones((1, 1, 1), bool)
    return self.module.init(rng, ids, ids, mask)["params"]

  def init(self, rng: Array) -> Params:
    """Random parameters as a plain nested dict of arrays.

    Compiled (a traced initialisation runs one fused program instead of
    hundreds of small ones); it may also be wrapped in ``jax.jit`` with
    ``out_shardings=model.shardings(mesh)`` to create the parameters sharded.
    """
    return _init(self, rng)

  def abstract_params(self) -> Params:
    """Shapes and dtypes of the parameters (``jax.ShapeDtypeStruct`` leaves)."""
    return jax.eval_shape(self.init, jax.random.key(0))

  def logical_axes(self) -> Any:
    """A ``PartitionSpec`` of logical axis names for every parameter."""
    boxed = jax.eval_shape(self._init_boxed, jax.random.key(0))
    return nn.get_partition_spec(boxed)

  def partition_specs(
    self, rules: partitioning.Rules | None = None, *, mesh: Mesh | None = None
  ) -> Any:
    """Mesh ``PartitionSpec`` for every parameter.

    See ``param_partition_specs``.
    """
    return partitioning.param_partition_specs(self, rules, mesh=mesh)

  def shardings(
    self, mesh: Mesh, rules: partitioning.Rules | None = None
  ) -> Any:
    """``NamedSharding`` for every parameter on ``mesh``."""
    return partitioning.param_shardings(self, mesh, rules)

  def lm_head(self, params: Params) -> Array:
    """Output projection ``[d_model, vocab]`` in the compute dtype.

    With tied embeddings this is the transposed input embedding, so
    gradients through it reach the embedding.
    """
    if self.config.tie_embeddings:
      kernel = params["embed"]["embedding"].T
    else:
      kernel = params["lm_head"]
    return kernel.astype(self.config.dtype)

  def hidden_states(
    self,
    params: Params,
    input_ids: Array,
    attention_mask: Array | None = None,
  ) -> tuple[Array, Array]:
    """Final hidden states and the output projection.

    Args:
      params: the parameters.
      input_ids: ``[B, T]`` int token ids.
      attention_mask: ``[B, T]``, 1 for real tokens and 0 for padding (left
        or right); all ones when None.

    Returns:
      ``(hidden [B, T, d_model], lm_head [d_model, V])``, both in the compute
      dtype; ``logits_from_hidden(hidden, lm_head)`` equals ``apply``.
    """
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    if (
      self.config.family == "gpt2" and input_ids.shape[1] > self.config.max_len
    ):
      # Out-of-range lookups in the position table would return NaN.
      raise ValueError(
        f"{input_ids.shape[1]} tokens exceed the "
        f"{self.config.max_len} learned positions"
      )
    positions = position_ids(attention_mask)
    mask = attention_mask_3d(
      jnp.arange(input_ids.shape[1]),
      positions,
      positions,
      attention_mask != 0,
      self.config.sliding_window,
    )
    hidden, _ = self.module.apply(
      {"params": params}, input_ids, positions, mask
    )
    return hidden, self.lm_head(params)

  def apply(
    self,
    params: Params,
    input_ids: Array,
    attention_mask: Array | None = None,
  ) -> Array:
    """Next-token logits, ``[B, T, V]`` float32.

    Args:
      params: the parameters.
      input_ids: ``[B, T]`` int token ids.
      attention_mask: ``[B, T]``, 1 for real tokens and 0 for padding; all
        ones when None. Logits at padded positions are meaningless.
    """
    hidden, lm_head = self.hidden_states(params, input_ids, attention_mask)
    return logits_from_hidden(hidden, lm_head)

  def __call__(
    self, params: Params, input_ids: Array, attention_mask: Array | None = None
  ) -> Array:
    return self.apply(params, input_ids, attention_mask)

  def init_cache(self, batch_size: int, length: int) -> transformer.Cache:
    """A zero KV cache of ``length`` slots for ``batch_size`` rows."""
    return transformer.init_cache(self.config, batch_size, length)

  def decode(
    self,
    params: Params,
    input_ids: Array,
    positions: Array,
    mask: Array,
    cache: transformer.Cache,
    cache_index: Array,
  ) -> tuple[Array, transformer.Cache]:
    """Runs tokens through the model, reading and writing the KV cache.

    Args:
      params: the parameters.
      input_ids: ``[B, T]`` tokens written at slots
        ``cache_index .. cache_index + T - 1``.
      positions: ``[B, T]`` their position ids.
      mask: ``[B, T, S]`` boolean mask over the cache slots, e.g. from
        ``attention_mask_3d``.
      cache: from ``init_cache`` or a previous call.
      cache_index: scalar int slot of the first token.

    Returns:
      ``(hidden [B, T, d_model], updated cache)``.
    """
    return self.module.apply(
      {"params": params}, input_ids, positions, mask, cache, cache_index
    )


@functools.partial(jax.jit, static_argnums=0)
def _init(model: DecoderLM, rng: Array) -> Params:
  # pylint: disable-next=protected-access
  return nn.meta.unbox(model._init_boxed(rng))


def logits_from_hidden(hidden: Array, lm_head: Array) -> Array:
  """``hidden @ lm_head`` accumulated and returned in float32."""
  logits = jnp.einsum(
    "...d,dv->...v",
    hidden,
    lm_head.astype(hidden.dtype),
    preferred_element_type=jnp.float32,
  )
  return (
    nn.with_logical_constraint(
      logits, ("activation_batch", "activation_length", "activation_vocab")
    )
    if logits.ndim == 3
    else logits
  )


def build(config: DecoderConfig) -> DecoderLM:
  """Returns the model for ``config``."""
  return DecoderLM(config)

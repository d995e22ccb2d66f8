"""``DecoderLM``: the model object users hold.

It wraps the Flax ``Decoder`` behind pure functions of ``(params, inputs)``
with plain nested-dict parameters, builds position ids and segment ids from
a padding mask (or takes them as given, for packed rows), and applies the
output projection in float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from slpo_jax import logprobs
from slpo_jax.models import partitioning
from slpo_jax.models import transformer
from slpo_jax.models.attention import AttentionMask
from slpo_jax.models.attention import self_attention_mask
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
    mask = self_attention_mask(jnp.ones_like(ids), ids)
    return self.module.init(rng, ids, mask)["params"]

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
    *,
    segment_ids: Array | None = None,
    positions: Array | None = None,
    branch_ids: Array | None = None,
  ) -> tuple[Array, Array]:
    """Final hidden states and the output projection.

    Args:
      params: the parameters.
      input_ids: ``[B, T]`` int token ids.
      attention_mask: ``[B, T]``, 1 for real tokens and 0 for padding (left
        or right); all ones when None. Ignored when ``segment_ids`` is given.
      segment_ids: optional ``[B, T]`` int, 0 for padding and one id per
        sequence packed in a row; tokens attend within their segment only.
      positions: ``[B, T]`` position ids, needed with ``segment_ids`` (each
        segment counting from 0); else derived from ``attention_mask``.
      branch_ids: optional ``[B, T]`` int with ``segment_ids``: 0 on a
        segment's shared stem (a prompt), 1, 2, ... on the continuations
        that follow it, which see the stem and themselves, not each other
        (``attention_core``); their positions continue the stem's.

    Returns:
      ``(hidden [B, T, d_model], lm_head [d_model, V])``, both in the compute
      dtype; ``self.logits(hidden, lm_head)`` equals ``apply``.
    """
    if segment_ids is None:
      if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
      segment_ids = (attention_mask != 0).astype(jnp.int32)
      positions = position_ids(attention_mask)
    elif positions is None:
      raise ValueError("segment_ids need positions (per-segment position ids)")
    if (
      self.config.family == "gpt2" and input_ids.shape[1] > self.config.max_len
    ):
      # Out-of-range lookups in the position table would return NaN.
      raise ValueError(
        f"{input_ids.shape[1]} tokens exceed the "
        f"{self.config.max_len} learned positions"
      )
    mask = self_attention_mask(segment_ids, positions, branch_ids)
    hidden, _ = self.module.apply({"params": params}, input_ids, mask)
    return hidden, self.lm_head(params)

  def logits(self, hidden: Array, lm_head: Array) -> Array:
    """float32 logits from ``hidden_states``, soft-capped if the model is."""
    return logits_from_hidden(
      hidden, lm_head, softcap=self.config.final_logit_softcap
    )

  def apply(
    self,
    params: Params,
    input_ids: Array,
    attention_mask: Array | None = None,
    **packing: Array,
  ) -> Array:
    """Next-token logits, ``[B, T, V]`` float32.

    Args:
      params: the parameters.
      input_ids: ``[B, T]`` int token ids.
      attention_mask: ``[B, T]``, 1 for real tokens and 0 for padding; all
        ones when None. Logits at padded positions are meaningless.
      **packing: ``segment_ids`` and ``positions``, see ``hidden_states``.
    """
    hidden, lm_head = self.hidden_states(
      params, input_ids, attention_mask, **packing
    )
    return self.logits(hidden, lm_head)

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
    mask: AttentionMask,
    cache: transformer.Cache,
    cache_index: Array,
  ) -> tuple[Array, transformer.Cache]:
    """Runs tokens through the model, reading and writing the KV cache.

    Args:
      params: the parameters.
      input_ids: ``[B, T]`` tokens written at slots
        ``cache_index .. cache_index + T - 1``.
      mask: ``AttentionMask`` whose queries are ``input_ids`` (segment and
        position ids ``[B, T]``) and whose keys are the cache slots
        (``[B, S]``; segment 0 for slots not written).
      cache: from ``init_cache`` or a previous call.
      cache_index: scalar int slot of the first token.

    Returns:
      ``(hidden [B, T, d_model], updated cache)``.
    """
    return self.module.apply(
      {"params": params}, input_ids, mask, cache, cache_index
    )


@functools.partial(jax.jit, static_argnums=0)
def _init(model: DecoderLM, rng: Array) -> Params:
  return nn.meta.unbox(model._init_boxed(rng))


def logits_from_hidden(
  hidden: Array, lm_head: Array, softcap: float | None = None
) -> Array:
  """``hidden @ lm_head`` accumulated and returned in float32.

  With ``softcap`` (Gemma 2's final-logit soft-capping) the logits become
  ``softcap * tanh(logits / softcap)``, in float32. The loss head's plain
  path computes the same (``slpo_jax.logprobs.logits_from_hidden``); here
  ``[B, T, V]`` logits are also constrained to the activation axes.
  """
  logits = logprobs.logits_from_hidden(hidden, lm_head, softcap)
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

"""Correspondence between Hugging Face tensors and our parameter tree.

``tensor_groups(config)`` lists, for every tensor of a checkpoint, the
parameters it becomes and the two conversions (NumPy, host side). A group
can map one tensor to several parameters: GPT-2 stores query, key and value
as one fused ``c_attn`` matrix, which we split so all families share the
``[embed, heads, head_dim]`` layout.

Layouts: PyTorch ``nn.Linear`` weights are ``[out, in]``; GPT-2's ``Conv1D``
weights are already ``[in, out]``; our kernels are ``[in..., out...]`` with
heads as a separate axis.
"""

from __future__ import annotations

import dataclasses
from typing import Callable
from typing import Sequence

import numpy as np

from slpo_jax.models.config import DecoderConfig

Shape = tuple[int, ...]
Path = tuple[str, ...]
Convert = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class TensorGroup:
  """Checkpoint tensors and the parameters they convert to.

  Attributes:
    hf_names: tensor names without the model prefix (``transformer.`` /
      ``model.``).
    hf_shapes: expected shape of each tensor.
    param_paths: paths in the unscanned parameter tree.
    param_shapes: shape of each parameter.
    to_params: tensors -> parameters.
    to_hf: parameters -> tensors.
    layer: block index, or None for embeddings and the head.
    template: name shared by the same group in every block.
  """

  hf_names: tuple[str, ...]
  hf_shapes: tuple[Shape, ...]
  param_paths: tuple[Path, ...]
  param_shapes: tuple[Shape, ...]
  to_params: Convert
  to_hf: Convert
  layer: int | None = None
  template: str = ""


def _reshape(
  name: str, hf_shape: Shape, path: Path, shape: Shape, **kw
) -> TensorGroup:
  """Same memory order, possibly a different shape (Conv1D, biases)."""
  return TensorGroup(
    (name,),
    (hf_shape,),
    (path,),
    (shape,),
    to_params=lambda t: [t[0].reshape(shape)],
    to_hf=lambda p: [p[0].reshape(hf_shape)],
    **kw,
  )


def _linear(
  name: str, out_features: int, in_features: int, path: Path, shape: Shape, **kw
) -> TensorGroup:
  """A PyTorch ``[out, in]`` weight becoming an ``[in..., out...]`` kernel."""
  hf_shape = (out_features, in_features)
  return TensorGroup(
    (name,),
    (hf_shape,),
    (path,),
    (shape,),
    to_params=lambda t: [t[0].T.reshape(shape)],
    to_hf=lambda p: [p[0].reshape(in_features, out_features).T],
    **kw,
  )


def _embeddings(config: DecoderConfig, embed_name: str) -> list[TensorGroup]:
  v, d = config.vocab_size, config.d_model
  groups = [_reshape(embed_name, (v, d), ("embed", "embedding"), (v, d))]
  if not config.tie_embeddings:
    # The head lives outside the "transformer."/"model." prefix.
    groups.append(_linear("/lm_head.weight", v, d, ("lm_head",), (d, v)))
  return groups


def _gpt2_groups(config: DecoderConfig) -> list[TensorGroup]:
  d, f = config.d_model, config.mlp_dim
  h, hd = config.num_heads, config.head_dim
  groups = _embeddings(config, "wte.weight")
  groups.append(
    _reshape(
      "wpe.weight",
      (config.max_len, d),
      ("pos_embed", "embedding"),
      (config.max_len, d),
    )
  )
  for i in range(config.num_layers):
    layer = f"layers_{i}"
    kw = dict(layer=i)

    def hf(suffix: str, i=i) -> str:
      return f"h.{i}.{suffix}"

    for hf_norm, norm in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
      for hf_param, param in (("weight", "scale"), ("bias", "bias")):
        groups.append(
          _reshape(
            hf(f"{hf_norm}.{hf_param}"),
            (d,),
            (layer, norm, param),
            (d,),
            template=f"{hf_norm}.{hf_param}",
            **kw,
          )
        )
    qkv_paths = tuple((layer, "attn", n, "kernel") for n in "qkv")
    groups.append(
      TensorGroup(
        (hf("attn.c_attn.weight"),),
        ((d, 3 * d),),
        qkv_paths,
        ((d, h, hd),) * 3,
        to_params=lambda t: [
          w.reshape(d, h, hd) for w in np.split(t[0], 3, axis=-1)
        ],
        to_hf=lambda p: [np.concatenate([w.reshape(d, d) for w in p], -1)],
        template="c_attn.weight",
        **kw,
      )
    )
    qkv_bias_paths = tuple((layer, "attn", n, "bias") for n in "qkv")
    groups.append(
      TensorGroup(
        (hf("attn.c_attn.bias"),),
        ((3 * d,),),
        qkv_bias_paths,
        ((h, hd),) * 3,
        to_params=lambda t: [b.reshape(h, hd) for b in np.split(t[0], 3)],
        to_hf=lambda p: [np.concatenate([b.reshape(d) for b in p])],
        template="c_attn.bias",
        **kw,
      )
    )
    for hf_name, path, hf_shape, shape in (
      ("attn.c_proj.weight", ("attn", "o", "kernel"), (d, d), (h, hd, d)),
      ("attn.c_proj.bias", ("attn", "o", "bias"), (d,), (d,)),
      ("mlp.c_fc.weight", ("mlp", "fc", "kernel"), (d, f), (d, f)),
      ("mlp.c_fc.bias", ("mlp", "fc", "bias"), (f,), (f,)),
      ("mlp.c_proj.weight", ("mlp", "proj", "kernel"), (f, d), (f, d)),
      ("mlp.c_proj.bias", ("mlp", "proj", "bias"), (d,), (d,)),
    ):
      groups.append(
        _reshape(
          hf(hf_name), hf_shape, (layer, *path), shape, template=hf_name, **kw
        )
      )
  groups.append(_reshape("ln_f.weight", (d,), ("final_norm", "scale"), (d,)))
  groups.append(_reshape("ln_f.bias", (d,), ("final_norm", "bias"), (d,)))
  return groups


def _block_norms(config: DecoderConfig) -> tuple[tuple[str, str], ...]:
  """(checkpoint name, our name) of a block's norms.

  Llama's ``post_attention_layernorm`` is the norm before the MLP; in Gemma 2
  and 3 it is the one on the attention output, and ``pre_feedforward`` is
  the norm before the MLP.
  """
  if config.sandwich_norms:
    return (
      ("input_layernorm", "attn_norm"),
      ("post_attention_layernorm", "attn_out_norm"),
      ("pre_feedforward_layernorm", "mlp_norm"),
      ("post_feedforward_layernorm", "mlp_out_norm"),
    )
  return (
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "mlp_norm"),
  )


def _phi3_qkv(
  config: DecoderConfig, prefix: str, layer: str, i: int
) -> TensorGroup:
  """Phi-3's fused ``qkv_proj``: q, k and v rows stacked, split on load."""
  d, hd = config.d_model, config.head_dim
  widths = (config.num_heads * hd, config.num_kv_heads * hd)
  widths += (widths[1],)
  shapes = tuple((d, w // hd, hd) for w in widths)
  name = "self_attn.qkv_proj.weight"
  return TensorGroup(
    (prefix + name,),
    ((sum(widths), d),),
    tuple((layer, "attn", p, "kernel") for p in "qkv"),
    shapes,
    to_params=lambda t: [
      w.T.reshape(s)
      for w, s in zip(np.split(t[0], np.cumsum(widths)[:2]), shapes)
    ],
    to_hf=lambda p: [np.concatenate([w.reshape(d, -1).T for w in p], axis=0)],
    layer=i,
    template=name,
  )


def _phi3_gate_up(
  config: DecoderConfig, prefix: str, layer: str, i: int
) -> TensorGroup:
  """Phi-3's fused ``gate_up_proj``: the gate rows first, then up."""
  d, f = config.d_model, config.mlp_dim
  name = "mlp.gate_up_proj.weight"
  return TensorGroup(
    (prefix + name,),
    ((2 * f, d),),
    ((layer, "mlp", "gate", "kernel"), (layer, "mlp", "up", "kernel")),
    ((d, f), (d, f)),
    to_params=lambda t: [w.T for w in np.split(t[0], 2)],
    to_hf=lambda p: [np.concatenate([w.T for w in p], axis=0)],
    layer=i,
    template=name,
  )


def _llama_groups(config: DecoderConfig) -> list[TensorGroup]:
  d, f = config.d_model, config.mlp_dim
  h, kv, hd = config.num_heads, config.num_kv_heads, config.head_dim
  groups = _embeddings(config, "embed_tokens.weight")
  for i in range(config.num_layers):
    layer = f"layers_{i}"
    kw = dict(layer=i)
    prefix = f"layers.{i}."
    for hf_norm, norm in _block_norms(config):
      name = f"{hf_norm}.weight"
      groups.append(
        _reshape(
          prefix + name, (d,), (layer, norm, "scale"), (d,), template=name, **kw
        )
      )
    if config.hf_model_type == "phi3":
      groups.append(_phi3_qkv(config, prefix, layer, i))
    for proj, heads in (("q", h), ("k", kv), ("v", kv)):
      name = f"self_attn.{proj}_proj.weight"
      if config.hf_model_type != "phi3":
        groups.append(
          _linear(
            prefix + name,
            heads * hd,
            d,
            (layer, "attn", proj, "kernel"),
            (d, heads, hd),
            template=name,
            **kw,
          )
        )
      if config.qkv_bias:
        name = f"self_attn.{proj}_proj.bias"
        groups.append(
          _reshape(
            prefix + name,
            (heads * hd,),
            (layer, "attn", proj, "bias"),
            (heads, hd),
            template=name,
            **kw,
          )
        )
    if config.qk_norm:
      for proj in ("q", "k"):
        name = f"self_attn.{proj}_norm.weight"
        groups.append(
          _reshape(
            prefix + name,
            (hd,),
            (layer, "attn", f"{proj}_norm", "scale"),
            (hd,),
            template=name,
            **kw,
          )
        )
    name = "self_attn.o_proj.weight"
    groups.append(
      _linear(
        prefix + name,
        d,
        h * hd,
        (layer, "attn", "o", "kernel"),
        (h, hd, d),
        template=name,
        **kw,
      )
    )
    if config.out_bias:
      name = "self_attn.o_proj.bias"
      groups.append(
        _reshape(
          prefix + name,
          (d,),
          (layer, "attn", "o", "bias"),
          (d,),
          template=name,
          **kw,
        )
      )
    mlp_projections = [("gate", f, d), ("up", f, d), ("down", d, f)]
    if config.hf_model_type == "phi3":
      groups.append(_phi3_gate_up(config, prefix, layer, i))
      mlp_projections = mlp_projections[2:]
    for proj, out_features, in_features in mlp_projections:
      name = f"mlp.{proj}_proj.weight"
      groups.append(
        _linear(
          prefix + name,
          out_features,
          in_features,
          (layer, "mlp", proj, "kernel"),
          (in_features, out_features),
          template=name,
          **kw,
        )
      )
      if config.mlp_bias:
        name = f"mlp.{proj}_proj.bias"
        groups.append(
          _reshape(
            prefix + name,
            (out_features,),
            (layer, "mlp", proj, "bias"),
            (out_features,),
            template=name,
            **kw,
          )
        )
  groups.append(_reshape("norm.weight", (d,), ("final_norm", "scale"), (d,)))
  return groups


def tensor_groups(config: DecoderConfig) -> list[TensorGroup]:
  """All checkpoint tensors of ``config``'s architecture, in a stable order."""
  if config.family == "gpt2":
    return _gpt2_groups(config)
  return _llama_groups(config)


# Prefixes under which the backbone's tensors are stored: the *LMHeadModel /
# *ForCausalLM classes use the first, a saved bare backbone the second.
PREFIXES = {"gpt2": ("transformer.", ""), "llama": ("model.", "")}

# Tensors some checkpoints carry that hold no parameters: GPT-2's causal-mask
# buffers and old Llama rotary caches. A tied head saved anyway is ignored.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


def full_name(name: str, prefix: str) -> str:
  """Checkpoint name of a tensor; a leading "/" marks an unprefixed name."""
  return name[1:] if name.startswith("/") else prefix + name


def stacked_path(path: Path) -> Path:
  """Path of a block parameter in the scanned tree (``layers_3`` -> ``layers``)."""
  if path[0].startswith("layers_"):
    return ("layers",) + path[1:]
  return path

"""LoRA adapters in PEFT's folder format, read and written without PyTorch.

A folder holds ``adapter_config.json`` and ``adapter_model.safetensors``.
Tensors are named after the Hugging Face module they adapt, under PEFT's
``base_model.model.`` prefix: ``...q_proj.lora_A.weight`` ``[r, in]`` and
``...q_proj.lora_B.weight`` ``[out, r]`` for a linear (or GPT-2 ``Conv1D``)
module, ``...embed_tokens.lora_embedding_A`` ``[r, vocab]`` and
``...lora_embedding_B`` ``[d, r]`` for an embedding. PEFT's update is
``W_hf += scale * B @ A``, so our ``lora_a`` is ``A.T`` and our ``lora_b``
is ``B.T``, each reshaped to the kernel's layout.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any

import jax
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from slpo_jax import lora
from slpo_jax import lora_sites

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
# Options of PEFT's LoraConfig this reader cannot express; their neutral
# values, as PEFT writes them when unused.
_UNSUPPORTED = {
  "use_dora": False,
  "rank_pattern": {},
  "alpha_pattern": {},
  "modules_to_save": None,
  "layers_to_transform": None,
  "lora_bias": False,
}

PathLike = str | os.PathLike


def tensor_names(site: lora.Site, block: int) -> tuple[str, str]:
  """PEFT's names of the ``A`` and ``B`` tensors of ``site`` in ``block``."""
  module = PREFIX + site.hf_modules[block]
  if site.embedding:
    return f"{module}.lora_embedding_A", f"{module}.lora_embedding_B"
  return f"{module}.lora_A.weight", f"{module}.lora_B.weight"


def _blocks(site: lora.Site) -> range:
  return range(1 if site.num_layers is None else site.num_layers)


def _target_modules(model: Any, sites: list[lora.Site]) -> list[str] | str:
  """Module names for PEFT: leaf names when they select exactly ``sites``,
  else a regex of the full module names (PEFT matches a string whole)."""
  chosen = {m for s in sites for m in s.hf_modules}
  leaves = sorted({m.rsplit(".", 1)[-1] for m in chosen})
  everything = {m for s in lora_sites.all_sites(model) for m in s.hf_modules}
  if {m for m in everything if m.rsplit(".", 1)[-1] in leaves} == chosen:
    return leaves
  return "|".join(re.escape(m) for m in sorted(chosen))


def save_adapters(
  folder: PathLike,
  model: Any,
  sites: list[lora.Site],
  config: lora.LoraConfig,
  adapters: Any,
  *,
  base_model_name_or_path: str = "",
  dtype: Any = np.float32,
) -> None:
  """Writes ``adapters`` as a folder ``peft.PeftModel.from_pretrained``
  loads onto the Hugging Face form of ``model``."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  host = jax.tree.map(lambda x: np.asarray(x, np.float32), adapters)
  tensors = {}
  for site in sites:
    node = lora.lookup(host, site.path)
    parts = lora.b_parts(site, node)
    for block in _blocks(site):
      index = () if site.num_layers is None else (block,)
      pick = lambda x, index=index: x[index]  # noqa: E731
      a = pick(node["lora_a"]).reshape(site.in_features, config.rank)
      b = np.concatenate(
        [pick(p).reshape(config.rank, -1) for p in parts], axis=1
      )
      a_name, b_name = tensor_names(site, block)
      tensors[a_name] = np.ascontiguousarray(a.T.astype(dtype))
      tensors[b_name] = np.ascontiguousarray(b.T.astype(dtype))
  peft_config = {
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "base_model_name_or_path": base_model_name_or_path or None,
    "r": config.rank,
    "lora_alpha": config.alpha,
    "lora_dropout": config.dropout,
    "use_rslora": config.rslora,
    "bias": "none",
    "target_modules": _target_modules(model, sites),
    # GPT-2's Conv1D weights are [in, out]; PEFT sets this itself anyway.
    "fan_in_fan_out": model.config.family in lora_sites.CONV1D_FAMILIES,
    "inference_mode": True,
    "init_lora_weights": True,
    **_UNSUPPORTED,
  }
  (folder / CONFIG_FILE).write_text(json.dumps(peft_config, indent=2) + "\n")
  save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})


def read_config(folder: PathLike) -> dict:
  """``adapter_config.json`` of a PEFT folder, checked for what we support.

  Raises:
    LoraError: no such file, not LoRA, or an option we cannot express.
  """
  path = pathlib.Path(folder) / CONFIG_FILE
  if not path.is_file():
    raise lora.LoraError(f"{path}: missing; not a PEFT adapter folder")
  try:
    peft_config = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as error:
    raise lora.LoraError(f"{path}: unreadable JSON: {error}") from None
  if peft_config.get("peft_type") != "LORA":
    raise lora.LoraError(
      f"{path}: peft_type is {peft_config.get('peft_type')!r}; only LORA"
      " adapters can be read"
    )
  if peft_config.get("bias", "none") != "none":
    raise lora.LoraError(f"{path}: bias={peft_config['bias']!r}; use 'none'")
  for key, neutral in _UNSUPPORTED.items():
    if peft_config.get(key) not in (neutral, None):
      raise lora.LoraError(
        f"{path}: {key}={peft_config[key]!r} is not supported; adapters"
        " with it cannot be merged here"
      )
  return peft_config


def load_adapters(
  folder: PathLike, model: Any
) -> tuple[lora.LoraConfig, list[lora.Site], Any]:
  """Reads a PEFT LoRA folder for ``model``: its config, sites, adapters.

  Dropout is a training-time setting of the adapters, not part of them, so
  the returned config has dropout 0 whatever the file says.

  Returns:
    ``(config, sites, adapters)``, the adapters float32 NumPy arrays in
    the tree :func:`slpo_jax.lora.policy_params` reads.

  Raises:
    LoraError: the folder, a tensor or a setting cannot be used.
  """
  folder = pathlib.Path(folder)
  peft_config = read_config(folder)
  rank = int(peft_config["r"])
  weights = folder / WEIGHTS_FILE
  if not weights.is_file():
    raise lora.LoraError(f"{weights}: missing")
  with safe_open(str(weights), framework="numpy") as handle:
    stored = {name: handle.get_tensor(name) for name in handle.keys()}
  candidates = lora_sites.all_sites(model)
  present = [
    s
    for s in candidates
    if any(tensor_names(s, b)[0] in stored for b in _blocks(s))
  ]
  if not present:
    raise lora.LoraError(f"{weights}: no LoRA tensor of a module of this model")
  targets = _targets_of(present, candidates)
  config = lora.LoraConfig(
    rank=rank,
    alpha=float(peft_config.get("lora_alpha", 8)),
    targets=targets,
    rslora=bool(peft_config.get("use_rslora", False)),
  )
  try:
    sites = lora_sites.select_sites(model, config)
  except lora.LoraError as error:
    raise lora.LoraError(f"{folder}: {error}") from None
  adapters: dict = {}
  used = set()
  for site in sites:
    a_blocks, b_blocks = [], []
    for block in _blocks(site):
      names = tensor_names(site, block)
      a, b = (_read(stored, n, weights) for n in names)
      used.update(names)
      want_a, want_b = (rank, site.in_features), (sum(site.out_features), rank)
      for name, array, want in ((names[0], a, want_a), (names[1], b, want_b)):
        if array.shape != want:
          raise lora.LoraError(
            f"{weights}: tensor {name!r} has shape {list(array.shape)},"
            f" expected {list(want)} (r={rank})"
          )
      a_blocks.append(a.T.reshape(site.in_shape + (rank,)))
      splits = np.cumsum(site.out_features)[:-1]
      b_blocks.append(
        [
          part.T.reshape((rank,) + shape)
          for part, shape in zip(np.split(b, splits, axis=0), site.out_shapes)
        ]
      )
    if site.num_layers is None:
      a, parts = a_blocks[0], b_blocks[0]
    else:
      a = np.stack(a_blocks)
      parts = [np.stack(p) for p in zip(*b_blocks)]
    lora.put(adapters, site.path, lora.adapter_node(site, a, parts))
  unknown = sorted(n for n in stored if "lora_" in n and n not in used)
  if unknown:
    raise lora.LoraError(
      f"{weights}: tensor {unknown[0]!r} adapts no module of this model"
    )
  return config, sites, adapters


def _read(stored: dict, name: str, weights: pathlib.Path) -> np.ndarray:
  if name not in stored:
    raise lora.LoraError(f"{weights}: missing tensor {name!r}")
  array = stored[name]
  if array.dtype.kind != "f":
    raise lora.LoraError(f"{weights}: tensor {name!r} is {array.dtype}")
  return array.astype(np.float32)


def _targets_of(
  present: list[lora.Site], candidates: list[lora.Site]
) -> tuple[str, ...]:
  """Target names selecting exactly the ``present`` sites: module names
  when they do, else the modules' paths."""
  names = sorted({n for s in present for n in s.names})
  by_name = [s for s in candidates if set(s.names) & set(names)]
  if by_name == present:
    return tuple(names)
  return tuple(
    re.escape(path.rsplit("/", 1)[0] + "/" + n if s.fused else path)
    for s in present
    for path in s.layer_paths
    for n in s.names
  )

"""Loading and saving Hugging Face checkpoint folders.

A folder written by ``save_pretrained`` holds ``config.json`` and either
``model.safetensors`` or a ``model.safetensors.index.json`` naming several
shard files. Tensors are read one at a time with the ``safetensors`` NumPy
API (no PyTorch), converted on the host, and placed directly onto their
target sharding, so the full model is never gathered on one device; the host
holds at most one tensor (or, with ``scan_layers``, one tensor for all
blocks) at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
from typing import Any
from typing import Callable
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import save_file

from slpo_jax.models import hf_weights
from slpo_jax.models.config import DecoderConfig
from slpo_jax.models.config import canonical_dtype
from slpo_jax.models.hf_config import CheckpointError
from slpo_jax.models.hf_config import config_from_hf
from slpo_jax.models.hf_config_export import config_to_hf
from slpo_jax.models.model import DecoderLM
from slpo_jax.models.model import Params
from slpo_jax.models.model import build

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Checkpoint tensor dtypes that convert exactly to float32 parameters.
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

PathLike = str | os.PathLike


def _check_dtype(value: Any, what: str) -> str:
  try:
    return canonical_dtype(value)
  except ValueError as e:
    raise CheckpointError(f"{what}: {e}") from None


def load_hf_config(path: PathLike, **changes: Any) -> DecoderConfig:
  """Reads ``config.json`` of a checkpoint folder into a ``DecoderConfig``.

  Args:
    path: the checkpoint folder.
    **changes: ``DecoderConfig`` fields to set (``dtype``, ``scan_layers``...).

  Raises:
    CheckpointError: no folder, no or unreadable ``config.json``, or an
      unsupported architecture.
  """
  folder = pathlib.Path(path)
  if not folder.is_dir():
    raise CheckpointError(f"{folder}: not a checkpoint folder")
  config_path = folder / CONFIG_FILE
  if not config_path.is_file():
    raise CheckpointError(
      f"{config_path}: missing; a checkpoint folder written by "
      "save_pretrained holds config.json next to model.safetensors"
    )
  try:
    hf = json.loads(config_path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{config_path}: unreadable JSON: {e}") from e
  if not isinstance(hf, dict):
    raise CheckpointError(f"{config_path}: expected a JSON object")
  return config_from_hf(hf, source=str(config_path), **changes)


class TensorReader:
  """Lazy access to the tensors of a single-file or sharded checkpoint."""

  def __init__(self, folder: pathlib.Path, stack: contextlib.ExitStack):
    self._folder = folder
    self._stack = stack
    self._handles: dict[str, Any] = {}
    index_path = folder / INDEX_FILE
    single_path = folder / WEIGHTS_FILE
    if single_path.is_file():
      self.source = str(single_path)
      self._file_of = {
        name: WEIGHTS_FILE for name in self._open(WEIGHTS_FILE).keys()
      }
    elif index_path.is_file():
      self.source = str(index_path)
      try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
      except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path}: unreadable index: {e}") from e
      self._file_of = dict(weight_map)
      for file in sorted(set(self._file_of.values())):
        if not (folder / file).is_file():
          raise CheckpointError(f"{index_path}: shard file {file} is missing")
    else:
      found = sorted(p.name for p in folder.iterdir())
      raise CheckpointError(
        f"{folder}: no {WEIGHTS_FILE} or {INDEX_FILE} (found {found}); "
        "PyTorch .bin checkpoints must first be re-saved with "
        "save_pretrained(..., safe_serialization=True)"
      )

  def _open(self, file: str) -> Any:
    if file not in self._handles:
      try:
        self._handles[file] = self._stack.enter_context(
          safe_open(str(self._folder / file), framework="numpy")
        )
      except Exception as e:  # safetensors raises its own error types.
        raise CheckpointError(f"{self._folder / file}: unreadable: {e}") from e
    return self._handles[file]

  def names(self) -> set[str]:
    return set(self._file_of)

  def path_of(self, name: str) -> str:
    return str(self._folder / self._file_of[name])

  def read(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
    """Reads tensor ``name``, checking its presence, shape and dtype."""
    if name not in self._file_of:
      raise CheckpointError(f"{self.source}: missing tensor '{name}'")
    handle = self._open(self._file_of[name])
    try:
      view = handle.get_slice(name)
      shape = tuple(view.get_shape())
    except Exception as e:
      raise CheckpointError(
        f"{self.path_of(name)}: tensor '{name}' unreadable: {e}"
      ) from e
    if shape != tuple(expected_shape):
      raise CheckpointError(
        f"{self.path_of(name)}: tensor '{name}' has shape {list(shape)}, "
        f"expected {list(expected_shape)} from config.json"
      )
    try:
      array = handle.get_tensor(name)
    except Exception as e:
      raise CheckpointError(
        f"{self.path_of(name)}: tensor '{name}' unreadable: {e}"
      ) from e
    if array.dtype.name not in _FLOAT_DTYPES:
      raise CheckpointError(
        f"{self.path_of(name)}: tensor '{name}' has dtype {array.dtype}, "
        f"which the model cannot use (expected one of {_FLOAT_DTYPES}; "
        "quantised checkpoints are not supported)"
      )
    return array


def _detect_prefix(config: DecoderConfig, reader: TensorReader) -> str:
  first = hf_weights.tensor_groups(config)[0].hf_names[0]
  prefixes = hf_weights.PREFIXES[config.family]
  for prefix in prefixes:
    if hf_weights.full_name(first, prefix) in reader.names():
      return prefix
  raise CheckpointError(
    f"{reader.source}: missing tensor "
    f"'{hf_weights.full_name(first, prefixes[0])}'"
  )


def _flat_shardings(
  shardings: Any, model: DecoderLM
) -> dict[tuple[str, ...], Any] | None:
  """``{param path: sharding}`` from a Mesh, a pytree of shardings, or None."""
  if shardings is None:
    return None
  if isinstance(shardings, Mesh):
    shardings = model.shardings(shardings)
  expected = jax.tree_util.tree_structure(model.abstract_params())
  got = jax.tree_util.tree_structure(
    shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
  )
  if expected != got:
    raise ValueError(
      "shardings must have the structure of the parameters "
      f"(model.abstract_params()); got {got}, expected {expected}"
    )
  flat = jax.tree_util.tree_flatten_with_path(
    shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
  )[0]
  return {tuple(k.key for k in path): s for path, s in flat}


def _place(host: np.ndarray, dtype: str, sharding: Any) -> jax.Array:
  host = np.asarray(host, dtype=jnp.dtype(dtype))
  if sharding is None:
    return jnp.asarray(host)
  # Each device receives only its own slice of the host array.
  return jax.make_array_from_callback(
    host.shape, sharding, lambda index: host[index]
  )


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _converted_groups(
  config: DecoderConfig, reader: TensorReader, prefix: str
) -> Iterator[tuple[hf_weights.TensorGroup, list[np.ndarray]]]:
  for group in hf_weights.tensor_groups(config):
    tensors = [
      reader.read(hf_weights.full_name(n, prefix), s)
      for n, s in zip(group.hf_names, group.hf_shapes)
    ]
    yield group, group.to_params(tensors)


def load_hf_model(
  path: PathLike,
  *,
  dtype: Any = "float32",
  param_dtype: Any = "float32",
  shardings: Any = None,
  scan_layers: bool = False,
  remat: bool = False,
  abstract: bool = False,
  remat_policy: str = "full",
  attention_impl: str = "auto",
  backbone_only: bool = False,
) -> tuple[DecoderLM, Params]:
  """Loads a Hugging Face checkpoint folder as a ``DecoderLM`` and its params.

  Args:
    path: folder written by ``save_pretrained``: ``config.json`` plus
      ``model.safetensors`` or ``model.safetensors.index.json`` and shards.
    dtype: compute dtype (``"float32"`` or ``"bfloat16"``).
    param_dtype: dtype the parameters are stored in.
    shardings: None (default device), a ``jax.sharding.Mesh`` (the default
      logical-axis rules on it), or a pytree of ``jax.sharding.Sharding`` with
      the structure of the parameters, e.g. ``model.shardings(mesh, rules)``
      for ``model = build(load_hf_config(path))``.
    scan_layers: stack the blocks (see ``DecoderConfig.scan_layers``).
    remat: rematerialise blocks in the backward pass.
    abstract: read only ``config.json`` and return ``jax.ShapeDtypeStruct``
      leaves instead of parameters, e.g. to compute shardings before the
      real load.
    remat_policy: what a rematerialised block saves (``"full"``/``"dots"``).
    attention_impl: one of ``ATTENTION_IMPLS`` (``attention_choice``).
    backbone_only: read no output head (a ``*ForSequenceClassification``
      folder has a ``score`` head instead, read by
      :func:`slpo_jax.models.load_hf_reward_model`); the model's
      ``lm_head`` is then the embedding, and unused.

  Returns:
    ``(model, params)``.

  Raises:
    CheckpointError: the folder, config or a tensor cannot be used; the
      message names the file and the tensor.
  """
  dtype = _check_dtype(dtype, f"{path}: compute dtype")
  param_dtype = _check_dtype(param_dtype, f"{path}: parameter dtype")
  config = load_hf_config(
    path,
    dtype=dtype,
    param_dtype=param_dtype,
    scan_layers=scan_layers,
    remat=remat,
    remat_policy=remat_policy,
    attention_impl=attention_impl,
  )
  if backbone_only:
    config = dataclasses.replace(config, tie_embeddings=True)
  model = build(config)
  if abstract:
    return model, model.abstract_params()
  placement = _flat_shardings(shardings, model)

  def place(param_path: tuple[str, ...], host: np.ndarray) -> jax.Array:
    sharding = None if placement is None else placement[param_path]
    return _place(host, param_dtype, sharding)

  params: dict[str, Any] = {}
  with contextlib.ExitStack() as stack:
    reader = TensorReader(pathlib.Path(path), stack)
    prefix = _detect_prefix(config, reader)
    # With scanned blocks, a parameter is the stack of one tensor from every
    # block; collect the blocks of a template before placing it.
    pending: dict[tuple[str, ...], list[np.ndarray]] = {}
    for group, arrays in _converted_groups(config, reader, prefix):
      for param_path, array in zip(group.param_paths, arrays):
        if not scan_layers or group.layer is None:
          _set(params, param_path, place(param_path, array))
          continue
        stacked = hf_weights.stacked_path(param_path)
        pending.setdefault(stacked, []).append(array)
        if len(pending[stacked]) == config.num_layers:
          _set(params, stacked, place(stacked, np.stack(pending.pop(stacked))))
    used = {
      hf_weights.full_name(n, prefix)
      for g in hf_weights.tensor_groups(config)
      for n in g.hf_names
    }
    unused = sorted(
      n
      for n in reader.names() - used
      if not n.endswith(hf_weights.IGNORED_SUFFIXES)
      and not (config.tie_embeddings and n == "lm_head.weight")
      and not (backbone_only and n.startswith("score."))
    )
    if unused:
      logging.warning(
        "%s: ignoring %d tensors not used by the model: %s",
        reader.source,
        len(unused),
        unused[:8],
      )
  return model, params


def load_hf_checkpoint(
  path: PathLike, **options: Any
) -> tuple[Callable[..., jax.Array], Params]:
  """Loads a checkpoint folder as ``(apply_fn, params)``.

  ``apply_fn(params, input_ids, attention_mask)`` returns float32 logits
  ``[B, T, V]``. ``options`` are the keyword arguments of ``load_hf_model``
  (dtypes, shardings, layout), passed on unchanged.
  """
  model, params = load_hf_model(path, **options)
  return model.apply, params


def _lookup(params: Params, path: tuple[str, ...]) -> Any:
  node = params
  for key in path:
    if not isinstance(node, dict) or key not in node:
      raise ValueError(f"params have no entry {'/'.join(path)}")
    node = node[key]
  return node


def _hf_tensors(
  config: DecoderConfig, params: Params, dtype: str
) -> dict[str, np.ndarray]:
  prefix = hf_weights.PREFIXES[config.family][0]
  tensors = {}
  for group in hf_weights.tensor_groups(config):
    arrays = []
    for param_path, shape in zip(group.param_paths, group.param_shapes):
      if config.scan_layers and group.layer is not None:
        leaf = _lookup(params, hf_weights.stacked_path(param_path))[group.layer]
      else:
        leaf = _lookup(params, param_path)
      array = np.asarray(jax.device_get(leaf), dtype=np.float32)
      if array.shape != shape:
        raise ValueError(
          f"param {'/'.join(param_path)} has shape "
          f"{array.shape}, expected {shape}"
        )
      arrays.append(array)
    for name, tensor in zip(group.hf_names, group.to_hf(arrays)):
      tensors[hf_weights.full_name(name, prefix)] = np.ascontiguousarray(
        tensor.astype(jnp.dtype(dtype))
      )
  return tensors


def _shard(
  tensors: dict[str, np.ndarray], max_shard_size: int
) -> list[dict[str, np.ndarray]]:
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, tensor in tensors.items():
    if shards[-1] and size + tensor.nbytes > max_shard_size:
      shards.append({})
      size = 0
    shards[-1][name] = tensor
    size += tensor.nbytes
  return shards


def save_hf_checkpoint(
  model_or_config: DecoderLM | DecoderConfig,
  params: Params,
  path: PathLike,
  *,
  dtype: Any = None,
  max_shard_size: int | None = None,
) -> None:
  """Writes a folder that ``AutoModelForCausalLM.from_pretrained`` loads.

  Args:
    model_or_config: the ``DecoderLM`` or its ``DecoderConfig``.
    params: its parameters (possibly sharded across devices).
    path: output folder, created if needed.
    dtype: dtype of the saved tensors; the config's ``param_dtype`` if None.
    max_shard_size: if set, split the tensors into files of at most this
      many bytes (one tensor may exceed it) with a
      ``model.safetensors.index.json``.
  """
  config = (
    model_or_config.config
    if isinstance(model_or_config, DecoderLM)
    else model_or_config
  )
  dtype = _check_dtype(
    config.param_dtype if dtype is None else dtype, "save dtype"
  )
  folder = pathlib.Path(path)
  folder.mkdir(parents=True, exist_ok=True)
  tensors = _hf_tensors(config, params, dtype)
  hf_config = config_to_hf(config)
  hf_config["torch_dtype"] = dtype
  (folder / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
  # transformers refuses safetensors files without this metadata.
  metadata = {"format": "pt"}
  if max_shard_size is None:
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata=metadata)
    return
  shards = _shard(tensors, max_shard_size)
  weight_map = {}
  for i, shard in enumerate(shards):
    file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, str(folder / file), metadata=metadata)
    weight_map.update({name: file for name in shard})
  index = {
    "metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
    "weight_map": weight_map,
  }
  (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

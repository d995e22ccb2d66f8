"""The trained policy as a Hugging Face folder.

  python -m train.export --workdir /tmp/run --out /tmp/run-hf
  python -m train.export --workdir /tmp/run --step 200 --out /tmp/step200 \\
      --dtype bfloat16

The folder is what ``transformers`` loads with ``from_pretrained``:
``config.json``; the weights, ``model.safetensors`` (shards and an index above
the run's ``export.max_shard_size``); ``generation_config.json`` (the
tokenizer's BOS, EOS and PAD ids, and a chat template's end-of-turn token
among the EOS ids); and the run's tokenizer files, a chat template set with
``data.chat_template`` written into ``tokenizer_config.json``. Training writes
one to ``WORKDIR/hf`` at its end (``config.export``); this command writes one
for any checkpoint of a workdir, its latest by default, with the config that
checkpoint stored. It reads no training data and no optimizer state.

A mistake (no checkpoint, no such step, an output folder that is not empty)
ends the program with one line on stderr, ``error: ...``, and exit code 2.
"""

import json
import os
import pathlib
import shutil
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from slpo_jax import models
from train import checkpointed_run
from train import config_schema
from train import data as data_lib
from train import lora_setup
from train.data import chat
from train.data.chat import stop_ids
from train.errors import ConfigError

DTYPES = config_schema.EXPORT_DTYPES
FORMATS = ("hf", "peft", "merged")
TOKENIZER_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "tokenizer.model",
  "chat_template.jinja",
)
GENERATION_CONFIG = "generation_config.json"
# The file a data.tokenizer path names is written under the name
# transformers looks for.
_CANONICAL_NAMES = {".json": "tokenizer.json", ".model": "tokenizer.model"}


def export_policy(
  config,
  model: models.DecoderLM,
  params,
  out: str | pathlib.Path,
  *,
  dtype: str | None = None,
  max_shard_size: int | None = None,
  replace: bool = True,
) -> pathlib.Path:
  """Writes ``params`` of ``model`` as the Hugging Face folder ``out``.

  Every process calls it (parameters sharded over processes are gathered
  from all of them); process 0 writes. The folder is written beside ``out``
  under a temporary name and renamed when complete, so ``out`` is whole or
  absent, never cut short.

  Args:
    config: the run's config: ``data`` names the tokenizer and the chat
      template, ``export`` the defaults of the two settings below.
    model: the policy.
    params: its parameters.
    out: the folder to write.
    dtype: 'float32' or 'bfloat16'; ``config.export.dtype`` when None.
    max_shard_size: most bytes per weights file, 0 for one file;
      ``config.export.max_shard_size`` when None.
    replace: replace an existing ``out``; when False, one that is not empty
      is an error.

  Returns:
    ``out``, absolute.

  Raises:
    ConfigError: an unknown dtype, or ``out`` not empty without ``replace``.
  """
  dtype = config.export.dtype if dtype is None else dtype
  if dtype not in DTYPES:
    raise ConfigError(f"the export dtype is {dtype!r}; use one of {DTYPES}")
  if max_shard_size is None:
    max_shard_size = config.export.max_shard_size
  out = pathlib.Path(out).absolute()
  host_params = _gathered(params)
  if jax.process_index() != 0:
    return out
  tokenizer = data_lib.make_tokenizer(config.data, config.model.checkpoint)
  template = chat.load_chat_template(config.data, tokenizer=tokenizer)
  out.parent.mkdir(parents=True, exist_ok=True)
  partial = pathlib.Path(
    tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent)
  )
  try:
    models.save_hf_checkpoint(
      _with_token_ids(model.config, tokenizer, config),
      host_params,
      partial,
      dtype=dtype,
      max_shard_size=_shard_limit(host_params, dtype, max_shard_size),
    )
    _write_json(
      partial / GENERATION_CONFIG, generation_config(tokenizer, template)
    )
    written = copy_tokenizer_files(config, partial, template)
    _make_readable(partial)
    _publish(partial, out, replace=replace)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  if not written:
    print(
      f"{out}: no tokenizer files written: the run's tokenizer"
      f" ({type(tokenizer).__name__}) is built in and has none"
    )
  return out


def _gathered(params):
  """Host copies of the parameters, from every process when sharded."""

  def gather(leaf):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(jax.device_get(leaf))

  return jax.tree.map(gather, params)


def _with_token_ids(model_config, tokenizer, config):
  """The model's config with the tokenizer's special ids, for a built-in
  model; a checkpoint's config keeps the ids its config.json has."""
  if config.model.checkpoint:
    return model_config
  return model_config.replace(
    bos_token_id=tokenizer.bos_id,
    eos_token_id=tokenizer.eos_id,
    pad_token_id=tokenizer.pad_id,
  )


def _shard_limit(params, dtype: str, max_shard_size: int) -> int | None:
  """None (one model.safetensors) unless the weights exceed the limit."""
  size = sum(leaf.size for leaf in jax.tree.leaves(params))
  if not max_shard_size or size * jnp.dtype(dtype).itemsize <= max_shard_size:
    return None
  return max_shard_size


def generation_config(tokenizer, template: chat.ChatTemplate | None) -> dict:
  """``generation_config.json``: the ids ``generate`` starts, stops and
  pads with."""
  stops = stop_ids(tokenizer, template)
  return {
    "bos_token_id": tokenizer.bos_id,
    "eos_token_id": stops[0] if len(stops) == 1 else stops,
    "pad_token_id": tokenizer.pad_id,
  }


def tokenizer_source(config) -> tuple[pathlib.Path, pathlib.Path | None]:
  """``(folder, file)``: where the run's tokenizer files are, and the file
  ``data.tokenizer`` names (None when it names a folder).

  The folder is the one ``data.tokenizer`` names, the directory of the file
  it names, or ``model.checkpoint`` when it is ''.
  """
  path = pathlib.Path(config.data.tokenizer or config.model.checkpoint)
  if path.is_dir():
    return path, None
  return path.parent, path


def copy_tokenizer_files(
  config, folder: pathlib.Path, template: chat.ChatTemplate | None
) -> list[str]:
  """Copies the run's tokenizer files into ``folder``; their names.

  A built-in tokenizer ('bytes', a task's word vocabulary) has none. A
  template that ``data.chat_template`` sets goes into
  ``tokenizer_config.json`` (where ``apply_chat_template`` finds it) and
  ``chat_template.jinja`` (which transformers reads first, when present).
  """
  if config.data.tokenizer == "bytes":  # Every built-in task's setting.
    return []
  directory, named = tokenizer_source(config)
  sources = {name: directory / name for name in TOKENIZER_FILES}
  if named is not None and named.suffix in _CANONICAL_NAMES:
    sources[_CANONICAL_NAMES[named.suffix]] = named
  written = []
  for name, path in sources.items():
    if path.is_file():
      shutil.copyfile(path, folder / name)
      written.append(name)
  if template is not None and config.data.get("chat_template", ""):
    config_path = folder / "tokenizer_config.json"
    tokenizer_config = (
      json.loads(config_path.read_text(encoding="utf-8"))
      if config_path.is_file()
      else {}
    )
    tokenizer_config["chat_template"] = template.text
    _write_json(config_path, tokenizer_config)
    (folder / "chat_template.jinja").write_text(template.text, encoding="utf-8")
    written = sorted({*written, config_path.name, "chat_template.jinja"})
  return written


def _write_json(path: pathlib.Path, value: dict) -> None:
  text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
  path.write_text(text, encoding="utf-8")


def _make_readable(folder: pathlib.Path) -> None:
  # mkdtemp makes the folder private; the export is read like any other.
  mask = os.umask(0)
  os.umask(mask)
  os.chmod(folder, 0o777 & ~mask)


def _not_empty(path: pathlib.Path) -> bool:
  return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _publish(partial: pathlib.Path, out: pathlib.Path, *, replace: bool):
  """Renames the finished folder to ``out``."""
  if _not_empty(out):
    if not replace:
      raise ConfigError(f"{out} is not empty; name a new or empty folder")
    # Set aside, not deleted first: ``out`` is never absent for long, and
    # the old export is removed only once the new one is in place.
    old = partial.with_name(partial.name.replace(".partial-", ".old-"))
    os.replace(out, old)
    os.replace(partial, out)
    if old.is_dir():
      shutil.rmtree(old)
    else:
      old.unlink()
    return
  if out.is_dir():
    out.rmdir()  # Empty: a rename cannot go over it on every system.
  os.replace(partial, out)


def export_checkpoint(
  workdir: str | pathlib.Path,
  out: str | pathlib.Path,
  *,
  step: int | None = None,
  dtype: str | None = None,
  format_name: str = "hf",
) -> pathlib.Path:
  """Writes checkpoint ``step`` of ``workdir`` (its latest when None) as the
  Hugging Face folder ``out``, which must be new or empty.

  Args:
    workdir: the training run's workdir.
    out: the folder to write.
    step: the checkpoint's step; the latest when None.
    dtype: 'float32' or 'bfloat16'; the run's ``export.dtype`` when None.
    format_name: 'hf' (a LoRA run's merged policy too), 'merged' (the
      same, for LoRA runs only) or 'peft' (a LoRA run's adapters as a PEFT
      folder, for its base).

  Raises:
    UserError: a bad setting, no such checkpoint, ``out`` not empty.
  """
  if format_name not in FORMATS:
    raise ConfigError(f"--format is {format_name!r}; use one of {FORMATS}")
  if dtype is not None and dtype not in DTYPES:
    raise ConfigError(f"--dtype is {dtype!r}; use one of {DTYPES}")
  out = pathlib.Path(out)
  if _not_empty(out):
    raise ConfigError(f"--out {out} is not empty; name a new or empty folder")
  run = checkpointed_run.open_checkpoint(workdir, step)
  try:
    if format_name != "hf" and not lora_setup.enabled(run.config):
      raise ConfigError(
        f"--format {format_name} needs a LoRA run (config.model.lora.rank"
        f" > 0); {workdir} trained every weight: use --format hf"
      )
    if format_name == "peft":
      written = _export_adapters(run, out)
      print(f"{written}: the LoRA adapters of step {run.step} of {workdir}")
      return written
    params = run.policy_params(_host_device())
    written = export_policy(
      run.config, run.model, params, out, dtype=dtype, replace=False
    )
  finally:
    run.close()
  dtype = run.config.export.dtype if dtype is None else dtype
  print(f"{written}: the policy of step {run.step} of {workdir} ({dtype})")
  return written


def _export_adapters(run, out: pathlib.Path) -> pathlib.Path:
  """A LoRA checkpoint's adapters as the PEFT folder ``out`` (float32)."""
  policy, adapters = run.trainable(_host_device())
  out = out.absolute()
  if jax.process_index() != 0:
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  partial = pathlib.Path(
    tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent)
  )
  try:
    lora_setup.save_peft(run.config, run.model, policy, adapters, partial)
    _make_readable(partial)
    _publish(partial, out, replace=False)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  return out


def _host_device() -> jax.Device:
  # Exporting needs no accelerator, and host memory is the larger.
  try:
    return jax.devices("cpu")[0]
  except RuntimeError:  # JAX_PLATFORMS leaves the CPU out.
    return jax.devices()[0]


if __name__ == "__main__":
  from train import cli

  cli.run("export", sys.modules[__name__])

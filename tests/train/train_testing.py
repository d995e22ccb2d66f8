"""Helpers of the training program's tests: tiny configs, runs, files.

Every test trains a tiny Llama for a few steps on 128 short pairs
(``make_tiny_config``), in this process (``train``) or as a
``python -m train.main`` child (``start_train_main``).
"""

import dataclasses
import json
import os
import pathlib
import random
import socket
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default as default_config
from slpo_jax import losses
from train import config_schema
from train import loop
from train import setup as setup_lib
from train import validate

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# Training losses of equivalent runs agree to this (float32).
TOLERANCE = 1e-5


# The special tokens of ``write_chat_tokenizer``'s vocabulary: ChatML's
# markers among them, so the built-in 'chatml' template's end of turn is
# one token.
CHAT_SPECIAL_TOKENS = (
  "<unk>",
  "<s>",
  "</s>",
  "<pad>",
  "<|im_start|>",
  "<|im_end|>",
)


def write_chat_tokenizer(directory) -> pathlib.Path:
  """A byte-level BPE tokenizer folder fitted to the words of
  ``bench.fault_runs.write_pairs``.

  It holds ``tokenizer.json`` and a ``tokenizer_config.json`` naming BOS,
  EOS and PAD, as ``transformers`` saves them. Returns the folder.
  """
  import tokenizers
  from tokenizers import decoders
  from tokenizers import models
  from tokenizers import pre_tokenizers
  from tokenizers import trainers

  rng = random.Random(1)
  corpus = [
    " ".join(
      "".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 3)))
      for _ in range(8)
    )
    for _ in range(300)
  ]
  tokenizer = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator(
    corpus,
    trainers.BpeTrainer(
      vocab_size=320,
      special_tokens=list(CHAT_SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
    ),
  )
  folder = pathlib.Path(directory)
  folder.mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(
    json.dumps({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})
  )
  return folder


def make_tiny_config(pair_files=None, **changes):
  """A config that trains a tiny Llama on 128 pairs in seconds.

  Args:
    pair_files: ``(train_path, eval_path)`` from ``bench.fault_runs.write_pairs``;
      None for the synthetic task (whose pairs the reference samples: slower).
    **changes: dotted keys and values, e.g. ``**{"loss.name": "slpo"}``.

  Returns:
    A ``ml_collections.ConfigDict`` with the keys of ``train/config_schema.py``.
  """
  config = config_schema.get_config()
  config.steps = 4
  config.batch_size = 8
  config.log_every = 1
  config.eval_every = 0
  config.checkpoint_every = 0
  config.keep_checkpoints = 3
  config.loss.name = "dpo"
  # A constant rate: the compiled step is then the same for any ``steps``.
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 0
  config.optimizer.decay = "constant"
  config.model.family = "llama"
  config.model.size = "tiny"
  config.model.loss_head = "plain"
  config.reference.sft_steps = 0
  # Sampling compiles a decoding loop; the tests that read samples ask.
  config.eval.num_samples = 0
  config.mesh.data = -1
  config.data.max_length = 32
  config.data.max_prompt_length = 8
  config.data.length_buckets = (32,)
  if pair_files is None:
    config.data.source = "synthetic"
    config.data.synthetic.num_prompts = 128
    config.data.synthetic.num_eval_prompts = 32
    config.data.synthetic.sample_batch_size = 128
  else:
    config.data.source = "jsonl"
    config.data.train_path, config.data.eval_path = map(str, pair_files)
  for key, value in changes.items():
    _set_key(config, key, value)
  return config


def _set_key(config, dotted: str, value) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for name in parents:
    node = getattr(node, name)
  if leaf not in node:
    raise KeyError(f"{dotted} is not a config key")
  setattr(node, leaf, value)


def _flatten(tree: dict, prefix: str = ""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def command_line_overrides(config) -> list[str]:
  """``--config.KEY=VALUE`` flags turning configs/default.py into ``config``.

  Only keys whose value differs from ``configs/default.py`` are passed.
  """
  default = dict(_flatten(default_config.get_config().to_dict()))
  flags = []
  for key, value in _flatten(config.to_dict()):
    if value != default[key]:
      flags.append(f"--config.{key}={value}")
  return flags


def train_main_command(workdir, *flags: str) -> list[str]:
  """``python -m train.main --config configs/default.py --workdir ...``."""
  return [
    sys.executable,
    "-m",
    "train.main",
    "--config",
    str(REPO_ROOT / "configs" / "default.py"),
    "--workdir",
    str(workdir),
    *flags,
  ]


def subprocess_env(device_count: int = 8) -> dict[str, str]:
  """Environment of a ``train.main`` child: CPU, ``device_count`` devices."""
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={device_count}"
  env["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p
  )
  cache_dir = jax.config.jax_compilation_cache_dir
  if cache_dir:
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return env


def free_port() -> int:
  """A TCP port on localhost that is free now."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start_train_main(
  config, workdir, *flags: str, devices: int = 8, log_name: str = "log"
) -> subprocess.Popen:
  """Starts ``python -m train.main`` for ``config`` on ``devices`` devices.

  Its stdout and stderr go to the file ``process.log_path`` next to the
  workdir (named after it and ``log_name``).
  """
  workdir = pathlib.Path(workdir)
  log_path = workdir.parent / f"{workdir.name}.{log_name}.txt"
  with log_path.open("w") as output:
    process = subprocess.Popen(
      train_main_command(workdir, *command_line_overrides(config), *flags),
      env=subprocess_env(devices),
      stdout=output,
      stderr=subprocess.STDOUT,
      text=True,
      cwd=REPO_ROOT,
    )
  process.log_path = log_path
  return process


def process_output(process: subprocess.Popen) -> str:
  """What a process started by ``start_train_main`` has printed so far."""
  return process.log_path.read_text()


def finish(process: subprocess.Popen, *, timeout: float = 300) -> str:
  """Waits for ``process``; its output. Kills it on timeout and fails."""
  try:
    process.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()
    pytest.fail(
      f"train.main did not finish in {timeout} s:\n"
      f"{process_output(process)[-3000:]}"
    )
  return process_output(process)


def wait_for(
  predicate, *, process: subprocess.Popen, what: str, timeout: float = 300
) -> None:
  """Polls ``predicate`` until true; fails if ``process`` ends first.

  On timeout the process is killed and the test fails.
  """
  deadline = time.monotonic() + timeout
  while not predicate():
    if process.poll() is not None:
      pytest.fail(
        f"train.main ended (exit {process.returncode}) before"
        f" {what}:\n{process_output(process)[-3000:]}"
      )
    if time.monotonic() > deadline:
      process.kill()
      process.wait()
      pytest.fail(f"timed out after {timeout} s waiting for {what}")
    time.sleep(0.02)


def read_metrics(workdir) -> list[dict[str, Any]]:
  """The records of ``workdir/metrics.jsonl``, in file order."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def train_losses(workdir) -> dict[int, float]:
  """Training loss by step from ``metrics.jsonl``."""
  return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def checkpoint_steps(workdir) -> list[int]:
  """Steps of the finished checkpoints in ``workdir/checkpoints``."""
  directory = pathlib.Path(workdir) / "checkpoints"
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def load_checkpoint_params(workdir, step: int) -> Any:
  """The policy parameters of a checkpoint, as host numpy arrays."""
  path = pathlib.Path(workdir).absolute() / "checkpoints" / str(step) / "state"
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(path)
  return jax.tree.map(np.asarray, state["params"])


def host_copy(tree) -> Any:
  """A numpy copy of a tree of device arrays (fresh host buffers)."""
  return jax.tree.map(lambda x: np.array(jax.device_get(x)), tree)


def assert_trees_equal(actual, expected) -> None:
  """Same structure and bitwise-equal leaves."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for (path, a), b in zip(
    jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)
  ):
    np.testing.assert_array_equal(
      a, b, err_msg=jax.tree_util.keystr(path), strict=True
    )


def assert_trees_close(actual, expected, *, rtol=TOLERANCE, atol=TOLERANCE):
  """Same structure and leaves equal within the tolerances."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for (path, a), b in zip(
    jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)
  ):
    np.testing.assert_allclose(
      a, b, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path)
    )


@dataclasses.dataclass
class Trained:
  """A finished in-process run and what the test may compare."""

  workdir: pathlib.Path
  result: loop.TrainResult
  run: setup_lib.Run
  initial_params: Any  # Host copy taken before the first step.
  initial_reference: Any  # Host copy taken before the first step (or None).


def build(config, workdir, *, devices: int | None = None) -> setup_lib.Run:
  """Validate ``config`` and build its run, on the first ``devices`` devices.

  Args:
    config: the run's config.
    workdir: its workdir.
    devices: use only the first ``devices`` devices (all when None).
  """
  chosen = None if devices is None else jax.devices()[:devices]
  checked = validate.validate(config, chosen)
  return setup_lib.build_run(config, pathlib.Path(workdir), checked)


def train(config, workdir, *, devices: int | None = None) -> Trained:
  """``loop.train_and_evaluate`` on a run built here, recording its start.

  Args:
    config: the run's config.
    workdir: its workdir.
    devices: use only the first ``devices`` devices (all when None).
  """
  run = build(config, workdir, devices=devices)
  params = host_copy(run.initial_params)
  reference = (
    None if run.reference_params is None else host_copy(run.reference_params)
  )
  result = loop.train_and_evaluate(config, workdir, run=run)
  return Trained(pathlib.Path(workdir), result, run, params, reference)


# The run most tests compare with: DPO, online reference, 8-way data
# parallel, evaluation and a checkpoint every 2 steps.
BASELINE = {"steps": 4, "eval_every": 2, "checkpoint_every": 2}


def one_loss_per_set_of_inputs() -> list[str]:
  """The first loss (by name) of each distinct set of statistics read.

  The fused head, accumulation and precomputed reference change only how
  the statistics a loss reads are computed, so one loss per set of inputs
  (and batch-level kind) reaches every path; each loss's own formula is
  checked against an independent step in test_step_against_reference.
  """
  chosen = {}
  for name, spec in sorted(losses.LOSSES.items()):
    inputs = frozenset((i.model, i.field) for i in spec.inputs)
    chosen.setdefault((inputs, spec.batch_level), name)
  return sorted(chosen.values())

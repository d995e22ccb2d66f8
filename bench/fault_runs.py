"""The pieces of ``bench.faults``: a tiny training run started as a user
starts it, and what is read back from its workdir."""

import json
import os
import pathlib
import random
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 12
BASE_FLAGS = (
  "--config.steps=12",
  "--config.batch_size=8",
  "--config.log_every=1",
  "--config.eval_every=0",
  "--config.checkpoint_every=4",
  "--config.optimizer.learning_rate=0.001",
  "--config.optimizer.warmup_steps=0",
  "--config.optimizer.decay=constant",
  "--config.model.size=tiny",
  "--config.model.loss_head=plain",
  "--config.reference.sft_steps=0",
  "--config.data.source=jsonl",
  "--config.data.max_length=32",
  "--config.data.max_prompt_length=8",
  "--config.data.length_buckets=(32,)",
)


def write_pairs(folder) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes 128 training and 32 evaluation pairs of short random words.

  Byte-tokenized, every pair fits in 32 tokens; responses of 1 to 5 words
  give the batches varied lengths. The training program's tests train on
  these files too.

  Returns:
    The paths of the training and evaluation JSONL files.
  """
  rng = random.Random(0)

  def words(count: int) -> str:
    return " ".join(
      "".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 3)))
      for _ in range(count)
    )

  paths = []
  for split, count in (("train", 128), ("eval", 32)):
    lines = []
    for _ in range(count):
      chosen = words(rng.randint(1, 5))
      rejected = chosen
      while rejected == chosen:
        rejected = words(rng.randint(1, 5))
      lines.append(
        json.dumps({"prompt": words(2), "chosen": chosen, "rejected": rejected})
      )
    path = pathlib.Path(folder) / f"{split}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    paths.append(path)
  return tuple(paths)


class Runs:
  """Starts ``train.main`` runs of the tiny config in a scratch folder."""

  def __init__(self, scratch: pathlib.Path):
    self.scratch = scratch
    train, evaluation = write_pairs(scratch)
    self.data_flags = (
      f"--config.data.train_path={train}",
      f"--config.data.eval_path={evaluation}",
    )
    self.env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    self.env.pop("XLA_FLAGS", None)

  def command(self, workdir, *flags):
    return [
      sys.executable,
      "-m",
      "train.main",
      "--config",
      str(ROOT / "configs" / "default.py"),
      "--workdir",
      str(workdir),
      *BASE_FLAGS,
      *self.data_flags,
      *flags,
    ]

  def start(self, workdir, *flags) -> subprocess.Popen:
    return subprocess.Popen(
      self.command(workdir, *flags),
      cwd=ROOT,
      env=self.env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )

  def run(self, workdir, *flags, timeout=600):
    process = self.start(workdir, *flags)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err

  def run_module(self, module, *args, timeout=600):
    """Another command of the program (``train.evaluate``, say)."""
    process = subprocess.run(
      [sys.executable, "-m", module, *args],
      cwd=ROOT,
      env=self.env,
      capture_output=True,
      text=True,
      timeout=timeout,
    )
    return process.returncode, process.stdout, process.stderr


def params(workdir: pathlib.Path, step: int):
  import orbax.checkpoint as ocp

  path = workdir.absolute() / "checkpoints" / str(step) / "state"
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path)["params"]


def same_params(a, b) -> bool:
  import jax

  return all(
    np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def metric_steps(workdir: pathlib.Path) -> list[int]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def reason_lines(err: str) -> list[str]:
  """What the run printed on stderr besides progress and the JAX banner."""
  keep = []
  for line in err.splitlines():
    text = line.strip()
    if not text or text.startswith(
      ("train step", "train:", "sft reference", "reference log-probs")
    ):
      continue
    keep.append(text)
  return keep


def wait(predicate, process, seconds=300):
  end = time.time() + seconds
  while time.time() < end:
    if predicate():
      return True
    if process.poll() is not None:
      return False
    time.sleep(0.005)
  return False


def saving(workdir: pathlib.Path) -> bool:
  """Whether a checkpoint's temporary folder exists (a save under way)."""
  folder = workdir / "checkpoints"
  return folder.exists() and any(
    ".orbax-checkpoint-tmp" in p.name for p in folder.glob("*")
  )


def truncate(path: pathlib.Path) -> None:
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])

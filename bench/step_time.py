"""The program's train step for several losses, timed side by side.

  python -m bench.step_time                      # GPT-2-small shape, ~3 min
  python -m bench.step_time --size tiny --rounds 7

Each loss's step (``train.step.train_step``, fused head, online reference) is
compiled once on the same batch; the rounds are interleaved (dpo, slpo_soft,
..., dpo, slpo_soft, ...), so load on the machine slows every loss alike.
It prints the median seconds per step and the ratio of each loss to DPO.
The transformer runs once per row for every loss; the pair complement of
``slpo_soft`` and the token values of ``slpo_token`` cost one more pass of
the loss head only, so their ratios stay close to 1.
"""

import argparse
import dataclasses
import functools
import json
import pathlib
import random
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp

from train import config_schema
from train import objective
from train import setup as setup_lib
from train import step as step_lib
from train import validate


def _write_pairs(path: pathlib.Path, count: int = 256, seed: int = 0) -> None:
  rng = random.Random(seed)

  def words(n):
    return " ".join(
      "".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 6)))
      for _ in range(n)
    )

  with path.open("w") as f:
    for _ in range(count):
      f.write(
        json.dumps(
          {
            "prompt": words(6),
            "chosen": words(rng.randint(8, 20)),
            "rejected": words(rng.randint(8, 20)),
          }
        )
        + "\n"
      )


def run(args) -> dict:
  workdir = pathlib.Path(tempfile.mkdtemp())
  _write_pairs(workdir / "train.jsonl")
  config = config_schema.get_config()
  config.data.source = "jsonl"
  config.data.train_path = str(workdir / "train.jsonl")
  config.data.max_length = args.length
  config.data.max_prompt_length = args.length // 4
  config.data.length_buckets = (args.length,)
  config.batch_size = args.batch_size
  config.model.family = "llama"
  config.model.size = args.size
  config.model.loss_head = "fused"
  config.mesh.data = 1
  config.eval_every = 0
  built = setup_lib.build_run(
    config, workdir / "run", validate.validate(config, jax.devices()[:1])
  )
  batch = built.to_device(next(built.train_iterator))
  steps = {}
  for loss in args.losses:
    loss_config = config.loss.copy_and_resolve_references()
    loss_config.name = loss
    # The run's own step, mesh dropped as before, with this loss.
    spec = dataclasses.replace(
      built.spec, loss=objective.build_loss(loss_config), mesh=None
    )
    step = jax.jit(functools.partial(step_lib.train_step, spec=spec))
    state = step_lib.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=built.initial_params,
      opt_state=spec.optimizer.init(built.initial_params),
    )
    compiled = step.lower(state, built.reference_params, batch).compile()
    jax.block_until_ready(compiled(state, built.reference_params, batch))
    steps[loss] = (compiled, state)
  seconds = {loss: [] for loss in steps}
  for _ in range(args.rounds):
    for loss, (compiled, state) in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(compiled(state, built.reference_params, batch))
      seconds[loss].append(time.perf_counter() - start)
  median = {loss: statistics.median(s) for loss, s in seconds.items()}
  return {
    "setting": {
      "size": args.size,
      "batch_size": args.batch_size,
      "length": args.length,
      "rounds": args.rounds,
      "backend": jax.default_backend(),
    },
    "median_seconds": median,
    "ratio_to_dpo": {loss: m / median["dpo"] for loss, m in median.items()},
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="small", choices=("tiny", "small"))
  parser.add_argument("--batch-size", type=int, default=4)
  parser.add_argument("--length", type=int, default=96)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument(
    "--losses", nargs="+", default=["dpo", "slpo_soft", "slpo_token"]
  )
  args = parser.parse_args(argv)
  if "dpo" not in args.losses:
    parser.error("--losses must include dpo, the baseline of the ratios")
  print(json.dumps(run(args), indent=1))


if __name__ == "__main__":
  main()

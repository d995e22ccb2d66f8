"""Train a policy on preference pairs (or, with reward_model.train=True, a
reward model: configs/reward_model.py).

  python -m train.main --config configs/default.py --workdir /tmp/run

Any config key can be overridden: ``--config.loss.name=slpo``. Rerunning the
same command in the same workdir resumes from the latest checkpoint. A
mistake in the flags, the config or the data ends the program with one line
on stderr, ``error: ...``, and exit code 2.
"""

import sys


def train_and_evaluate(config, workdir):
  """:func:`train.loop.train_and_evaluate`, or with
  ``reward_model.train`` :func:`train.reward_training.train`, imported once
  JAX's distributed runtime is up (the shell starts it first)."""
  if config.reward_model.train:
    from train import reward_training

    return reward_training.train(config, workdir)
  from train import loop

  return loop.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  from train import cli

  cli.run("train", sys.modules[__name__])

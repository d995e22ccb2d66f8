"""A Bradley-Terry reward model on the synthetic sentiment task, on a CPU.

  python -m train.main --config configs/reward_model.py --workdir /tmp/rm

The default run's data and starting point (the tiny Llama fitted to the
task's base language, cached in WORKDIR/reference) with a scalar head on the
last token, trained on the same 2,048 pairs to score the chosen response
above the rejected one (train/reward_training.py). WORKDIR/hf is then a
LlamaForSequenceClassification folder; score another run's samples with it:

  python -m train.evaluate --workdir /tmp/default --reward_model /tmp/rm/hf

Measured on the 2-core CPU (heavily loaded: 3 min 2 s wall, SFT fit
included): held-out ``eval/rewards/accuracies`` 0.848 at step 100 and 0.895
at step 200. Scoring the default run's samples of 256 held-out prompts, its
win rate against the reference is 0.938 at steps 100 and 200, where the true
reward gives 0.949 and 0.938; its scores and the true rewards of those 768
samples correlate at 0.79 (docs/judging.md).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.reward_model.train = True
  config.steps = 200
  config.eval_every = 100
  config.checkpoint_every = 100
  config.optimizer.learning_rate = 1e-3
  return config

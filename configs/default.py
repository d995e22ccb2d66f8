"""The default run: SLPO on the synthetic sentiment task, on a CPU.

  python -m train.main --config configs/default.py --workdir /tmp/default

A tiny Llama-style model is fitted to the task's base language (the SFT
reference, cached in the workdir), preference pairs are two reference samples
per prompt ranked by the true reward, and the policy is trained from the
reference with tempered SLPO.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.steps = 200
  config.batch_size = 32
  config.eval_every = 100
  config.checkpoint_every = 100
  config.log_every = 10
  config.loss.name = "slpo"
  config.loss.temperature = 32.0
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 10
  config.reference.sft_steps = 400
  config.reference.sft_learning_rate = 3e-3
  config.reference.sft_batch_size = 64
  config.data.source = "synthetic"
  config.data.max_length = 32
  config.data.max_prompt_length = 8
  config.data.length_buckets = (32,)
  config.data.synthetic.num_prompts = 2048
  config.data.synthetic.num_eval_prompts = 256
  return config

"""What the family configs share: a local Hugging Face folder on HH-RLHF.

``configs/qwen3_1p7b.py`` and ``configs/gemma2_2b.py`` differ only in their
batch; the checkpoint folder is given on the command line.
"""

from configs import hh


def get_config(hh_file: str = "", batch_size: int = 16):
  config = hh.paired_rows(hh_file)
  config.steps = 1000
  config.batch_size = batch_size
  config.eval_every = 100
  config.eval_batches = 8
  config.checkpoint_every = 250
  config.model.family = "llama"
  config.model.checkpoint = ""  # Set on the command line.
  config.model.dtype = "bfloat16"
  config.model.remat = True
  # One scanned block; sliding and global layers read per-layer windows.
  config.model.scan_layers = True
  config.data.tokenizer = ""  # The checkpoint's tokenizer.json.
  config.data.max_length = 1024
  config.data.max_prompt_length = 512
  config.data.length_buckets = (256, 512, 1024)
  config.optimizer.learning_rate = 5e-7
  config.optimizer.warmup_steps = 100
  # DPO, as the default config: docs/RESULTS.md finds no SLPO form that
  # keeps Eq. 6's target on DPO's reward-against-KL frontier.
  config.loss.name = "dpo"
  config.loss.beta = 0.1
  return config

"""GPT-2 small (124M) from a Hugging Face checkpoint on one GPU, HH-RLHF.

  python -m train.main --config configs/gpt2_small_gpu.py:/data/hh/train.jsonl.gz --workdir /tmp/gpt2 \
      --config.model.checkpoint=/path/to/gpt2 \
      --config.data.tokenizer=/path/to/gpt2/tokenizer.json

Not run in CI. Estimates, not yet measured: parameters 124M; policy + frozen
reference + AdamW state in float32 is about 2.5 GB; with bfloat16 activations,
the fused loss head, batch 32 pairs x 512 tokens (64 sequences), activations
stay under about 20 GB, so it fits an 80 GB H100 with room to spare. Expected
throughput is on the order of 50-100k tokens/s on an H100 for the
policy+reference forward and policy backward (estimate).
"""

from configs import hh


def get_config(hh_file: str = ""):
  config = hh.paired_rows(hh_file)
  config.steps = 2000
  config.batch_size = 32
  config.eval_every = 200
  config.eval_batches = 16
  config.checkpoint_every = 500
  config.model.family = "gpt2"
  config.model.checkpoint = ""  # Set on the command line.
  config.model.dtype = "bfloat16"
  config.data.tokenizer = ""  # The checkpoint's tokenizer.json.
  config.data.max_length = 512
  config.data.max_prompt_length = 256
  config.data.length_buckets = (128, 256, 512)
  config.optimizer.learning_rate = 5e-7
  config.optimizer.warmup_steps = 150
  config.loss.name = "dpo"
  config.loss.beta = 0.1
  return config

"""Llama 3 8B on a Cloud TPU v5p-64 pod slice (32 chips), HH-RLHF.

Run on every host of the slice (see README, "Cloud TPU"):

  python -m train.main --config configs/llama8b_tpu_pod.py \
      --workdir /mnt/shared/runs/llama8b-slpo \
      --config.model.checkpoint=/mnt/disks/models/Meta-Llama-3-8B-Instruct \
      --config.data.tokenizer=/mnt/disks/models/Meta-Llama-3-8B-Instruct/tokenizer.json

Not run in CI. Estimates, not yet measured: 8.0B parameters; float32 policy
(32 GB) + AdamW moments (64 GB) + bfloat16 reference (16 GB) = about 112 GB,
sharded over 32 chips by fsdp (about 3.5 GB per chip) plus activations of
4 pairs x 1,024 tokens per chip with rematerialisation-free bfloat16 layers
(about 20-30 GB per chip): within a v5p chip's 95 GB. The fused loss head
keeps the 128,256-entry vocabulary from materialising [B, T, V] logits
(4 GB per 8k tokens in float32). Expected throughput on the order of
1,000-2,000 tokens/s per chip (estimate).
"""

from configs import hh


def get_config():
  config = hh.get_config()
  config.steps = 1000
  config.batch_size = 128
  config.grad_accum_steps = 1
  config.eval_every = 100
  config.eval_batches = 8
  config.checkpoint_every = 100
  config.model.family = "llama"
  config.model.checkpoint = ""  # Set on the command line.
  config.model.dtype = "bfloat16"
  config.model.vocab_chunk_size = 8192
  config.model.token_chunk_size = 2048
  config.data.tokenizer = ""  # The checkpoint's tokenizer.json.
  config.data.max_length = 1024
  config.data.max_prompt_length = 512
  config.data.length_buckets = (512, 1024)
  config.mesh.data = 1
  config.mesh.fsdp = -1
  config.mesh.tensor = 1
  config.optimizer.learning_rate = 5e-7
  config.optimizer.warmup_steps = 100
  config.loss.name = "slpo"
  config.loss.temperature = 64.0
  return config

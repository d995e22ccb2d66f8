"""Llama 3.2 1B on one Cloud TPU v6e-8 host (8 chips), HH-RLHF.

  python -m train.main --config configs/llama1b_tpu_v6e8.py:/data/hh/train.jsonl.gz \
      --workdir /mnt/runs/llama1b-slpo \
      --config.model.checkpoint=/mnt/disks/models/Llama-3.2-1B-Instruct

Not run in CI. Compiled from a CPU machine for the 8 chips of one v6e-8
host (``python -m train.aot --config configs/llama1b_tpu_v6e8.py:hh.jsonl.gz
--topology v6e:2x4 --config.model.checkpoint=configs/shapes/llama3_2_1b``;
the data file is not read), 1.24B parameters, scanned blocks with remat,
fused head, blockwise attention, fsdp over the 8 chips; per chip: 2.30 GiB
of arguments, 9.55 GiB of temporaries, 11.9 GiB in all of 32 GiB HBM (37%),
so there is room for a larger batch. TPU XLA counts 6.9e12 FLOPs (one
scanned layer's loop body) against 1.7e14 analytic per chip and 8.4e10
bytes accessed: a compute-bound roofline of 186 ms per step of 64 pairs x
1,024 tokens, at most 88,000 tokens/s per chip. The roofline assumes perfect
overlap; it bounds the step time from below, not an MFU to expect.
"""

from configs import hh


def get_config(train_path: str = ""):
  config = hh.get_config(train_path)
  config.steps = 2000
  config.batch_size = 64
  config.grad_accum_steps = 1
  config.eval_every = 200
  config.eval_batches = 8
  config.checkpoint_every = 200
  config.model.family = "llama"
  config.model.checkpoint = ""  # Set on the command line.
  config.model.dtype = "bfloat16"
  config.model.remat = True
  config.model.scan_layers = True
  config.model.vocab_chunk_size = 8192
  config.model.token_chunk_size = 2048
  config.data.tokenizer = ""  # The checkpoint's tokenizer.json.
  config.data.max_length = 1024
  config.data.max_prompt_length = 512
  config.data.length_buckets = (512, 1024)
  # One host: shard the weights and optimizer state over its 8 chips.
  config.mesh.data = 1
  config.mesh.fsdp = -1
  config.mesh.tensor = 1
  config.optimizer.learning_rate = 1e-6
  config.optimizer.warmup_steps = 100
  config.loss.name = "slpo"
  config.loss.temperature = 64.0
  return config

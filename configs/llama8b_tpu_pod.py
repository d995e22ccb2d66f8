"""Llama 3 8B on a Cloud TPU v5p-64 pod slice (32 chips), HH-RLHF.

Run on every host of the slice (see README, "Cloud TPU"):

  python -m train.main --config configs/llama8b_tpu_pod.py \
      --workdir /mnt/shared/runs/llama8b-slpo \
      --config.model.checkpoint=/mnt/disks/models/Meta-Llama-3-8B-Instruct \
      --config.data.tokenizer=/mnt/disks/models/Meta-Llama-3-8B-Instruct/tokenizer.json

Not run in CI, and measured not to fit as written. Compiled from this
repository's CPU machine for the v5p-64 topology (``python -m train.aot
--config configs/llama8b_tpu_pod.py --topology v5p:4x4x2
--config.model.checkpoint=configs/shapes/llama3_8b``, 8.03B parameters),
TPU XLA refuses the step: its temporaries need 918 GiB per chip without
rematerialisation and 896 GiB with ``--config.model.remat=True``, against
95.7 GiB of HBM. The earlier estimate (about 112 GB of state sharded to
3.5 GB per chip, plus 20-30 GB of activations) was wrong: the fsdp-sharded
step keeps whole-batch MLP activations on every chip (docs/ARCHITECTURE.md,
"Sharding"). Until that is fixed, plan a pod run with ``train.aot``, not
with this docstring.
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

"""LoRA DPO of Llama 3 8B on one Cloud TPU v6e-8 host (8 chips), HH-RLHF.

  python -m train.main \
      --config configs/llama8b_lora_tpu_v6e8.py:/data/hh/train.jsonl.gz \
      --workdir /mnt/runs/llama8b-lora \
      --config.model.checkpoint=/mnt/disks/models/Meta-Llama-3-8B-Instruct

Not run in CI. Compiled from a CPU machine for the 8 chips of one v6e-8
host (``python -m train.aot --config
configs/llama8b_lora_tpu_v6e8.py:hh.jsonl.gz --topology v6e:2x4
--config.model.checkpoint=configs/shapes/llama3_8b``; the data file is not
read; about 4 min on a 2-core CPU shared with other work, libtpu 0.0.42),
8.03B parameters with 41.9M trainable (rank-16 adapters on the 7
projections of every layer, applied inside the layers), scanned blocks
with remat, fused head, blockwise attention, fsdp over the 8 chips; per
chip: 2.20 GiB of arguments (the bfloat16 base, also the reference, and
the float32 adapters with their AdamW moments), 22.5 GiB of temporaries,
24.7 GiB in all of 32 GiB HBM (77%). The adapters inside the layers left
no room for a larger batch here: sharded 8 ways, the merged kernels and
their gradients they removed were one block's at a time, and the
temporaries are the activations: 128 pairs need 31.8 GiB (99%), 192 pairs
44.4 GiB (139%), as with merged adapters (128: 31.9 GiB). They cut the
work instead: 1.16e15 analytic FLOPs per chip (4N per token for the
policy, 2N for the reference) against 1.5e15 with merged adapters (6N),
a compute-bound roofline of 1.26 s per step of 96 pairs x 1,024 tokens
(was 1.66 s), at most 19,500 tokens/s per chip. TPU XLA counts 3.0e13
FLOPs (one scanned layer's loop body) and 1.6e11 bytes accessed. The
roofline assumes perfect overlap; it bounds the step time from below, not
an MFU to expect. A larger batch on this host takes ``grad_accum_steps``.
"""

from configs import llama1b_tpu_v6e8


def get_config(hh_file: str = ""):
  # The single-host settings of the 1B config: scanned blocks with remat,
  # fused head, 1,024-token pairs, fsdp over the host's 8 chips.
  config = llama1b_tpu_v6e8.get_config(hh_file)
  config.batch_size = 96
  config.model.remat_policy = "full"  # The fit measured above.
  # Rank-16 adapters on every projection over the frozen bfloat16 base,
  # which is also the reference (the adapters off), as configs/llama_lora.py.
  config.model.lora.rank = 16
  config.model.lora.alpha = 32.0
  config.model.lora.targets = ("attention", "mlp")
  config.model.lora.base_dtype = "bfloat16"
  # Adapters take a larger step than full fine-tuning (PEFT's DPO recipes).
  config.optimizer.learning_rate = 5e-5
  config.loss.name = "dpo"
  config.loss.beta = 0.1
  return config

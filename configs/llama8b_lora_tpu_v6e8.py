"""LoRA DPO of Llama 3 8B on one Cloud TPU v6e-8 host (8 chips), HH-RLHF.

  python -m train.main \
      --config configs/llama8b_lora_tpu_v6e8.py:/data/hh/train.jsonl.gz \
      --workdir /mnt/runs/llama8b-lora \
      --config.model.checkpoint=/mnt/disks/models/Meta-Llama-3-8B-Instruct

Not run in CI. Compiled from a CPU machine for the 8 chips of one v6e-8
host (``python -m train.aot --config
configs/llama8b_lora_tpu_v6e8.py:hh.jsonl.gz --topology v6e:2x4
--config.model.checkpoint=configs/shapes/llama3_8b``; the data file is not
read; 2.6 min on a 2-core CPU shared with other work), 8.03B parameters
with 41.9M trainable (rank-16 adapters on the 7 projections of every
layer), scanned blocks with remat, fused head, blockwise attention, fsdp
over the 8 chips; per chip: 2.20 GiB of arguments (the bfloat16 base, also
the reference, and the float32 adapters with their AdamW moments), 22.5
GiB of temporaries, 24.7 GiB in all of 32 GiB HBM (77%). At 128 pairs the
step needed 31.9 GiB (99.8%), at 64 pairs 17.9 GiB (56%). TPU XLA counts
3.4e13 FLOPs (one scanned layer's loop body) against 1.5e15 analytic per
chip (the adapters merge into the kernels, so the backward pass computes
the merged kernels' gradients: 6N per token for the policy, 2N for the
reference) and 1.6e11 bytes accessed: a compute-bound roofline of 1.66 s
per step of 96 pairs x 1,024 tokens, at most 14,800 tokens/s per chip. The
roofline assumes perfect overlap; it bounds the step time from below, not
an MFU to expect.
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

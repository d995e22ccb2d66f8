"""LoRA DPO of Llama 3 8B on one Cloud TPU v6e-8 host (8 chips), HH-RLHF.

  python -m train.main \
      --config configs/llama8b_lora_tpu_v6e8.py:/data/hh/train.jsonl.gz \
      --workdir /mnt/runs/llama8b-lora \
      --config.model.checkpoint=/mnt/disks/models/Meta-Llama-3-8B-Instruct

Not run in CI. Compiled from a CPU machine for the 8 chips of one v6e-8
host (``python -m train.aot --config
configs/llama8b_lora_tpu_v6e8.py:hh.jsonl.gz --topology v6e:2x4
--config.model.checkpoint=configs/shapes/llama3_8b``; the data file is not
read; 2.5 to 4.5 min a compile on a 2-core CPU shared with other work,
jax 0.10.2, libtpu 0.0.42, 2026-12-07), 8.03B parameters with 41.9M
trainable (rank-16 adapters on the 7 projections of every layer, applied
inside the layers), scanned blocks with full remat, fused head, splash
attention (``auto`` on a TPU), fsdp over the 8 chips; per chip at 128
pairs: 2.20 GiB of arguments (the bfloat16 base, also the reference, and
the float32 adapters with their AdamW moments), 19.6 GiB of temporaries,
21.8 GiB in all of 32 GiB HBM (68%).

The same session's compiles, side by side: at 96 pairs (this config's
batch before) 17.1 GiB (53%) with splash and 24.7 GiB (77%) with the
blockwise kernel (``--config.model.attention_impl=blockwise``; at 128 pairs
it needed 31.8 GiB, 99%, and 192 pairs 44.4 GiB). Those blockwise figures
predate a fix to the blockwise kernel, which kept every score tile of its
forward pass under scanned layers; after it, 96 pairs need 19.2 GiB (60%)
with blockwise. The room splash leaves takes 128 pairs with more than 10%
headroom; that is this config's batch. Keeping each block's matmul outputs
(``remat_policy='dots'``) does not fit at 96 pairs: 127 GiB of temporaries.
At 128 pairs: 1.55e15 analytic FLOPs per chip (4N per token for the
policy, 2N for the reference), a compute-bound roofline of 1.68 s per step
of 128 pairs x 1,024 tokens, at most 19,500 tokens/s per chip; TPU XLA
counts 3.9e13 FLOPs (one scanned layer's loop body, and not the splash
kernels' work) and 1.6e11 bytes accessed. The roofline assumes perfect
overlap; it bounds the step time from below, not an MFU to expect.
"""

from configs import llama1b_tpu_v6e8


def get_config(hh_file: str = ""):
  # The single-host settings of the 1B config: scanned blocks with remat,
  # fused head, 1,024-token pairs, fsdp over the host's 8 chips.
  config = llama1b_tpu_v6e8.get_config(hh_file)
  config.batch_size = 128  # Fits with splash attention; see above.
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

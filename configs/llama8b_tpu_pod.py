"""Llama 3 8B on a Cloud TPU v5p-64 pod slice (32 chips), HH-RLHF, DPO.

Run on every host of the slice (see docs/tpu_gpu.md, "Cloud TPU"):

  python -m train.main \
      --config configs/llama8b_tpu_pod.py:/mnt/shared/hh/train.jsonl.gz \
      --workdir /mnt/shared/runs/llama8b-dpo \
      --config.model.checkpoint=/mnt/disks/models/Meta-Llama-3-8B-Instruct \
      --config.data.tokenizer=/mnt/disks/models/Meta-Llama-3-8B-Instruct/tokenizer.json

Trains DPO (beta 0.1), as the default config does: the README advises
against the SLPO forms that keep Eq. 6's target.

Not run in CI. Compiled from a CPU machine for the v5p-64 topology
(``python -m train.aot --config configs/llama8b_tpu_pod.py --topology
v5p:4x4x2 --config.model.checkpoint=configs/shapes/llama3_8b
--config.data.train_path=hh.jsonl.gz``, 8.03B parameters, splash attention
(``auto`` on a TPU), remat keeping each block's matmul outputs
(``remat_policy='dots'``); with the DPO loss on 2026-12-07, by a 2-core CPU
machine shared with test runs, jax 0.10.2, libtpu 0.0.42: 18 to 26 min a
compile under that load), per chip: 3.74 GiB of arguments (float32 policy,
AdamW moments and float32 reference, sharded 32 ways), 37.3 GiB of
temporaries, 41.0 GiB in all of 95 GiB HBM (43%). The same session's
compiles with full remat (``--config.model.remat_policy=full``, this
config's setting before): 42.1 GiB (44%) with splash, 41.9 GiB with the
blockwise kernel (``--config.model.attention_impl=blockwise``). ``'dots'``
recomputes only the elementwise work in the backward pass, and here it also
needed less memory, so the config takes it; ``'dots'`` with the blockwise
kernel was not compiled. TPU XLA's cost analysis gives 5.9e13 FLOPs per
chip with ``'dots'`` and 2.2e14 with full remat (it counts loop bodies once,
and not the splash kernels' work: docs/tpu_gpu.md, "Attention on TPU")
against 5.1e14 analytic, and 9.3e11 bytes accessed (1.12e12 with the
blockwise kernel): compute-bound, a roofline of 1.1 s per step of 128 pairs
x 1,024 tokens, at most 7,400 tokens/s per chip. The former SLPO loss
(temperature 64) gave the same figures with the blockwise kernel and full
remat, to the digits quoted. The data file is not read (any name passes
validation).
Before the models' activation constraints were bound (docs/ARCHITECTURE.md,
"Sharding") this step, then with the SLPO loss, needed 896 GiB of
temporaries and did not compile.
"""

from configs import hh


def get_config(hh_file: str = ""):
  config = hh.paired_rows(hh_file)
  config.steps = 1000
  config.batch_size = 128
  config.grad_accum_steps = 1
  config.eval_every = 100
  config.eval_batches = 8
  config.checkpoint_every = 100
  config.model.family = "llama"
  config.model.checkpoint = ""  # Set on the command line.
  config.model.dtype = "bfloat16"
  config.model.remat = True  # The measured fit above is with remat.
  config.model.remat_policy = "dots"  # Least recomputation; see above.
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
  config.loss.name = "dpo"
  config.loss.beta = 0.1
  return config

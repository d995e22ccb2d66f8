"""Qwen3 1.7B from a local Hugging Face folder on one 80 GB GPU, HH-RLHF.

  python -m train.main --config configs/qwen3_1p7b.py:/data/hh/train.jsonl.gz \
      --workdir /tmp/qwen3 \
      --config.model.checkpoint=/path/to/Qwen3-1.7B \
      --config.data.tokenizer=/path/to/Qwen3-1.7B/tokenizer.json

Nothing downloads: the folder is the one ``huggingface-cli download
Qwen/Qwen3-1.7B`` writes, copied over. Not run in CI. Estimates, not
measured: 1.72B parameters (28 layers, d 2048, 16 query / 8 kv heads of 128,
q/k norms, tied 151,936-token head). Policy and AdamW state in float32 are
about 27.5 GB and the frozen float32 reference 6.9 GB; with bfloat16
compute, rematerialised blocks, blockwise attention and the fused head
(never the [B, T, 151936] logits), 16 pairs x 1,024 tokens should need well
under 30 GB of activations, so the step fits an 80 GB H100 or H200. The
policy forward+backward and reference forward are about 4 x 1.7e9 x 2 FLOPs
per token: on the order of 10-20k tokens/s at 40% of an H100's bfloat16
peak (estimate).
"""

from configs import hf_folder


def get_config(hh_file: str = ""):
  return hf_folder.get_config(hh_file, batch_size=16)

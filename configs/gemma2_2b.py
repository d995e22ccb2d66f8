"""Gemma 2 2B from a local Hugging Face folder on one 80 GB GPU, HH-RLHF.

  python -m train.main --config configs/gemma2_2b.py:/data/hh/train.jsonl.gz \
      --workdir /tmp/gemma2 \
      --config.model.checkpoint=/path/to/gemma-2-2b-it \
      --config.data.tokenizer=/path/to/gemma-2-2b-it/tokenizer.json

Nothing downloads: the folder is the one ``huggingface-cli download
google/gemma-2-2b-it`` writes, copied over. The model's attention and
final-logit soft-capping (50 and 30), its alternating 4,096-token sliding
and global layers and ``query_pre_attn_scalar`` come from its config.json;
the loss head applies the same final cap. Not run in CI. Estimates, not
measured: 2.61B parameters (26 layers, d 2304, 8 query / 4 kv heads of 256,
a tied 256,000-token head, 0.59B of it). Policy and AdamW state in float32
are about 42 GB and the frozen float32 reference 10.5 GB; with bfloat16
compute, rematerialised blocks, blockwise attention and the fused head, 8
pairs x 1,024 tokens should need under 20 GB of activations: about 75 GB in
all, tight on an 80 GB GPU, comfortable on an H200 (141 GB) or with the
state sharded over 2 GPUs (mesh.fsdp). About 4 x 2.6e9 x 2 FLOPs per token:
on the order of 10k tokens/s at 40% of an H100's bfloat16 peak (estimate).
"""

from configs import hf_folder


def get_config(hh_file: str = ""):
  return hf_folder.get_config(hh_file, batch_size=8)

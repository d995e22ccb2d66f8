"""LoRA DPO of a Llama-family checkpoint on HH-RLHF, one GPU.

  python -m train.main --config configs/llama_lora.py:/data/hh/train.jsonl.gz --workdir /tmp/lora \
      --config.model.checkpoint=/path/to/Llama-3.2-1B-Instruct

Nothing downloads: the checkpoint folder (config.json, safetensors and
tokenizer.json) is given on the command line, and so may
``--config.data.train_path`` be. Rank-16 adapters on every projection
train over the frozen base, kept in bfloat16; the reference is that base
with the adapters off, in the same program. At the end the workdir holds
the merged policy (``WORKDIR/hf``); ``python -m train.export --format peft``
writes the adapters as a PEFT folder. ``--config.model.lora.base_dtype=int8``
or ``=nf4`` (QLoRA) holds the base's projections quantized instead.
bench/results/lora_memory.md has the step's compiled memory for 1B and 8B
shapes, each way.
"""

from configs import hh


def get_config(hh_file: str = ""):
  config = hh.paired_rows(hh_file)
  config.steps = 2000
  config.batch_size = 32
  config.grad_accum_steps = 4
  config.eval_every = 200
  config.eval_batches = 16
  config.checkpoint_every = 250
  config.model.checkpoint = ""  # Set on the command line.
  config.model.dtype = "bfloat16"
  config.model.remat = True
  config.model.scan_layers = True
  config.model.lora.rank = 16
  config.model.lora.alpha = 32.0
  config.model.lora.targets = ("attention", "mlp")
  config.model.lora.base_dtype = "bfloat16"
  config.data.tokenizer = ""  # The checkpoint's tokenizer.json.
  config.data.max_length = 1024
  config.data.max_prompt_length = 512
  config.data.length_buckets = (256, 512, 1024)
  # Adapters take a larger step than full fine-tuning (PEFT's DPO recipes).
  config.optimizer.learning_rate = 5e-5
  config.optimizer.warmup_steps = 100
  config.loss.name = "dpo"
  config.loss.beta = 0.1
  return config

"""Every configuration key of the training program, with its default.

This module is the config's one schema: the presets in ``configs/`` import
it and change values; they never add keys. Any key can be overridden on the
command line, for example::

  python -m train.main --config configs/default.py --workdir /tmp/run \\
      --config.loss.name=slpo_normalized

A key that is not declared here is an error (the config is locked). What a
value may be is checked by :mod:`train.validate` before anything is loaded.
"""

import ml_collections

# The values of the keys whose meaning the program defines (the model's
# attention and remat choices are the library's: slpo_jax.models).
LOSS_HEADS = ("fused", "plain")  # model.loss_head
COMPUTE_DTYPES = ("float32", "bfloat16")  # model.dtype, model.param_dtype
REFERENCE_MODES = ("online", "precomputed")  # reference.mode
EXPORT_DTYPES = ("float32", "bfloat16")  # export.dtype
# model.lora.base_dtype: kept as floats, or quantized (slpo_jax.quantize).
LORA_BASE_DTYPES = ("float32", "bfloat16", "int8", "nf4")


def get_config() -> ml_collections.ConfigDict:
  """The base configuration: a tiny model on the synthetic task."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds initialisation, data order and sampling.
  config.steps = 300  # Optimizer steps.
  config.batch_size = 32  # Global preference pairs per optimizer step.
  config.grad_accum_steps = 1  # Micro-batches per step; batch_size divides.
  config.log_every = 10  # Steps between training-metric records.
  config.eval_every = 100  # Steps between held-out evaluations; 0 = never.
  config.eval_batches = 0  # Eval batches per evaluation; 0 = the whole split.
  config.checkpoint_every = 100  # Steps between checkpoints; 0 = end only.
  config.keep_checkpoints = 3  # Checkpoints kept in the workdir.

  # Samples at every evaluation (train/samples.py): held-out prompts sampled
  # from the policy (and once from the reference, as step 0), scored by
  # length, ended share, KL from the reference and, on the synthetic task,
  # the true reward; written to WORKDIR/samples.jsonl and TensorBoard.
  config.eval = ml_collections.ConfigDict()
  config.eval.num_samples = 16  # Held-out prompts sampled; 0 = no samples.
  config.eval.temperature = 1.0  # 1 samples the policy itself; 0 = greedy.
  config.eval.top_p = 1.0  # Nucleus mass; 1 = the whole distribution.
  config.eval.max_new_tokens = 128  # Most tokens of a sampled response.

  config.loss = ml_collections.ConfigDict()
  # A name of the loss table, slpo_jax.losses.LOSSES, or several joined by
  # commas, summed with `weights` (e.g. 'sigmoid,bco_pair,sft', TRL's MPO).
  config.loss.name = "dpo"
  config.loss.weights = ()  # One weight per loss of `name`; () = 1 each.
  config.loss.beta = 0.1  # DPO/IPO/hinge/SimPO/ORPO strength.
  config.loss.label_smoothing = 0.0  # Label noise of cDPO, robust, exo_pair.
  config.loss.temperature = 1.0  # SLPO temperature; 1 is Eq. 8 exactly.
  config.loss.alpha = 0.9  # Soft SLPO's winner share, 0.5 < alpha <= 1.
  config.loss.gamma = 0.5  # SimPO's target margin.
  config.loss.discopop_tau = 0.05  # DiscoPOP's blend temperature.
  config.loss.transfer = 0.5  # SLPO-diff: share of the loser's mass moved.
  # TRL's DPO options (slpo_jax.losses.DpoOptions), applied to every term:
  config.loss.use_weighting = False  # WPO: pairs weighted by policy prob.
  config.loss.ld_alpha = 1.0  # LD-DPO tail weight in [0, 1]; 1 = off (None).
  # f-DPO: 'reverse_kl' (DPO), 'forward_kl', 'js_divergence' or
  # 'alpha_divergence' (with f_alpha_divergence_coef as alpha).
  config.loss.f_divergence_type = "reverse_kl"
  config.loss.f_alpha_divergence_coef = 0.5
  # KTO (loss.name='kto', unpaired records): TRL's weights of the desirable
  # and undesirable records' losses.
  config.loss.desirable_weight = 1.0
  config.loss.undesirable_weight = 1.0

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"  # 'adamw' or 'rmsprop'.
  config.optimizer.learning_rate = 1e-4  # Peak learning rate.
  config.optimizer.warmup_steps = 10  # Linear warm-up from 0.
  config.optimizer.decay = (
    "cosine"  # 'cosine', 'linear' or 'constant' after warm-up.
  )
  config.optimizer.weight_decay = 0.0  # Decoupled weight decay (AdamW).
  config.optimizer.b1 = 0.9  # Adam first-moment decay.
  config.optimizer.b2 = 0.999  # Adam second-moment decay / RMSprop decay.
  config.optimizer.eps = 1e-8  # Optimizer epsilon.
  config.optimizer.grad_clip_norm = 1.0  # Global-norm clipping; 0 = off.

  config.model = ml_collections.ConfigDict()
  config.model.family = "llama"  # 'gpt2' or 'llama' (built-in sizes).
  config.model.size = "tiny"  # Built-in size when no checkpoint is given.
  config.model.checkpoint = ""  # Hugging Face folder to start from ('' = none).
  config.model.dtype = "float32"  # Activation dtype: 'float32' or 'bfloat16'.
  config.model.remat = False  # Recompute each block in the backward pass.
  config.model.scan_layers = False  # One scanned block (faster compiles).
  # With remat, what a block keeps for the backward: 'full' (only its input)
  # or 'dots' (also its matmul outputs: less recompute, more memory).
  config.model.remat_policy = "full"
  # Weights: 'float32' (master copy, cast to model.dtype for compute) or
  # 'bfloat16' (half the weight and optimizer-state memory, lossier updates).
  config.model.param_dtype = "float32"
  # 'auto' (per platform: splash on TPU; cudnn, pallas_gpu or blockwise on
  # GPU by the model and layout; blockwise on CPU), or one kernel: 'blockwise'
  # (memory linear in length, any backend), 'dense' ([T, T] scores),
  # 'splash' (TPU), 'cudnn' (GPU, right-padded unpacked rows, no logit cap),
  # 'pallas_gpu' (GPU, no window or logit cap). Splash and pallas_gpu run
  # interpreted (slowly) off their platform. See docs/tpu_gpu.md.
  config.model.attention_impl = "auto"
  # The blockwise kernel's query and key tile; 0 for the model's own (512).
  # Smaller tiles skip more of the masked score (other pairs' segments,
  # the other response): on a 2-core CPU 128 ran packed rows' attention
  # about 3x faster (bench/results/packed_step.md).
  config.model.attention_block = 0
  config.model.loss_head = "fused"  # 'fused' (no [B,T,V] logits) or 'plain'.
  config.model.vocab_chunk_size = (
    0  # Fused head vocabulary chunk; 0 = per backend.
  )
  config.model.token_chunk_size = 0  # Fused head token chunk; 0 = per backend.
  # LoRA: train low-rank adapters over a frozen base (train/lora_setup.py).
  config.model.lora = ml_collections.ConfigDict()
  config.model.lora.rank = 0  # Adapter rank; 0 = off (train every weight).
  config.model.lora.alpha = 16.0  # Update scale alpha / rank.
  config.model.lora.dropout = (
    0.0  # On the adapters' input (PEFT's lora_dropout).
  )
  # Module names or path regexes: q k v o gate up down fc proj embed lm_head.
  config.model.lora.targets = ("attention", "mlp")
  config.model.lora.rslora = False  # Scale by alpha / sqrt(rank) instead.
  # Frozen base: float32, bfloat16, or its projections in int8 or nf4.
  config.model.lora.base_dtype = "float32"
  config.model.lora.double_quant = False  # nf4: quantize the block maxima.
  config.model.lora.init_from = ""  # PEFT adapter folder to start from.

  config.reference = ml_collections.ConfigDict()
  config.reference.mode = "online"  # 'online' (frozen tree) or 'precomputed'.
  config.reference.checkpoint = (
    ""  # Reference weights; '' = the policy's start.
  )
  config.reference.sft_steps = 0  # Pre-train the reference on the task first.
  config.reference.sft_learning_rate = (
    3e-3  # Learning rate of that pre-training.
  )
  config.reference.sft_batch_size = 64  # Sequences per pre-training step.
  # Reference sync (TR-DPO, TRL's sync_ref_model): every sync_every steps the
  # reference becomes sync_mix * policy + (1 - sync_mix) * reference.
  config.reference.sync_every = 0  # 0 = the reference stays frozen.
  config.reference.sync_mix = 1.0  # 1 = copy the policy; TR-DPO's alpha.

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # Data-parallel axis size; -1 = all remaining devices.
  config.mesh.fsdp = 1  # Parameter-sharding axis size.
  config.mesh.tensor = 1  # Tensor-parallel axis size.

  config.distributed = ml_collections.ConfigDict()
  config.distributed.coordinator_address = ""  # host:port; '' = auto-detect.
  config.distributed.num_processes = 0  # 0 = auto-detect (TPU, SLURM).
  config.distributed.process_id = -1  # -1 = auto-detect.

  # Train a Bradley-Terry reward model on the pairs instead of a policy
  # (train/reward_training.py): -log sigmoid(r_w - r_l - margin), plus
  # center_rewards_coefficient * (r_w + r_l)^2 as TRL's RewardTrainer.
  config.reward_model = ml_collections.ConfigDict()
  config.reward_model.train = False  # True: the run trains a reward model.
  config.reward_model.margin = 0.0  # Margin every pair must clear.
  config.reward_model.center_rewards_coefficient = 0.0  # 0 = no centering.

  config.export = ml_collections.ConfigDict()
  config.export.at_end = True  # Write WORKDIR/hf, a Hugging Face folder, last.
  config.export.dtype = "float32"  # Its weights: 'float32' or 'bfloat16'.
  # Most bytes per weights file (5 GB, as transformers); 0 = one file.
  config.export.max_shard_size = 5_000_000_000

  config.data = data_defaults()
  return config


def data_defaults() -> ml_collections.ConfigDict:
  """``config.data`` with its defaults: the synthetic task, no files."""
  config = ml_collections.ConfigDict()
  # Where pairs come from: one of SOURCES.
  config.source = "synthetic"
  # JSONL file (plain or gzip) of training pairs, for 'jsonl' and 'hh'; for
  # 'parquet' a file, a glob of shards or a folder; for 'arrow' a folder.
  config.train_path = ""
  # Evaluation pairs, like train_path; '' to hold out ``eval_fraction`` of
  # train (or, for 'arrow', to read hf_split_eval of train_path).
  config.eval_path = ""
  # TFDS dataset name, e.g. 'local_preferences/my_pairs' (see tfds_builder).
  config.tfds_name = ""
  # TFDS data directory; '' for TFDS's default (~/tensorflow_datasets).
  config.tfds_data_dir = ""
  # TFDS split names; an empty eval split holds out ``eval_fraction`` of train.
  config.tfds_split_train = "train"
  config.tfds_split_eval = ""
  # 'arrow': the split of a DatasetDict folder to train on (a folder of one
  # Dataset is read as split 'train').
  config.hf_split_train = "train"
  # 'arrow': the DatasetDict split to evaluate on, from eval_path if set, else
  # train_path; '' for eval_path as a whole, or eval_fraction.
  config.hf_split_eval = ""
  # Record field names ('a/b' reads nested field b of a). For 'hh', chosen
  # and rejected name the transcripts and prompt is not read; for 'tfds',
  # 'parquet' and 'arrow', an empty prompt name means the records hold HH
  # transcripts.
  config.field_map = ml_collections.ConfigDict(
    dict(prompt="prompt", chosen="chosen", rejected="rejected")
  )
  # 'bytes' (built in), a tokenizer.json path, a SentencePiece .model path,
  # a directory holding either, or '' for the model checkpoint's own
  # tokenizer. The synthetic and bandit tasks use their own words and
  # require 'bytes' here (the default) so that no setting is silently unused.
  config.tokenizer = "bytes"
  # Chat template for records of messages: '' for the tokenizer folder's
  # own (chat_template.jinja or tokenizer_config.json), a built-in name
  # ('chatml', 'llama3', 'gemma') or a .jinja file. Text records ignore it.
  config.chat_template = ""
  # Most tokens of prompt + response, BOS and EOS included.
  config.max_length = 512
  # Most prompt tokens, BOS included, kept (from the end) when a pair is too
  # long; must be less than max_length.
  config.max_prompt_length = 256
  # Padded sequence lengths; the largest must be at least max_length.
  config.length_buckets = (32, 64, 128, 256, 512)
  # Pack the pairs of a batch into fixed-length rows, several pairs per row
  # (train.data.row_packing), instead of one padded row per pair.
  config.packing = False
  # Row length of packed batches; 0 for the largest length bucket. At least
  # max_length, so that every pair fits a row.
  config.packed_length = 0
  # Records are KTO's unpaired {"prompt", "completion", "label"} (a JSONL
  # file, loss.name='kto'), not pairs; with pairs, kto splits each in two.
  config.unpaired = False
  # With packing: each pair as one segment of its prompt once, then both
  # responses, which see the prompt and not each other
  # (train.data.shared_rows), instead of the prompt in front of each
  # response. Fewer positions per pair when prompts are long; attention then
  # runs blockwise (model.attention_impl auto or blockwise). packed_length 0
  # is then twice the largest length bucket; a set one must be at least
  # 2 x max_length - 1, the longest prompt + chosen + rejected.
  config.share_prompt = False
  # A bad record raises DataError ('error') or is counted and skipped ('skip').
  config.on_bad_record = "error"
  # Fraction of a single source held out for evaluation when no eval file or
  # eval split is given; 0 means no evaluation data.
  config.eval_fraction = 0.0
  # A train split of fewer pairs than one batch is refused (each batch would
  # repeat pairs) unless this is True.
  config.allow_repeats = False

  # The synthetic sentiment task (slpo_jax.tasks.synthetic).
  config.synthetic = ml_collections.ConfigDict()
  # Seed of the task: the base language, the prompts of both splits and the
  # pairs sampled from the base language. Independent of the training seed.
  config.synthetic.language_seed = 0
  # Training and evaluation prompts; each gives one pair unless its two
  # samples tie on reward.
  config.synthetic.num_prompts = 4096
  config.synthetic.num_eval_prompts = 256
  # Words per prompt.
  config.synthetic.prompt_length = 4
  # Fewest and most words per sampled response (EOS comes after).
  config.synthetic.min_new_tokens = 2
  config.synthetic.max_new_tokens = 12
  # Base-language sequences for fine-tuning the reference model.
  config.synthetic.num_sft_sequences = 8192
  # Base language: probability of ending after a word, and the Dirichlet
  # concentration of each word's successor distribution.
  config.synthetic.eos_probability = 0.1
  config.synthetic.concentration = 0.3
  # Prompts per call of the sampler when pairs are drawn from a model.
  config.synthetic.sample_batch_size = 512
  return config

"""Controlled generation: true reward against KL for DPO, IPO and SLPO.

The analogue of the DPO paper's IMDb experiment (Rafailov et al. 2023,
Figure 2 left) on the synthetic sentiment task. The whole sweep is::

  python -m experiments.controlled_generation --preset cpu --seeds 3 \\
      --out docs/figures --workdir /tmp/cg

which fits the SFT reference once (the training config below with
``reference.sft_steps=400``), then trains every (loss, hyperparameter, seed)
of ``get_sweep`` from that reference: 11 configs x 3 seeds of 120 steps.
Measured on a 2-core CPU shared with other jobs: 31 min 52 s wall, 770 s of
CPU (docs/RESULTS.md, section 3). The gpu preset (``--preset gpu``: 22
configs x 5 seeds of 1,000 steps, 8x the prompts) has not been run.

``get_config`` is an ordinary training config, so one grid point can be rerun
by hand; point it at the sweep's reference so that the pairs come from the
same model::

  python -m train.main --config configs/controlled_generation.py:cpu \\
      --workdir /tmp/cg_one --config.loss.name=dpo --config.loss.beta=0.2 \\
      --config.model.checkpoint=/tmp/cg/reference_fit/reference \\
      --config.reference.sft_steps=0

Expected result (cpu preset, 3 seeds): the reference scores a mean reward of
0.01 at KL 0; DPO and IPO share one frontier (0.18 at 1 nat, 0.40 at 6
nats); tempered SLPO lies below it at every temperature (0.37 at 17 nats for
t=32) and collapses at t=128; hard SLPO moves little (0.07 at 2 nats).
"""

import ml_collections

from configs import default

PRESETS = ("cpu", "gpu")


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  """One run of the sweep; the sweep overrides the loss and the seed.

  Args:
    preset: 'cpu' (the run measured in docs/RESULTS.md) or 'gpu' (larger).
  """
  if preset not in PRESETS:
    raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
  config = default.get_config()
  # The reference fit of the default run, so that its cached folder can be
  # shared; the sweep sets model.checkpoint to it and sft_steps to 0.
  config.reference.sft_steps = 400
  config.loss.name = "dpo"
  config.loss.beta = 0.1
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 10
  config.optimizer.decay = "cosine"
  config.checkpoint_every = 0  # One checkpoint, at the end.
  config.keep_checkpoints = 1
  config.log_every = 10
  # The sweep scores more samples of its own (experiments/sampling_eval.py).
  config.eval.num_samples = 0
  if preset == "cpu":
    config.steps = 120
    config.batch_size = 32
    config.eval_every = 20
    config.data.synthetic.num_prompts = 2048
    config.data.synthetic.num_eval_prompts = 256
  else:
    config.steps = 1000
    config.batch_size = 64
    config.eval_every = 50
    config.reference.sft_steps = 2000
    config.data.synthetic.num_prompts = 16384
    config.data.synthetic.num_eval_prompts = 1024
    config.data.synthetic.num_sft_sequences = 32768
  return config


def get_sweep(preset: str = "cpu") -> ml_collections.ConfigDict:
  """The grid of the sweep and how its policies are sampled.

  Keys:
    seeds: training seeds (``config.seed``) of every grid point.
    samples_per_prompt: policy samples of each held-out prompt per
      evaluation.
    dpo_betas, ipo_betas: DPO's beta and IPO's tau.
    slpo_temperatures: tempered SLPO; 1 is hard SLPO, Eq. 8 exactly.
    slpo_soft: (temperature, alpha) pairs of soft SLPO (Eq. 7).
  """
  if preset not in PRESETS:
    raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
  sweep = ml_collections.ConfigDict()
  if preset == "cpu":
    sweep.seeds = 3
    sweep.samples_per_prompt = 2
    sweep.dpo_betas = (0.05, 0.2, 1.0)
    sweep.ipo_betas = (0.05, 0.2, 1.0)
    sweep.slpo_temperatures = (1.0, 8.0, 32.0, 128.0)
    sweep.slpo_soft = ((32.0, 0.9),)
  else:
    sweep.seeds = 5
    sweep.samples_per_prompt = 4
    sweep.dpo_betas = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    sweep.ipo_betas = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    sweep.slpo_temperatures = (1.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
    sweep.slpo_soft = ((8.0, 0.9), (32.0, 0.9), (32.0, 0.7))
  return sweep

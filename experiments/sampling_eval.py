"""True reward and KL(pi || pi_ref) of a policy's own samples.

The controlled-generation experiment scores a policy the way the DPO paper
scores its IMDb policies (Rafailov et al. 2023, section 6.1, Figure 2 left):
sample responses to held-out prompts at temperature 1, score them with the
task's ground-truth reward, and estimate the sequence-level KL divergence
from the reference along the same samples.

The KL estimate is exact per token and Monte Carlo over sequences:

.. math::
  \\mathrm{KL}(\\pi \\| \\pi_{ref}) = \\mathbb{E}_{y \\sim \\pi} \\sum_t
  \\sum_v \\pi(v | x, y_{<t}) \\log
  \\frac{\\pi(v | x, y_{<t})}{\\pi_{ref}(v | x, y_{<t})}

summed over the response tokens of each sample (its EOS included), with both
models teacher-forced on the policy's sample. Averaging the full per-token
divergence rather than ``log pi(y) - log pi_ref(y)`` of the sampled tokens
gives the same expectation with a smaller variance, and an estimate that is
never negative.

Sampling, both forward passes and the reductions are one compiled function
per (model, prompt shape); it is reused by every run of a sweep whose policy
has the same architecture.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax import models
from slpo_jax.models.sample_scores import sequence_kl
from slpo_jax.tasks import synthetic
from slpo_jax.tasks.vocab import BOS_ID
from slpo_jax.tasks.vocab import EOS_ID
from slpo_jax.tasks.vocab import PAD_ID


@functools.partial(
  jax.jit, static_argnames=("model", "max_new_tokens", "reward_fn")
)
def sample_reward_and_kl(
  model,
  params,
  reference_params,
  prompt_ids: jax.Array,
  rng: jax.Array,
  *,
  max_new_tokens: int,
  reward_fn=synthetic.sentiment_reward,
) -> dict[str, jax.Array]:
  """Samples one response per row and scores it.

  Args:
    model: the ``DecoderLM`` of both the policy and the reference.
    params: the policy's parameters.
    reference_params: the reference's parameters.
    prompt_ids: ``[batch, prompt_length]`` int32 prompts, BOS first, no
      padding (every synthetic prompt has the same length).
    rng: PRNG key of the samples.
    max_new_tokens: response tokens sampled per row, EOS included.
    reward_fn: the true reward, ``reward_fn(tokens, mask) -> [batch]``.

  Returns:
    Per-row ``reward`` (by default ``sentiment_reward``, in [-1, 1]), ``kl``
    (nats) and ``length`` (response tokens, EOS included), each ``[batch]``.
  """
  prompt_length = prompt_ids.shape[1]
  out = models.generate(
    model,
    params,
    prompt_ids,
    jnp.ones_like(prompt_ids),
    rng=rng,
    max_new_tokens=max_new_tokens,
    temperature=1.0,
    eos_id=EOS_ID,
    pad_id=PAD_ID,
  )
  # Unpadded prompts: response token i sits at position prompt_length + i
  # and is predicted by the logits at position prompt_length - 1 + i.
  window = slice(prompt_length - 1, prompt_length - 1 + max_new_tokens)
  policy_logits = model.apply(params, out.sequences, out.sequence_mask)
  reference_logits = model.apply(
    reference_params, out.sequences, out.sequence_mask
  )
  return {
    "reward": reward_fn(out.tokens, out.mask == 1),
    "kl": sequence_kl(
      policy_logits[:, window], reference_logits[:, window], out.mask
    ),
    "length": out.lengths.astype(jnp.float32),
  }


class SamplingEvaluator:
  """Mean true reward and KL of a policy's samples on fixed prompts.

  An instance is an ``eval_callback`` of ``train.loop.train_and_evaluate``:
  ``evaluator(step, params, run)`` returns ``sample/reward``, ``sample/kl``
  (with their standard errors over sequences) and ``sample/length``. The KL
  is taken against the run's own frozen reference when the loop passes one
  (in the controlled-generation sweep it holds the same weights as
  ``reference_params``), otherwise against ``reference_params``.

  Args:
    model: the ``DecoderLM`` of the policy and the reference.
    reference_params: the reference's parameters (the KL's ``pi_ref``).
    prompts: ``[num_prompts, prompt_length]`` word ids without BOS, e.g.
      ``train.data.task_pairs.synthetic_prompts(config.data, "eval")``.
    max_new_tokens: response tokens sampled per prompt, EOS included.
    samples_per_prompt: independent samples of each prompt.
    seed: seed of the sampling keys; the key of an evaluation is derived
      from ``(seed, step)``, so two policies evaluated with one evaluator at
      one step share their random numbers.
    reward_fn: the true reward (``sentiment_reward`` unless an experiment
      changes the task's reward).
  """

  def __init__(
    self,
    model,
    reference_params,
    prompts,
    *,
    max_new_tokens: int,
    samples_per_prompt: int = 1,
    seed: int = 0,
    reward_fn=synthetic.sentiment_reward,
  ):
    prompts = np.asarray(prompts, np.int32)
    with_bos = np.concatenate(
      [np.full((len(prompts), 1), BOS_ID, np.int32), prompts], axis=1
    )
    self.model = model
    self.reference_params = reference_params
    self.prompt_ids = jnp.asarray(np.repeat(with_bos, samples_per_prompt, 0))
    self.max_new_tokens = max_new_tokens
    self.seed = seed
    self.reward_fn = reward_fn

  def per_sequence(
    self, step: int, params, reference_params=None
  ) -> dict[str, np.ndarray]:
    """Per-sample ``reward``, ``kl`` and ``length`` at an evaluation.

    Args:
      step: the training step; with the seed, it picks the sampling key.
      params: the policy's parameters.
      reference_params: pi_ref placed like ``params``; by default the
        evaluator's own, copied to the devices and layout of ``params``.
    """
    if reference_params is None:
      reference_params = jax.device_put(
        self.reference_params, jax.tree.map(lambda x: x.sharding, params)
      )
    rng = jax.random.fold_in(jax.random.key(self.seed), step)
    out = sample_reward_and_kl(
      self.model,
      params,
      reference_params,
      self.prompt_ids,
      rng,
      max_new_tokens=self.max_new_tokens,
      reward_fn=self.reward_fn,
    )
    return {
      name: np.asarray(value, np.float64)
      for name, value in jax.device_get(out).items()
    }

  def __call__(self, step: int, params, run=None) -> dict[str, float]:
    # A run's own frozen reference is already laid out like its policy.
    reference = None if run is None else run.reference_params
    values = self.per_sequence(step, params, reference)
    count = len(values["reward"])
    stderr = lambda x: float(np.std(x, ddof=1) / np.sqrt(count))  # noqa: E731
    return {
      "sample/reward": float(np.mean(values["reward"])),
      "sample/reward_stderr": stderr(values["reward"]),
      "sample/kl": float(np.mean(values["kl"])),
      "sample/kl_stderr": stderr(values["kl"]),
      "sample/length": float(np.mean(values["length"])),
    }

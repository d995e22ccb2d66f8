"""What a sample cost: its log-probabilities and its KL from a reference.

A batch drawn by :func:`slpo_jax.models.generate` is teacher-forced through
the policy and the reference; each row's response tokens (its stop token
included) then give

* ``policy_logps`` and ``reference_logps``: the sums of the response's
  token log-probabilities under each model (untempered, whatever the
  sampling temperature was), and
* ``kl``: the sum over the response's positions of the full next-token
  divergence,

  .. math::
    \\mathrm{KL}_b = \\sum_t \\sum_v \\pi(v | x, y_{<t}) \\log
    \\frac{\\pi(v | x, y_{<t})}{\\pi_{ref}(v | x, y_{<t})}.

Averaged over samples drawn from the policy (temperature 1, no nucleus),
``kl`` estimates the sequence-level KL(pi || pi_ref) with a smaller variance
than ``policy_logps - reference_logps`` of the same samples, which has the
same expectation; unlike that difference it is never negative. At another
temperature or ``top_p`` the samples come from another distribution, and
the mean is the policy's per-token divergence along the responses that
sampler draws.

Only the response positions' logits are formed (``[B, N, V]``, not
``[B, T, V]``), in float32.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from slpo_jax.models.model import DecoderLM
from slpo_jax.models.model import Params
from slpo_jax.models.sampling import SampleOutput

Array = jax.Array


class SampleScores(NamedTuple):
  """Per-row scores of a sampled batch, each ``[B]`` float32.

  Attributes:
    kl: summed full next-token KL(policy || reference) along the response.
    policy_logps: log-probability of the response under the policy.
    reference_logps: log-probability of the response under the reference.
  """

  kl: Array
  policy_logps: Array
  reference_logps: Array


def sequence_kl(
  policy_logits: jax.typing.ArrayLike,
  reference_logits: jax.typing.ArrayLike,
  where: jax.typing.ArrayLike,
) -> Array:
  """Sum over positions of the full KL between two next-token distributions.

  .. math::
    \\mathrm{KL}_b = \\sum_t w_{bt} \\sum_v p_{btv} (\\log p_{btv} -
    \\log q_{btv}),\\quad p = \\mathrm{softmax}(\\text{policy\\_logits}),
    q = \\mathrm{softmax}(\\text{reference\\_logits})

  Args:
    policy_logits: ``[batch, length, vocab]`` logits of the policy.
    reference_logits: ``[batch, length, vocab]`` logits of the reference.
    where: ``[batch, length]`` positions to count; the rest add exactly 0.

  Returns:
    ``[batch]`` float32 divergences in nats, exactly 0 where the logits are
    equal.
  """
  policy_logps = jax.nn.log_softmax(jnp.asarray(policy_logits, jnp.float32))
  reference_logps = jax.nn.log_softmax(
    jnp.asarray(reference_logits, jnp.float32)
  )
  per_token = jnp.sum(
    jnp.exp(policy_logps) * (policy_logps - reference_logps), axis=-1
  )
  # A divergence is never negative; float32 rounding of nearly equal
  # distributions can give about -1e-8 per token, which is not information.
  per_token = jnp.maximum(per_token, 0.0)
  return jnp.sum(jnp.where(jnp.asarray(where, bool), per_token, 0.0), axis=-1)


def _response_logits(
  model: DecoderLM, params: Params, out: SampleOutput, prompt_lengths: Array
) -> Array:
  """``[B, N, V]`` logits predicting each response token."""
  hidden, lm_head = model.hidden_states(
    params, out.sequences, out.sequence_mask
  )
  # ``sequences`` holds a row's real prompt then its response: response
  # token i sits at L_b + i and is predicted at L_b - 1 + i.
  steps = jnp.arange(out.tokens.shape[1])
  where = jnp.clip(prompt_lengths[:, None] - 1 + steps, 0, hidden.shape[1] - 1)
  hidden = jnp.take_along_axis(hidden, where[:, :, None], axis=1)
  return model.logits(hidden, lm_head)


def score_samples(
  model: DecoderLM,
  params: Params,
  reference_params: Params,
  out: SampleOutput,
  prompt_mask: jax.typing.ArrayLike,
) -> SampleScores:
  """Log-probabilities and KL of sampled responses (traceable).

  Args:
    model: the ``DecoderLM`` of both the policy and the reference.
    params: the policy's parameters.
    reference_params: the reference's parameters.
    out: what ``generate`` returned for the prompts.
    prompt_mask: ``[B, P]`` the prompts' mask, as given to ``generate``.

  Returns:
    A :class:`SampleScores`.
  """
  prompt_lengths = jnp.sum(jnp.asarray(prompt_mask, jnp.int32), axis=-1)
  policy_logits = _response_logits(model, params, out, prompt_lengths)
  reference_logits = _response_logits(
    model, reference_params, out, prompt_lengths
  )
  real = out.mask.astype(bool)

  def logps(logits):
    token = jnp.take_along_axis(
      jax.nn.log_softmax(logits, axis=-1), out.tokens[:, :, None], axis=-1
    )[:, :, 0]
    return jnp.sum(jnp.where(real, token, 0.0), axis=-1)

  return SampleScores(
    kl=sequence_kl(policy_logits, reference_logits, real),
    policy_logps=logps(policy_logits),
    reference_logps=logps(reference_logits),
  )

"""What the policy generates: samples of held-out prompts at every evaluation.

Held-out pair statistics say how the policy ranks responses somebody else
wrote; they do not say what it now writes. At every evaluation the loop
samples ``eval.num_samples`` held-out prompts from the policy (and once, as
step 0, from the reference) and reports

* ``eval/samples/length``: response tokens, the stop token included;
* ``eval/samples/ended``: the share of responses that emitted EOS or the
  chat template's end of turn within ``eval.max_new_tokens``;
* ``eval/samples/kl`` (and ``kl_stderr``): KL(pi || pi_ref) along the
  samples, the sum over each response's tokens of the full next-token
  divergence (:mod:`slpo_jax.models.sample_scores`), with its standard error
  over samples;
* ``eval/samples/reward`` (and ``reward_stderr``), on the synthetic task:
  the task's true reward of the responses (``sentiment_reward``).

Each sample is appended to ``WORKDIR/samples.jsonl`` and the first few
shown in TensorBoard's text tab. Sampling runs on the run's mesh with the
parameters as they are sharded; the prompts are split over data x fsdp.
"""

import dataclasses
import functools
import json
import math
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax import models
from slpo_jax import sharding
from slpo_jax.tasks import synthetic
from train.data import chat
from train.data import task_pairs
from train.errors import ConfigError

SAMPLES_FILE = "samples.jsonl"
# Samples shown in TensorBoard's text tab per evaluation.
_SHOWN = 4


@dataclasses.dataclass(frozen=True)
class HeldOutPrompts:
  """The prompts sampled at every evaluation, and how to read responses.

  Attributes:
    ids: each prompt's tokens, as training encodes a prompt (BOS first, or
      through the chat template with its generation prompt).
    tokenizer: the run's tokenizer, for the texts.
    stop_ids: EOS and the chat template's end of turn.
    task_reward: the prompts are the synthetic task's, whose true reward
      scores the responses.
  """

  ids: tuple[np.ndarray, ...]
  tokenizer: Any
  stop_ids: tuple[int, ...]
  task_reward: bool


def held_out_prompts(config, tokenizer, eval_pairs) -> HeldOutPrompts | None:
  """The first ``eval.num_samples`` held-out prompts of a run.

  On the synthetic task these are the task's evaluation prompts (every one,
  tied pairs included); otherwise the distinct prompts of the evaluation
  pairs, in order. None when sampling is off or nothing is held out.
  """
  count = config.eval.num_samples
  if not count or not config.eval_every:
    return None
  if config.data.source == "synthetic":
    words = task_pairs.synthetic_prompts(config.data, "eval")[:count]
    bos = np.full((len(words), 1), tokenizer.bos_id, np.int32)
    ids = tuple(np.concatenate([bos, words.astype(np.int32)], axis=1))
  else:
    seen, ids = set(), []
    for pair in eval_pairs or ():
      key = tuple(int(t) for t in pair.prompt)
      if key not in seen:
        seen.add(key)
        ids.append(np.asarray(pair.prompt, np.int32))
      if len(ids) == count:
        break
    ids = tuple(ids)
  if not ids:
    return None
  template = chat.load_chat_template(
    config.data, config.model.checkpoint, tokenizer=tokenizer
  )
  return HeldOutPrompts(
    ids=ids,
    tokenizer=tokenizer,
    stop_ids=tuple(chat.stop_ids(tokenizer, template)),
    task_reward=config.data.source == "synthetic",
  )


def _sample_and_score(
  params,
  reference_params,
  prompt_ids,
  prompt_mask,
  rng,
  *,
  model,
  max_new_tokens,
  temperature,
  top_p,
  stop_ids,
  pad_id,
  task_reward,
):
  out = models.generate(
    model,
    params,
    prompt_ids,
    prompt_mask,
    rng=rng,
    max_new_tokens=max_new_tokens,
    temperature=temperature,
    top_p=None if top_p >= 1 else top_p,
    eos_id=list(stop_ids),
    pad_id=pad_id,
  )
  scores = models.score_samples(
    model, params, reference_params, out, prompt_mask
  )
  is_stop = jnp.any(out.tokens[..., None] == jnp.asarray(stop_ids), axis=-1)
  result = {
    "tokens": out.tokens,
    "lengths": out.lengths,
    "ended": jnp.any(is_stop & (out.mask == 1), axis=-1),
    "kl": scores.kl,
    "policy_logps": scores.policy_logps,
    "reference_logps": scores.reference_logps,
  }
  if task_reward:
    result["reward"] = synthetic.sentiment_reward(out.tokens, out.mask == 1)
  return result


class Sampler:
  """Samples the held-out prompts from given parameters and scores them.

  Compiled once per run (policy and reference share the shapes). The
  sampling key of step ``s`` is ``fold_in(key(seed), s)``: the same prompts
  and key as ``experiments.sampling_eval.SamplingEvaluator`` on the
  synthetic task.
  """

  def __init__(self, config, model, mesh, prompts: HeldOutPrompts):
    self.prompts = prompts
    self._mesh = mesh
    self._seed = config.seed
    self._count = len(prompts.ids)
    width = max(len(p) for p in prompts.ids)
    max_new_tokens = config.eval.max_new_tokens
    if (
      model.config.family == "gpt2"
      and width + max_new_tokens > model.config.max_len
    ):
      raise ConfigError(
        f"eval.max_new_tokens is {max_new_tokens}; with held-out prompts of"
        f" up to {width} tokens it exceeds the model's"
        f" {model.config.max_len} positions: lower it"
      )
    # Rows split evenly over data x fsdp; the rows added repeat the last
    # prompt and are dropped from the results.
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = -(-self._count // shards) * shards
    ids = np.full((rows, width), prompts.tokenizer.pad_id, np.int32)
    mask = np.zeros((rows, width), np.int32)
    for row in range(rows):
      prompt = prompts.ids[min(row, self._count - 1)]
      # Left-padded: every row's next token is at the same slot.
      ids[row, width - len(prompt) :] = prompt
      mask[row, width - len(prompt) :] = 1
    placement = sharding.batch_sharding(mesh)
    self._ids, self._mask = (
      jax.make_array_from_callback(x.shape, placement, lambda i, x=x: x[i])
      for x in (ids, mask)
    )
    self._fn = jax.jit(
      functools.partial(
        _sample_and_score,
        model=model,
        max_new_tokens=max_new_tokens,
        temperature=float(config.eval.temperature),
        top_p=float(config.eval.top_p),
        stop_ids=prompts.stop_ids,
        pad_id=int(prompts.tokenizer.pad_id),
        task_reward=prompts.task_reward,
      ),
      out_shardings=sharding.replicated(mesh),
    )

  def __call__(self, step: int, params, reference_params) -> dict:
    """Per-sample host arrays: ``tokens``, ``lengths``, ``ended``, ``kl``,
    ``policy_logps``, ``reference_logps`` and on the synthetic task
    ``reward``."""
    rng = jax.random.fold_in(jax.random.key(self._seed), step)
    with jax.set_mesh(self._mesh):
      with nn.logical_axis_rules(models.logical_axis_rules()):
        out = self._fn(params, reference_params, self._ids, self._mask, rng)
    return {
      name: np.asarray(value)[: self._count]
      for name, value in jax.device_get(out).items()
    }


def metrics(samples: dict) -> dict[str, float]:
  """``eval/samples/*``: means over samples, with standard errors."""
  count = len(samples["lengths"])

  def stderr(values) -> float:
    if count < 2:
      return float("nan")
    return float(np.std(values, ddof=1) / math.sqrt(count))

  kl = np.asarray(samples["kl"], np.float64)
  result = {
    "eval/samples/length": float(np.mean(samples["lengths"])),
    "eval/samples/ended": float(np.mean(samples["ended"])),
    "eval/samples/kl": float(np.mean(kl)),
    "eval/samples/kl_stderr": stderr(kl),
  }
  if "reward" in samples:
    reward = np.asarray(samples["reward"], np.float64)
    result["eval/samples/reward"] = float(np.mean(reward))
    result["eval/samples/reward_stderr"] = stderr(reward)
  return result


def records(step: int, model: str, samples: dict, prompts: HeldOutPrompts):
  """One JSON-ready record per sample."""
  tokenizer = prompts.tokenizer
  stops = set(prompts.stop_ids)
  for index, prompt in enumerate(prompts.ids):
    response = samples["tokens"][index][: samples["lengths"][index]].tolist()
    shown = response[:-1] if response and response[-1] in stops else response
    record = {
      "step": int(step),
      "model": model,
      "index": index,
      "prompt": tokenizer.decode(prompt.tolist()),
      "response": tokenizer.decode(shown),
      "length": len(response),
      "ended": bool(samples["ended"][index]),
      "kl": float(samples["kl"][index]),
      "logp_policy": float(samples["policy_logps"][index]),
      "logp_reference": float(samples["reference_logps"][index]),
    }
    if "reward" in samples:
      record["reward"] = float(samples["reward"][index])
    yield record


class SamplesLog:
  """``WORKDIR/samples.jsonl`` and TensorBoard text, from process 0.

  Like ``metrics.jsonl``, a run resumed from step ``s`` first drops the
  records past ``s`` (a restart from an earlier checkpoint samples them
  again).
  """

  def __init__(self, workdir: pathlib.Path, writer, *, resume_step: int):
    self.path = pathlib.Path(workdir) / SAMPLES_FILE
    self._writer = writer
    self._enabled = jax.process_index() == 0
    if self._enabled and self.path.exists():
      kept = [
        line
        for line in self.path.read_text().splitlines()
        if _step_of(line) is not None and _step_of(line) <= resume_step
      ]
      self.path.write_text("".join(line + "\n" for line in kept))

  def write(self, step: int, rows: list[dict]) -> None:
    if not self._enabled:
      return
    with self.path.open("a") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
    shown = "\n\n".join(
      f"**prompt** {row['prompt']}\n\n**{row['model']}** {row['response']}"
      f" *({row['length']} tokens"
      + (f", reward {row['reward']:.3f}" if "reward" in row else "")
      + f", KL {row['kl']:.3f})*"
      for row in rows[:_SHOWN]
    )
    self._writer.text(step, "eval/samples", shown)


def _step_of(line: str) -> int | None:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


def summary(path: pathlib.Path) -> str | None:
  """The first prompt with the reference's response and the latest policy's."""
  try:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
  except (OSError, ValueError):
    return None
  first = [r for r in rows if r.get("index") == 0]
  reference = [r for r in first if r["model"] == "reference"]
  policy = [r for r in first if r["model"] == "policy"]
  if not policy:
    return None
  lines = [f"held-out prompt: {policy[-1]['prompt']}"]
  if reference:
    lines.append(f"  reference (step 0): {reference[0]['response']}")
  lines.append(
    f"  policy (step {policy[-1]['step']}): {policy[-1]['response']}"
  )
  return "\n".join(lines)

"""Judge a run by what its checkpoints generate: reward, win rate and KL.

  python -m train.evaluate --workdir /tmp/default
  python -m train.evaluate --workdir /tmp/slpo --against /tmp/default \\
      --num_prompts 256 --out slpo.json --samples_out slpo.jsonl \\
      --figure slpo.png

For each chosen checkpoint (``--steps all``, the default, or one step) the
policy samples one response to each of ``--num_prompts`` held-out prompts
(the run's own, as its evaluations sample them, or ``--prompts FILE``), and
the command reports, each with its standard error and a 95% interval:

* ``reward``: the mean true reward on the synthetic task;
* ``win_rate``: the share of prompts on which the policy's response scores
  above the baseline's response to the same prompt (a tie counts one half);
  the baseline is the run's reference (``--reference``, the default) or the
  latest policy of another run (``--against WORKDIR``);
* with ``--reward_model DIR`` (a one-label ``*ForSequenceClassification``
  folder with its tokenizer), ``reward_model/reward`` and
  ``reward_model/win_rate``: the same, under that model's scores;
* ``kl``: KL(pi || pi_ref) along the samples, the sum over each response's
  tokens of the full next-token divergence from the run's reference;
* ``length`` and ``ended`` (the share that stopped at EOS or end of turn).

The baseline's own values come first in the JSON (``baseline``). With
``--figure FILE`` a PNG plots reward against KL across the checkpoints, the
reference at KL 0. Runs without a true reward (text data) report KL, length
and ended share only. The parameters are read onto one device.

``--prompts FILE`` holds JSON lines ``{"prompt": TEXT}`` (one user turn, as
``train.sample --prompt`` encodes it) or ``{"messages": [...]}``.

A mistake (a workdir without checkpoints, no such step, a bad prompt record,
runs that cannot be compared, a reward model whose folder, family or
tokenizer cannot be used) ends the program with one line on stderr,
``error: ...``, and exit code 2.
"""

import json
import math
import pathlib
import sys

import jax
import numpy as np

from slpo_jax import sharding
from train import checkpoint as checkpoint_lib
from train import checkpointed_run
from train import evaluate_report
from train import progress
from train import reward_scoring
from train import sample as sample_lib
from train import samples as samples_lib
from train.data import chat
from train.data import pipeline
from train.data import validation as data_validation
from train.errors import ConfigError


def choose_steps(available: list[int], steps: str) -> list[int]:
  """``all`` or one step's number, among a workdir's checkpoints."""
  if steps == "all":
    return list(available)
  try:
    wanted = int(steps)
  except ValueError:
    raise ConfigError(
      f"--steps is {steps!r}; give 'all' or a checkpoint's step"
    ) from None
  if wanted not in available:
    raise ConfigError(
      f"--steps {wanted}: no such checkpoint; the workdir has steps"
      f" {', '.join(map(str, available))}"
    )
  return [wanted]


def read_prompts(path, tokenizer, template) -> tuple[list, list]:
  """The prompts of a JSON-lines file: their tokens, encoded as the run
  encodes them, and their messages (a text prompt as one user turn).

  Raises:
    ConfigError: an unreadable file, or a record that is not one object
      with ``prompt`` (a string) or ``messages``; the line is named.
  """
  try:
    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
  except (OSError, UnicodeDecodeError) as error:
    raise ConfigError(f"--prompts {path}: cannot read: {error}") from None
  prompts, conversations = [], []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    where = f"--prompts {path} line {number}"
    try:
      record = json.loads(line)
    except ValueError as error:
      raise ConfigError(f"{where}: not JSON ({error})") from None
    if not isinstance(record, dict) or ("prompt" in record) == (
      "messages" in record
    ):
      raise ConfigError(
        f'{where}: want an object with "prompt" (text) or "messages"'
      )
    messages = record.get("messages")
    if messages is not None:
      try:
        messages = [dict(m) for m in chat.check_messages(messages, "messages")]
      except chat.BadConversation as bad:
        raise ConfigError(f"{where}: {bad.detail}") from None
    elif not isinstance(record["prompt"], str) or not record["prompt"]:
      raise ConfigError(f'{where}: "prompt" must be a non-empty string')
    try:
      ids = sample_lib.prompt_ids(
        tokenizer, template, prompt=record.get("prompt"), messages=messages
      )
    except ConfigError as error:
      raise ConfigError(f"{where}: {error}") from None
    prompts.append(np.asarray(ids, np.int32))
    conversations.append(
      messages or [{"role": "user", "content": record["prompt"]}]
    )
  if not prompts:
    raise ConfigError(f"--prompts {path}: holds no records")
  return prompts, conversations


def _sampling_config(config, num_prompts, temperature, top_p, max_new_tokens):
  config = config.copy_and_resolve_references()
  config.unlock()
  config.eval_every = max(config.eval_every, 1)
  config.eval.num_samples = num_prompts
  config.eval.temperature = temperature
  config.eval.top_p = top_p
  if max_new_tokens:
    config.eval.max_new_tokens = max_new_tokens
  return config


def _prompts(run, config, prompts_file):
  """``(prompts, conversations)``: the prompts to sample, and each one's
  messages for a reward model (None where they cannot be known)."""
  tokenizer = run.tokenizer
  template = chat.load_chat_template(
    config.data, config.model.checkpoint, tokenizer=tokenizer
  )
  if prompts_file is not None:
    ids, conversations = read_prompts(prompts_file, tokenizer, template)
    count = config.eval.num_samples
    prompts = samples_lib.HeldOutPrompts(
      ids=tuple(ids[:count]),
      tokenizer=tokenizer,
      stop_ids=tuple(chat.stop_ids(tokenizer, template)),
      task_reward=config.data.source == "synthetic",
    )
    return prompts, conversations[:count]
  pairs = None
  if config.data.source != "synthetic" and "eval" in data_validation.splits(
    config.data
  ):
    pairs = pipeline.load_dataset(
      config.data, tokenizer=tokenizer, split="eval"
    ).pairs
  prompts = samples_lib.held_out_prompts(config, tokenizer, pairs)
  if prompts is None:
    raise ConfigError(
      f"the run in {run.workdir} holds out no prompts; give --prompts FILE"
    )
  conversations = None
  if template is None:
    # Without a template a prompt's text is the one user turn (BOS dropped).
    conversations = [
      [{"role": "user", "content": tokenizer.decode(ids.tolist())}]
      for ids in prompts.ids
    ]
  return prompts, conversations


def _summary(samples: dict, baseline: dict | None) -> dict:
  result = {
    "kl": evaluate_report.interval(samples["kl"]),
    "length": evaluate_report.interval(samples["lengths"]),
    "ended": evaluate_report.interval(samples["ended"].astype(np.float64)),
  }
  for name, prefix in (("reward", ""), ("model_reward", "reward_model/")):
    if name in samples:
      result[f"{prefix}reward"] = evaluate_report.interval(samples[name])
      if baseline is not None:
        result[f"{prefix}win_rate"] = evaluate_report.win_rate(
          samples[name], baseline[name]
        )
  return result


def _scored(step, model, samples, prompts, scorer, conversations):
  """The samples' records; with a reward model, its scores added to both."""
  rows = list(samples_lib.records(step, model, samples, prompts))
  for row, prompt, tokens, length in zip(
    rows, prompts.ids, samples["tokens"], samples["lengths"]
  ):
    row["prompt_ids"] = prompt.tolist()
    row["response_ids"] = tokens[:length].tolist()
  if scorer is not None and scorer.same_tokens:
    scores = scorer.score_ids(
      [row["prompt_ids"] + row["response_ids"] for row in rows]
    )
  elif scorer is not None:
    scores = scorer.scores(conversations, [row["response"] for row in rows])
  if scorer is not None:
    samples["model_reward"] = scores
    for row, score in zip(rows, scores):
      row["reward_model"] = float(score)
  return rows


def _reward_model(folder, conversations, tokenizer):
  if folder is None:
    return None
  scorer = reward_scoring.RewardScorer(folder, run_tokenizer=tokenizer)
  if conversations is None and not scorer.same_tokens:
    raise ConfigError(
      "--reward_model: the run's held-out prompts went through its chat"
      " template, and their messages are not kept; give --prompts FILE"
    )
  return scorer


def evaluate(
  workdir,
  *,
  against=None,
  reward_model=None,
  steps: str = "all",
  num_prompts: int = 64,
  prompts_file=None,
  temperature: float = 1.0,
  top_p: float = 1.0,
  max_new_tokens: int = 0,
  seed: int = 0,
  samples_out=None,
  figure=None,
) -> dict:
  """Samples and scores the chosen checkpoints of ``workdir``.

  Args:
    workdir: the training run's workdir.
    against: another run's workdir, whose latest policy is the baseline;
      None for the run's reference.
    reward_model: a one-label sequence-classification folder that scores
      the samples too (``reward_model/reward`` and ``.../win_rate``).
    steps: 'all' or one checkpoint's step.
    num_prompts: held-out prompts sampled (at most).
    prompts_file: JSON lines of prompts instead of the run's held-out ones.
    temperature, top_p: the sampler's; 1 and 1 sample the policy itself.
    max_new_tokens: most tokens per response; 0 for the run's
      ``eval.max_new_tokens``.
    seed: the sampling seed.
    samples_out: a JSON-lines file for every scored sample.
    figure: a PNG of reward against KL across the checkpoints.

  Returns:
    The JSON-ready report.

  Raises:
    UserError: see the module docstring.
  """
  if num_prompts < 1:
    raise ConfigError(f"--num_prompts is {num_prompts}; it must be >= 1")
  _check_sampling(temperature, top_p, max_new_tokens)
  chosen = choose_steps(checkpoint_lib.CheckpointReader(workdir).steps, steps)
  device = jax.devices()[0]
  mesh = sharding.make_mesh(1, 1, 1, devices=[device])
  latest = checkpointed_run.open_checkpoint(workdir, chosen[-1])
  try:
    config = _sampling_config(
      latest.config, num_prompts, temperature, top_p, max_new_tokens
    )
    config.seed = seed
    prompts, conversations = _prompts(latest, config, prompts_file)
    sampler = samples_lib.Sampler(config, latest.model, mesh, prompts)
    reference = latest.reference_params(device)
  finally:
    latest.close()
  scorer = _reward_model(reward_model, conversations, prompts.tokenizer)
  score = lambda step, model, samples: _scored(  # noqa: E731
    step, model, samples, prompts, scorer, conversations
  )
  if against is None:
    baseline_samples = sampler(0, reference, reference)
    baseline_name = "reference"
  else:
    baseline_samples = _against_samples(against, config, prompts, mesh, device)
    baseline_name = "against"
  rows = score(0, baseline_name, baseline_samples)
  baseline = _summary(baseline_samples, None)
  checkpoints = []
  for step in progress.progress(chosen, desc="evaluate", total=len(chosen)):
    run = checkpointed_run.open_checkpoint(workdir, step)
    try:
      params = run.policy_params(device)
      if config.reference.sync_every:
        reference = run.reference_params(device)
    finally:
      run.close()
    samples = sampler(step, params, reference)
    rows += score(step, "policy", samples)
    checkpoints.append({"step": step} | _summary(samples, baseline_samples))
  report = {
    "workdir": str(pathlib.Path(workdir).absolute()),
    "baseline": {
      "of": "reference"
      if against is None
      else str(pathlib.Path(against).absolute())
    }
    | baseline,
    "reward_model": None if scorer is None else str(scorer.folder.absolute()),
    "num_prompts": len(prompts.ids),
    "sampling": {
      "temperature": temperature,
      "top_p": top_p,
      "max_new_tokens": config.eval.max_new_tokens,
      "seed": seed,
    },
    "checkpoints": checkpoints,
  }
  try:
    if samples_out is not None:
      with pathlib.Path(samples_out).open("w", encoding="utf-8") as f:
        for row in rows:
          f.write(json.dumps(row) + "\n")
    if figure is not None:
      evaluate_report.figure(report, figure)
  except OSError as error:
    raise ConfigError(f"cannot write the output: {error}") from None
  return report


def _check_sampling(temperature, top_p, max_new_tokens) -> None:
  if not math.isfinite(temperature) or temperature < 0:
    raise ConfigError(
      f"--temperature is {temperature}; it must be >= 0 (0 is greedy)"
    )
  if not 0 < top_p <= 1:
    raise ConfigError(f"--top_p is {top_p}; it must be in (0, 1]")
  if max_new_tokens < 0:
    raise ConfigError(
      f"--max_new_tokens is {max_new_tokens}; it must be >= 0 (0 = the"
      " run's eval.max_new_tokens)"
    )


def _against_samples(against, config, prompts, mesh, device):
  """The latest policy of another run, sampled on the same prompts."""
  other = checkpointed_run.open_checkpoint(against)
  try:
    if (other.config.data.source, other.config.data.tokenizer) != (
      config.data.source,
      config.data.tokenizer,
    ) or other.tokenizer.vocab_size != prompts.tokenizer.vocab_size:
      raise ConfigError(
        f"--against {against}: its data or tokenizer differ from the run's"
        " (data.source, data.tokenizer), so its responses to the same"
        " prompts cannot be compared"
      )
    params = other.policy_params(device)
    other_reference = other.reference_params(device)
    other_config = _sampling_config(
      other.config,
      config.eval.num_samples,
      config.eval.temperature,
      config.eval.top_p,
      config.eval.max_new_tokens,
    )
    other_config.seed = config.seed
    other_sampler = samples_lib.Sampler(
      other_config, other.model, mesh, prompts
    )
  finally:
    other.close()
  return other_sampler(other.step, params, other_reference)


if __name__ == "__main__":
  from train import cli

  cli.run("evaluate", sys.modules[__name__])

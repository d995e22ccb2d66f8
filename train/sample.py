"""Sample completions from a workdir's trained policy, or its reference.

  python -m train.sample --workdir /tmp/run --prompt "Hello" --temperature 0
  python -m train.sample --workdir /tmp/run --messages chat.json \\
      --num_samples 4 --top_p 0.9

``--prompt TEXT`` is one user turn: with a chat template (the run's
``data.chat_template``, or its tokenizer's own) it is rendered as one user
message followed by the generation prompt; without one it is BOS and the
text's tokens, as training encodes a prompt. ``--messages FILE`` is a JSON
list of ``{"role", "content"}`` messages, rendered through the chat template.
A completion ends at EOS, at the template's end-of-turn token, or after
``--max_new_tokens``; each is printed, after a line naming it when there are
several. ``--temperature 0`` decodes greedily. ``--reference`` samples the
reference model the run trained against instead: the policy's start
(``model.checkpoint`` or the seeded initialisation), ``reference.checkpoint``,
or a moving reference as the checkpoint holds it.

A mistake (no checkpoint, a bad setting, messages without a chat template)
ends the program with one line on stderr, ``error: ...``, and exit code 2.
"""

import dataclasses
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax import models
from train import checkpointed_run
from train import export as export_lib
from train.data import chat
from train.errors import ConfigError


@dataclasses.dataclass
class Completions:
  """What :func:`sample` drew."""

  prompt_ids: list[int]
  token_ids: list[list[int]]  # Each sample's tokens, its stop token included.
  texts: list[str]  # Each sample decoded, stop and special tokens dropped.


def read_messages(path: str | pathlib.Path) -> list[dict]:
  """The messages of a JSON file holding a list of {"role", "content"}."""
  try:
    value = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
  except (OSError, ValueError) as error:
    raise ConfigError(f"--messages {path}: cannot read: {error}") from None
  try:
    return [dict(m) for m in chat.check_messages(value, "messages")]
  except chat.BadConversation as bad:
    raise ConfigError(f"--messages {path}: {bad.detail}") from None


def prompt_ids(
  tokenizer,
  template: chat.ChatTemplate | None,
  *,
  prompt: str | None = None,
  messages: list[dict] | None = None,
) -> list[int]:
  """The prompt's tokens, as the run encodes a prompt.

  Through the chat template (which places every special token) when there
  is one; else, for ``prompt``, BOS and the text's tokens.
  """
  if template is None:
    if messages is not None:
      raise ConfigError(
        "--messages needs a chat template, and the run has none (its"
        " tokenizer folder ships none and data.chat_template is ''); use"
        " --prompt"
      )
    return [tokenizer.bos_id, *_encode(tokenizer, prompt)]
  if messages is None:
    messages = [{"role": "user", "content": prompt}]
  try:
    text = template.render(messages, add_generation_prompt=True)
  except chat.BadConversation as bad:
    raise ConfigError(
      f"the chat template refuses the messages: {bad.detail}"
    ) from None
  return _encode(tokenizer, text)


def _encode(tokenizer, text: str) -> list[int]:
  try:
    return list(tokenizer.encode(text))
  except ValueError as error:  # A task's word vocabulary.
    raise ConfigError(f"the prompt cannot be tokenized: {error}") from None


def _check_settings(
  prompt, messages, temperature, top_p, max_new_tokens, num_samples
) -> None:
  if (prompt is None) == (messages is None):
    raise ConfigError("give one of --prompt TEXT and --messages FILE")
  if not math.isfinite(temperature) or temperature < 0:
    raise ConfigError(
      f"--temperature is {temperature}; it must be >= 0 (0 is greedy)"
    )
  if not 0 < top_p <= 1:
    raise ConfigError(f"--top_p is {top_p}; it must be in (0, 1]")
  for name, value in (
    ("max_new_tokens", max_new_tokens),
    ("num_samples", num_samples),
  ):
    if value < 1:
      raise ConfigError(f"--{name} is {value}; it must be at least 1")


def sample(
  workdir: str | pathlib.Path,
  *,
  prompt: str | None = None,
  messages: list[dict] | None = None,
  reference: bool = False,
  step: int | None = None,
  temperature: float = 1.0,
  top_p: float = 1.0,
  max_new_tokens: int = 128,
  num_samples: int = 1,
  seed: int = 0,
) -> Completions:
  """Draws ``num_samples`` completions of one prompt.

  Args:
    workdir: the training run's workdir.
    prompt: one user turn's text.
    messages: a conversation, instead of ``prompt``.
    reference: sample the reference model instead of the policy.
    step: the checkpoint's step; the latest when None.
    temperature: 0 decodes greedily.
    top_p: nucleus sampling's mass; 1 samples from the whole distribution.
    max_new_tokens: the most tokens of a completion.
    num_samples: completions drawn, independently, in one batch.
    seed: the sampling seed.

  Raises:
    UserError: a bad setting, no such checkpoint, messages without a chat
      template.
  """
  _check_settings(
    prompt, messages, temperature, top_p, max_new_tokens, num_samples
  )
  run = checkpointed_run.open_checkpoint(workdir, step)
  try:
    tokenizer = run.tokenizer
    template = chat.load_chat_template(run.config.data, tokenizer=tokenizer)
    ids = prompt_ids(tokenizer, template, prompt=prompt, messages=messages)
    device = jax.devices()[0]
    params = (
      run.reference_params(device) if reference else run.policy_params(device)
    )
  finally:
    run.close()
  stops = export_lib.stop_ids(tokenizer, template)
  batch = jnp.asarray(np.tile(np.asarray(ids, np.int32), (num_samples, 1)))
  try:
    out = models.generate(
      run.model,
      params,
      batch,
      jnp.ones_like(batch),
      rng=jax.random.key(seed),
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      top_p=None if top_p >= 1 else top_p,
      eos_id=stops,
      pad_id=tokenizer.pad_id,
    )
  except ValueError as error:  # A prompt beyond GPT-2's positions.
    raise ConfigError(" ".join(str(error).split())) from None
  tokens, lengths = jax.device_get((out.tokens, out.lengths))
  token_ids = [row[:length].tolist() for row, length in zip(tokens, lengths)]
  texts = [
    tokenizer.decode(row[:-1] if row and row[-1] in stops else row)
    for row in token_ids
  ]
  return Completions(ids, token_ids, texts)


if __name__ == "__main__":
  from train import cli

  cli.run("sample", sys.modules[__name__])

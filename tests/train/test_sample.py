"""Sampling from a workdir (``python -m train.sample``): the policy of a
checkpoint, or the reference the run trained against."""

import json

import jax
import jax.numpy as jnp
import pytest

from slpo_jax import models
from train import data as data_lib
from train import sample
from train.data import chat
from train.errors import ConfigError

from train_testing import load_checkpoint_params

PROMPT = "ab cd"
NEW_TOKENS = 10


def _greedy(chat_run, params) -> list[int]:
  """The library's greedy completion of PROMPT, as one user turn."""
  run = chat_run.trained.run
  tokenizer = data_lib.load_tokenizer(str(chat_run.tokenizer_folder))
  template = chat.load_chat_template(run.config.data, tokenizer=tokenizer)
  ids = tokenizer.encode(
    template.render(
      [{"role": "user", "content": PROMPT}], add_generation_prompt=True
    )
  )
  # Two rows, as the sample calls below draw: one compiled loop for all.
  out = models.generate(
    run.spec.model,
    params,
    jnp.asarray([ids, ids]),
    jnp.ones((2, len(ids)), jnp.int32),
    rng=jax.random.key(0),
    max_new_tokens=NEW_TOKENS,
    temperature=0.0,
    eos_id=[tokenizer.eos_id, *tokenizer.encode("<|im_end|>")],
    pad_id=tokenizer.pad_id,
  )
  return out.tokens[0, : int(out.lengths[0])].tolist()


def test_greedy_samples_are_the_library_s_generation(chat_run):
  workdir = chat_run.trained.workdir
  expected = _greedy(chat_run, load_checkpoint_params(workdir, 2))
  drawn = sample.sample(
    workdir,
    prompt=PROMPT,
    temperature=0.0,
    max_new_tokens=NEW_TOKENS,
    num_samples=2,
  )
  assert drawn.token_ids == [expected, expected]
  tokenizer = data_lib.load_tokenizer(str(chat_run.tokenizer_folder))
  stops = (tokenizer.eos_id, *tokenizer.encode("<|im_end|>"))
  text = tokenizer.decode([t for t in expected if t not in stops])
  assert drawn.texts == [text, text]
  # The same conversation given as messages.
  assert sample.sample(
    workdir,
    messages=[{"role": "user", "content": PROMPT}],
    temperature=0.0,
    max_new_tokens=NEW_TOKENS,
    num_samples=2,
  ).token_ids == [expected, expected]


def test_the_reference_is_the_policy_s_start(chat_run):
  workdir = chat_run.trained.workdir
  reference = sample.sample(
    workdir,
    prompt=PROMPT,
    reference=True,
    temperature=0.0,
    max_new_tokens=NEW_TOKENS,
    num_samples=2,
  )
  start = _greedy(chat_run, chat_run.trained.initial_params)
  assert reference.token_ids == [start, start]
  assert start != _greedy(chat_run, load_checkpoint_params(workdir, 2))


def test_a_prompt_without_a_chat_template_is_bos_and_its_tokens():
  tokenizer = data_lib.ByteTokenizer()
  assert sample.prompt_ids(tokenizer, None, prompt="hi") == [256, 104, 105]
  with pytest.raises(ConfigError, match="--messages needs a chat template"):
    sample.prompt_ids(
      tokenizer, None, messages=[{"role": "user", "content": "hi"}]
    )


def test_messages_files_are_checked(tmp_path):
  path = tmp_path / "messages.json"
  path.write_text(json.dumps([{"role": "user", "content": "hi"}]))
  assert sample.read_messages(path) == [{"role": "user", "content": "hi"}]
  path.write_text(json.dumps([{"role": "user"}]))
  with pytest.raises(ConfigError, match="message 0 has no string 'content'"):
    sample.read_messages(path)
  path.write_text("[")
  with pytest.raises(ConfigError, match="cannot read"):
    sample.read_messages(path)


def test_the_command_line_refuses_a_bad_setting_in_one_line(command_lines):
  done = command_lines["sample_temperature"]
  assert done.returncode == 2
  assert done.stderr.splitlines() == [
    "error: --temperature is -1.0; it must be >= 0 (0 is greedy)"
  ]

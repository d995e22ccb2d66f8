"""Scoring (prompt, response) texts with a Hugging Face reward model.

The folder is a one-label ``*ForSequenceClassification`` checkpoint with its
tokenizer (``slpo_jax.models.load_hf_reward_model``). A pair is encoded as
the reward model was trained on it: through its chat template, when the
folder has one, as the conversation ``[user: prompt, assistant: response]``;
otherwise as BOS and the tokens of the prompt's text followed by the
response's.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax import models
from train import config_schema
from train.data import chat
from train.data import tokenization
from train.errors import USER_ERRORS
from train.errors import ConfigError

# Pairs scored per forward pass.
_BATCH = 16


# Files any tokenizer folder holds one of.
_TOKENIZER_FILES = (
  "tokenizer.json",
  "tokenizer.model",
  "tokenizer_config.json",
)


class RewardScorer:
  """A reward model and its tokenizer, on one device.

  A folder without tokenizer files (a reward model this program trained on
  a built-in vocabulary: the byte tokenizer or a task's words) shares the
  evaluated run's tokens when ``run_tokenizer`` is one of those; it then
  scores the prompt's and the response's token ids as sampled
  (``same_tokens``).
  """

  def __init__(self, folder: str | pathlib.Path, run_tokenizer=None):
    folder = pathlib.Path(folder)
    self.same_tokens = (
      run_tokenizer is not None
      and getattr(run_tokenizer, "path", None) is None
      and folder.is_dir()
      and not any((folder / name).exists() for name in _TOKENIZER_FILES)
    )
    try:
      self.model, self.params = models.load_hf_reward_model(folder)
      if self.same_tokens:
        self.tokenizer, self.template = run_tokenizer, None
      else:
        self.tokenizer = tokenization.load_tokenizer(str(folder))
        data = config_schema.data_defaults()
        data.source = "jsonl"
        data.tokenizer = str(folder)
        self.template = chat.load_chat_template(
          data, str(folder), tokenizer=self.tokenizer
        )
    except USER_ERRORS as error:
      # The error names the file it could not use.
      raise ConfigError(
        f"--reward_model: {' '.join(str(error).split())}"
      ) from None
    if self.tokenizer.vocab_size > self.model.backbone.config.vocab_size:
      raise ConfigError(
        f"--reward_model {folder}: its tokenizer has"
        f" {self.tokenizer.vocab_size} tokens, more than the model's"
        f" {self.model.backbone.config.vocab_size}"
      )
    self.folder = folder
    self._scores = jax.jit(self.model.scores)

  def encode(self, conversation: list[dict], response: str) -> list[int]:
    """The tokens of a prompt's messages followed by the response."""
    if self.template is None:
      if len(conversation) != 1:
        raise ConfigError(
          f"--reward_model {self.folder}: it has no chat template, so it"
          " scores one-turn prompts only"
        )
      text = conversation[0]["content"] + response
      return [self.tokenizer.bos_id, *self.tokenizer.encode(text)]
    messages = [*conversation, {"role": "assistant", "content": response}]
    try:
      text = self.template.render(messages, add_generation_prompt=False)
    except chat.BadConversation as bad:
      raise ConfigError(
        f"--reward_model {self.folder}: its chat template refuses a pair:"
        f" {bad.detail}"
      ) from None
    return list(self.tokenizer.encode(text))

  def scores(self, conversations: list, responses: list[str]) -> np.ndarray:
    """``[N]`` rewards of (messages, response text) pairs."""
    return self.score_ids(
      [self.encode(c, r) for c, r in zip(conversations, responses)]
    )

  def score_ids(self, encoded: list[list[int]]) -> np.ndarray:
    """``[N]`` rewards of token sequences, in batches padded to one width."""
    width = max(len(ids) for ids in encoded)
    # Widths rounded up to a multiple of 64: few distinct compiled shapes.
    width = -(-width // 64) * 64
    result = []
    for start in range(0, len(encoded), _BATCH):
      rows = encoded[start : start + _BATCH]
      rows += [rows[-1]] * (_BATCH - len(rows))
      ids = np.full((_BATCH, width), self.tokenizer.pad_id, np.int32)
      mask = np.zeros((_BATCH, width), np.int32)
      for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
      result.append(
        np.asarray(self._scores(self.params, jnp.asarray(ids), mask))
      )
    return np.concatenate(result)[: len(encoded)].astype(np.float64)

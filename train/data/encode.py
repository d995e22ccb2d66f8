"""Text pairs to token pairs: BOS, EOS, truncation, and the dataset hash.

A pair becomes three token arrays: the prompt (starting with exactly one BOS)
and two responses (each ending with EOS unless truncation cut it off). The
prompt is tokenized once and shared by both sequences, so chosen and rejected
carry identical prompt tokens at identical positions.

Truncation follows the DPO reference implementation
(``tokenize_batch_element``, truncation_mode='keep_end'): only when prompt plus
the longer response exceeds ``max_length``, the prompt is first cut to
``max_prompt_length`` keeping its end (the last turn is what the response
answers), then both responses are cut to ``max_length - prompt_length``. A cut
response loses its EOS, as in the reference: it did not end there. BOS is kept
through prompt truncation so every sequence starts with it.

Conversations (``chat.ChatPair``) are rendered through the run's chat
template instead: the template places every special token, nothing is added
here, and the prompt's ids and each response's ids are what
``apply_chat_template`` gives for the prompt (with the generation prompt) and
for the whole conversation after them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from train.data import chat
from train.data.report import BadRecordPolicy
from train.data.report import DataError
from train.data.report import DataReport
from train.data.sources import TextPair
from train.data.tokenization import Tokenizer


@dataclasses.dataclass(frozen=True)
class TokenizedPair:
  """One preference pair as tokens.

  Attributes:
    example_id: stable index of the pair in its source.
    prompt: ``[P]`` int32, starts with BOS (unless a chat template puts
      none), ``P <= max_prompt_length``.
    chosen: ``[Rc]`` int32 response tokens (EOS, or the template's end of
      turn, last unless truncated).
    rejected: ``[Rr]`` int32.
    location: where the record is ('file.jsonl:12').
    prompt_truncated: the prompt lost tokens from its start.
    responses_truncated: the responses were cut to fit ``max_length``.
  """

  example_id: int
  prompt: np.ndarray
  chosen: np.ndarray
  rejected: np.ndarray
  location: str = ""
  prompt_truncated: bool = False
  responses_truncated: bool = False

  @property
  def length(self) -> int:
    """Tokens of the longer of the two sequences (prompt plus response)."""
    return len(self.prompt) + max(len(self.chosen), len(self.rejected))


@dataclasses.dataclass(frozen=True)
class Truncation:
  prompt: list[int]
  chosen: list[int]
  rejected: list[int]
  prompt_truncated: bool
  responses_truncated: bool


def truncate(
  prompt: Sequence[int],
  chosen: Sequence[int],
  rejected: Sequence[int],
  *,
  max_length: int,
  max_prompt_length: int,
  keep_first: bool = True,
) -> Truncation:
  """Truncates a pair as the DPO reference does (see the module docstring).

  Args:
    prompt: prompt tokens, BOS first.
    chosen: chosen response tokens, EOS last.
    rejected: rejected response tokens, EOS last.
    max_length: most tokens of prompt plus response.
    max_prompt_length: most prompt tokens (BOS included) when truncating;
      must be less than ``max_length``, so every response keeps a token.
    keep_first: keep the prompt's first token (its BOS) when cutting it.
  """
  assert 0 < max_prompt_length < max_length, (max_prompt_length, max_length)
  prompt, chosen, rejected = list(prompt), list(chosen), list(rejected)
  longer = max(len(chosen), len(rejected))
  prompt_truncated = responses_truncated = False
  if len(prompt) + longer > max_length and len(prompt) > max_prompt_length:
    # Keep BOS and the last max_prompt_length - 1 tokens of the text.
    head, body = (prompt[:1], prompt[1:]) if keep_first else ([], prompt)
    prompt = head + body[len(body) - (max_prompt_length - len(head)) :]
    prompt_truncated = True
  if len(prompt) + longer > max_length:
    keep = max_length - len(prompt)
    chosen, rejected = chosen[:keep], rejected[:keep]
    responses_truncated = True
  return Truncation(
    prompt, chosen, rejected, prompt_truncated, responses_truncated
  )


def make_token_pair(
  example_id: int,
  prompt: Sequence[int],
  chosen: Sequence[int],
  rejected: Sequence[int],
  *,
  location: str,
  max_length: int,
  max_prompt_length: int,
  policy: BadRecordPolicy,
  report: DataReport,
  keep_first: bool = True,
) -> TokenizedPair | None:
  """Truncates one pair, counts it in ``report``; None if it became bad."""
  cut = truncate(
    prompt,
    chosen,
    rejected,
    max_length=max_length,
    max_prompt_length=max_prompt_length,
    keep_first=keep_first,
  )
  if cut.chosen == cut.rejected:
    # Responses that differ only beyond the cut carry no preference left.
    policy.bad(
      "identical_after_truncation",
      location,
      f"the responses agree on their first {len(cut.chosen)} tokens",
    )
    return None
  report.num_truncated_prompts += cut.prompt_truncated
  report.num_truncated_responses += cut.responses_truncated
  report.num_loaded += 1
  as_array = lambda tokens: np.asarray(tokens, np.int32)
  return TokenizedPair(
    example_id,
    as_array(cut.prompt),
    as_array(cut.chosen),
    as_array(cut.rejected),
    location,
    cut.prompt_truncated,
    cut.responses_truncated,
  )


def _encode_all(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
  encode_batch = getattr(tokenizer, "encode_batch", None)
  if encode_batch is not None:
    return [list(ids) for ids in encode_batch(texts)]
  return [list(tokenizer.encode(text)) for text in texts]


def _text_pair_tokens(pair, encoded, bos, eos):
  prompt, chosen, rejected = encoded
  # ``encode`` should add no special tokens; if a custom tokenizer adds BOS
  # anyway, keep its BOS rather than adding a second one.
  if not prompt or prompt[0] != bos:
    prompt = [bos] + prompt
  return prompt, chosen + [eos], rejected + [eos]


def _chat_texts(pair: chat.ChatPair, template: chat.ChatTemplate):
  """The prompt's text and the two whole conversations' texts."""
  prompt, chosen = template.render_pair(pair.prompt, pair.chosen)
  _, rejected = template.render_pair(pair.prompt, pair.rejected)
  return [prompt, prompt + chosen, prompt + rejected]


def _response_ids(
  prompt_ids: list[int],
  whole_ids: list[int],
  continuation: str,
  tokenizer: Tokenizer,
  report: DataReport,
) -> list[int]:
  """The ids after the prompt's: the whole conversation's, when its
  tokenization starts with the prompt's ids (as ``apply_chat_template``
  gives them); else the continuation tokenized on its own.
  """
  if whole_ids[: len(prompt_ids)] == prompt_ids:
    return whole_ids[len(prompt_ids) :]
  report.num_retokenized += 1
  return list(tokenizer.encode(continuation))


def encode_pairs(
  pairs: Sequence[TextPair | chat.ChatPair],
  tokenizer: Tokenizer,
  *,
  max_length: int,
  max_prompt_length: int,
  policy: BadRecordPolicy,
  report: DataReport,
  chat_template: chat.ChatTemplate | None = None,
) -> list[TokenizedPair]:
  """Tokenizes pairs: text pairs get one BOS before the prompt and EOS after
  each response; conversations are rendered through ``chat_template``.

  Raises:
    DataError: a conversation without a chat template, or a bad record
      under ``on_bad_record='error'``.
  """
  bos, eos = tokenizer.bos_id, tokenizer.eos_id
  rendered, texts = [], []
  for pair in pairs:
    if isinstance(pair, chat.ChatPair):
      if chat_template is None:
        raise DataError(
          f"{pair.location}: the record holds messages but there is no chat"
          " template: the tokenizer folder has none; set data.chat_template"
          f" to a .jinja file or one of {sorted(chat.BUILTIN_TEMPLATES)}"
        )
      try:
        pair_texts = _chat_texts(pair, chat_template)
      except chat.BadConversation as bad:
        policy.bad(bad.reason, pair.location, bad.detail)
        continue
    else:
      pair_texts = [pair.prompt, pair.chosen, pair.rejected]
    rendered.append(pair)
    texts.extend(pair_texts)
  encoded = _encode_all(tokenizer, texts)
  token_pairs = []
  for i, pair in enumerate(rendered):
    ids = encoded[3 * i : 3 * i + 3]
    if isinstance(pair, chat.ChatPair):
      prompt = ids[0]
      prompt_text = texts[3 * i]
      chosen, rejected = (
        _response_ids(
          prompt, whole, texts[3 * i + j][len(prompt_text) :], tokenizer, report
        )
        for j, whole in ((1, ids[1]), (2, ids[2]))
      )
      keep_first = bool(prompt) and prompt[0] == bos
    else:
      prompt, chosen, rejected = _text_pair_tokens(pair, ids, bos, eos)
      keep_first = True
    token_pair = make_token_pair(
      pair.example_id,
      prompt,
      chosen,
      rejected,
      location=pair.location,
      max_length=max_length,
      max_prompt_length=max_prompt_length,
      policy=policy,
      report=report,
      keep_first=keep_first,
    )
    if token_pair is not None:
      token_pairs.append(token_pair)
  return token_pairs


def _tokens_digest(header, examples) -> str:
  """The hash of ``header`` (ints) and of every ``(example_id, token lists)``.

  Each example contributes its id and the lengths of its token lists, then
  the tokens, so neither a moved boundary nor a reordering goes unnoticed.
  """
  digest = hashlib.sha256(np.asarray(header, "<i8").tobytes())
  for example_id, token_lists in examples:
    lengths = [len(tokens) for tokens in token_lists]
    digest.update(np.asarray([example_id, *lengths], "<i8").tobytes())
    for tokens in token_lists:
      digest.update(np.asarray(tokens, "<i4").tobytes())
  return digest.hexdigest()[:32]


def fingerprint(pairs: Sequence[TokenizedPair], tokenizer: Tokenizer) -> str:
  """A hash of the tokenized dataset, for use as a cache key.

  It covers every pair's example id and tokens, in order, and the
  tokenizer's special ids and vocabulary size, so any change to the data,
  the tokenizer or the truncation settings changes it.
  """
  header = (
    tokenizer.vocab_size,
    tokenizer.bos_id,
    tokenizer.eos_id,
    tokenizer.pad_id,
    len(pairs),
  )
  return _tokens_digest(
    header,
    ((p.example_id, (p.prompt, p.chosen, p.rejected)) for p in pairs),
  )


def sequences_fingerprint(sequences: Sequence) -> str:
  """``fingerprint`` for single sequences (``example_id``, ``tokens``) of SFT
  data.
  """
  return _tokens_digest(
    (len(sequences),), ((s.example_id, (s.tokens,)) for s in sequences)
  )

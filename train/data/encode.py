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
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from train.data.report import BadRecordPolicy
from train.data.report import DataReport
from train.data.sources import TextPair
from train.data.tokenization import Tokenizer


@dataclasses.dataclass(frozen=True)
class TokenizedPair:
  """One preference pair as tokens.

  Attributes:
    example_id: stable index of the pair in its source.
    prompt: ``[P]`` int32, starts with BOS, ``P <= max_prompt_length``.
    chosen: ``[Rc]`` int32 response tokens (EOS last unless truncated).
    rejected: ``[Rr]`` int32.
  """

  example_id: int
  prompt: np.ndarray
  chosen: np.ndarray
  rejected: np.ndarray

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
) -> Truncation:
  """Truncates a pair as the DPO reference does (see the module docstring).

  Args:
    prompt: prompt tokens, BOS first.
    chosen: chosen response tokens, EOS last.
    rejected: rejected response tokens, EOS last.
    max_length: most tokens of prompt plus response.
    max_prompt_length: most prompt tokens (BOS included) when truncating;
      must be less than ``max_length``, so every response keeps a token.
  """
  assert 0 < max_prompt_length < max_length, (max_prompt_length, max_length)
  prompt, chosen, rejected = list(prompt), list(chosen), list(rejected)
  longer = max(len(chosen), len(rejected))
  prompt_truncated = responses_truncated = False
  if len(prompt) + longer > max_length and len(prompt) > max_prompt_length:
    # Keep BOS and the last max_prompt_length - 1 tokens of the text.
    body = prompt[1:]
    prompt = prompt[:1] + body[len(body) - (max_prompt_length - 1) :]
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
) -> TokenizedPair | None:
  """Truncates one pair, counts it in ``report``; None if it became bad."""
  cut = truncate(
    prompt,
    chosen,
    rejected,
    max_length=max_length,
    max_prompt_length=max_prompt_length,
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
  )


def _encode_all(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
  encode_batch = getattr(tokenizer, "encode_batch", None)
  if encode_batch is not None:
    return [list(ids) for ids in encode_batch(texts)]
  return [list(tokenizer.encode(text)) for text in texts]


def encode_pairs(
  pairs: Sequence[TextPair],
  tokenizer: Tokenizer,
  *,
  max_length: int,
  max_prompt_length: int,
  policy: BadRecordPolicy,
  report: DataReport,
) -> list[TokenizedPair]:
  """Tokenizes text pairs: one BOS before the prompt, EOS after responses."""
  bos, eos = tokenizer.bos_id, tokenizer.eos_id
  texts = [text for p in pairs for text in (p.prompt, p.chosen, p.rejected)]
  encoded = _encode_all(tokenizer, texts)
  token_pairs = []
  for i, pair in enumerate(pairs):
    prompt, chosen, rejected = encoded[3 * i : 3 * i + 3]
    # ``encode`` should add no special tokens; if a custom tokenizer adds BOS
    # anyway, keep its BOS rather than adding a second one.
    if not prompt or prompt[0] != bos:
      prompt = [bos] + prompt
    token_pair = make_token_pair(
      pair.example_id,
      prompt,
      chosen + [eos],
      rejected + [eos],
      location=pair.location,
      max_length=max_length,
      max_prompt_length=max_prompt_length,
      policy=policy,
      report=report,
    )
    if token_pair is not None:
      token_pairs.append(token_pair)
  return token_pairs


def fingerprint(pairs: Sequence[TokenizedPair], tokenizer: Tokenizer) -> str:
  """A hash of the tokenized dataset, for use as a cache key.

  It covers every pair's example id and tokens, in order, and the
  tokenizer's special ids and vocabulary size, so any change to the data,
  the tokenizer or the truncation settings changes it.
  """
  digest = hashlib.sha256()
  header = (
    tokenizer.vocab_size,
    tokenizer.bos_id,
    tokenizer.eos_id,
    tokenizer.pad_id,
    len(pairs),
  )
  digest.update(np.asarray(header, "<i8").tobytes())
  for pair in pairs:
    digest.update(
      np.asarray(
        [
          pair.example_id,
          len(pair.prompt),
          len(pair.chosen),
          len(pair.rejected),
        ],
        "<i8",
      ).tobytes()
    )
    for tokens in (pair.prompt, pair.chosen, pair.rejected):
      digest.update(np.asarray(tokens, "<i4").tobytes())
  return digest.hexdigest()[:32]


def sequences_fingerprint(sequences: Sequence) -> str:
  """``fingerprint`` for single sequences (``example_id``, ``tokens``) of SFT
  data.
  """
  digest = hashlib.sha256(np.asarray([len(sequences)], "<i8").tobytes())
  for sequence in sequences:
    digest.update(
      np.asarray([sequence.example_id, len(sequence.tokens)], "<i8").tobytes()
    )
    digest.update(np.asarray(sequence.tokens, "<i4").tobytes())
  return digest.hexdigest()[:32]

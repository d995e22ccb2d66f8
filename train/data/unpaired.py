"""KTO's unpaired records: reading, tokenizing, splitting pairs, batching.

A record is ``{"prompt", "completion", "label"}``: text, or messages
rendered through the run's chat template (a prompt of messages and a
completion of messages starting with an assistant turn), and a boolean
label (True: desirable). Records come from JSONL, Parquet or Arrow files
(``data.unpaired``) or from pairs, each pair giving two records, its chosen response desirable
and its rejected one not (as TRL's ``unpair_preference_dataset`` splits
them).

A batch of records (:class:`train.batch.UnpairedBatch`) holds each record's
row and a mismatched row: the record's prompt with the completion of the
record before it in the batch (the first takes the last one's), TRL's
rotation by one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

from train import batch as batch_lib
from train.data import batching
from train.data import chat
from train.data import encode
from train.data import sources
from train.data.report import BadRecordPolicy
from train.data.report import DataError
from train.data.report import DataReport
from train.data.tokenization import Tokenizer


@dataclasses.dataclass(frozen=True)
class TokenizedRecord:
  """One unpaired record as tokens.

  Attributes:
    example_id: stable index of the record (its 0-based JSONL line; for a
      split pair ``2 * pair id`` for the chosen side, ``+ 1`` the rejected).
    prompt: ``[P]`` int32, as a pair's prompt.
    completion: ``[C]`` int32, as a pair's response.
    desirable: the label.
    pair_id: the pair it was split from, -1 for a record read as one.
    location: where the record is.
    prompt_truncated: the prompt lost tokens from its start.
    responses_truncated: the completion was cut to fit ``max_length``.
  """

  example_id: int
  prompt: np.ndarray
  completion: np.ndarray
  desirable: bool
  pair_id: int = -1
  location: str = ""
  prompt_truncated: bool = False
  responses_truncated: bool = False

  @property
  def length(self) -> int:
    return len(self.prompt) + len(self.completion)


def split_pairs(
  pairs: Sequence[encode.TokenizedPair],
) -> list[TokenizedRecord]:
  """Each pair as two records: chosen desirable, rejected undesirable."""
  records = []
  for pair in pairs:
    for side, desirable in (("chosen", True), ("rejected", False)):
      records.append(
        TokenizedRecord(
          example_id=2 * pair.example_id + (not desirable),
          prompt=pair.prompt,
          completion=getattr(pair, side),
          desirable=desirable,
          pair_id=pair.example_id,
          location=pair.location,
          prompt_truncated=pair.prompt_truncated,
          responses_truncated=pair.responses_truncated,
        )
      )
  return records


def record_to_unpaired(
  record: object, *, example_id: int, location: str, prompt_field: str
) -> tuple[sources.TextPair | chat.ChatPair, bool]:
  """One parsed record as a pair whose two responses are its completion,
  and its label.

  Raises:
    sources._BadRecord: when the record is bad.
  """
  bad = sources._BadRecord
  if not isinstance(record, Mapping):
    raise bad(
      "not_an_object", f"got a JSON {type(record).__name__}, not an object"
    )
  label = sources._field(record, "label")
  if not isinstance(label, bool):
    raise bad(
      "non_bool_label",
      f"field 'label' is {type(label).__name__}, not true or false",
    )
  completion = sources._field(record, "completion")
  if chat.is_conversation(completion):
    try:
      messages = chat.check_messages(completion, "completion")
      prompt = chat.check_messages(
        sources._field(record, prompt_field), prompt_field
      )
      if not messages or messages[0]["role"] != "assistant":
        raise chat.BadConversation(
          "no_assistant_turn",
          "the completion's messages do not start with an assistant turn",
        )
      if not any(m["content"].strip() for m in messages):
        raise chat.BadConversation("empty_response", "the completion is empty")
    except chat.BadConversation as error:
      raise bad(error.reason, error.detail) from None
    pair = chat.ChatPair(example_id, prompt, messages, messages, location)
    return pair, label
  text = sources._lookup(record, "completion")
  if not text.strip():
    raise bad("empty_response", "the completion is empty")
  prompt = sources._lookup(record, prompt_field)
  return sources.TextPair(example_id, prompt, text, text, location), label


def records_from_raw(
  raw: Iterable[tuple[int, str, object]],
  *,
  prompt_field: str,
  policy: BadRecordPolicy,
  report: DataReport,
) -> list[tuple[sources.TextPair | chat.ChatPair, bool]]:
  """Validates ``(example_id, location, record)`` triples into records."""
  records = []
  for example_id, location, record in raw:
    report.num_records += 1
    try:
      if isinstance(record, sources._BadRecord):
        raise record
      records.append(
        record_to_unpaired(
          record,
          example_id=example_id,
          location=location,
          prompt_field=prompt_field,
        )
      )
    except sources._BadRecord as error:
      policy.bad(error.reason, location, error.detail)
  return records


# The sources whose files can hold unpaired records (data.unpaired).
RECORD_SOURCES = ("jsonl", "parquet", "arrow")


def _raw_records(config, split: str, report: DataReport):
  """``(where, (example_id, location, record) rows)`` of the split's file."""
  from train.data import hf_files

  own_eval = split == "eval" and hf_files.has_own_eval(config)
  path = (
    config.eval_path if own_eval and config.eval_path else (config.train_path)
  )
  if config.source == "jsonl":
    data = sources._read_bytes(path)
    return path, sources._jsonl_records(path, data, report)
  if config.source == "parquet":
    return path, hf_files.parquet_rows(
      hf_files.matching_files(path, ".parquet")
    )
  split_name = config.hf_split_eval if own_eval else config.hf_split_train
  where, files = hf_files.arrow_split_files(path, split_name)
  report.source = where
  return where, hf_files.arrow_rows(files)


def read_records(
  config, split: str, *, policy: BadRecordPolicy, report: DataReport
) -> list[tuple[sources.TextPair | chat.ChatPair, bool]]:
  """The validated records of ``split`` from the JSONL, Parquet or Arrow
  files of the data config (files, globs and splits as for pairs), with
  ``eval_fraction`` held out when the split has no file of its own.

  Raises:
    DataError: as for pairs: an unreadable file, a bad record under
      ``on_bad_record='error'`` (naming the file and line or row), or no
      usable record.
  """
  from train.data import hf_files

  where, raw = _raw_records(config, split, report)
  records = records_from_raw(
    raw, prompt_field=config.field_map.prompt, policy=policy, report=report
  )
  if report.num_records == 0:
    raise DataError(f"{where}: no records (the file is empty)")
  if not records:
    raise DataError(
      f"{where}: none of the {report.num_records} records is "
      f"usable: {report.summary()}"
    )
  if not hf_files.has_own_eval(config) and config.eval_fraction:
    kept, report.num_held_out = sources.split_held_out(
      [pair for pair, _ in records], config.eval_fraction, split
    )
    kept = {id(pair) for pair in kept}
    records = [item for item in records if id(item[0]) in kept]
  return records


def encode_records(
  records: Sequence[tuple[sources.TextPair | chat.ChatPair, bool]],
  tokenizer: Tokenizer,
  *,
  max_length: int,
  max_prompt_length: int,
  policy: BadRecordPolicy,
  report: DataReport,
  chat_template: chat.ChatTemplate | None = None,
) -> list[TokenizedRecord]:
  """Tokenizes records as ``encode.encode_pairs`` does a pair's prompt and
  one response: text gets BOS before the prompt and EOS after the
  completion, messages go through ``chat_template``; then the same
  truncation.

  Raises:
    DataError: messages without a chat template, or a bad record under
      ``on_bad_record='error'``.
  """
  bos, eos = tokenizer.bos_id, tokenizer.eos_id
  rendered, texts = [], []
  for pair, desirable in records:
    if isinstance(pair, chat.ChatPair):
      if chat_template is None:
        raise DataError(
          f"{pair.location}: the record holds messages but there is no chat"
          " template: the tokenizer folder has none; set data.chat_template"
          f" to a .jinja file or one of {sorted(chat.BUILTIN_TEMPLATES)}"
        )
      try:
        prompt, completion = chat_template.render_pair(pair.prompt, pair.chosen)
      except chat.BadConversation as bad:
        policy.bad(bad.reason, pair.location, bad.detail)
        continue
      texts.extend([prompt, prompt + completion])
    else:
      texts.extend([pair.prompt, pair.chosen])
    rendered.append((pair, desirable))
  encoded = encode._encode_all(tokenizer, texts)
  tokenized = []
  for i, (pair, desirable) in enumerate(rendered):
    prompt, whole = encoded[2 * i : 2 * i + 2]
    if isinstance(pair, chat.ChatPair):
      continuation = texts[2 * i + 1][len(texts[2 * i]) :]
      completion = encode._response_ids(
        prompt, whole, continuation, tokenizer, report
      )
      keep_first = bool(prompt) and prompt[0] == bos
    else:
      prompt, completion, _ = encode._text_pair_tokens(
        pair, (prompt, whole, []), bos, eos
      )
      keep_first = True
    cut = encode.truncate(
      prompt,
      completion,
      completion,
      max_length=max_length,
      max_prompt_length=max_prompt_length,
      keep_first=keep_first,
    )
    report.num_truncated_prompts += cut.prompt_truncated
    report.num_truncated_responses += cut.responses_truncated
    report.num_loaded += 1
    tokenized.append(
      TokenizedRecord(
        example_id=pair.example_id,
        prompt=np.asarray(cut.prompt, np.int32),
        completion=np.asarray(cut.chosen, np.int32),
        desirable=desirable,
        location=pair.location,
        prompt_truncated=cut.prompt_truncated,
        responses_truncated=cut.responses_truncated,
      )
    )
  return tokenized


def collate_records(
  entries: Sequence[batching.Weighted],
  *,
  buckets: Sequence[int],
  pad_id: int,
) -> batch_lib.UnpairedBatch:
  """Stacks weighted ``TokenizedRecord``s into an unpaired batch.

  The mismatched row of record i is its prompt with record i-1's completion
  (record 0 takes the last one's); its completion is cut at its end to fit
  the largest bucket, the longest row a run compiles for.
  """
  records = [record for record, _ in entries]
  longest = max(buckets)
  kl_rows = []
  for i, record in enumerate(records):
    other = records[i - 1].completion
    tokens = np.concatenate([record.prompt, other])[:longest]
    kl_rows.append((tokens, len(record.prompt) - 1))
  rows = [
    (np.concatenate([r.prompt, r.completion]), len(r.prompt) - 1)
    for r in records
  ]
  length = batching.bucket_length(
    max(len(tokens) for tokens, _ in rows + kl_rows), buckets
  )
  arrays = {
    "example_weight": np.asarray([w for _, w in entries], np.float32),
    "example_id": np.asarray([r.example_id for r in records], np.int32),
    "desirable": np.asarray([r.desirable for r in records], bool),
    "pair_id": np.asarray([r.pair_id for r in records], np.int32),
  }
  arrays.update(batching._fill("completion_", rows, length, pad_id))
  arrays.update(batching._fill("kl_", kl_rows, length, pad_id))
  return batch_lib.unpaired(arrays)


def fingerprint(records: Sequence[TokenizedRecord], tokenizer) -> str:
  """``encode.fingerprint`` for records: ids, labels and tokens."""
  header = (
    tokenizer.vocab_size,
    tokenizer.bos_id,
    tokenizer.eos_id,
    tokenizer.pad_id,
    len(records),
  )
  return encode._tokens_digest(
    header,
    (
      (r.example_id, (r.prompt, r.completion, [int(r.desirable)]))
      for r in records
    ),
  )

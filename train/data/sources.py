"""Reading preference pairs as text: JSONL files and HH-RLHF transcripts.

Two record layouts:

* explicit: each record has a prompt, a chosen and a rejected response
  (field names from ``field_map``; 'a/b' reads the nested field b of a);
* HH transcripts: each record has the full ``chosen`` and ``rejected``
  dialogues. The prompt is the chosen transcript up to and including its
  last "\\n\\nAssistant:", as in the DPO reference implementation
  (``extract_anthropic_prompt``), and the rejected transcript must start with
  the same prompt. It is not the common prefix of the two transcripts: that
  would swallow the first words the two responses happen to share.

Records are validated here (see ``report.BAD_RECORD_REASONS``); a bad record
raises ``DataError`` or is counted, as ``on_bad_record`` says.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import hashlib
import json
import zlib
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping

from etils import epath

from train.data import chat
from train.data.report import BadRecordPolicy
from train.data.report import DataError
from train.data.report import DataReport

HH_ASSISTANT_TAG = "\n\nAssistant:"
_GZIP_MAGIC = b"\x1f\x8b"


@dataclasses.dataclass(frozen=True)
class TextPair:
  """One validated preference pair, as text.

  Attributes:
    example_id: stable index of the record in its source (0-based line
      number of a JSONL file, record index of a TFDS split).
    prompt: the prompt text (may be empty).
    chosen: the preferred response text (non-blank).
    rejected: the other response text (non-blank, different from chosen).
    location: where the record is, for messages ('file.jsonl:12').
  """

  example_id: int
  prompt: str
  chosen: str
  rejected: str
  location: str


class _BadRecord(Exception):
  def __init__(self, reason: str, detail: str = ""):
    super().__init__(reason, detail)
    self.reason = reason
    self.detail = detail


def split_hh_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
  """Splits HH transcripts into (prompt, chosen response, rejected response).

  Raises:
    _BadRecord: 'no_assistant_turn' or 'prompt_mismatch'.
  """
  cut = chosen.rfind(HH_ASSISTANT_TAG)
  if cut < 0:
    raise _BadRecord("no_assistant_turn")
  prompt = chosen[: cut + len(HH_ASSISTANT_TAG)]
  if not rejected.startswith(prompt):
    raise _BadRecord(
      "prompt_mismatch",
      "the rejected transcript does not start with the chosen transcript's "
      "prompt (text up to its last '\\n\\nAssistant:')",
    )
  return prompt, chosen[len(prompt) :], rejected[len(prompt) :]


_MISSING = object()


def _field(record: Mapping[str, object], name: str, default=_MISSING):
  """The value of field ``name`` ('a/b' is field b of a), as stored."""
  value: object = record
  for key in name.split("/"):
    if not isinstance(value, Mapping) or key not in value:
      if default is not _MISSING:
        return default
      raise _BadRecord("missing_field", f"no field {name!r}")
    value = value[key]
  return value


def _lookup(record: Mapping[str, object], name: str) -> str:
  value = _field(record, name)
  if isinstance(value, bytes):  # TFDS Text features come back as bytes.
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError as e:
      raise _BadRecord("invalid_utf8", f"field {name!r}: {e}") from None
  if not isinstance(value, str):
    raise _BadRecord(
      "non_string_field",
      f"field {name!r} is {type(value).__name__}, not a string",
    )
  try:
    # JSON escapes can encode lone surrogates, which no tokenizer accepts.
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    raise _BadRecord("invalid_utf8", f"field {name!r}: {e.reason}") from None
  return value


def _chat_pair(
  record: Mapping[str, object],
  *,
  example_id: int,
  location: str,
  field_map: Mapping[str, str],
) -> chat.ChatPair:
  """A record whose responses are lists of messages (see ``train.data.chat``)."""
  try:
    chosen = chat.check_messages(_field(record, field_map["chosen"]), "chosen")
    rejected = chat.check_messages(
      _field(record, field_map["rejected"]), "rejected"
    )
    prompt = None
    if field_map["prompt"]:
      value = _field(record, field_map["prompt"], default=None)
      # No prompt field, or a text one beside conversations (as in
      # UltraFeedback-binarized): the implicit layout, as TRL reads it.
      if value is not None and not isinstance(value, str):
        prompt = chat.check_messages(value, field_map["prompt"])
    prompt, chosen, rejected = chat.split_conversations(
      prompt, chosen, rejected
    )
  except chat.BadConversation as bad:
    raise _BadRecord(bad.reason, bad.detail) from None
  return chat.ChatPair(example_id, prompt, chosen, rejected, location)


def record_to_pair(
  record: object,
  *,
  example_id: int,
  location: str,
  field_map: Mapping[str, str],
  transcripts: bool,
) -> TextPair | chat.ChatPair:
  """Validates one parsed record and returns its pair.

  A record whose chosen field is a list holds messages and gives a
  ``ChatPair``; otherwise the fields are text and give a ``TextPair``.

  Raises:
    _BadRecord: when the record is bad.
  """
  if not isinstance(record, Mapping):
    raise _BadRecord(
      "not_an_object", f"got a JSON {type(record).__name__}, not an object"
    )
  if not transcripts and chat.is_conversation(
    _field(record, field_map["chosen"], default=None)
  ):
    return _chat_pair(
      record, example_id=example_id, location=location, field_map=field_map
    )
  chosen = _lookup(record, field_map["chosen"])
  rejected = _lookup(record, field_map["rejected"])
  if transcripts:
    prompt, chosen, rejected = split_hh_transcripts(chosen, rejected)
  else:
    prompt = _lookup(record, field_map["prompt"])
  for role, text in (("chosen", chosen), ("rejected", rejected)):
    if not text.strip():
      raise _BadRecord("empty_response", f"the {role} response is empty")
  if chosen == rejected:
    raise _BadRecord("identical_responses")
  return TextPair(example_id, prompt, chosen, rejected, location)


def pairs_from_records(
  records: Iterable[tuple[int, str, object]],
  *,
  field_map: Mapping[str, str],
  transcripts: bool,
  policy: BadRecordPolicy,
  report: DataReport,
) -> list[TextPair | chat.ChatPair]:
  """Validates ``(example_id, location, record)`` triples into pairs.

  A record given as a ``_BadRecord`` exception (e.g. a line that did not parse)
  is handed to the policy like any other bad record.
  """
  pairs = []
  for example_id, location, record in records:
    report.num_records += 1
    try:
      if isinstance(record, _BadRecord):
        raise record
      pairs.append(
        record_to_pair(
          record,
          example_id=example_id,
          location=location,
          field_map=field_map,
          transcripts=transcripts,
        )
      )
    except _BadRecord as bad:
      policy.bad(bad.reason, location, bad.detail)
  return pairs


def _read_bytes(path: str) -> bytes:
  file = epath.Path(path)
  try:
    data = file.read_bytes()
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  except IsADirectoryError:
    raise DataError(f"{path}: is a directory, not a file") from None
  except OSError as e:
    raise DataError(f"{path}: cannot read: {e}") from None
  if data[:2] == _GZIP_MAGIC:
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
      raise DataError(f"{path}: not a readable gzip file: {e}") from None
  # Editors on Windows often start a UTF-8 file with a byte-order mark.
  return data.removeprefix(codecs.BOM_UTF8)


def _jsonl_records(
  path: str, data: bytes, report: DataReport
) -> Iterator[tuple[int, str, object]]:
  for index, raw in enumerate(data.splitlines()):
    location = f"{path}:{index + 1}"
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      yield (
        index,
        location,
        _BadRecord(
          "invalid_utf8", f"invalid UTF-8 byte at column {e.start + 1}"
        ),
      )
      continue
    if not text.strip():
      report.num_blank_lines += 1
      continue
    try:
      record = json.loads(text)
    except json.JSONDecodeError as e:
      yield (
        index,
        location,
        _BadRecord("malformed_json", f"{e.msg} at column {e.colno}"),
      )
      continue
    yield index, location, record


def read_jsonl_pairs(
  path: str,
  *,
  field_map: Mapping[str, str],
  transcripts: bool,
  policy: BadRecordPolicy,
  report: DataReport,
) -> list[TextPair | chat.ChatPair]:
  """Reads and validates a JSONL file (plain or gzip, detected by content).

  The example id of a record is its 0-based line index, so ids stay stable
  when other lines are skipped.

  Raises:
    DataError: missing, unreadable or empty file, a bad record under
      ``on_bad_record='error'``, or no usable record at all.
  """
  data = _read_bytes(path)
  pairs = pairs_from_records(
    _jsonl_records(path, data, report),
    field_map=field_map,
    transcripts=transcripts,
    policy=policy,
    report=report,
  )
  if report.num_records == 0:
    raise DataError(f"{path}: no records (the file is empty)")
  if not pairs:
    raise DataError(
      f"{path}: none of the {report.num_records} records is "
      f"usable: {report.summary()}"
    )
  return pairs


def _pair_hash(pair: TextPair | chat.ChatPair) -> bytes:
  parts = (pair.prompt, pair.chosen, pair.rejected)
  if isinstance(pair, chat.ChatPair):
    parts = [json.dumps(part, sort_keys=True) for part in parts]
  text = "\x00".join(parts)
  return hashlib.sha256(text.encode("utf-8")).digest()


def split_held_out(
  pairs: list[TextPair], eval_fraction: float, split: str
) -> tuple[list[TextPair], int]:
  """Splits held-out evaluation pairs off one source.

  The eval pairs are the ``round(eval_fraction * n)`` pairs (at least one)
  with the smallest content hash: the split does not depend on the training
  seed or the file order, a pair keeps its side when other lines are added,
  and exact duplicates land on the same side, so none leaks into eval.

  Returns:
    The pairs of ``split`` in source order, and how many went to the other.
  """
  if not 0.0 < eval_fraction < 1.0:
    raise DataError(
      f"data config: eval_fraction must be in (0, 1), got {eval_fraction}"
    )
  num_eval = max(1, round(eval_fraction * len(pairs)))
  if num_eval >= len(pairs):
    raise DataError(
      f"data config: eval_fraction={eval_fraction} of {len(pairs)} pairs "
      "leaves no training pairs"
    )
  ranked = sorted(range(len(pairs)), key=lambda i: _pair_hash(pairs[i]))
  eval_indices = set(ranked[:num_eval])
  want_eval = split == "eval"
  selected = [
    pair for i, pair in enumerate(pairs) if (i in eval_indices) == want_eval
  ]
  return selected, len(pairs) - len(selected)

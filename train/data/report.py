"""Data errors and the report of what was loaded, skipped and truncated.

Every record the pipeline reads ends up in exactly one place: loaded, or
skipped under a named reason (or, with ``on_bad_record='error'``, a
``DataError`` naming the file and line). Nothing is dropped without being
counted.
"""

from __future__ import annotations

import collections
import dataclasses

from train.errors import DataError  # noqa: F401  (raised here; re-exported)

# Reasons a record can be rejected, with what they mean. Stable names: they
# appear in reports and logs.
BAD_RECORD_REASONS = {
  "invalid_utf8": "the line or a field is not valid UTF-8",
  "malformed_json": "the line is not valid JSON",
  "not_an_object": "the line is JSON but not an object",
  "missing_field": "a required field is absent",
  "non_string_field": "a required field is not a string",
  "empty_response": "the chosen or rejected response is empty or blank",
  "identical_responses": "chosen and rejected are the same text",
  "no_assistant_turn": "an HH transcript has no '\\n\\nAssistant:' turn, or a response's messages do not start with an assistant turn",
  "prompt_mismatch": "an HH rejected transcript does not share the prompt",
  "bad_messages": "a conversation field is not a list of messages with string role and content",
  "template_error": "the chat template refused the messages (e.g. roles that do not alternate)",
  "template_prefix": "the conversation rendered with a response does not start with the rendered prompt",
  "identical_after_truncation": "chosen and rejected are the same tokens after truncation",
  "non_bool_label": "an unpaired record's label is not true or false",
}

ON_BAD_RECORD = ("error", "skip")


@dataclasses.dataclass
class DataReport:
  """What loading one split of a dataset did.

  Attributes:
    source: where the data came from (path, TFDS name or task name).
    split: 'train' or 'eval'.
    num_records: records read (blank lines not counted).
    num_loaded: pairs in the dataset.
    skipped: records skipped, by reason (see ``BAD_RECORD_REASONS``; the
      synthetic task adds 'tied_reward' for prompts whose two samples scored
      the same, which carry no preference).
    first_skipped: where the first record skipped for each reason was.
    num_held_out: pairs of the source assigned to the other split by
      ``eval_fraction``.
    num_blank_lines: whitespace-only lines, which are not records.
    num_truncated_prompts: pairs whose prompt was cut to ``max_prompt_length``.
    num_truncated_responses: pairs whose responses were cut to fit
      ``max_length``.
    num_retokenized: conversational responses tokenized on their own
      because tokenizing the whole conversation merged a token across the
      prompt's end (so the prompt's tokens were not a prefix).
    loaded_unit: 'pairs', or 'records' for KTO's unpaired records (pairs
      split in two count as two).
    num_desirable: KTO's records labelled desirable (None for pairs); TRL
      advises its weights from the two labels' counts.
    real_token_fraction: with ``data.packing``, the share of the packed
      batches' positions that hold real tokens, and the share the same
      batches would have unpacked (``packing.real_token_fractions``); None
      without packing.
  """

  source: str
  split: str
  num_records: int = 0
  num_loaded: int = 0
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)
  first_skipped: dict[str, str] = dataclasses.field(default_factory=dict)
  num_held_out: int = 0
  num_blank_lines: int = 0
  num_truncated_prompts: int = 0
  num_truncated_responses: int = 0
  num_retokenized: int = 0
  real_token_fraction: tuple[float, float] | None = None
  # What the loaded examples are: 'pairs', or KTO's unpaired 'records'.
  loaded_unit: str = "pairs"
  num_desirable: int | None = None
  # With data.share_prompt: the shared-prompt rows' real-token share (each
  # prompt once) and the share of positions they save against paired rows
  # of the same batches (shared_rows.position_shares).
  shared_prompt: tuple[float, float] | None = None

  @property
  def num_skipped(self) -> int:
    return sum(self.skipped.values())

  def summary(self) -> str:
    """One line for the log."""
    parts = [
      f"{self.split} data from {self.source}: {self.num_loaded}"
      f" {self.loaded_unit}"
    ]
    if self.num_desirable is not None:
      undesirable = self.num_loaded - self.num_desirable
      parts[0] += f" ({self.num_desirable} desirable, {undesirable} not)"
    parts.append(f"{self.num_records} records read")
    if self.num_held_out:
      parts.append(f"{self.num_held_out} held out for the other split")
    if self.skipped:
      reasons = ", ".join(
        f"{reason}={count} (first at {self.first_skipped[reason]})"
        for reason, count in sorted(self.skipped.items())
      )
      parts.append(f"{self.num_skipped} skipped [{reasons}]")
    if self.num_blank_lines:
      parts.append(f"{self.num_blank_lines} blank lines")
    parts.append(f"{self.num_truncated_prompts} prompts truncated")
    truncated = (
      "completions" if self.num_desirable is not None else ("response pairs")
    )
    parts.append(f"{self.num_truncated_responses} {truncated} truncated")
    if self.num_retokenized:
      parts.append(
        f"{self.num_retokenized} responses tokenized apart from the prompt"
      )
    if self.real_token_fraction is not None:
      packed, unpacked = self.real_token_fraction
      parts.append(
        f"packed rows {packed:.1%} real tokens (unpacked {unpacked:.1%})"
      )
    if self.shared_prompt is not None:
      real, saved = self.shared_prompt
      parts.append(
        f"shared-prompt rows {real:.1%} real tokens, {saved:.1%} fewer"
        " positions than paired rows"
      )
    return "; ".join(parts)


class BadRecordPolicy:
  """Applies ``on_bad_record`` to one bad record: raise, or count it."""

  def __init__(self, on_bad_record: str, report: DataReport):
    if on_bad_record not in ON_BAD_RECORD:
      raise DataError(
        f"data config: on_bad_record must be one of {ON_BAD_RECORD}, "
        f"got {on_bad_record!r}"
      )
    self._raise = on_bad_record == "error"
    self._report = report
    self._counts = collections.Counter(report.skipped)

  def bad(self, reason: str, location: str, detail: str = "") -> None:
    """Handles a bad record at ``location`` (e.g. 'data.jsonl:12')."""
    assert reason in BAD_RECORD_REASONS, reason
    if self._raise:
      message = f"{location}: {reason}: {detail or BAD_RECORD_REASONS[reason]}"
      raise DataError(
        message + " (on_bad_record='skip' skips and counts such records)"
      )
    self._counts[reason] += 1
    self._report.skipped = dict(self._counts)
    self._report.first_skipped.setdefault(reason, location)

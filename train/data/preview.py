"""Show the first pairs of a config's data exactly as training will see them.

  python -m train.data.preview --config configs/hh.py:FILE --num 3
  python -m train.data.preview --config configs/default.py \\
      --config.data.source=jsonl --config.data.train_path=pairs.jsonl \\
      --config.data.tokenizer=/path/to/model --format json

It loads the split the way ``train.main`` does (validation, chat template,
tokenization, truncation) and prints, for each of the first ``--num`` pairs,
the prompt, chosen and rejected text with the token boundaries marked, their
lengths, what truncation did and which tokens count in the loss, then the
load report. ``--format json`` prints one JSON object per pair instead
(``prompt_ids``, ``chosen_ids``, ``rejected_ids``: the response ids after the
prompt, as the loss sees them; the same as ``*_text`` and as ``*_tokens``, one
string per token), and the report on stderr.

With ``loss.name=kto`` the split is shown as KTO's unpaired records (read
from ``data.unpaired`` files, or each pair split in two): the prompt and
the completion, and the label.
"""

import json
import sys

from train.data import pipeline
from train.data import shared_rows
from train.data.encode import TokenizedPair
from train.data.unpaired import TokenizedRecord


def token_pieces(tokenizer, ids) -> list[str]:
  """Each token's own text, special tokens spelled out."""
  piece = getattr(tokenizer, "token_text", None)
  if piece is None:
    return [tokenizer.decode([int(i)]) for i in ids]
  return [piece(int(i)) for i in ids]


def _marked(pieces: list[str]) -> str:
  """Tokens between brackets, with line breaks and tabs made visible."""
  escape = lambda text: text.replace("\n", "\\n").replace("\t", "\\t")
  return "".join(f"[{escape(p)}]" for p in pieces)


def _bucket(length: int, buckets) -> int:
  return min((b for b in buckets if b >= length), default=max(buckets))


def pair_record(
  pair: TokenizedPair, tokenizer, buckets, share_prompt: bool = False
) -> dict:
  """One pair as the JSON preview prints it; with ``share_prompt`` also the
  positions of its shared-prompt segment (prompt, chosen, rejected)."""
  record = {
    "example_id": pair.example_id,
    "location": pair.location,
    "prompt_ids": pair.prompt.tolist(),
    "chosen_ids": pair.chosen.tolist(),
    "rejected_ids": pair.rejected.tolist(),
  }
  for role in ("prompt", "chosen", "rejected"):
    pieces = token_pieces(tokenizer, record[f"{role}_ids"])
    record[f"{role}_text"] = "".join(pieces)
    record[f"{role}_tokens"] = pieces
  record.update(
    prompt_truncated=pair.prompt_truncated,
    responses_truncated=pair.responses_truncated,
    chosen_length=len(pair.prompt) + len(pair.chosen),
    rejected_length=len(pair.prompt) + len(pair.rejected),
    padded_length=_bucket(pair.length, buckets),
  )
  if share_prompt:
    record["shared_prompt_positions"] = shared_rows.shared_span(pair)
    record["paired_positions"] = 2 * pair.length
  return record


def unpaired_record(record: TokenizedRecord, tokenizer, buckets) -> dict:
  """One unpaired record as the JSON preview prints it."""
  out = {
    "example_id": record.example_id,
    "location": record.location,
    "label": record.desirable,
    "pair_id": record.pair_id,
    "prompt_ids": record.prompt.tolist(),
    "completion_ids": record.completion.tolist(),
  }
  for role in ("prompt", "completion"):
    pieces = token_pieces(tokenizer, out[f"{role}_ids"])
    out[f"{role}_text"] = "".join(pieces)
    out[f"{role}_tokens"] = pieces
  out.update(
    prompt_truncated=record.prompt_truncated,
    completion_truncated=record.responses_truncated,
    length=record.length,
    padded_length=_bucket(record.length, buckets),
  )
  return out


def unpaired_text(index: int, total: int, record: dict) -> str:
  """One unpaired record as the text preview prints it."""
  where = f" at {record['location']}" if record["location"] else ""
  label = "desirable" if record["label"] else "undesirable"
  cut = []
  if record["prompt_truncated"]:
    cut.append("prompt cut to its end")
  if record["completion_truncated"]:
    cut.append("completion cut to max_length")
  lines = [
    f"record {index + 1} of {total}: example {record['example_id']}{where};"
    f" {label}; {record['length']} tokens, padded to"
    f" {record['padded_length']}; truncation: {', '.join(cut) or 'none'}",
  ]
  for role in ("prompt", "completion"):
    ids = record[f"{role}_ids"]
    loss = (
      "not in the loss" if role == "prompt" else f"all {len(ids)} in the loss"
    )
    lines.append(f"  {role}: {len(ids)} tokens, {loss}")
    lines.append("    " + _marked(record[f"{role}_tokens"]))
  return "\n".join(lines)


def pair_text(index: int, total: int, record: dict) -> str:
  """One pair as the text preview prints it."""
  where = f" at {record['location']}" if record["location"] else ""
  cut = []
  if record["prompt_truncated"]:
    cut.append("prompt cut to its end")
  if record["responses_truncated"]:
    cut.append("responses cut to max_length")
  lines = [
    f"pair {index + 1} of {total}: example {record['example_id']}{where};"
    f" sequences of {record['chosen_length']} (chosen) and"
    f" {record['rejected_length']} (rejected) tokens, padded to"
    f" {record['padded_length']}; truncation: {', '.join(cut) or 'none'}",
  ]
  if "shared_prompt_positions" in record:
    lines.append(
      f"  shared-prompt segment: prompt, chosen, rejected in"
      f" {record['shared_prompt_positions']} positions (paired rows:"
      f" {record['paired_positions']}); each response sees the prompt and"
      " itself, not the other"
    )
  for role in ("prompt", "chosen", "rejected"):
    ids = record[f"{role}_ids"]
    loss = (
      "not in the loss" if role == "prompt" else f"all {len(ids)} in the loss"
    )
    lines.append(f"  {role}: {len(ids)} tokens, {loss}")
    lines.append("    " + _marked(record[f"{role}_tokens"]))
  return "\n".join(lines)


def preview(config, num: int, output_format: str, split: str = "train"):
  """Prints the preview of ``config``'s data to stdout (the report last)."""
  tokenizer = pipeline.make_tokenizer(config.data, config.model.checkpoint)
  dataset = pipeline.load_dataset(
    config.data,
    tokenizer=tokenizer,
    split=split,
    unpaired=config.loss.name.strip() == "kto",
  )
  shown = dataset.pairs[:num]
  as_record, as_text = pair_record, pair_text
  if dataset.unpaired:
    as_record, as_text = unpaired_record, unpaired_text
  for index, pair in enumerate(shown):
    if dataset.unpaired:
      record = as_record(pair, tokenizer, dataset.length_buckets)
    else:
      record = pair_record(
        pair, tokenizer, dataset.length_buckets, dataset.share_prompt
      )
    if output_format == "json":
      print(json.dumps(record, ensure_ascii=False))
      continue
    print(as_text(index, len(dataset), record) + "\n")
  # With data.packing: the real-token share, packed and padded, as the run's
  # load report gives it (one host holding the whole batch).
  dataset.measure_packing(config.batch_size)
  report = dataset.report.summary()
  print(report, file=sys.stderr if output_format == "json" else sys.stdout)


if __name__ == "__main__":
  from train import cli

  cli.run("preview", sys.modules[__name__])

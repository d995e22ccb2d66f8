"""Preference records from Hugging Face dataset files: Parquet and Arrow.

Two layouts, both read with pyarrow alone (no ``datasets`` at run time):

* Parquet (source 'parquet'): one file, a glob of shards such as
  ``data/train-*.parquet`` (the Hub's layout), or a folder, whose ``*.parquet``
  files are read. Shards are read in sorted name order.
* Arrow (source 'arrow'): a folder written by ``Dataset.save_to_disk`` (Arrow
  IPC stream files listed in its ``state.json``), or by
  ``DatasetDict.save_to_disk`` (``dataset_dict.json`` and one such folder per
  split, chosen by name); or Arrow stream files directly (a file or a glob).

Files are streamed batch by batch, and only the top-level columns the field
map names are converted to Python, so a file much larger than memory can be
read into its pairs. Each row becomes one record, a dict of column values as
pyarrow gives them (a struct is a dict, a list of structs a list of dicts), so
records are validated exactly like JSONL records (``sources``). The example id
of a row is its index across all shards; its location is
``file:row N``, N counting from 0 within that file (as ``ds[N]`` and pandas
do).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping

import ml_collections
import pyarrow as pa
import pyarrow.parquet as pq

from train.data import sources
from train.data.report import BadRecordPolicy
from train.data.report import DataError
from train.data.report import DataReport
from train.data.validation import FIELD_ROLES

# Rows per Parquet read: bounds the memory of one batch of wide rows.
_BATCH_ROWS = 1024
# A folder holding a single Dataset is read as this split, so the default
# ``hf_split_train`` reads it and no other split name silently does.
_SINGLE_DATASET_SPLIT = "train"

Row = tuple[int, str, dict]


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
  """Turns a failure to open or decode ``path`` into a one-line DataError."""
  try:
    yield
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
    raise DataError(f"{path}: cannot read: {_first_line(error)}") from None


def _required_fields(
  field_map: Mapping[str, str], transcripts: bool
) -> list[tuple[str, str]]:
  """(role, field name) of each field a record must have."""
  roles = ("chosen", "rejected") if transcripts else FIELD_ROLES
  return [(role, field_map[role]) for role in roles]


def _top_level_columns(fields: Iterable[tuple[str, str]]) -> list[str]:
  return list(dict.fromkeys(field.split("/")[0] for _, field in fields))


def _fields_in(
  schema: pa.Schema, fields: list[tuple[str, str]]
) -> list[tuple[str, str]]:
  """``fields`` less the prompt where the file has conversations without one
  (the implicit-prompt layout: the prompt is the messages both sides share).
  """
  names = dict(fields)
  chosen_column = names["chosen"].split("/")[0]
  prompt_column = names.get("prompt", "").split("/")[0]
  if (
    prompt_column
    and prompt_column not in schema.names
    and chosen_column in schema.names
    and pa.types.is_list(schema.field(chosen_column).type)
  ):
    return [(role, field) for role, field in fields if role != "prompt"]
  return fields


def check_schema(
  path: str, schema: pa.Schema, fields: Iterable[tuple[str, str]]
) -> None:
  """Checks that every field exists in ``schema``, nested ones in structs.

  A field missing from the schema is missing from every row: one error for
  the file, not one bad record per row.

  Raises:
    DataError: naming the field and what the file has instead.
  """
  for role, field in fields:
    column, *inner = field.split("/")
    if column not in schema.names:
      raise DataError(
        f"{path}: no column {column!r} (field_map.{role}={field!r}); "
        f"columns: {', '.join(schema.names)}"
      )
    arrow_type = schema.field(column).type
    reached = column
    for key in inner:
      if not pa.types.is_struct(arrow_type):
        raise DataError(
          f"{path}: field_map.{role}={field!r}: column {reached!r} is "
          f"{arrow_type}, not a struct"
        )
      names = [child.name for child in arrow_type]
      if key not in names:
        raise DataError(
          f"{path}: field_map.{role}={field!r}: struct {reached!r} has no "
          f"field {key!r}; its fields: {', '.join(names)}"
        )
      arrow_type = arrow_type.field(names.index(key)).type
      reached = f"{reached}/{key}"


def _batch_rows(batch: pa.RecordBatch, columns: list[str]) -> list[dict]:
  values = [batch.column(name).to_pylist() for name in columns]
  return [dict(zip(columns, row)) for row in zip(*values)]


def matching_files(pattern: str, suffix: str) -> list[str]:
  """The files of ``pattern`` (a file, a glob or a folder), sorted by name."""
  if os.path.isdir(pattern):
    matches = glob.glob(os.path.join(glob.escape(pattern), f"*{suffix}"))
  elif any(char in pattern for char in "*?["):
    matches = glob.glob(pattern)
  else:
    return [pattern]  # Opening it says whether it exists.
  files = sorted(path for path in matches if os.path.isfile(path))
  if not files:
    raise DataError(f"{pattern}: no {suffix} file matches")
  return files


def parquet_rows(
  paths: Iterable[str], fields: Iterable[tuple[str, str]] | None = None
) -> Iterator[Row]:
  """The rows of Parquet files, in order, as ``(example_id, location, row)``.

  Args:
    paths: the files, read in this order.
    fields: ``(role, field name)`` pairs: only their top-level columns are
      read, and each file is checked to have them. None reads every column.
  """
  fields = None if fields is None else list(fields)
  example_id = 0
  for path in paths:
    with _reading(path):
      file = pq.ParquetFile(path)
      schema = file.schema_arrow
      if fields is None:
        columns = list(schema.names)
      else:
        present = _fields_in(schema, fields)
        check_schema(path, schema, present)
        columns = _top_level_columns(present)
      row = 0
      for batch in file.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
        for record in _batch_rows(batch, columns):
          yield example_id, f"{path}:row {row}", record
          example_id += 1
          row += 1


def arrow_rows(
  paths: Iterable[str], fields: Iterable[tuple[str, str]] | None = None
) -> Iterator[Row]:
  """The rows of Arrow IPC stream files (what ``datasets`` writes).

  Same arguments and rows as ``parquet_rows``. The files are memory-mapped,
  so a batch is decoded from the page cache without copying the file.
  """
  fields = None if fields is None else list(fields)
  example_id = 0
  for path in paths:
    with _reading(path), pa.memory_map(path) as mapped:
      reader = pa.ipc.open_stream(mapped)
      if fields is None:
        columns = list(reader.schema.names)
      else:
        present = _fields_in(reader.schema, fields)
        check_schema(path, reader.schema, present)
        columns = _top_level_columns(present)
      row = 0
      for batch in reader:
        for record in _batch_rows(batch, columns):
          yield example_id, f"{path}:row {row}", record
          example_id += 1
          row += 1


def _read_json(path: str) -> dict:
  with _reading(path), open(path, encoding="utf-8") as file:
    try:
      content = json.load(file)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}: not valid JSON: {e}") from None
  if not isinstance(content, dict):
    raise DataError(f"{path}: not a JSON object")
  return content


def _dataset_folder_files(folder: str) -> list[str]:
  """The Arrow files of a ``Dataset.save_to_disk`` folder, in order."""
  state_path = os.path.join(folder, "state.json")
  state = _read_json(state_path)
  # Old versions of ``datasets`` could save an indices mapping that reorders
  # or filters the rows; reading the data files alone would ignore it.
  if state.get("_indices_data_files"):
    raise DataError(
      f"{state_path}: the dataset has an indices mapping; save it again "
      "after dataset.flatten_indices()"
    )
  try:
    names = [entry["filename"] for entry in state["_data_files"]]
  except (KeyError, TypeError):
    raise DataError(f"{state_path}: no list of '_data_files'") from None
  if not names:
    raise DataError(f"{state_path}: lists no data files")
  return [os.path.join(folder, name) for name in names]


def arrow_split_files(path: str, split_name: str) -> tuple[str, list[str]]:
  """Finds the Arrow files of one split.

  Args:
    path: a ``save_to_disk`` folder (of a Dataset or a DatasetDict), an Arrow
      file, or a glob of Arrow files.
    split_name: the split of a DatasetDict folder. Anything else is one
      split, read for '' or 'train' and refused for another name.

  Returns:
    Where the split is (the split's folder for a DatasetDict), and its files.
  """
  dict_path = os.path.join(path, "dataset_dict.json")
  if os.path.isdir(path) and os.path.exists(dict_path):
    splits = _read_json(dict_path).get("splits")
    if not isinstance(splits, list):
      raise DataError(f"{dict_path}: no list of 'splits'")
    if not split_name:
      raise DataError(
        f"{path}: a DatasetDict of splits {splits}; choose one with "
        "data.hf_split_train or data.hf_split_eval"
      )
    if split_name not in splits:
      raise DataError(f"{path}: no split {split_name!r}; splits: {splits}")
    folder = os.path.join(path, split_name)
    return folder, _dataset_folder_files(folder)
  if split_name not in ("", _SINGLE_DATASET_SPLIT):
    raise DataError(
      f"{path}: one dataset (no dataset_dict.json), read as split "
      f"{_SINGLE_DATASET_SPLIT!r}; split {split_name!r} needs a DatasetDict "
      "folder"
    )
  if not os.path.isdir(path):
    return path, matching_files(path, ".arrow")
  if not os.path.exists(os.path.join(path, "state.json")):
    raise DataError(
      f"{path}: not a save_to_disk folder (no state.json or dataset_dict.json)"
    )
  return path, _dataset_folder_files(path)


def _validated_pairs(
  rows: Iterable[Row],
  where: str,
  *,
  field_map: Mapping[str, str],
  transcripts: bool,
  policy: BadRecordPolicy,
  report: DataReport,
) -> list[sources.TextPair]:
  pairs = sources.pairs_from_records(
    rows,
    field_map=field_map,
    transcripts=transcripts,
    policy=policy,
    report=report,
  )
  if report.num_records == 0:
    raise DataError(f"{where}: no records (no rows)")
  if not pairs:
    raise DataError(
      f"{where}: none of the {report.num_records} records is usable: "
      f"{report.summary()}"
    )
  return pairs


def read_parquet_pairs(
  path: str,
  *,
  field_map: Mapping[str, str],
  transcripts: bool,
  policy: BadRecordPolicy,
  report: DataReport,
) -> list[sources.TextPair]:
  """Reads and validates the pairs of Parquet files.

  Args:
    path: a Parquet file, a glob of shards, or a folder of ``*.parquet``.
    field_map: record field names, as for JSONL ('a/b' for struct fields).
    transcripts: the records hold HH transcripts (see ``sources``).
    policy: what a bad record does.
    report: counts what was read and skipped.

  Raises:
    DataError: nothing matches, a file cannot be read or lacks a column, a
      bad record under ``on_bad_record='error'``, or no usable record.
  """
  fields = _required_fields(field_map, transcripts)
  rows = parquet_rows(matching_files(path, ".parquet"), fields)
  return _validated_pairs(
    rows,
    path,
    field_map=field_map,
    transcripts=transcripts,
    policy=policy,
    report=report,
  )


def read_arrow_pairs(
  path: str,
  *,
  split_name: str,
  field_map: Mapping[str, str],
  transcripts: bool,
  policy: BadRecordPolicy,
  report: DataReport,
) -> list[sources.TextPair]:
  """Reads and validates one split of a ``save_to_disk`` folder.

  ``path`` and ``split_name`` are as in ``arrow_split_files``; the rest and
  the errors as in ``read_parquet_pairs``. ``report.source`` becomes the
  folder actually read (the split's, for a DatasetDict).
  """
  where, files = arrow_split_files(path, split_name)
  report.source = where
  fields = _required_fields(field_map, transcripts)
  return _validated_pairs(
    arrow_rows(files, fields),
    where,
    field_map=field_map,
    transcripts=transcripts,
    policy=policy,
    report=report,
  )


def has_own_eval(config: ml_collections.ConfigDict) -> bool:
  """Whether evaluation pairs come from their own file or split."""
  if config.source == "arrow" and config.hf_split_eval:
    return True
  return bool(config.eval_path)


def read_config_pairs(
  config: ml_collections.ConfigDict,
  split: str,
  *,
  policy: BadRecordPolicy,
  report: DataReport,
) -> list[sources.TextPair]:
  """Reads the pairs of ``split`` from the files the data config names.

  Evaluation pairs come from ``eval_path`` when set, else (for an eval
  split of a DatasetDict, ``hf_split_eval``) from ``train_path``; without
  either, the training pairs are read and the caller holds some out.
  """
  own_eval = split == "eval" and has_own_eval(config)
  path = config.train_path
  if own_eval and config.eval_path:
    path = config.eval_path
  # As for TFDS: no prompt field means the records hold HH transcripts.
  transcripts = not config.field_map.prompt
  common = dict(
    field_map=config.field_map,
    transcripts=transcripts,
    policy=policy,
    report=report,
  )
  if config.source == "parquet":
    return read_parquet_pairs(path, **common)
  split_name = config.hf_split_eval if own_eval else config.hf_split_train
  return read_arrow_pairs(path, split_name=split_name, **common)

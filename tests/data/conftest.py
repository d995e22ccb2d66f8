"""Fixtures for the data pipeline tests: small JSONL files and configs."""

import gzip
import json
import pathlib

import pytest

from train import config_schema


def pair_record(i: int) -> dict:
  """A valid explicit record whose texts differ per index."""
  return {
    "prompt": f"Question {i}: what is {i} plus {i}?",
    "chosen": f" It is {2 * i}.",
    "rejected": f" It is {2 * i + 1}, I think." + " really" * (i % 7),
  }


def write_lines(path: pathlib.Path, lines) -> pathlib.Path:
  """Writes records (dicts are JSON-encoded; str and bytes as given)."""
  out = []
  for line in lines:
    if isinstance(line, dict):
      line = json.dumps(line)
    if isinstance(line, str):
      line = line.encode("utf-8")
    out.append(line)
  payload = b"\n".join(out) + b"\n"
  if path.suffix == ".gz":
    payload = gzip.compress(payload)
  path.write_bytes(payload)
  return path


@pytest.fixture
def jsonl_file(tmp_path):
  """A JSONL file of 40 valid explicit pairs."""
  return write_lines(
    tmp_path / "pairs.jsonl", [pair_record(i) for i in range(40)]
  )


@pytest.fixture
def jsonl_config(jsonl_file):
  config = config_schema.data_defaults()
  config.source = "jsonl"
  config.train_path = str(jsonl_file)
  config.max_length = 128
  config.max_prompt_length = 64
  config.length_buckets = [32, 64, 128]
  return config


@pytest.fixture(name="write_jsonl")
def write_jsonl_fixture():
  """``write_jsonl(path, lines)``: see ``write_lines``."""
  return write_lines


@pytest.fixture(name="pair_record")
def pair_record_fixture():
  """``pair_record(i)``: a valid explicit record."""
  return pair_record

"""TFDS: building local preference files offline and reading them back.

Building and reading use TFDS's ArrayRecord data source, which needs no
TensorFlow; ``tfds.load`` (a ``tf.data`` pipeline) would, and is not used.
"""

import pytest

from train import config_schema
from train import data

tfds = pytest.importorskip("tensorflow_datasets")
tfds_builder = pytest.importorskip("train.data.tfds_builder")


def test_local_jsonl_builder_matches_the_jsonl_source(
  jsonl_config, tmp_path, write_jsonl, pair_record
):
  eval_path = write_jsonl(
    tmp_path / "eval.jsonl", [pair_record(100 + i) for i in range(5)]
  )
  data_dir = str(tmp_path / "tfds")
  builder = tfds_builder.prepare_local_preferences(
    "pairs",
    train_path=jsonl_config.train_path,
    eval_path=str(eval_path),
    data_dir=data_dir,
  )
  assert builder.info.splits["train"].num_examples == 40
  assert builder.info.splits["eval"].num_examples == 5

  # Plain TFDS reads it back by name, offline.
  again = tfds.builder("local_preferences/pairs", data_dir=data_dir)
  record = again.as_data_source()["eval"][0]
  assert set(record) == {"prompt", "chosen", "rejected", "example_id"}
  source = tfds.data_source(
    "local_preferences/pairs", split="train", data_dir=data_dir
  )
  assert len(source) == 40

  # The pipeline reads the same pairs as from the file, with the same ids.
  tok = data.ByteTokenizer()
  from_file = data.load_dataset(jsonl_config, tokenizer=tok, split="train")
  jsonl_config.eval_path = str(eval_path)
  from_file_eval = data.load_dataset(jsonl_config, tokenizer=tok, split="eval")
  jsonl_config.source = "tfds"
  jsonl_config.tfds_name = "local_preferences/pairs"
  jsonl_config.tfds_data_dir = data_dir
  jsonl_config.tfds_split_eval = "eval"
  from_tfds = data.load_dataset(jsonl_config, tokenizer=tok, split="train")
  assert from_tfds.fingerprint == from_file.fingerprint
  from_tfds_eval = data.load_dataset(jsonl_config, tokenizer=tok, split="eval")
  assert from_tfds_eval.fingerprint == from_file_eval.fingerprint


def test_hh_builder_records_what_it_skipped(hh_rlhf_path, tmp_path):
  builder = tfds_builder.prepare_local_preferences(
    "hh",
    train_path=str(hh_rlhf_path),
    transcripts=True,
    on_bad_record="skip",
    data_dir=str(tmp_path),
  )
  assert builder.info.splits["train"].num_examples == 2304
  stored = tfds.builder("local_preferences/hh", data_dir=str(tmp_path))
  assert stored.info.metadata["train"]["skipped"] == {
    "prompt_mismatch": 4,
    "empty_response": 4,
  }
  record = stored.as_data_source()["train"][0]
  assert record["prompt"].endswith(b"\n\nAssistant:")


def test_builder_stops_on_a_bad_record(tmp_path, write_jsonl, pair_record):
  path = write_jsonl(tmp_path / "b.jsonl", [pair_record(0), "{oops"])
  with pytest.raises(data.DataError, match="b.jsonl:2: malformed_json"):
    tfds_builder.prepare_local_preferences(
      "bad", train_path=str(path), data_dir=str(tmp_path / "tfds")
    )


class CatalogStylePreferences(tfds.core.GeneratorBasedBuilder):
  """Stands in for a catalog dataset: other feature names, nested features."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    # Not ``dataset_info_from_configs``, which looks for metadata files next to
    # the builder's package; a test module is not in one.
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "question": tfds.features.Text(),
          "answers": {
            "good": tfds.features.Text(),
            "bad": tfds.features.Text(),
          },
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(6):
      yield (
        i,
        {
          "question": f"q{i}",
          "answers": {"good": f"yes {i}", "bad": f"no {i}"},
        },
      )


def test_catalog_style_dataset_through_field_map(tmp_path):
  CatalogStylePreferences(
    data_dir=str(tmp_path), file_format="array_record"
  ).download_and_prepare()
  config = config_schema.data_defaults()
  config.source = "tfds"
  config.tfds_name = "catalog_style_preferences"
  config.tfds_data_dir = str(tmp_path)
  config.field_map = dict(
    prompt="question", chosen="answers/good", rejected="answers/bad"
  )
  config.eval_fraction = 0.5
  tok = data.ByteTokenizer()
  held = data.load_dataset(config, tokenizer=tok, split="eval")
  assert len(held) == 3 and held.report.num_held_out == 3
  train = data.load_dataset(config, tokenizer=tok, split="train")
  texts = {
    tok.decode(p.prompt): (tok.decode(p.chosen), tok.decode(p.rejected))
    for p in train.pairs + held.pairs
  }
  assert texts == {f"q{i}": (f"yes {i}", f"no {i}") for i in range(6)}


def test_missing_tfds_dataset(tmp_path):
  config = config_schema.data_defaults()
  config.source = "tfds"
  config.tfds_name = "local_preferences/absent"
  config.tfds_data_dir = str(tmp_path)
  with pytest.raises(data.DataError, match="cannot open"):
    data.load_dataset(config, tokenizer=data.ByteTokenizer(), split="train")


def test_command_line(jsonl_file, tmp_path, capsys):
  tfds_builder.main(
    ["--name=cli", f"--train_path={jsonl_file}", f"--data_dir={tmp_path}"]
  )
  out = capsys.readouterr().out
  assert "local_preferences/cli train: 40 pairs" in out
  with pytest.raises(SystemExit, match="file not found"):
    tfds_builder.main(
      [
        "--name=cli2",
        f"--train_path={tmp_path}/none.jsonl",
        f"--data_dir={tmp_path}",
      ]
    )

"""TFDS: a builder for local preference files, and reading TFDS datasets.

``LocalPreferences`` turns JSONL files (explicit or HH transcripts) into a TFDS
dataset in ArrayRecord format, offline and without TensorFlow::

  python -m train.data.tfds_builder --name=hh_harmless \\
      --train_path=train.jsonl.gz --eval_path=test.jsonl.gz --hh \\
      --on_bad_record=skip --data_dir=/data/tfds

then ``tfds.builder('local_preferences/hh_harmless', data_dir=...)`` or
``tfds.data_source(...)`` reads it, and the training program uses it with
``data.source='tfds'``, ``data.tfds_name='local_preferences/hh_harmless'``,
``data.tfds_data_dir='/data/tfds'``. Records are validated while building, with
the same rules as the JSONL source; what was skipped is stored in the
dataset's metadata. ``tfds.load`` itself returns a ``tf.data.Dataset`` and so
needs TensorFlow; the random-access data source does not.

Catalog datasets are read through ``data.field_map`` (their prompt, chosen and
rejected feature names; 'a/b' for nested features). They must be prepared
beforehand: the training program never downloads.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import sys
from collections.abc import Mapping

import ml_collections
import numpy as np

# tensorflow-datasets 4.9 imports the ``importlib_resources`` backport when a
# builder locates its code; on Python >= 3.9 the standard library module is
# the same API, so alias it when the backport is not installed.
try:
  import importlib_resources  # noqa: F401
except ImportError:
  sys.modules["importlib_resources"] = importlib.resources

import tensorflow_datasets as tfds

from train.data import sources
from train.data.report import BadRecordPolicy
from train.data.report import DataError
from train.data.report import DataReport

BUILDER_NAME = "local_preferences"
_READ_CHUNK = 1024


@dataclasses.dataclass(eq=False)
class LocalPreferencesConfig(tfds.core.BuilderConfig):
  """Which local files to build from, and how to read them.

  Attributes:
    train_path: JSONL file (plain or gzip) of the 'train' split.
    eval_path: JSONL file of the 'eval' split; '' for none.
    transcripts: records hold HH transcripts (prompt split off as in the
      'hh' source) rather than explicit prompt/chosen/rejected fields.
    prompt_field: name of the prompt field (explicit records only).
    chosen_field: name of the chosen field (or transcript).
    rejected_field: name of the rejected field (or transcript).
    on_bad_record: 'error' or 'skip', as in the data config.
  """

  train_path: str = ""
  eval_path: str = ""
  transcripts: bool = False
  prompt_field: str = "prompt"
  chosen_field: str = "chosen"
  rejected_field: str = "rejected"
  on_bad_record: str = "error"


class LocalPreferences(tfds.core.GeneratorBasedBuilder):
  """Preference pairs from local JSONL files.

  Features: ``prompt``, ``chosen``, ``rejected`` (text; for transcripts, the
  prompt and the two responses after splitting) and ``example_id`` (the
  record's 0-based line in its file).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIG_CLASS = LocalPreferencesConfig

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description="Preference pairs (prompt, chosen, rejected) read from "
      "local JSONL files.",
      features=tfds.features.FeaturesDict(
        {
          "prompt": tfds.features.Text(),
          "chosen": tfds.features.Text(),
          "rejected": tfds.features.Text(),
          "example_id": np.int64,
        }
      ),
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only; nothing is downloaded.
    config = self.builder_config
    if not config.train_path:
      raise DataError(f"{BUILDER_NAME}/{config.name}: no train_path")
    splits = {"train": self._generate_examples(config.train_path, "train")}
    if config.eval_path:
      splits["eval"] = self._generate_examples(config.eval_path, "eval")
    return splits

  def _generate_examples(self, path: str, split: str):
    config = self.builder_config
    report = DataReport(source=path, split=split)
    field_map = dict(
      prompt=config.prompt_field,
      chosen=config.chosen_field,
      rejected=config.rejected_field,
    )
    pairs = sources.read_jsonl_pairs(
      path,
      field_map=field_map,
      transcripts=config.transcripts,
      policy=BadRecordPolicy(config.on_bad_record, report),
      report=report,
    )
    report.num_loaded = len(pairs)
    # Kept with the dataset, so users of the built data can see what was
    # skipped from the files.
    self.info.metadata[split] = dataclasses.asdict(report)
    for pair in pairs:
      yield (
        pair.example_id,
        dict(
          prompt=pair.prompt,
          chosen=pair.chosen,
          rejected=pair.rejected,
          example_id=pair.example_id,
        ),
      )


def prepare_local_preferences(
  name: str,
  *,
  train_path: str,
  eval_path: str = "",
  transcripts: bool = False,
  field_map: Mapping[str, str] | None = None,
  on_bad_record: str = "error",
  data_dir: str | None = None,
) -> tfds.core.DatasetBuilder:
  """Builds ``local_preferences/<name>`` from local files and returns it.

  Building is skipped when the dataset already exists in ``data_dir``.
  """
  field_map = dict(field_map or {})
  config = LocalPreferencesConfig(
    name=name,
    train_path=str(train_path),
    eval_path=str(eval_path),
    transcripts=transcripts,
    on_bad_record=on_bad_record,
    prompt_field=field_map.get("prompt", "prompt"),
    chosen_field=field_map.get("chosen", "chosen"),
    rejected_field=field_map.get("rejected", "rejected"),
  )
  builder = tfds.builder(
    BUILDER_NAME, config=config, data_dir=data_dir, file_format="array_record"
  )
  builder.download_and_prepare()
  return builder


def read_tfds_pairs(
  config: ml_collections.ConfigDict,
  split_name: str,
  *,
  policy: BadRecordPolicy,
  report: DataReport,
) -> list[sources.TextPair]:
  """Reads and validates one split of a prepared TFDS dataset.

  The example id is the record's ``example_id`` feature when it has one (as
  ``local_preferences`` datasets do), else its index in the split.

  Raises:
    DataError: the dataset or split cannot be opened, or a bad record under
      ``on_bad_record='error'``.
  """
  name = config.tfds_name
  try:
    source = tfds.data_source(
      name,
      split=split_name,
      data_dir=config.tfds_data_dir or None,
      download=False,
    )
  except Exception as e:  # TFDS raises many types; all mean "cannot open".
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DataError(
      f"tfds {name!r} split {split_name!r}: cannot open "
      f"(prepare it first; the program does not download): "
      f"{message}"
    ) from None

  def records():
    for start in range(0, len(source), _READ_CHUNK):
      indices = list(range(start, min(start + _READ_CHUNK, len(source))))
      for index, record in zip(indices, source.__getitems__(indices)):
        example_id = int(record.get("example_id", index))
        yield example_id, f"{name}/{split_name}[{index}]", record

  pairs = sources.pairs_from_records(
    records(),
    field_map=config.field_map,
    transcripts=not config.field_map.prompt,
    policy=policy,
    report=report,
  )
  if not pairs:
    raise DataError(
      f"tfds {name!r} split {split_name!r}: no usable records: "
      f"{report.summary()}"
    )
  # ArrayRecord files hold examples in TFDS's hashed order; source order is
  # easier to reason about (evaluation output, reproducing a pair).
  return sorted(pairs, key=lambda pair: pair.example_id)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description="Build a TFDS dataset from local preference JSONL files."
  )
  parser.add_argument(
    "--name",
    required=True,
    help="config name: the dataset is local_preferences/<name>",
  )
  parser.add_argument("--train_path", required=True)
  parser.add_argument("--eval_path", default="")
  parser.add_argument(
    "--hh",
    action="store_true",
    help="records hold HH-RLHF chosen/rejected transcripts",
  )
  parser.add_argument("--prompt_field", default="prompt")
  parser.add_argument("--chosen_field", default="chosen")
  parser.add_argument("--rejected_field", default="rejected")
  parser.add_argument(
    "--on_bad_record", default="error", choices=("error", "skip")
  )
  parser.add_argument("--data_dir", default=None)
  args = parser.parse_args(argv)
  try:
    builder = prepare_local_preferences(
      args.name,
      train_path=args.train_path,
      eval_path=args.eval_path,
      transcripts=args.hh,
      on_bad_record=args.on_bad_record,
      data_dir=args.data_dir,
      field_map=dict(
        prompt=args.prompt_field,
        chosen=args.chosen_field,
        rejected=args.rejected_field,
      ),
    )
  except DataError as e:
    sys.exit(f"error: {e}")
  for split, info in builder.info.splits.items():
    print(f"{BUILDER_NAME}/{args.name} {split}: {info.num_examples} pairs")
  for split, report in builder.info.metadata.items():
    print(f"{split} skipped: {report['skipped'] or 'none'}")
  print(f"data_dir: {builder.data_dir}")


if __name__ == "__main__":
  main()

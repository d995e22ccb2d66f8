"""The command shells: every ``python -m train.<command>``'s flags and main.

  python -m train.main     # train (train/main.py)
  python -m train.aot      # compile a step for a Cloud TPU topology
  python -m train.export   # a checkpoint as a Hugging Face or PEFT folder
  python -m train.sample   # completions from a checkpoint
  python -m train.evaluate # a run's checkpoints judged by their samples
  python -m train.data.preview   # a config's first pairs, as training sees them

Each command's module holds its work as plain functions, importable without
absl, and ends with ``cli.run(NAME, sys.modules[__name__])``; here are only
the flags, the one-line errors (``error: ...`` on stderr, exit code 2) and
the calls into that module. A command's module docstring is its ``--help``.
This module imports none of the command modules: they call it.
"""

import ast
import functools
import json
import sys
import threading

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from train import distributed
from train import errors
from train import stopping


def fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def one_line(error: BaseException) -> str:
  text = str(error)
  if isinstance(error, (AttributeError, KeyError)):
    # ml_collections reports a misspelt key as the repr of a two-line message.
    try:
      text = ast.literal_eval(text)
    except (SyntaxError, ValueError):
      pass
    text = f"no config key {text}"
  elif isinstance(error, OSError):
    # The last line of ml_collections' report says why the file did not load.
    text = f"cannot load the --config file: {text.strip().splitlines()[-1]}"
  return " ".join(text.split())


_HELP = ("-h", "-help", "--help", "--helpshort", "-?")

KEYS = (
  "Every config key, with its default and what it does, is in"
  " train/config_schema.py; configs/*.py are ready-made"
  " configs. Override any key with --config.<section>.<key>=<value>."
)


def parse_flags(argv: list[str], usage: str = "") -> list[str]:
  """absl's flag parsing, with every mistake reported as one line.

  ``--help`` prints ``usage``, the flags and where the config keys are
  documented, and exits 0.
  """
  if any(arg in _HELP for arg in argv[1:]):
    print(usage.strip() + "\n")
    # The flags the command defines (all here, in this module), not absl's.
    for flag in flags.FLAGS.get_key_flags_for_module(__name__):
      print(f"  --{flag.name}: {flag.help}")
    if "config" in flags.FLAGS:
      print("\n" + KEYS)
    sys.exit(0)
  try:
    remaining = flags.FLAGS(argv)
    if "config" in flags.FLAGS:  # Not every command reads a config file.
      flags.FLAGS.config.to_dict()  # One that fails to load fails here.
  except (
    flags.Error,
    AttributeError,
    KeyError,
    TypeError,
    ValueError,
    OSError,
  ) as error:
    fail(one_line(error))
  return remaining


def _config_flag() -> None:
  config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True
  )


def _quiet_library_logs() -> None:
  # Library INFO logs (checkpoint internals) would bury the progress bar or
  # the output; pass -v 0 to see them.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


# train.main -----------------------------------------------------------------


def _train_flags() -> None:
  flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics and caches go."
  )
  _config_flag()
  flags.mark_flags_as_required(["config", "workdir"])


def _train(work, argv) -> None:
  del argv
  _quiet_library_logs()
  config = flags.FLAGS.config
  distributed.initialize(config.distributed)
  distributed.log_devices()
  try:
    result = work.train_and_evaluate(config, flags.FLAGS.workdir)
  except stopping.Stopped as stopped:
    # A signal before training proper (the reference fit): what was saved
    # is in the message; the same command continues.
    print(stopped, file=sys.stderr, flush=True)
    sys.exit(stopped.exit_code)
  except errors.USER_ERRORS as error:
    # Errors the user can fix by changing the config or data: one line, no
    # traceback (and not repeated by an absl log line).
    if isinstance(error, errors.DiskFullError):
      _quiet_exit_flushes()
    fail(str(error))
  except Exception as error:
    # A full disk is the user's to fix too; any other error is a bug and
    # keeps its traceback.
    message = errors.disk_full(error)
    if message is None:
      raise
    _quiet_exit_flushes()
    fail(message)
  if result.stopped_by is not None:
    sys.exit(stopping.EXIT_CODES[result.stopped_by])


def _quiet_exit_flushes() -> None:
  # Writers that flush in their own thread or at exit (TensorBoard's) fail
  # on the full disk too; the one line above says why.
  sys.unraisablehook = lambda unraisable: None
  threading.excepthook = lambda args: None


# train.aot ------------------------------------------------------------------


def _aot_flags() -> None:
  _config_flag()
  flags.DEFINE_string(
    "topology", None, "Cloud TPU topology, e.g. v5p:4x4x2 or v5e:2x4."
  )
  flags.DEFINE_integer("num_slices", 1, "Slices of that topology (DCN).")
  flags.DEFINE_bool("json", False, "Print one JSON object.")
  flags.DEFINE_integer(
    "packed_rows",
    0,
    "With data.packing: rows per side of the global batch (the pipeline's"
    " count follows the data); 0 = batch_size, the most it builds.",
  )
  flags.DEFINE_integer(
    "packed_slots", 8, "With data.packing: pair slots per packed row."
  )
  flags.mark_flags_as_required(["config", "topology"])


def _aot(aot, argv) -> None:
  del argv
  values = flags.FLAGS
  try:
    layout = aot.PackedLayout(values.packed_rows, values.packed_slots)
    figures = aot.analyse(
      values.config, values.topology, values.num_slices, layout
    )
  except errors.USER_ERRORS as error:
    fail(str(error))
  except ValueError as error:
    fail(" ".join(str(error).split()))
  print(json.dumps(figures) if values.json else aot.report(figures))


# train.export ---------------------------------------------------------------


def _export_flags() -> None:
  flags.DEFINE_string("workdir", None, "The training run's workdir.")
  flags.DEFINE_integer("step", None, "The checkpoint's step; default latest.")
  flags.DEFINE_string("out", None, "The folder to write; new or empty.")
  flags.DEFINE_string(
    "dtype", None, "float32 or bfloat16; default the run's export.dtype."
  )
  flags.DEFINE_string(
    "format",
    "hf",
    "hf: a transformers folder (a LoRA run's merged policy). merged: the"
    " same, LoRA runs only. peft: a LoRA run's adapters as a PEFT folder.",
  )
  flags.mark_flags_as_required(["workdir", "out"])


def _export(export, argv) -> None:
  del argv
  _quiet_library_logs()
  values = flags.FLAGS
  try:
    export.export_checkpoint(
      values.workdir,
      values.out,
      step=values.step,
      dtype=values.dtype,
      format_name=values.format,
    )
  except errors.USER_ERRORS as error:
    fail(" ".join(str(error).split()))


# train.sample ---------------------------------------------------------------


def _sample_flags() -> None:
  flags.DEFINE_string("workdir", None, "The training run's workdir.")
  flags.DEFINE_string("prompt", None, "One user turn's text.")
  flags.DEFINE_string(
    "messages", None, 'A JSON file: a list of {"role", "content"} messages.'
  )
  flags.DEFINE_bool(
    "reference", False, "Sample the reference model, not the policy."
  )
  flags.DEFINE_integer("step", None, "The checkpoint's step; default latest.")
  flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 = greedy.")
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling's mass; 1 = off.")
  flags.DEFINE_integer("max_new_tokens", 128, "Most tokens per completion.")
  flags.DEFINE_integer("num_samples", 1, "Completions of the prompt.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.mark_flags_as_required(["workdir"])


def _sample(sample, argv) -> None:
  del argv
  _quiet_library_logs()
  values = flags.FLAGS
  try:
    messages = None
    if values.messages is not None:
      messages = sample.read_messages(values.messages)
    completions = sample.sample(
      values.workdir,
      prompt=values.prompt,
      messages=messages,
      reference=values.reference,
      step=values.step,
      temperature=values.temperature,
      top_p=values.top_p,
      max_new_tokens=values.max_new_tokens,
      num_samples=values.num_samples,
      seed=values.seed,
    )
  except errors.USER_ERRORS as error:
    fail(" ".join(str(error).split()))
  count = len(completions.texts)
  for index, text in enumerate(completions.texts):
    if count > 1:
      print(f"--- sample {index + 1} of {count} ---")
    print(text, flush=True)


# train.evaluate -------------------------------------------------------------


def _evaluate_flags() -> None:
  flags.DEFINE_string("workdir", None, "The training run's workdir.")
  flags.DEFINE_string(
    "against",
    None,
    "Another run's workdir: its latest policy is the baseline of the win"
    " rate, instead of the run's reference.",
  )
  flags.DEFINE_bool(
    "reference", True, "The baseline is the run's reference (the default)."
  )
  flags.DEFINE_string(
    "reward_model",
    None,
    "A one-label *ForSequenceClassification folder (with its tokenizer)"
    " that scores the samples too.",
  )
  flags.DEFINE_string("steps", "all", "'all' checkpoints, or one step.")
  flags.DEFINE_integer("num_prompts", 64, "Held-out prompts sampled.")
  flags.DEFINE_string(
    "prompts",
    None,
    'JSON lines of {"prompt": TEXT} or {"messages": [...]}, instead of the'
    " run's held-out prompts.",
  )
  flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 = greedy.")
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling's mass; 1 = off.")
  flags.DEFINE_integer(
    "max_new_tokens", 0, "Most tokens per response; 0 = eval.max_new_tokens."
  )
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("out", None, "Write the JSON here instead of stdout.")
  flags.DEFINE_string(
    "samples_out", None, "Write every scored sample here, as JSON lines."
  )
  flags.DEFINE_string(
    "figure", None, "Write a PNG of reward against KL across checkpoints."
  )
  flags.mark_flags_as_required(["workdir"])


def _evaluate(evaluate, argv) -> None:
  del argv
  _quiet_library_logs()
  values = flags.FLAGS
  if values.against is not None and values["reference"].present:
    fail("give one of --against WORKDIR and --reference")
  try:
    report = evaluate.evaluate(
      values.workdir,
      against=values.against,
      reward_model=values.reward_model,
      steps=values.steps,
      num_prompts=values.num_prompts,
      prompts_file=values.prompts,
      temperature=values.temperature,
      top_p=values.top_p,
      max_new_tokens=values.max_new_tokens,
      seed=values.seed,
      samples_out=values.samples_out,
      figure=values.figure,
    )
  except errors.USER_ERRORS as error:
    fail(" ".join(str(error).split()))
  text = json.dumps(report, indent=1)
  if values.out is None:
    print(text, flush=True)
    return
  try:
    with open(values.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  except OSError as error:
    fail(f"--out {values.out}: cannot write: {error}")


# train.data.preview ---------------------------------------------------------


def _preview_flags() -> None:
  _config_flag()
  flags.DEFINE_integer("num", 3, "Pairs to show, from the start of the split.")
  flags.DEFINE_enum("format", "text", ["text", "json"], "Output format.")
  flags.DEFINE_enum("split", "train", ["train", "eval"], "Which split.")
  flags.mark_flags_as_required(["config"])


def _preview(preview, argv) -> None:
  del argv
  values = flags.FLAGS
  if values.num < 1:
    fail(f"--num must be at least 1, got {values.num}")
  try:
    preview.preview(values.config, values.num, values.format, values.split)
  except errors.USER_ERRORS as error:
    fail(str(error))


COMMANDS = {
  "train": (_train_flags, _train),
  "aot": (_aot_flags, _aot),
  "export": (_export_flags, _export),
  "sample": (_sample_flags, _sample),
  "evaluate": (_evaluate_flags, _evaluate),
  "preview": (_preview_flags, _preview),
}


def run(command: str, work) -> None:
  """Defines ``command``'s flags and runs it on ``work``, the command's
  module (its functions; its docstring is the --help)."""
  define, main = COMMANDS[command]
  define()
  app.run(
    functools.partial(main, work),
    flags_parser=functools.partial(parse_flags, usage=work.__doc__),
  )

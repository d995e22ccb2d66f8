"""Command-line plumbing shared by ``train.main`` and ``train.aot``.

Every mistake in the flags or the config file ends the program with one
line on stderr, ``error: ...``, and exit code 2.
"""

import ast
import sys

from absl import flags


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
    # The flags the command itself defines (absl files them under the
    # script's path), not absl's own.
    for flag in flags.FLAGS.get_key_flags_for_module(sys.argv[0]):
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

"""The everyday commands, needing nothing but Python 3.10 or newer.

  python dev.py train [FLAGS...]   # the main job: configs/default.py
  python dev.py test [PYTEST ARGS...]   # ruff, then the fast tests
  python dev.py test --all [PYTEST ARGS...]   # ruff, then every test (CI)

Each creates the virtual environment ``.venv`` on first use. ``train``
installs the project with its ``train`` extra only; ``test`` installs the
``dev`` extra (``train`` plus torch, transformers, ... for the tests). Both
reinstall whenever ``pyproject.toml`` changes, and neither drops an extra
that ``.venv`` already holds. ``train`` writes to ``workdirs/default``
(rerunning resumes there) and passes any extra flags to
``python -m train.main``, e.g. ``--config.loss.name=slpo``. ``test --all``
also runs the tests marked slow.
"""

import hashlib
import os
import pathlib
import subprocess
import sys
import venv

ROOT = pathlib.Path(__file__).resolve().parent
VENV = ROOT / ".venv"
# "EXTRA DIGEST": the extra installed and the pyproject.toml it came from.
STAMP = VENV / "slpo-jax-installed"
# The extras each one includes: dev holds train.
INCLUDES = {"train": {"train"}, "dev": {"train", "dev"}}


def _python() -> pathlib.Path:
  folder = "Scripts" if os.name == "nt" else "bin"
  return VENV / folder / ("python.exe" if os.name == "nt" else "python")


def _run(*args: str) -> None:
  completed = subprocess.run([str(_python()), *args], cwd=ROOT)
  if completed.returncode:
    sys.exit(completed.returncode)


def ensure_environment(extra: str) -> None:
  """``.venv`` holding the project and ``extra``, current with pyproject."""
  digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
  held, stamped = "", ""
  if STAMP.exists():
    held, _, stamped = STAMP.read_text().strip().partition(" ")
  if not _python().exists():
    print(f"Creating {VENV} ...", flush=True)
    venv.create(VENV, with_pip=True)
    held = ""
  elif stamped == digest and extra in INCLUDES.get(held, ()):
    return
  if held == "dev":  # Never downgrade: reinstall what is there.
    extra = "dev"
  print(f"Installing the project and its {extra} extra ...", flush=True)
  _run("-m", "pip", "install", "--quiet", "--upgrade", "pip")
  _run("-m", "pip", "install", "--quiet", "-e", f".[{extra}]")
  STAMP.write_text(f"{extra} {digest}\n")


def main(argv: list[str]) -> None:
  if not argv or argv[0] not in ("train", "test"):
    sys.exit(__doc__)
  command, rest = argv[0], argv[1:]
  if command == "train":
    ensure_environment("train")
    _run(
      "-m",
      "train.main",
      "--config",
      "configs/default.py",
      "--workdir",
      "workdirs/default",
      *rest,
    )
  else:
    ensure_environment("dev")
    if "--all" in rest:  # An empty marker expression selects every test.
      rest = ["-m", "", *[arg for arg in rest if arg != "--all"]]
    _run("-m", "ruff", "check", ".")
    _run("-m", "ruff", "format", "--check", ".")
    _run("-m", "pytest", "-n", "auto", *rest)


if __name__ == "__main__":
  main(sys.argv[1:])

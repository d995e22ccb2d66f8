"""The two everyday commands, needing nothing but Python 3.10 or newer.

  python dev.py train [FLAGS...]   # the main job: configs/default.py
  python dev.py test [PYTEST ARGS...]   # ruff, then the test suite

Each creates the virtual environment ``.venv`` on first use and reinstalls
the project into it whenever ``pyproject.toml`` changes. ``train`` writes to
``workdirs/default`` (rerunning resumes there) and passes any extra flags to
``python -m train.main``, e.g. ``--config.loss.name=slpo``.
"""

import hashlib
import os
import pathlib
import subprocess
import sys
import venv

ROOT = pathlib.Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / "slpo-jax-installed"


def _python() -> pathlib.Path:
  folder = "Scripts" if os.name == "nt" else "bin"
  return VENV / folder / ("python.exe" if os.name == "nt" else "python")


def _run(*args: str) -> None:
  completed = subprocess.run([str(_python()), *args], cwd=ROOT)
  if completed.returncode:
    sys.exit(completed.returncode)


def ensure_environment() -> None:
  """``.venv`` with the project and its ``dev`` extra, current with pyproject."""
  wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
  if STAMP.exists() and STAMP.read_text() == wanted and _python().exists():
    return
  if not _python().exists():
    print(f"Creating {VENV} ...", flush=True)
    venv.create(VENV, with_pip=True)
  print("Installing the project and its dev extra into .venv ...", flush=True)
  _run("-m", "pip", "install", "--quiet", "--upgrade", "pip")
  _run("-m", "pip", "install", "--quiet", "-e", ".[dev]")
  STAMP.write_text(wanted)


def main(argv: list[str]) -> None:
  if not argv or argv[0] not in ("train", "test"):
    sys.exit(__doc__)
  command, rest = argv[0], argv[1:]
  ensure_environment()
  if command == "train":
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
    _run("-m", "ruff", "check", ".")
    _run("-m", "ruff", "format", "--check", ".")
    _run("-m", "pytest", "-n", "auto", *rest)


if __name__ == "__main__":
  main(sys.argv[1:])

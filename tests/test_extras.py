"""Every third-party module the code imports is declared where it installs.

``pip install -e .`` must give the library (``slpo_jax``) all it imports,
and ``pip install -e ".[train]"`` the program (``train``, ``configs``) and
the experiments. A module that arrives only through another package (jinja2
through transformers, for one) works in the ``dev`` environment the tests run
in and fails on a ``train``-only install, so the imports are read here with
``ast``, every one, those inside functions too, and compared with the
declared requirements. An import inside ``try: ... except ImportError`` is
optional and not checked.
"""

import ast
import pathlib
import re
import sys

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11 or newer.

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Import names whose distribution is named otherwise (beyond - for _ and
# case, which normalisation covers).
DISTRIBUTION = {
  "absl": "absl-py",
  "orbax": "orbax-checkpoint",
  "yaml": "pyyaml",
  "PIL": "pillow",
}
# (folder, the extras it may rely on besides [project] dependencies).
FOLDERS = [
  ("slpo_jax", ()),
  ("train", ("train",)),
  ("configs", ("train",)),
  ("experiments", ("train",)),
]


def _normalise(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _declared(extras, root: pathlib.Path) -> set[str]:
  """Distributions named by the dependencies and ``extras``, self-references
  (``slpo-jax[train]``) followed.
  """
  project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
  optional = project["optional-dependencies"]
  names, todo, seen = set(), [*project["dependencies"]], set()
  todo += [f"{project['name']}[{extra}]" for extra in extras]
  while todo:
    match = re.match(r"([\w.-]+)(\[(.*)\])?", todo.pop())
    name = _normalise(match.group(1))
    if name != _normalise(project["name"]):
      names.add(name)
      continue
    for extra in (match.group(3) or "").split(","):
      if extra.strip() not in seen:
        seen.add(extra.strip())
        todo += optional[extra.strip()]
  return names


def _optional(tree: ast.AST) -> set[ast.AST]:
  """The nodes inside ``try`` blocks that catch ImportError."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Try) and any(
      {"ImportError", "ModuleNotFoundError"}
      & {
        name.id for name in ast.walk(handler.type) if isinstance(name, ast.Name)
      }
      for handler in node.handlers
      if handler.type
    ):
      for statement in node.body:
        found.update(ast.walk(statement))
  return found


def _undeclared(folder: str, extras, root: pathlib.Path = ROOT) -> dict:
  """Third-party modules imported in ``folder`` and declared nowhere in the
  dependencies or ``extras``, each with the first file importing it.
  """
  declared = _declared(extras, root)
  found = {}
  paths = sorted((root / folder).rglob("*.py"))
  assert paths, f"no Python file in {folder}/"
  for path in paths:
    tree = ast.parse(path.read_text(), str(path))
    optional = _optional(tree)
    for node in ast.walk(tree):
      if isinstance(node, ast.Import) and node not in optional:
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and not node.level:
        names = [] if node in optional else [node.module]
      else:
        continue
      for name in names:
        top = name.split(".")[0]
        first_party = (root / top).is_dir() or (root / f"{top}.py").exists()
        distribution = _normalise(DISTRIBUTION.get(top, top))
        if not (
          top in sys.stdlib_module_names
          or first_party
          or distribution in declared
        ):
          found.setdefault(top, path.relative_to(root).as_posix())
  return found


@pytest.mark.parametrize(("folder", "extras"), FOLDERS)
def test_imports_are_declared(folder, extras):
  where = " or the extras " + ", ".join(extras) if extras else ""
  assert not _undeclared(folder, extras), (
    f"imported in {folder}/ but not in [project] dependencies{where}"
    " of pyproject.toml (module: first file importing it)"
  )


def test_an_undeclared_import_is_found(tmp_path):
  """The check can fail: here for a module imported inside a function."""
  (tmp_path / "pyproject.toml").write_text(
    '[project]\nname = "slpo-jax"\ndependencies = ["numpy>=1"]\n'
    "[project.optional-dependencies]\n"
    'train = ["slpo-jax[x]"]\nx = ["absl-py", "PyYAML>=6"]\n'
  )
  (tmp_path / "pkg").mkdir()
  (tmp_path / "pkg" / "a.py").write_text(
    "import os, yaml\nimport numpy as np\nfrom absl import app\n"
    "from pkg import b\nfrom . import c\n"
    "try:\n  import libtpu\nexcept (ImportError, OSError):\n  pass\n"
    "def f():\n  import jinja2.sandbox\n"
  )
  assert _undeclared("pkg", ("train",), tmp_path) == {"jinja2": "pkg/a.py"}
  assert _undeclared("pkg", (), tmp_path) == {
    "yaml": "pkg/a.py",
    "absl": "pkg/a.py",
    "jinja2": "pkg/a.py",
  }

"""Collection set-up shared by the test directories."""


def pytest_ignore_collect(collection_path, config):
  """Keeps ``--doctest-modules`` from importing ``conftest.py`` files.

  They hold no doctests and pytest loads them as plugins anyway; imported as
  modules too, the ones of sibling directories clash (all are ``conftest``).
  """
  del config
  if collection_path.name == "conftest.py":
    return True
  return None

"""Fixtures: reference ``transformers`` checkpoints saved into temp folders."""

from __future__ import annotations

import pathlib
from typing import Any
from typing import Callable

import pytest

from models_testing import make_hf_model


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory) -> Callable[..., tuple[pathlib.Path, Any]]:
  """``hf_checkpoint(kind, **save_kwargs) -> (folder, hf_model)``, cached."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  cache: dict[tuple[Any, ...], tuple[pathlib.Path, Any]] = {}

  def make(kind: str, **save_kwargs: Any) -> tuple[pathlib.Path, Any]:
    key = (kind, tuple(sorted(save_kwargs.items())))
    if key not in cache:
      hf_model = make_hf_model(kind)
      folder = tmp_path_factory.mktemp(f"hf_{kind}")
      hf_model.save_pretrained(folder, **save_kwargs)
      cache[key] = folder, hf_model
    return cache[key]

  return make

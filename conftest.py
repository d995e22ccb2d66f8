"""Shared test set-up: CPU only, eight simulated devices, paths to shared data."""

import os
import pathlib

# Must be set before JAX initialises its backends.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent
SHARED_DIR = REPO_ROOT.parent / "shared"
HH_RLHF_PATH = SHARED_DIR / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


@pytest.fixture
def hh_rlhf_path():
  if not HH_RLHF_PATH.exists():
    pytest.skip(f"shared HH-RLHF file not found at {HH_RLHF_PATH}")
  return HH_RLHF_PATH

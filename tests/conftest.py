"""Shared fixtures. Tests that read the real data in ../shared/data skip cleanly without it."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("SAFEJAX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
  """The folder of real public data sets (../shared/data from the repository root)."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real data not available at {SHARED_DATA}")
  return SHARED_DATA

"""Shared test fixtures: where the optional real data lives, and skips when it is absent."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the tiny-backbone builders of embed/test_extraction.py are shared by the store and CLI tests
sys.path.insert(0, str(Path(__file__).resolve().parent / "embed"))
SHARED_DATA = Path(os.environ.get("CXR_EMBED_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    """Path of a ``../shared/data`` folder, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not (path / "labels.csv").is_file():
        pytest.skip(f"real data folder {path} is absent (only present beside the development checkout)")
    return path


@pytest.fixture
def shared_data():
    """Callable: ``shared_data("nih_cxr14_tiny64")`` -> Path, skipping when absent."""
    return shared_dataset

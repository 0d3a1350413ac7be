"""Shared test fixtures. Real clips and annotation samples live in ../shared beside the checkout (CI has it too);
tests that need them skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIN_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    path = SHARED / "videos"
    if not path.is_dir():
        pytest.skip(f"real clips not found at {path}")
    return path


@pytest.fixture(scope="session")
def shared_annotations() -> Path:
    path = SHARED / "annotations"
    if not path.is_dir():
        pytest.skip(f"annotation samples not found at {path}")
    return path

"""Fixtures shared by every test tier."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Real data and schemas live beside the repository (../shared); tests skip cleanly without them.
SHARED_DIR = (REPO_ROOT / ".." / "shared").resolve()
REALDATA_DIR = SHARED_DIR / "realdata"
SCHEMAS_DIR = SHARED_DIR / "schemas"


def realdata_path(*parts: str) -> Path:
    """Path under ../shared/realdata, or skip the calling test when it is absent."""
    path = REALDATA_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {Path(*parts)} (../shared/realdata is absent)")
    return path


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The ../shared/realdata folder; skips the test when it is absent."""
    if not REALDATA_DIR.is_dir():
        pytest.skip("../shared/realdata is absent")
    return REALDATA_DIR

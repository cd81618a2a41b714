"""Fixtures shared by every test tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.stac_server import StacServer, serve_stac
from tasks.synthetic import (
    ArchiveInfo,
    Truth,
    archive_items,
    create_archive,
    open_truth,
    stac_files,
    tiny_config,
)

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


# ---- the tiny synthetic archive, shared by every tier ------------------------------------------
@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory: pytest.TempPathFactory) -> ArchiveInfo:
    """The archive of `tiny_config()` (1.5 km, Landsat 2012-2013, Sentinel-2 2023), made once."""
    return create_archive(tmp_path_factory.mktemp("synthetic") / "tiny", tiny_config(), workers=1)


@pytest.fixture(scope="session")
def tiny_items(tiny_archive: ArchiveInfo) -> list[dict[str, Any]]:
    """Every STAC Item of the tiny archive, as plain dicts."""
    return archive_items(tiny_archive.root)


@pytest.fixture(scope="session")
def tiny_truth(tiny_archive: ArchiveInfo) -> Truth:
    """Ground truth of the tiny archive."""
    return open_truth(tiny_archive.root)


@pytest.fixture(scope="session")
def tiny_stac(tiny_archive: ArchiveInfo) -> Iterator[StacServer]:
    """A real STAC API (`rustac serve` on 127.0.0.1) over the tiny archive."""
    with serve_stac(stac_files(tiny_archive.root)) as server:
        yield server

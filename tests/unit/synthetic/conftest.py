"""Shared fixtures: one tiny synthetic archive per test session (a few seconds to create)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tasks.synthetic import (
    ArchiveInfo,
    Truth,
    archive_items,
    create_archive,
    open_truth,
    tiny_config,
)


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory: pytest.TempPathFactory) -> ArchiveInfo:
    """The archive of `tiny_config()`, written in-process."""
    return create_archive(tmp_path_factory.mktemp("synthetic") / "tiny", tiny_config(), workers=1)


@pytest.fixture(scope="session")
def tiny_items(tiny_archive: ArchiveInfo) -> list[dict[str, Any]]:
    return archive_items(tiny_archive.root)


@pytest.fixture(scope="session")
def tiny_truth(tiny_archive: ArchiveInfo) -> Truth:
    return open_truth(tiny_archive.root)


def asset_path(item: dict[str, Any], asset: str) -> Path:
    return Path(item["assets"][asset]["href"])

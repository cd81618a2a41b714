"""Fixtures of the training tests: the tiny archive's training data, built once."""

from __future__ import annotations

import pytest

from models.training.data import WorldData, world_from_archive
from tasks.synthetic import ArchiveInfo

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

#: Change pairs the tiny archive can serve (Landsat 2012-2013, Sentinel-2 2023).
TINY_PAIRS = ((2012, 2023), (2013, 2023))


@pytest.fixture(scope="session")
def tiny_world(tiny_archive: ArchiveInfo, tmp_path_factory: pytest.TempPathFactory) -> WorldData:
    """Composites (30 m annual, 10 m Sentinel-2 2023) and labels of the tiny archive."""
    return world_from_archive(tiny_archive.root, cache_dir=tmp_path_factory.mktemp("train-cache"))

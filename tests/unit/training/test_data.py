"""Training data of synthetic worlds: what each world's composites depend on."""

from __future__ import annotations

import numpy as np
import pytest

from models.training.data import world_from_archive
from tasks.synthetic import ArchiveInfo, create_archive, tiny_config


def test_a_world_is_coregistered_against_its_own_image(
    tiny_archive: ArchiveInfo, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Worlds that differ only by seed lie on one grid, where the chain pins one reference:
    each world pins its own, so its composites do not depend on the worlds built before it
    in the same cache."""
    tmp = tmp_path_factory.mktemp("worlds")
    other = create_archive(tmp / "other", tiny_config(seed=tiny_archive.config.seed + 1), workers=1)
    shared = tmp / "shared"
    world_from_archive(tiny_archive.root, cache_dir=shared)
    second = world_from_archive(other.root, cache_dir=shared)
    alone = world_from_archive(other.root, cache_dir=tmp / "alone")
    assert np.isfinite(second.annual).any()
    np.testing.assert_array_equal(second.annual, alone.annual)
    np.testing.assert_array_equal(second.recent, alone.recent)
    pins = {p.name.split("-")[1] for p in (shared / "state" / "worlds").iterdir()}
    assert pins == {str(tiny_archive.config.seed), str(other.config.seed)}

"""Land cover through the years: the city grows, confounders change other land, all seeded."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tasks.synthetic.config import tiny_config
from tasks.synthetic.world import LandCover, World, build_world


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(tiny_config())


def _share(world: World, year: int, cls: LandCover) -> float:
    window = world.layout.aoi_window
    return float((world.landcover[world.year_index(year)][window] == cls).mean())


def test_build_world_builtup_grows_from_a_few_percent_to_a_quarter(world: World) -> None:
    shares = [_share(world, y, LandCover.BUILTUP) for y in world.years]
    assert 0.02 < shares[0] < 0.07
    assert 0.18 < shares[-1] < 0.32
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(shares))


def test_build_world_builtup_never_reverts(world: World) -> None:
    built = world.landcover == LandCover.BUILTUP
    assert not (built[:-1] & ~built[1:]).any()


def test_build_world_construction_sites_are_bare_the_year_before(world: World) -> None:
    built = world.landcover == LandCover.BUILTUP
    new = built[1:] & ~built[:-1]
    assert new.any()
    before = world.landcover[:-1][new]
    assert np.mean(before == LandCover.BARE) > 0.9


def test_build_world_has_non_urban_confounders(world: World) -> None:
    lc = world.landcover
    clearcut = (lc[:-1] == LandCover.FOREST) & (lc[1:] == LandCover.BARE)
    assert clearcut.any(), "forest clear-cuts"
    r = world.year_index(world.reservoir_year)
    flooded = (lc[r] == LandCover.WATER) & (lc[r - 2] != LandCover.WATER)
    assert flooded.sum() > 100, "a reservoir fills"
    cropland = (lc[:-1] == LandCover.CROPLAND) & (lc[1:] == LandCover.CROPLAND)
    rotated = cropland & (world.crop[:-1] != world.crop[1:])
    assert rotated.sum() > 0.2 * cropland.sum() / (len(world.years) - 1), "crops rotate"


def test_build_world_is_deterministic_in_the_seed(world: World) -> None:
    again = build_world(tiny_config())
    assert np.array_equal(again.landcover, world.landcover)
    assert np.array_equal(again.crop, world.crop)
    other = build_world(tiny_config(seed=7))
    assert not np.array_equal(other.landcover, world.landcover)


def test_surface_has_spatially_correlated_texture_fixed_in_time(world: World) -> None:
    b = world.layout.brightness
    assert 0.02 < float(b.std()) < 0.1
    # Neighbouring pixels share texture (correlated), unlike white noise.
    corr = np.corrcoef(b[:, :-1].ravel(), b[:, 1:].ravel())[0, 1]
    assert corr > 0.5

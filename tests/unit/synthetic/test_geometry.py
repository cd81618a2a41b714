"""Product grids (MGRS, Landsat), swaths and SLC-off gaps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.synthetic.acquisitions import plan_archive
from tasks.synthetic.config import ArchiveConfig
from tasks.synthetic.geometry import (
    SwathFrame,
    landsat_grid,
    mesh_in,
    mgrs_tiles,
    pixel_centers,
    s2_grids,
)
from tasks.synthetic.landscape import aoi_bounds, world_margin_m
from tasks.synthetic.world import main_epsg
from tests.conftest import realdata_path

CASSETTE = (
    "_derived",
    "pystac-client-cassettes",
    "test_multiple_collections__00_FeatureCollection.json",
)


def test_mgrs_tiles_reproduce_a_real_tile_origin() -> None:
    real = json.loads(realdata_path(*CASSETTE).read_text())["features"][0]
    assert real["id"] == "S2A_13TDE_20231008_0_L2A"
    lon = sum(real["bbox"][::2]) / 2
    lat = sum(real["bbox"][1::2]) / 2
    (tile,) = mgrs_tiles(lon, lat)
    assert tile.id == "13TDE"
    assert tile.epsg == real["properties"]["proj:epsg"]
    transform = real["assets"]["red"]["proj:transform"]
    assert (tile.ulx, tile.uly) == (transform[2], transform[5])


def test_mgrs_tiles_near_a_zone_boundary_come_from_both_zones() -> None:
    tiles = mgrs_tiles(11.97, 51.35)
    assert [t.id for t in tiles] == ["32UQB", "33UTS"]
    assert [t.epsg for t in tiles] == [32632, 32633]
    assert [t.id for t in mgrs_tiles(9.0, 51.35)] == ["32UNB"]


def test_landsat_grid_has_corners_on_15_mod_30() -> None:
    aoi = (700_020.0, 5_690_010.0, 702_000.0, 5_692_020.0)
    grid = landsat_grid(aoi, 32632, 12.2, 51.3)
    assert grid.epsg == 32633
    assert all(v % 30 == 15 for v in grid.bounds)
    x, y = pixel_centers(grid)
    assert np.all(x % 30 == 0) and np.all(y % 30 == 0)


def test_s2_grids_share_an_extent_snapped_to_the_tile() -> None:
    tile = mgrs_tiles(11.97, 51.35)[1]
    ten, twenty = s2_grids((704_010.0, 5_690_010.0, 706_000.0, 5_692_000.0), 32632, tile)
    assert ten.bounds == twenty.bounds
    assert (ten.shape[0], ten.shape[1]) == (2 * twenty.shape[0], 2 * twenty.shape[1])
    assert all((v - tile.ulx) % 60 == 0 for v in ten.bounds[::2])
    assert all((tile.uly - v) % 60 == 0 for v in ten.bounds[1::2])


@pytest.fixture
def swath() -> SwathFrame:
    return SwathFrame(
        origin=(0.0, 0.0), heading_deg=195.0, center_offset_m=0.0, half_swath_m=92_500.0
    )


def test_swath_inside_is_a_strip_along_the_track(swath: SwathFrame) -> None:
    x = np.array([0.0, 90_000.0, 100_000.0, -100_000.0])
    y = np.zeros(4)
    assert swath.inside(x, y).tolist() == [True, True, False, False]


def test_slc_gaps_widen_from_nadir_to_the_swath_edge(swath: SwathFrame) -> None:
    y = np.arange(-20_000.0, 20_000.0, 10.0)
    loss = [
        float(swath.slc_gaps(np.full_like(y, x), y, 3.0).mean())
        for x in (1_000.0, 45_000.0, 90_000.0)
    ]
    assert loss[0] < 0.02
    assert loss[0] < loss[1] < loss[2]
    assert 0.35 < loss[2] < 0.5  # ~14 of every 32 lines at the edge


@pytest.mark.parametrize("size_m", [1500.0, 12_000.0])
def test_product_grids_stay_inside_the_world_grid(size_m: float) -> None:
    config = ArchiveConfig(
        size_m=size_m, landsat_years=(2020, 2020), sentinel2_years=(2020, 2020),
        max_scenes_per_year=1, end_year=2020,
    )  # fmt: skip
    epsg = main_epsg(config)
    xmin, ymin, xmax, ymax = aoi_bounds(config, epsg)
    m = world_margin_m(size_m)
    for acq in plan_archive(config):
        for item in acq.items:
            x, y = mesh_in(item.grids[0], 1, epsg)
            room = min(
                x.min() - (xmin - m),
                (xmax + m) - x.max(),
                y.min() - (ymin - m),
                (ymax + m) - y.max(),
            )
            assert room > 100.0, (item.id, room)

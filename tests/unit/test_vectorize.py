"""Threshold + polygonize: areas, minimum mapping unit, attributes, epochs."""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import shapely
from scipy import ndimage

from tasks.aoi import GridSpec
from tasks.errors import InputError
from tasks.tiling import PixelWindow, grid_windows
from tasks.vectorize import (
    WindowedPolygonizer,
    change_polygons,
    dynamics_polygons,
    footprint_polygons,
    polygonize,
)

RES = 10.0


def make_grid(rows: int = 32, cols: int = 40, *, epsg: int = 32633) -> GridSpec:
    """A small UTM grid (10 m pixels) with its north-west corner at (500 000, 5 000 320)."""
    x0, y1 = 500_000.0, 5_000_320.0
    return GridSpec(epsg=epsg, resolution=RES, bounds=(x0, y1 - rows * RES, x0 + cols * RES, y1))


def test_polygonize_known_square_area_and_position() -> None:
    grid = make_grid()
    mask = np.zeros(grid.shape, dtype=bool)
    mask[4:9, 10:15] = True  # 5 x 5 pixels = 2500 m²
    gdf = polygonize(mask, grid)
    assert len(gdf) == 1
    assert gdf.crs.to_epsg() == 32633
    row = gdf.iloc[0]
    assert row["area_m2"] == pytest.approx(25 * RES * RES)
    assert row["n_pixels"] == 25
    xmin, ymin, xmax, ymax = row.geometry.bounds
    assert (xmin, xmax) == (500_000 + 10 * RES, 500_000 + 15 * RES)
    assert (ymin, ymax) == (5_000_320 - 9 * RES, 5_000_320 - 4 * RES)


def test_polygonize_min_pixels_drops_small_patches() -> None:
    grid = make_grid()
    mask = np.zeros(grid.shape, dtype=bool)
    mask[0:3, 0:3] = True  # 9 px
    mask[20, 20] = True  # 1 px
    mask[25:27, 30] = True  # 2 px
    assert len(polygonize(mask, grid, min_pixels=1)) == 3
    kept = polygonize(mask, grid, min_pixels=3)
    assert list(kept["n_pixels"]) == [9]


def test_polygonize_mean_confidence_per_patch_ignores_nan() -> None:
    grid = make_grid()
    mask = np.zeros(grid.shape, dtype=bool)
    mask[0:2, 0:2] = True
    mask[10:12, 10:12] = True
    conf = np.full(grid.shape, 0.9)
    conf[10:12, 10:12] = 0.6
    conf[0, 0] = np.nan
    gdf = polygonize(mask, grid, confidence=conf).sort_values("mean_confidence")
    assert list(gdf["mean_confidence"]) == pytest.approx([0.6, 0.9])


def test_polygonize_shape_mismatch_raises_input_error() -> None:
    grid = make_grid()
    with pytest.raises(InputError, match="does not match the grid"):
        polygonize(np.zeros((3, 3), dtype=bool), grid)


def test_change_polygons_threshold_and_period() -> None:
    grid = make_grid()
    prob = np.full(grid.shape, 0.1, dtype=np.float32)
    prob[5:10, 5:10] = 0.8
    prob[20:25, 20:25] = 0.49  # below the threshold
    prob[0, :] = np.nan  # no data is never change
    gdf = change_polygons(prob, grid, start="2020-01-01", end="2021-06-30", min_pixels=4)
    assert len(gdf) == 1
    assert gdf.iloc[0]["area_m2"] == pytest.approx(2500.0)
    assert gdf.iloc[0]["period_start"] == "2020-01-01"
    assert gdf.iloc[0]["period_end"] == "2021-06-30"


def test_footprint_polygons_one_set_per_year() -> None:
    grid = make_grid()
    y2020 = np.zeros(grid.shape, dtype=np.float32)
    y2020[0:4, 0:4] = 0.9
    y2021 = y2020.copy()
    y2021[10:14, 10:14] = 0.9
    gdf = footprint_polygons(np.stack([y2020, y2021]), grid, years=[2020, 2021])
    assert sorted(gdf.groupby("year").size().items()) == [(2020, 1), (2021, 2)]


def test_dynamics_polygons_bins_years_into_epochs() -> None:
    grid = make_grid()
    year = np.full(grid.shape, np.nan)
    year[0:4, 0:4] = 2001
    year[0:4, 4:8] = 2004  # same epoch 2000-2004, touching: one patch
    year[20:24, 20:24] = 2006  # epoch 2005-2009
    gdf = dynamics_polygons(year, grid, origin_year=2000, epoch_years=5)
    rows = sorted(zip(gdf["epoch_start"], gdf["epoch_end"], gdf["n_pixels"], strict=True))
    assert rows == [(2000, 2004, 32), (2005, 2009, 16)]


def test_dynamics_polygons_all_nan_is_empty() -> None:
    grid = make_grid()
    gdf = dynamics_polygons(np.full(grid.shape, np.nan), grid)
    assert len(gdf) == 0
    assert "epoch_start" in gdf.columns


# ---- window by window ---------------------------------------------------------------------------
def _patch_mask(grid: GridSpec, seed: int) -> np.ndarray:
    """Blobs of every size, plus shapes that cross any window lattice: a ring around a hole, a
    snake that leaves and re-enters windows, a one-pixel line."""
    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random(grid.shape) > 0.45) | (rng.random(grid.shape) > 0.97)
    mask[20:31, 3:14] = True
    mask[23:28, 6:11] = False  # a hole
    mask[24:26, 8] = True  # an island in it: its own patch
    mask[2, 0:39] = True
    mask[2:30, 38] = True
    mask[29, 20:39] = True
    return mask


def _rows(gdf: gpd.GeoDataFrame) -> list[tuple[Any, ...]]:
    """Rows as comparable tuples, in a canonical order (geometry in normal form, without
    collinear vertices; NaN confidence as -1)."""
    return sorted(
        (
            shapely.normalize(shapely.simplify(g, 0.0)).wkt,
            int(n),
            round(float(c), 9) if np.isfinite(c) else -1.0,
            float(a),
            int(y),
        )
        for g, n, c, a, y in zip(
            gdf.geometry, gdf["n_pixels"], gdf["mean_confidence"], gdf["area_m2"], gdf["year"],
            strict=True,
        )
    )  # fmt: skip


@pytest.mark.parametrize("size", [5, 16, 17])
@pytest.mark.parametrize("seed", [0, 1])
def test_windowed_polygonizer_equals_one_pass(size: int, seed: int) -> None:
    grid = make_grid()
    mask = _patch_mask(grid, seed)
    conf = np.random.default_rng(seed + 10).random(grid.shape)
    conf[::7, ::5] = np.nan
    whole = polygonize(mask, grid, confidence=conf, min_pixels=3, attributes={"year": 2020})
    patches = WindowedPolygonizer(grid, min_pixels=3)
    for w in grid_windows(grid, size):
        patches.add(w, mask[w.rows, w.cols], conf[w.rows, w.cols])
    windowed = patches.result({"year": 2020})
    assert len(whole) > 10 and len(windowed) == len(whole)
    assert _rows(windowed) == _rows(whole)
    assert windowed.geometry.is_valid.all() and (windowed.geom_type == "Polygon").all()
    assert list(windowed.columns) == list(whole.columns) and windowed.crs == whole.crs


def test_windowed_polygonizer_joins_a_patch_only_across_windows() -> None:
    """A 2 x 6 px patch split into two 2 x 3 px halves: below `min_pixels` in each window."""
    grid = make_grid(8, 8)
    mask = np.zeros(grid.shape, dtype=bool)
    mask[3:5, 1:7] = True
    patches = WindowedPolygonizer(grid, min_pixels=8)
    for w in [PixelWindow(0, 0, 8, 4), PixelWindow(0, 4, 8, 4)]:
        patches.add(w, mask[w.rows, w.cols])
    gdf = patches.result()
    assert list(gdf["n_pixels"]) == [12] and gdf.iloc[0]["area_m2"] == pytest.approx(1200.0)
    assert len(shapely.get_coordinates(gdf.geometry.iloc[0])) == 5  # a rectangle: no seam vertex
    assert np.isnan(gdf.iloc[0]["mean_confidence"])


def test_windowed_polygonizer_refuses_windows_off_the_grid() -> None:
    patches = WindowedPolygonizer(make_grid(8, 8))
    with pytest.raises(InputError, match="outside"):
        patches.add(PixelWindow(4, 4, 8, 8), np.ones((8, 8), dtype=bool))

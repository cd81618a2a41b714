"""Tiles of a product grid: coverage without gaps or overlap, pixel alignment, halo cropping,
the mosaic, the task runner choice, and per-tile product maps that equal a whole-grid pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from shapely.geometry import box

from tasks.aoi import GridSpec
from tasks.ard import CompositeRef, write_composites
from tasks.errors import InputError, PipelineError
from tasks.products import make_tile_product
from tasks.settings import get_settings
from tasks.tiling import (
    ALIGN_PX,
    PixelWindow,
    Tile,
    crop_core,
    grid_windows,
    mosaic,
    single_tile,
    split_grid,
    tile_task_runner,
    window_in,
)
from tests.unit.models.factories import BANDS, CONCRETE, SOIL, VEGETATION, WATER


def make_grid(rows: int, cols: int, *, res: float = 30.0) -> GridSpec:
    """A UTM 33N grid of `rows` x `cols` pixels whose corner sits on the pixel grid."""
    x0, y1 = 500_010.0, 5_200_020.0
    return GridSpec(32633, res, (x0, y1 - rows * res, x0 + cols * res, y1))


def coverage(tiles: list[Tile], grid: GridSpec) -> np.ndarray:
    hits = np.zeros(grid.shape, dtype=int)
    for t in tiles:
        hits[t.core.rows, t.core.cols] += 1
    return hits


@pytest.mark.parametrize(
    ("shape", "tile", "halo", "expected_tiles"),
    [
        ((53, 53), 32, 16, 4),  # remainder of 21 px >= half a tile: a tile of its own
        ((100, 37), 16, 16, 6 * 2),  # 100 = 16 * 6 + 4: the 4 px join the last row of tiles
        ((10, 10), 32, 32, 1),  # smaller than a tile: one tile, the whole grid
        ((64, 64), 32, 0, 4),
        ((1000, 700), 256, 32, 4 * 3),
    ],
)
def test_split_grid_cores_cover_the_grid_once(
    shape: tuple[int, int], tile: int, halo: int, expected_tiles: int
) -> None:
    grid = make_grid(*shape)
    tiles = split_grid(grid, tile_size_px=tile, halo_px=halo)
    assert len(tiles) == expected_tiles
    assert (coverage(tiles, grid) == 1).all()  # no gap, no overlap
    for t in tiles:  # no sliver: every side within [tile / 2, 1.5 tile) unless the grid is smaller
        for side, n in ((t.core.height, shape[0]), (t.core.width, shape[1])):
            assert side == n or tile / 2 <= side < 1.5 * tile


@pytest.mark.parametrize(("shape", "tile", "halo"), [((53, 53), 32, 16), ((150, 90), 48, 32)])
def test_split_grid_windows_lie_on_the_pixel_grid(
    shape: tuple[int, int], tile: int, halo: int
) -> None:
    grid = make_grid(*shape, res=10.0)
    rows, cols = shape
    for t in split_grid(grid, tile_size_px=tile, halo_px=halo):
        # the sub-grids are exact pixel windows of the grid (no resampling in the mosaic)
        assert window_in(grid, t.core_grid) == t.core
        assert window_in(grid, t.outer_grid) == t.outer
        assert t.core_grid.transform.c == grid.transform.c + t.core.col * grid.resolution
        # windows start on the models' pooling grid
        assert t.outer.row % ALIGN_PX == 0 and t.outer.col % ALIGN_PX == 0
        # outer = core + halo, clipped to the grid
        assert t.outer.row == max(0, t.core.row - halo)
        assert t.outer.col == max(0, t.core.col - halo)
        assert t.outer.row + t.outer.height == min(rows, t.core.row + t.core.height + halo)
        assert t.outer.col + t.outer.width == min(cols, t.core.col + t.core.width + halo)


def test_crop_core_and_mosaic_rebuild_the_array() -> None:
    grid = make_grid(70, 45)
    values = np.arange(70 * 45, dtype=np.float32).reshape(70, 45)
    tiles = split_grid(grid, tile_size_px=16, halo_px=16)
    parts = [(t, {"v": crop_core(values[t.outer.rows, t.outer.cols], t)}) for t in tiles]
    assert np.array_equal(mosaic(parts, grid)["v"], values)


def test_crop_core_rejects_an_array_off_the_outer_window() -> None:
    t = split_grid(make_grid(64, 64), tile_size_px=32, halo_px=16)[0]
    with pytest.raises(InputError, match="outer window"):
        crop_core(np.zeros((t.core.height, t.core.width)), t)


@pytest.mark.parametrize(("rows", "cols", "size"), [(53, 70, 16), (16, 16, 16), (5, 300, 256)])
def test_grid_windows_partition_the_grid_row_major(rows: int, cols: int, size: int) -> None:
    grid = make_grid(rows, cols)
    windows = list(grid_windows(grid, size))
    hits = np.zeros(grid.shape, dtype=int)
    for w in windows:
        assert 0 < w.height <= size and 0 < w.width <= size
        hits[w.rows, w.cols] += 1
    assert (hits == 1).all()
    assert windows == sorted(windows, key=lambda w: (w.row, w.col))


def test_single_tile_is_the_whole_grid() -> None:
    grid = make_grid(40, 30)
    t = single_tile(grid)
    assert t.core == t.outer == PixelWindow(0, 0, 40, 30)
    assert t.core_grid == grid == t.outer_grid


@pytest.mark.parametrize(("tile", "halo", "name"), [(40, 16, "tile_size_px"), (32, 8, "halo_px")])
def test_split_grid_rejects_sizes_off_the_pooling_grid(tile: int, halo: int, name: str) -> None:
    with pytest.raises(InputError, match=name):
        split_grid(make_grid(100, 100), tile_size_px=tile, halo_px=halo)


def test_split_grid_leaves_out_tiles_outside_the_aoi() -> None:
    grid = make_grid(64, 64)
    xmin, _, _, ymax = grid.bounds
    # the AOI covers only the north-west quarter (32 x 32 px of 30 m)
    aoi = box(xmin, ymax - 32 * 30.0, xmin + 32 * 30.0, ymax)
    tiles = split_grid(grid, tile_size_px=32, halo_px=16, aoi=aoi)
    assert [t.index for t in tiles] == [(0, 0)]
    ones = np.ones((32, 32), dtype=np.float32)
    out = mosaic([(tiles[0], {"p": ones, "count": ones})], grid, fill={"count": 0.0})
    assert np.isnan(out["p"][32:, :]).all() and (out["count"][:, 32:] == 0).all()
    assert (out["p"][:32, :32] == 1).all()


def test_window_in_rejects_grids_off_the_pixel_grid() -> None:
    grid = make_grid(40, 40)
    x0, y0, x1, y1 = grid.bounds
    with pytest.raises(InputError, match="whole number of pixels"):
        window_in(grid, GridSpec(32633, 30.0, (x0 + 15.0, y0, x1 - 15.0, y1)))
    with pytest.raises(InputError, match=r"resolution|EPSG"):
        window_in(grid, GridSpec(32633, 10.0, grid.bounds))
    with pytest.raises(InputError, match="outside"):
        window_in(grid, GridSpec(32633, 30.0, (x0 - 30.0, y0, x1, y1)))


def test_mosaic_rejects_overlapping_cores() -> None:
    grid = make_grid(64, 64)
    t = split_grid(grid, tile_size_px=32)[0]
    part = (t, {"p": np.zeros((32, 32), dtype=np.float32)})
    with pytest.raises(PipelineError, match="overlaps"):
        mosaic([part, part], grid)


def test_tile_task_runner_is_in_process_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EO_DASK_ADDRESS", raising=False)
    get_settings.cache_clear()
    try:
        assert isinstance(tile_task_runner(), ThreadPoolTaskRunner)
    finally:
        get_settings.cache_clear()


def test_tile_task_runner_uses_eo_dask_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EO_DASK_ADDRESS", "tcp://127.0.0.1:8786")
    get_settings.cache_clear()
    try:
        runner = tile_task_runner()
        assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://127.0.0.1:8786"
        explicit = tile_task_runner("tcp://10.0.0.5:8786")
        assert isinstance(explicit, DaskTaskRunner) and explicit.address == "tcp://10.0.0.5:8786"
    finally:
        get_settings.cache_clear()


def test_tile_size_setting_must_be_a_multiple_of_16(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from tasks.settings import Settings

    monkeypatch.setenv("EO_TILE_SIZE_PX", "100")
    with pytest.raises(ValidationError, match="multiple of 16"):
        Settings()
    monkeypatch.setenv("EO_TILE_SIZE_PX", "512")
    assert Settings().tile_size_px == 512


# ---- per-tile products equal a whole-grid pass -------------------------------------------------
def _landscape(rows: int, cols: int, seed: int) -> np.ndarray:
    """(band, y, x) reflectance: blocks of vegetation, soil, water and concrete with noise."""
    rng = np.random.default_rng(seed)
    surfaces = np.array([VEGETATION, SOIL, WATER, CONCRETE], dtype=np.float32)
    cls = rng.integers(0, 4, size=(rows // 8 + 1, cols // 8 + 1)).repeat(8, 0).repeat(8, 1)
    img = surfaces[cls[:rows, :cols]].transpose(2, 0, 1)
    return img + rng.normal(0, 0.01, img.shape).astype(np.float32)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> CompositeRef:
    """Before/after composites (96 x 96 px at 30 m) where a third of the blocks changed."""
    n = 96
    grid = make_grid(n, n)
    before = _landscape(n, n, seed=1)
    after = _landscape(n, n, seed=3)
    keep = np.kron(np.random.default_rng(4).random((n // 8, n // 8)) < 0.66, np.ones((8, 8), bool))
    after = np.where(keep[None], before, after).astype(np.float32)
    refl = np.stack([before, after])
    ds = xr.Dataset(
        {
            "reflectance": (("period", "band", "y", "x"), refl),
            "count": (("period", "y", "x"), np.full((2, n, n), 3, "int16")),
        },
        coords={
            "period": ["before", "after"],
            "band": list(BANDS),
            "start": ("period", [pd.Timestamp("2013-01-01"), pd.Timestamp("2023-01-01")]),
            "end": ("period", [pd.Timestamp("2013-12-31"), pd.Timestamp("2023-12-31")]),
        },
    )
    folder = tmp_path_factory.mktemp("pair") / "composites"
    return write_composites(ds, grid, folder, {"scene_ids": ["a", "b"]})


def _tiled(ref: CompositeRef, tiles: list[Tile], cache: Path) -> dict[str, np.ndarray]:
    parts = []
    for t in tiles:
        # the model as shipped: adaptation fine-tunes on each tile's own seeds (as Otsu's
        # threshold is each tile's own), so adapted tiles differ from the whole by design
        p = make_tile_product(
            "change", ref, t, model="change-fcsiamdiff-30m", device="cpu", cache_dir=cache,
            adapt="never",
        )  # fmt: skip
        with rasterio.open(p.path) as src:  # written on the tile's core grid
            assert src.transform == t.core_grid.transform and src.crs.to_epsg() == 32633
            parts.append((t, {d: src.read(i + 1) for i, d in enumerate(src.descriptions)}))
    return mosaic(parts, ref.grid, fill={"count": 0.0})


def test_tiled_change_map_equals_the_whole_grid_with_a_wide_halo(
    pair: CompositeRef, tmp_path: Path
) -> None:
    whole = _tiled(pair, [single_tile(pair.grid)], tmp_path)
    # 3 x 3 tiles; 48 px covers the shipped FC-Siam-diff's receptive field (~46 px), so every
    # tile sees what a whole-grid pass sees around its core: the same result
    wide = _tiled(pair, split_grid(pair.grid, tile_size_px=32, halo_px=48), tmp_path)
    # no halo: the CNN sees zero padding at every tile edge, and it shows
    none = _tiled(pair, split_grid(pair.grid, tile_size_px=32, halo_px=0), tmp_path)
    assert list(wide) == list(whole) == ["probability", "binary", "confidence", "count"]
    # measured bit-identical on this machine; 1e-6 leaves room for another CPU's kernels
    for band in whole:
        np.testing.assert_allclose(wide[band], whole[band], rtol=0, atol=1e-6, equal_nan=True)
    assert np.nanmax(np.abs(none["probability"] - whole["probability"])) > 0.01

"""Row 9 of the fault table: an AOI 10x larger must not need 10x the memory. Required: peak
memory within 1.5x of the small AOI's, measured at small scale.

What the product flows do for one product, as plain calls (no Prefect: its own allocations
would blur the figure): pin the AOI's co-registration reference, then per tile the composites
of its outer window and its product map, then the mosaic published once. Peak Python-heap
memory (numpy arrays included: numpy reports its buffers to tracemalloc) is measured for a
small AOI (one tile) and for one ~10x its area (about ten tiles of the same size).

Measured (tracemalloc peaks by phase, 3 scenes, small -> 10.5x AOI of 12 tiles): pin reference
1.6 -> 1.6 MiB, tiles 3.5 -> 3.6-4.2 MiB, publish 1.2 -> 1.4 MiB; the test's figure 3.5 -> 4.0
MiB, 1.1-1.2x. Before: 4.3 -> 7.5 MiB (1.7x): dask kept ~0.1 MiB of every tile's graph keys
(`dask.utils.key_split`'s cache) and ~1 MiB of reference cycles until a full collection
(`tasks.ard.release_dask_bookkeeping` now frees both after each request), every `TileProduct`
held its composites' provenance, and `publish_tiles` built the mosaic, its polygons and the COG
in memory (now window by window: `tasks.publish.write_raster`,
`tasks.vectorize.WindowedPolygonizer`). What still grows with the AOI is the output: the
polygons, and one small `TileProduct` per tile.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from tasks.aoi import GridSpec
from tasks.ard import composites_for, pin_reference
from tasks.products import make_tile_product, publish_tiles
from tasks.refs import SceneRef
from tasks.tiling import split_grid

TILE_PX = 32
RES = 10.0


def s2_scenes(items: list[dict[str, Any]], year: int) -> list[SceneRef]:
    refs = (SceneRef.from_item(i) for i in items if i["collection"] == "sentinel-2-l2a")
    return sorted((r for r in refs if r.datetime.year == year), key=lambda r: r.datetime)


def grid_of(items: list[dict[str, Any]], cols: int, rows: int) -> GridSpec:
    """A `cols` x `rows` grid of 10 m pixels in the archive's UTM zone, at its centre."""
    from pyproj import Transformer
    from shapely.geometry import Point

    from tasks.aoi import utm_epsg

    w, s, e, n = items[0]["bbox"]
    lon, lat = (w + e) / 2, (s + n) / 2
    epsg = utm_epsg(Point(lon, lat))
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    x0, y0 = round(x / RES) * RES - cols * RES / 2, round(y / RES) * RES - rows * RES / 2
    return GridSpec(epsg=epsg, resolution=RES, bounds=(x0, y0, x0 + cols * RES, y0 + rows * RES))


def peak_bytes(scenes: list[SceneRef], grid: GridSpec, root: Path) -> tuple[int, int]:
    """(peak traced bytes, tiles) of one footprint product (baseline: a per-pixel rule, so no
    halo is needed) on `grid`, from an empty cache."""
    periods = {"2023": ("2023-01-01", "2023-12-31")}
    cache, state = root / "cache", str(root / "state")
    tiles = split_grid(grid, tile_size_px=TILE_PX, halo_px=0)
    gc.collect()
    tracemalloc.start()
    try:
        pin_reference(scenes, grid, state_url=state, cache_dir=cache)
        parts = []
        for tile in tiles:
            ref = composites_for(scenes, tile.outer_grid, periods, cache_dir=cache, state_url=state)
            parts.append(make_tile_product("footprint", ref, tile, period="2023", cache_dir=cache))
        publish_tiles(
            "footprint", parts, period="2023", start="2023-01-01", end="2023-12-31",
            output_url=str(root / "out"),
        )  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, len(tiles)


def test_peak_memory_of_a_10x_larger_aoi_stays_within_1_5x(
    tiny_items: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenes = s2_scenes(tiny_items, 2023)[:3]  # a few acquisitions: the cost is per tile x scene
    assert len(scenes) >= 3
    monkeypatch.setenv("EO_CACHE_DIR", str(tmp_path / "default-cache"))
    from tasks.settings import get_settings

    get_settings.cache_clear()
    small = grid_of(tiny_items, TILE_PX, TILE_PX)
    # 3 x 3.5 tiles: the half tile stays a tile of its own, so no tile is larger than `small`
    large = grid_of(tiny_items, 3 * TILE_PX, 3 * TILE_PX + TILE_PX // 2)
    area_ratio = (large.shape[0] * large.shape[1]) / (small.shape[0] * small.shape[1])
    assert 9.5 <= area_ratio <= 11.0
    peak_bytes(scenes, small, tmp_path / "warm-up")  # one-time allocations (imports, caches)
    small_peak, small_tiles = peak_bytes(scenes, small, tmp_path / "small")
    large_peak, large_tiles = peak_bytes(scenes, large, tmp_path / "large")
    get_settings.cache_clear()
    assert small_tiles == 1 and large_tiles >= 9
    ratio = large_peak / small_peak
    print(f"peak: small {small_peak / 2**20:.1f} MiB, 10x AOI {large_peak / 2**20:.1f} MiB")
    assert ratio <= 1.5, (
        f"a {area_ratio:.1f}x larger AOI ({large_tiles} tiles) peaked at {ratio:.2f}x the memory "
        f"of one tile ({small_peak / 2**20:.1f} -> {large_peak / 2**20:.1f} MiB)"
    )

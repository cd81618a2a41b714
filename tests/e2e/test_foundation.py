"""End to end on a tiny generated archive: create -> serve -> discover -> load.

The loaded reflectance must equal the simulator's noise-free truth within the sensor noise, which
only holds when the loader applies the Landsat Collection 2 scale/offset and the Sentinel-2
processing-baseline 04.00 offset; SLC-off and out-of-swath pixels must be NaN.
"""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
import pytest

from tasks.aoi import GridSpec
from tasks.discover import discover
from tasks.load import default_grid, load
from tasks.refs import SceneRef
from tasks.stac_server import StacServer
from tasks.synthetic import ArchiveInfo, Truth
from tasks.synthetic.bands import INSTRUMENTS, NOISE_SIGMA

pytestmark = pytest.mark.e2e

COLLECTIONS = ["landsat-c2-l2", "sentinel-2-l2a"]
QUANTUM = {"landsat": 2.75e-5, "sentinel-2": 1e-4}  # reflectance per DN


@pytest.fixture(scope="module")
def scenes(tiny_archive: ArchiveInfo, tiny_stac: StacServer) -> list[SceneRef]:
    return discover(
        tiny_archive.aoi, "2012-01-01", "2023-12-31", COLLECTIONS, stac_url=tiny_stac.url
    )


def native_grid(item: dict[str, Any], asset: str) -> GridSpec:
    """The grid of one asset exactly as written (no resampling when loading onto it)."""
    a = item["assets"][asset]
    rows, cols = a["proj:shape"]
    res, _, x0, _, neg_res, y0 = a["proj:transform"][:6]
    assert res == -neg_res
    epsg = int(item["properties"].get("proj:epsg") or item["properties"]["proj:code"].split(":")[1])
    return GridSpec(epsg=epsg, resolution=res, bounds=(x0, y0 - rows * res, x0 + cols * res, y0))


def test_discover_finds_every_item_of_the_archive(
    scenes: list[SceneRef], tiny_items: list[dict[str, Any]]
) -> None:
    assert sorted(s.id for s in scenes) == sorted(i["id"] for i in tiny_items)
    assert [s.datetime for s in scenes] == sorted(s.datetime for s in scenes)
    assert {s.collection for s in scenes} == set(COLLECTIONS)


def _residuals(
    scene: SceneRef, band: str, truth: Truth, asset: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load common `band` on the native grid of its asset; the truth of that asset."""
    asset = asset or band
    grid = native_grid(scene.item, asset)
    stack = load([scene], grid, bands=[band], with_mask=False)
    with dask.config.set(scheduler="synchronous"):
        loaded = stack.sel(band=band).isel(time=0).values
    expected = truth.noise_free(scene.id, asset)
    assert expected.array.shape == loaded.shape
    assert expected.transform == grid.transform
    return loaded, expected.array


@pytest.mark.parametrize(
    ("platform", "after"),
    [
        ("sentinel-2a", "2022-01-25"),
        ("sentinel-2b", "2022-01-25"),
        ("landsat-8", None),
        ("landsat-7", "2003-05-31"),
    ],
)
def test_load_matches_noise_free_truth_within_the_noise(
    scenes: list[SceneRef], tiny_truth: Truth, platform: str, after: str | None
) -> None:
    candidates = [s for s in scenes if s.platform == platform]
    assert candidates, f"the tiny archive has no {platform} scene"
    scene = max(candidates, key=lambda s: tiny_truth.scenes[s.id].valid_fraction)
    sigma = NOISE_SIGMA[INSTRUMENTS[platform]]  # type: ignore[index]
    q = QUANTUM[scene.sensor]
    expected_sd = float(np.hypot(sigma, q / np.sqrt(12)))
    # Landsat's NIR asset is called nir08 in Earth Search; its common name is nir
    nir_asset = "nir08" if scene.sensor == "landsat" else "nir"
    for band, asset in (("red", "red"), ("nir", nir_asset), ("swir16", "swir16")):
        loaded, expected = _residuals(scene, band, tiny_truth, asset)
        # nodata where the truth has none (SLC-off, out of swath) and nowhere else
        np.testing.assert_array_equal(np.isnan(loaded), np.isnan(expected))
        ok = np.isfinite(expected) & (expected > 3 * sigma)  # DN clipped at 0 below that
        assert ok.sum() > 100
        r = loaded[ok] - expected[ok]
        # an unapplied scale/offset or baseline offset shows as a bias of 0.1-0.2 reflectance
        assert abs(float(np.mean(r))) < 0.2 * expected_sd, (band, float(np.mean(r)))
        assert 0.7 * expected_sd < float(np.std(r)) < 1.3 * expected_sd, (band, float(np.std(r)))


def test_baseline_offset_is_declared_and_needed(scenes: list[SceneRef]) -> None:
    s2 = [s for s in scenes if s.sensor == "sentinel-2"]
    assert s2 and all(s.datetime.isoformat() >= "2022-01-25" for s in s2)
    for s in s2:
        assert s.item["properties"]["earthsearch:boa_offset_applied"] is True
        assert s.item["assets"]["red"]["raster:bands"][0]["offset"] == pytest.approx(-0.1)


def test_slc_off_gaps_are_nan(scenes: list[SceneRef], tiny_truth: Truth) -> None:
    l7 = [s for s in scenes if s.platform == "landsat-7"]
    scene = max(l7, key=lambda s: tiny_truth.scenes[s.id].valid_fraction)
    loaded, _ = _residuals(scene, "red", tiny_truth)
    gaps = np.isnan(loaded).mean()
    # SLC-off loses ~22 % of a full scene (USGS); a small window sees 5-45 %
    assert 0.03 < gaps < 0.5, gaps


def test_out_of_swath_pixels_are_nan(scenes: list[SceneRef], tiny_truth: Truth) -> None:
    partial = [
        s
        for s in scenes
        if s.platform != "landsat-7" and tiny_truth.scenes[s.id].valid_fraction < 0.9
    ]
    assert partial, "the tiny archive should hold a scene that covers the AOI only in part"
    scene = partial[0]
    loaded, expected = _residuals(scene, "red", tiny_truth)
    assert np.isnan(loaded).mean() == pytest.approx(
        1 - tiny_truth.scenes[scene.id].valid_fraction, abs=0.02
    )
    np.testing.assert_array_equal(np.isnan(loaded), np.isnan(expected))


def test_mixed_stack_on_the_aoi_grid_is_lazy_and_reprojects_other_zones(
    tiny_archive: ArchiveInfo, scenes: list[SceneRef], tiny_truth: Truth
) -> None:
    grid = default_grid(tiny_archive.aoi, COLLECTIONS)
    assert grid.epsg == tiny_archive.epsg == 32632 and grid.resolution == 10
    zone33 = [
        s
        for s in scenes
        if tiny_truth.scenes[s.id].epsg == 32633
        and tiny_truth.scenes[s.id].valid_fraction == 1
        and s.sensor == "sentinel-2"
    ]
    assert zone33, "the tiny archive should hold full scenes in the neighbouring zone (32633)"
    stack = load(zone33, grid, bands=["red", "nir", "swir16"])
    assert stack.dims == ("time", "band", "y", "x")
    assert stack.shape[2:] == grid.shape
    assert stack.chunks is not None  # dask-backed: nothing read yet
    with dask.config.set(scheduler="threads"):
        red = stack.sel(band="red").values
    # reprojected from EPSG:32633 onto the zone-32 grid: data everywhere, plausible reflectance
    assert np.isfinite(red).mean() > 0.99
    assert 0.01 < float(np.nanmedian(red)) < 0.5


def test_one_time_slice_per_acquisition(scenes: list[SceneRef]) -> None:
    """Sentinel-2 acquisitions are published once per MGRS tile (32UQB and 33UTS here): the
    stack merges them, preferring the tile in the grid's zone, and keeps both ids."""
    s2 = [s for s in scenes if s.sensor == "sentinel-2"]
    grid = native_grid(s2[0].item, "red")
    merged = load(s2, grid, bands=["red"], with_mask=False)
    separate = load(s2, grid, bands=["red"], with_mask=False, mosaic=False)
    acquisitions = {(s.platform, s.datetime) for s in s2}
    assert separate.sizes["time"] == len(s2) > merged.sizes["time"] == len(acquisitions)
    for sid, sources in zip(merged["id"].values, merged["source_ids"].values, strict=True):
        assert "_32U" in sid and sid in sources and "_33U" in sources
    with dask.config.set(scheduler="threads"):
        m = merged.sel(band="red").values
        sep = separate.sel(band="red").values
    primary = [list(separate["id"].values).index(i) for i in merged["id"].values]
    # where the zone-32 item has data its exact values are kept; gaps are filled from zone 33
    p = sep[primary]
    np.testing.assert_array_equal(m[np.isfinite(p)], p[np.isfinite(p)])
    assert np.isfinite(m).sum() >= np.isfinite(p).sum()

"""Analysis-ready composites from a real STAC API over the tiny archive, as a Prefect task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prefect import flow

from tasks.aoi import GridSpec
from tasks.ard import ArdOptions, CompositeRef, composites_for, make_composites, read_composite
from tasks.discover import discover
from tasks.errors import InputError
from tasks.refs import SceneRef
from tasks.stac_server import StacServer
from tasks.synthetic import ArchiveInfo, LandCover, Truth

pytestmark = pytest.mark.filterwarnings(
    # stackstac 0.5.1 multiplies an Affine with `*`, deprecated by affine 3.1 (not our code)
    "ignore:Use `@` matmul:PendingDeprecationWarning"
)


@pytest.fixture(scope="module")
def scenes(tiny_archive: ArchiveInfo, tiny_stac: StacServer) -> list[SceneRef]:
    return discover(
        tiny_archive.aoi,
        "2012-01-01",
        "2023-12-31",
        ["landsat-c2-l2", "sentinel-2-l2a"],
        stac_url=tiny_stac.url,
    )


@pytest.fixture(scope="module")
def grid30(tiny_truth: Truth) -> GridSpec:
    return GridSpec(tiny_truth.grid.epsg, 30.0, tiny_truth.grid.bounds)


PERIODS = {"landsat": ("2012-01-01", "2013-12-31"), "sentinel2": ("2023-01-01", "2023-12-31")}


@pytest.fixture(scope="module")
def composites(
    scenes: list[SceneRef], grid30: GridSpec, tmp_path_factory: pytest.TempPathFactory
) -> CompositeRef:
    return composites_for(scenes, grid30, PERIODS, cache_dir=tmp_path_factory.mktemp("cache"))


def _pure(truth: Truth, year: int, cls: int, grid: GridSpec) -> np.ndarray:
    lc = truth.landcover(year)
    ny, nx = grid.shape
    return (lc[: ny * 3, : nx * 3].reshape(ny, 3, nx, 3) == cls).all(axis=(1, 3))


def test_composites_are_clear_and_spectrally_right(
    composites: CompositeRef, tiny_truth: Truth, grid30: GridSpec
) -> None:
    assert composites.periods == ("landsat", "sentinel2")
    assert composites.bands == ("blue", "green", "red", "nir", "swir16", "swir22")
    for period, years in (("landsat", (2012, 2013)), ("sentinel2", (2023,))):
        refl, count = read_composite(composites, period)
        assert refl.shape[1:] == grid30.shape and count.shape == grid30.shape
        red, nir = refl.sel(band="red").values, refl.sel(band="nir").values
        ndvi = (nir - red) / (nir + red)
        seen = count.values > 0
        # the same class in every year of the period (a reservoir may fill, a forest be cut)
        forest = np.logical_and.reduce(
            [_pure(tiny_truth, y, LandCover.FOREST, grid30) for y in years]
        )
        water = np.logical_and.reduce(
            [_pure(tiny_truth, y, LandCover.WATER, grid30) for y in years]
        )
        forest, water = forest & seen, water & seen
        assert forest.sum() > 20
        # summer clear-sky forest is green; clouds (bright in red) would pull NDVI down
        assert np.nanmedian(ndvi[forest]) > 0.6, period
        if water.sum() > 5:
            # dark, but: Roy et al.'s ETM+ fit adds ~0.04 NIR to water, and the tiny archive's
            # Landsat years leave water pixels only 1-2 clear views (a missed cloud edge shows)
            assert np.nanmedian(nir[water]) < 0.1, period
        assert np.isnan(refl.values[:, count.values == 0]).all()  # no observation: NaN


def test_composite_counts_never_exceed_the_acquisitions(
    composites: CompositeRef, scenes: list[SceneRef]
) -> None:
    acquisitions = {
        "landsat": {(s.platform, s.datetime) for s in scenes if s.sensor == "landsat"},
        "sentinel2": {(s.platform, s.datetime) for s in scenes if s.sensor == "sentinel-2"},
    }
    for period, acqs in acquisitions.items():
        _, count = read_composite(composites, period)
        assert 0 < count.values.max() <= len(acqs)
        assert count.values.mean() > 0.5  # most pixels had at least one clear view


def test_composites_record_provenance(composites: CompositeRef, scenes: list[SceneRef]) -> None:
    meta = json.loads((Path(composites.path) / "composites.json").read_text())
    assert set(meta["scene_ids"]) == {s.id for s in scenes}
    assert meta["mask"]["rejected"] or meta["mask"]["kept"]
    shifts = meta["coregistration"]["scenes"]
    assert shifts and all({"dx_m", "dy_m", "flagged", "status"} <= set(v) for v in shifts.values())
    # per period: its own scenes, all matched against the one pinned reference
    landsat, sentinel2 = (composites.period_provenance(p) for p in ("landsat", "sentinel2"))
    assert set(landsat["scene_ids"]) == {s.id for s in scenes if s.sensor == "landsat"}
    assert set(sentinel2["scene_ids"]) == {s.id for s in scenes if s.sensor == "sentinel-2"}
    assert landsat["reference"] == sentinel2["reference"] == meta["reference"]
    assert meta["coregistration"]["reference"] == meta["reference"]["scene_id"]
    assert set(landsat["coregistration"]["scenes"]) == set(landsat["kept"])


def test_composites_rerun_is_a_no_op(
    composites: CompositeRef, scenes: list[SceneRef], grid30: GridSpec
) -> None:
    cache = Path(composites.path).parents[1]
    # the manifest and every period's GeoTIFF + provenance (they live in the per-period cache)
    files = [Path(composites.path) / "composites.json"]
    files += [f for p in composites.periods for f in composites.tif(p).parent.iterdir()]
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    again = composites_for(scenes, grid30, PERIODS, cache_dir=cache)
    assert again == composites
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes
    for folder in (Path(composites.path).parent, composites.tif("landsat").parents[1]):
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no leftovers


def test_composites_all_scenes_rejected_is_a_clear_error(
    scenes: list[SceneRef], grid30: GridSpec, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="min_clear_fraction"):
        composites_for(
            scenes, grid30, PERIODS, options=ArdOptions(min_clear_fraction=1.0), cache_dir=tmp_path
        )


def test_make_composites_task_in_a_flow(
    prefect_server: None, scenes: list[SceneRef], grid30: GridSpec, composites: CompositeRef
) -> None:
    @flow
    def ard_flow(scenes: list[SceneRef], grid: GridSpec) -> CompositeRef:
        return make_composites(scenes, grid, PERIODS)

    from tasks.settings import get_settings

    get_settings.cache_clear()
    import os

    os.environ["EO_CACHE_DIR"] = str(Path(composites.path).parents[1])
    try:
        ref = ard_flow(scenes, grid30)
    finally:
        os.environ.pop("EO_CACHE_DIR")
        get_settings.cache_clear()
    assert ref == composites  # reused from the cache, through Prefect

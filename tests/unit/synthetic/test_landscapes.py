"""Landscapes beyond the demo's: irrigated paddies, aquaculture ponds, roof materials, snow.

Each is checked where a real archive shows it: paddies are flooded in spring and green in
summer but stay cropland (no change), ponds are a real conversion cropland -> water that
drains in winter, roof materials move built-up spectra, and snow is flagged in SCL / QA_PIXEL
as the products' own classifiers flag it (the OLI value against a real Collection 2 scene over
snow, LC08 005009 2015-07-10 from stactools-packages/landsat, Apache-2.0) and masked by the
analysis-ready chain.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tasks.aoi import GridSpec
from tasks.ard import ArdOptions, analysis_ready_stack
from tasks.refs import SceneRef
from tasks.synthetic import archive_items, create_archive, open_truth, tiny_config
from tasks.synthetic.acquisitions import plan_archive
from tasks.synthetic.bands import reflectance_assets
from tasks.synthetic.masks import SCL, Detection, encode_qa_pixel
from tasks.synthetic.render import render_acquisition
from tasks.synthetic.spectra import RICE_CODE
from tasks.synthetic.world import LandCover, World, build_world
from tests.conftest import realdata_path

SNOW_QA_FILE = ("stactools-packages+landsat", "tests", "data-files", "assets",
                "LC08_L2SP_005009_20150710_20200908_02_T2_QA_PIXEL.TIF")  # fmt: skip

LANDSCAPES = tiny_config(
    landsat_years=(1988, 2013),
    paddy_share=0.4,
    aquaculture_share=0.15,
    roof_materials=(0.25, 0.25, 0.25, 0.25),
)


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(LANDSCAPES)


def _index(world: World, platform: str, day: date, name: str) -> np.ndarray:
    """Normalised difference of two named bands (`name` 'ndwi' or 'ndvi') of the surface."""
    surface = world.surface(platform, day)  # type: ignore[arg-type]
    assets = [a.asset for a in reflectance_assets(platform)]  # type: ignore[arg-type]
    nir_band = "nir" if "nir" in assets else "nir08"
    green, red, nir = (surface[assets.index(b)] for b in ("green", "red", nir_band))
    a, b = (green, nir) if name == "ndwi" else (nir, red)
    return np.asarray((a - b) / (a + b))


def test_the_demo_configuration_draws_no_other_landscape() -> None:
    config = tiny_config()
    world = build_world(config)
    assert world.paddy is None and world.pond is None and world.roof is None
    assert all(a.snow == 0.0 for a in plan_archive(config))


def test_paddies_are_cropland_flooded_in_spring_and_green_in_summer(world: World) -> None:
    i = world.year_index(2013)
    rice = world.crop[i] == RICE_CODE
    assert world.paddy is not None and 0.15 < rice[world.layout.aoi_window].mean() < 0.45
    # rice grows on the same fields every year, and a paddy is cropland in each of them
    # (until the city or a pond takes it, after 2013)
    lc = world.landcover[: i + 1, rice]
    assert (lc == LandCover.CROPLAND).mean() > 0.99
    ndwi_june = _index(world, "sentinel-2a", date(2013, 6, 1), "ndwi")[rice]
    ndvi_august = _index(world, "sentinel-2a", date(2013, 8, 10), "ndvi")[rice]
    assert np.median(ndwi_june) > 0.05  # standing water between the seedlings
    assert np.median(ndvi_august) > 0.6  # a closed green canopy
    dry_fields = (world.crop[i] > 0) & ~rice
    assert np.median(_index(world, "sentinel-2a", date(2013, 6, 1), "ndwi")[dry_fields]) < 0


def test_ponds_are_dug_from_cropland_hold_water_and_drain_in_winter(world: World) -> None:
    assert world.pond is not None
    pond = world.pond
    first, last = world.landcover[0][pond], world.landcover[-1][pond]
    assert (first == LandCover.CROPLAND).mean() > 0.99
    assert (last == LandCover.WATER).mean() > 0.99
    # dug in one year (bare), water from the next, never back
    was_water = np.maximum.accumulate(world.landcover[:, pond] == LandCover.WATER, axis=0)
    assert (world.landcover[:, pond][was_water] == LandCover.WATER).all()
    assert (world.landcover[:, pond] == LandCover.BARE).sum(axis=0).max() == 1
    window = world.layout.aoi_window
    arable = (world.landcover[0][window] == LandCover.CROPLAND).sum()
    assert 0.5 * 0.15 < pond[window].sum() / arable < 1.5 * 0.15
    summer = _index(world, "landsat-8", date(2013, 7, 1), "ndwi")[pond]
    winter = _index(world, "landsat-8", date(2013, 1, 15), "ndwi")[pond]
    assert np.median(summer) > 0.1 and np.median(winter) < -0.1


def test_roof_materials_give_built_up_its_spectral_variety(world: World) -> None:
    assert world.roof is not None
    i = world.year_index(2013)
    built = (world.landcover[i] == LandCover.BUILTUP) & ~world.layout.road
    surface = world.surface("landsat-8", date(2013, 7, 1))
    assets = [a.asset for a in reflectance_assets("landsat-8")]
    blue, red, nir = (surface[assets.index(b)] for b in ("blue", "red", "nir08"))
    median = {
        code: (np.median((red / blue)[built & (world.roof == code)]),
               np.median(nir[built & (world.roof == code)]))
        for code in range(4)
    }  # fmt: skip
    concrete, tile, metal, bitumen = (median[c] for c in range(4))
    assert tile[0] > 1.5 * concrete[0]  # terra cotta is red
    assert metal[1] > concrete[1] > bitumen[1]  # bright sheet metal, dark bitumen
    assert metal[1] > 1.8 * bitumen[1]


def test_snow_is_rendered_and_flagged_in_both_quality_layers() -> None:
    config = tiny_config(months=(1, 2), snow=1.0)
    world = build_world(config)
    snowy = [a for a in plan_archive(config) if a.snow > 0]
    families = set()
    for acquisition in snowy:
        for item in render_acquisition(config, world, acquisition):
            quality = item.quality
            if quality.dtype == np.uint8:
                flagged = quality == SCL.SNOW
                green, _ = item.band("green")
                swir, _ = item.band("swir16")  # 20 m, the SCL grid
                green20 = green.reshape(swir.shape[0], 2, swir.shape[1], 2).mean(axis=(1, 3))
                ndsi = (green20 - swir) / (green20 + swir)
            else:
                flagged = (quality & (1 << 5)) > 0
                green, _ = item.band("green")
                swir, _ = item.band("swir16")
                ndsi = (green - swir) / (green + swir)
                if flagged.any():
                    assert set(np.unique(quality[flagged]).tolist()) & {13664, 30048}
            if flagged.mean() > 0.05:
                families.add(item.spec.collection)
                assert np.nanmin(ndsi[flagged]) > 0.4
                assert np.nanmedian(ndsi[~flagged & np.isfinite(ndsi)]) < 0.4
    assert families == {"landsat-c2-l2", "sentinel-2-l2a"}


def test_snow_qa_pixel_value_occurs_in_a_real_landsat8_product_over_snow() -> None:
    fields = ("fill", "cloud", "cloud_core", "cloud_fringe", "cirrus", "shadow", "water",
              "vegetation", "dark", "unclassified")  # fmt: skip
    detection = Detection(**{f: np.zeros((1, 1), bool) for f in fields}, snow=np.ones((1, 1), bool))
    value = int(encode_qa_pixel(detection, oli=True)[0, 0])
    assert value == 30048
    with rasterio.open(realdata_path(*SNOW_QA_FILE)) as src:
        assert value in set(np.unique(src.read(1)).tolist())


def test_the_analysis_ready_chain_masks_flagged_snow(tmp_path: Path) -> None:
    config = tiny_config(
        months=(1, 2),
        snow=1.0,
        landsat_years=None,
        platforms=("sentinel-2a", "sentinel-2b"),
        max_scenes_per_year=4,
    )
    info = create_archive(tmp_path / "snowy", config, workers=1)
    scenes = [SceneRef.from_item(item) for item in archive_items(info.root)]
    truth = open_truth(info.root)
    grid = GridSpec(truth.grid.epsg, 30.0, truth.grid.bounds)
    counts = {}
    for mask_snow in (True, False):
        options = ArdOptions(mask_snow=mask_snow, coregister=False, min_clear_fraction=0.0)
        stack, _ = analysis_ready_stack(scenes, grid, options)
        green = stack.sel(band="green").values
        swir = stack.sel(band="swir16").values
        nir = stack.sel(band="nir").values
        snow_like = ((green - swir) / (green + swir) > 0.4) & (nir > 0.11)  # not water
        counts[mask_snow] = (np.isfinite(green).sum(), np.nansum(snow_like))
    assert counts[True][0] < 0.95 * counts[False][0]
    assert counts[False][1] > 0.1 * counts[False][0]  # snow is there when left in
    # and gone when masked, but for patch edges below the NDSI test and pixels that the 30 m
    # resampling mixes from flagged and unflagged 20 m SCL cells
    assert counts[True][1] < 0.15 * counts[False][1]
    assert ArdOptions().mask_snow

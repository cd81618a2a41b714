"""Tests of tasks.cloudmask: every SCL class / QA_PIXEL bit, buffers in metres, clear fractions,
scene rejection, s2cloudless band checks, and real Landsat / Sentinel-2 masks against the
scenes' own metadata."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine

from tasks.cloudmask import (
    S2CLOUDLESS_BANDS,
    QaPixelBit,
    SclClass,
    buffer_mask,
    clear_fraction,
    cloud_masks,
    landsat_flag,
    landsat_footprint,
    landsat_valid_mask,
    mask_stack,
    s2_footprint,
    s2_valid_mask,
    s2cloudless_probability,
    screen_scenes,
)
from tasks.errors import InputError
from tasks.synthetic import Raster, Truth, TruthClass
from tests.conftest import realdata_path

EPSG = 32633  # UTM 33N: a real CRS for the tiny grids
REFL_BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")
# QA_PIXEL codes seen in real Landsat 8 C2 L2 scenes (decoded bits in comments).
QA_FILL = 1  # bit 0
QA_CLEAR_LAND = 21824  # bit 6 clear + low confidences
QA_CLOUD = 22280  # bit 3 cloud, high cloud confidence
QA_SHADOW = 23888  # bit 4 shadow (bit 6 "clear" is also set: clear only means "not cloud")
QA_DILATED = 21826  # bit 1 dilated cloud + bit 6 clear

S2_FIXTURE = (
    "cogeotiff+rio-tiler-pds",
    *("tests", "fixtures", "sentinel-cogs", "sentinel-s2-l2a-cogs"),
    *("29", "R", "KH", "2020", "2", "S2A_29RKH_20200219_0_L2A"),
)
USGS_SCENE = (
    "cogeotiff+rio-tiler-pds",
    *("tests", "fixtures", "usgs-landsat", "collection02", "level-2", "standard", "oli-tirs"),
    *("2020", "001", "062", "LC08_L2SP_001062_20201031_20201106_02_T2"),
)
STACTOOLS = ("stactools-packages+landsat", "tests", "data-files")


# ---- factories -------------------------------------------------------------------------------
def make_stack(
    masks: np.ndarray,
    platforms: Sequence[str],
    *,
    resolution: float = 30.0,
    reflectance: float = 0.1,
    chunks: dict[str, int] | None = None,
    mask_band: str | None = None,
) -> xr.DataArray:
    """A (time, band, y, x) stack like the loader's, with mask codes `masks` (time, y, x).

    Each scene's codes go to ``scl`` (Sentinel-2) or ``qa_pixel`` (Landsat) by platform, NaN in
    the other mask band.
    """
    t, ny, nx = masks.shape
    bands = [*REFL_BANDS, "scl", "qa_pixel"]
    data = np.full((t, len(bands), ny, nx), reflectance, np.float32)
    data[:, -2:] = np.nan
    for i, p in enumerate(platforms):
        col = (
            -2
            if (mask_band or ("scl" if p.startswith("sentinel") else "qa_pixel")) == "scl"
            else -1
        )
        data[i, col] = masks[i]
    x0, y0 = 400_000.0, 5_000_000.0
    arr = xr.DataArray(
        da.from_array(data, chunks=(1, -1, *(chunks or {"y": ny, "x": nx}).values())),
        dims=("time", "band", "y", "x"),
        coords={
            "time": np.datetime64("2021-06-01", "ns") + np.arange(t) * np.timedelta64(5, "D"),
            "band": bands,
            "y": y0 - resolution * (np.arange(ny) + 0.5),
            "x": x0 + resolution * (np.arange(nx) + 0.5),
            "id": ("time", [f"scene-{i}" for i in range(t)]),
            "platform": ("time", list(platforms)),
        },
        attrs={"crs": f"epsg:{EPSG}"},
    )
    return arr


# ---- Sentinel-2 SCL ----------------------------------------------------------------------------
def test_s2_valid_mask_each_class() -> None:
    codes = xr.DataArray(np.array([*range(12), np.nan], np.float32), dims="x")
    usable = {2, 4, 5, 6, 7, 11}  # dark/cast shadow, vegetation, bare, water, unclassified, snow
    expected = [c in usable for c in range(12)] + [False]
    assert s2_valid_mask(codes).values.tolist() == expected
    with_snow = s2_valid_mask(codes, mask_snow=True).values.tolist()
    assert with_snow == [c in usable - {SclClass.SNOW_ICE} for c in range(12)] + [False]
    assert s2_footprint(codes).values.tolist() == [c != 0 for c in range(12)] + [False]


# ---- Landsat QA_PIXEL --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bit", "usable_default"),
    [
        (QaPixelBit.FILL, False),
        (QaPixelBit.DILATED_CLOUD, False),
        (QaPixelBit.CIRRUS, False),
        (QaPixelBit.CLOUD, False),
        (QaPixelBit.CLOUD_SHADOW, False),
        (QaPixelBit.SNOW, True),
        (QaPixelBit.CLEAR, True),
        (QaPixelBit.WATER, True),
    ],
)
def test_landsat_valid_mask_each_bit(bit: QaPixelBit, usable_default: bool) -> None:
    qa = xr.DataArray(np.array([1 << bit, (1 << bit) | (3 << 8)], np.float32), dims="x")
    assert landsat_valid_mask(qa).values.tolist() == [usable_default] * 2
    assert landsat_flag(qa, bit).values.all()
    assert not landsat_flag(qa, (bit + 1) % 8).values.any()


def test_landsat_valid_mask_options() -> None:
    qa = xr.DataArray(np.array([QA_DILATED, 1 << 2, 1 << 5, QA_CLEAR_LAND], np.float32), dims="x")
    assert landsat_valid_mask(qa).values.tolist() == [False, False, True, True]
    relaxed = landsat_valid_mask(qa, dilated=False, cirrus=False, snow=True)
    assert relaxed.values.tolist() == [True, True, False, True]


def test_landsat_valid_mask_real_codes() -> None:
    qa = xr.DataArray(
        np.array([QA_CLEAR_LAND, QA_CLOUD, QA_SHADOW, QA_FILL, np.nan], np.float32), dims="x"
    )
    assert landsat_valid_mask(qa).values.tolist() == [True, False, False, False, False]
    assert landsat_footprint(qa).values.tolist() == [True, True, True, False, False]


# ---- buffer ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("buffer_m", "resolution", "radius_px"),
    [(60.0, 30.0, 2), (61.0, 30.0, 3), (60.0, 10.0, 6), (10.0, 30.0, 1)],
)
def test_buffer_mask_radius_in_metres(buffer_m: float, resolution: float, radius_px: int) -> None:
    n = 31
    flagged = np.zeros((1, n, n), bool)
    flagged[0, 15, 15] = True
    arr = make_stack(np.zeros((1, n, n)), ["landsat-8"], resolution=resolution)
    fl = xr.DataArray(flagged, dims=("time", "y", "x"), coords={"x": arr["x"], "y": arr["y"]})
    out = buffer_mask(fl, buffer_m).values[0]
    yy, xx = np.mgrid[:n, :n]
    dist = np.hypot(yy - 15, xx - 15)
    np.testing.assert_array_equal(out, dist <= radius_px)


def test_buffer_mask_chunked_equals_whole_array_and_not_across_time() -> None:
    rng = np.random.default_rng(3)
    flagged = rng.random((3, 40, 50)) > 0.97
    flagged[1] = False
    coords = {"x": 15.0 + 30 * np.arange(50), "y": 15.0 + 30 * np.arange(40)}
    whole = buffer_mask(xr.DataArray(flagged, dims=("time", "y", "x"), coords=coords), 90.0)
    chunked = buffer_mask(
        xr.DataArray(
            da.from_array(flagged, chunks=(1, 7, 9)), dims=("time", "y", "x"), coords=coords
        ),
        90.0,
    )
    assert isinstance(chunked.data, da.Array)
    np.testing.assert_array_equal(chunked.values, whole.values)
    assert not whole.values[1].any()  # nothing bleeds in from the neighbouring scenes
    assert whole.values.sum() > flagged.sum()


def test_buffer_mask_negative_is_input_error() -> None:
    fl = xr.DataArray(np.zeros((2, 2), bool), dims=("y", "x"), coords={"x": [0.0, 30.0]})
    with pytest.raises(InputError, match="buffer_m"):
        buffer_mask(fl, -5.0)


# ---- masks of a stack --------------------------------------------------------------------------
def test_clear_fraction_counts_only_the_footprint() -> None:
    scl = np.full((1, 10, 10), SclClass.VEGETATION, np.float32)
    scl[0, :, :5] = SclClass.NO_DATA  # half outside the swath
    scl[0, :5, 5:] = SclClass.CLOUD_HIGH_PROBABILITY  # half of the footprint cloudy
    masks = cloud_masks(make_stack(scl, ["sentinel-2a"]))
    assert int(masks["footprint"].sum()) == 50
    assert float(clear_fraction(masks)[0]) == pytest.approx(0.5)


def test_cloud_masks_pick_mask_band_by_platform() -> None:
    codes = np.stack(
        [
            np.full((4, 4), SclClass.CLOUD_SHADOW, np.float32),
            np.full((4, 4), QA_CLEAR_LAND, np.float32),
        ]
    )
    codes[0, 0, 0] = SclClass.WATER
    codes[1, 0, 0] = QA_CLOUD
    masks = cloud_masks(make_stack(codes, ["sentinel-2b", "landsat-7"]))
    clear = masks["clear"].values
    assert clear[0].sum() == 1 and clear[0, 0, 0]
    assert clear[1].sum() == 15 and not clear[1, 0, 0]


def test_cloud_masks_buffer_shrinks_clear_area() -> None:
    scl = np.full((1, 21, 21), SclClass.NOT_VEGETATED, np.float32)
    scl[0, 10, 10] = SclClass.CLOUD_MEDIUM_PROBABILITY
    stack = make_stack(scl, ["sentinel-2a"], resolution=10.0, chunks={"y": 8, "x": 8})
    plain = cloud_masks(stack)["clear"].values
    buffered = cloud_masks(stack, buffer_m=20.0)["clear"].values
    assert (~plain).sum() == 1
    assert (~buffered).sum() == 13  # disk of radius 2 px = 20 m at 10 m


def test_cloud_masks_missing_mask_band_is_input_error() -> None:
    stack = make_stack(np.full((1, 3, 3), 4.0), ["sentinel-2a"]).sel(band=list(REFL_BANDS))
    with pytest.raises(InputError, match="'scl'"):
        cloud_masks(stack)
    ls = make_stack(np.full((1, 3, 3), QA_CLEAR_LAND), ["landsat-8"]).drop_sel(band="qa_pixel")
    with pytest.raises(InputError, match="'qa_pixel'"):
        cloud_masks(ls)


def test_cloud_masks_unknown_platform_is_input_error() -> None:
    with pytest.raises(InputError, match="spot-6"):
        cloud_masks(make_stack(np.zeros((1, 2, 2)), ["spot-6"], mask_band="scl"))


# ---- screening -----------------------------------------------------------------------------------
def test_mask_stack_rejects_cloudy_scene_with_reason(caplog: pytest.LogCaptureFixture) -> None:
    scl = np.full((3, 10, 10), SclClass.VEGETATION, np.float32)
    scl[1, :9] = SclClass.CLOUD_HIGH_PROBABILITY  # 10 % clear
    scl[1, 9, 0] = SclClass.CLOUD_SHADOW  # -> 9 % clear
    scl[2] = SclClass.NO_DATA  # outside the swath
    stack = make_stack(scl, ["sentinel-2a"] * 3)
    with caplog.at_level(logging.INFO, logger="tasks.cloudmask"):
        masked, report = mask_stack(stack, min_clear_fraction=0.1)
    assert report.rejected_ids == ("scene-1", "scene-2")
    assert "0.090 below min_clear_fraction 0.100" in report.rejected[0].reason
    assert "no clear pixel" in report.rejected[1].reason
    assert report.kept_ids == ("scene-0",)
    assert report.clear_fraction["scene-1"] == pytest.approx(0.09)
    assert "rejected scene scene-1" in caplog.text and "rejected scene scene-2" in caplog.text
    assert masked["id"].values.tolist() == ["scene-0"]
    assert masked["clear_fraction"].values.tolist() == [1.0]
    assert report.to_dict()["rejected"][0]["id"] == "scene-1"


def test_mask_stack_masks_reflectance_and_drops_mask_bands() -> None:
    qa = np.full((2, 6, 6), QA_CLEAR_LAND, np.float32)
    qa[0, :2] = QA_CLOUD
    qa[1, :, :3] = QA_FILL  # an SLC-off-like gap: outside the footprint, not "cloudy"
    stack = make_stack(qa, ["landsat-7", "landsat-8"], chunks={"y": 3, "x": 3})
    masked, report = mask_stack(stack, min_clear_fraction=0.5)
    assert isinstance(masked.data, da.Array) and isinstance(masked["valid"].data, da.Array)
    assert masked["band"].values.tolist() == list(REFL_BANDS)
    assert report.rejected == ()
    values = masked.values
    assert np.isnan(values[0, :, :2]).all() and np.isfinite(values[0, :, 2:]).all()
    assert np.isnan(values[1, :, :, :3]).all() and np.isfinite(values[1, :, :, 3:]).all()
    assert masked["clear_fraction"].values == pytest.approx([4 / 6, 1.0])
    np.testing.assert_array_equal(masked["valid"].values, np.isfinite(values[:, 0]))


def test_screen_scenes_bad_threshold_is_input_error() -> None:
    fr = xr.DataArray([0.5], dims="time")
    with pytest.raises(InputError, match="min_clear_fraction"):
        screen_scenes(fr, min_clear_fraction=1.5)


# ---- s2cloudless -------------------------------------------------------------------------------
def _s2cloudless_stack(pixels: dict[str, list[float]], names: Sequence[str]) -> xr.DataArray:
    """One scene, one row: each pixel a 10-band TOA spectrum (model band order)."""
    spectra = np.array(list(pixels.values()), np.float32).T  # (band, pixel)
    return xr.DataArray(
        spectra[None, :, None, :],
        dims=("time", "band", "y", "x"),
        coords={"band": list(names), "platform": ("time", ["sentinel-2a"])},
    )


# Typical Level-1C TOA reflectance, bands B01 B02 B04 B05 B08 B8A B09 B10 B11 B12.
VEGETATION_TOA = [0.12, 0.09, 0.05, 0.10, 0.33, 0.35, 0.11, 0.002, 0.17, 0.08]
CLOUD_TOA = [0.55, 0.52, 0.50, 0.52, 0.55, 0.54, 0.25, 0.08, 0.42, 0.30]


def test_s2cloudless_probability_separates_cloud_from_vegetation() -> None:
    names = [common for _, common in S2CLOUDLESS_BANDS]
    stack = _s2cloudless_stack({"veg": VEGETATION_TOA, "cloud": CLOUD_TOA}, names)
    proba = s2cloudless_probability(stack).values[0, 0]
    assert proba[0] < 0.2 < 0.6 < proba[1]
    # Same bands named by code, shuffled, in a dask array: same answer (bands picked by name).
    codes = [code for code, _ in S2CLOUDLESS_BANDS]
    shuffled = stack.assign_coords(band=codes).isel(band=[3, 1, 0, 2, 9, 8, 7, 6, 5, 4])
    lazy = s2cloudless_probability(shuffled.chunk({"band": 3}))
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_allclose(lazy.values[0, 0], proba, rtol=1e-6)


def test_cloud_masks_s2cloudless_fallback_where_no_scl() -> None:
    names = [common for _, common in S2CLOUDLESS_BANDS]
    stack = _s2cloudless_stack({"veg": VEGETATION_TOA, "cloud": CLOUD_TOA}, names)
    scl = xr.DataArray(
        [[[[SclClass.CLOUD_HIGH_PROBABILITY, np.nan]]]],
        dims=("time", "band", "y", "x"),
        coords={"band": ["scl"]},
    )
    stack = xr.concat([stack, scl.assign_coords(platform=stack["platform"])], dim="band")
    stack = stack.assign_coords(x=[15.0, 45.0])
    # Pixel 0 has SCL (cloud) -> SCL decides; pixel 1 has none -> s2cloudless says cloud.
    fallback = cloud_masks(stack, s2cloudless="fallback")
    assert fallback["footprint"].values.tolist() == [[[True, True]]]
    assert fallback["clear"].values.tolist() == [[[False, False]]]
    always = cloud_masks(stack, s2cloudless="always")
    assert always["clear"].values.tolist() == [[[True, False]]]  # SCL ignored: veg is clear


def test_s2cloudless_missing_bands_named() -> None:
    l2a_bands = ["blue", "green", "red", "rededge1", "nir", "nir08", "swir16", "swir22", "scl"]
    stack = xr.DataArray(np.zeros((1, len(l2a_bands), 2, 2)), dims=("time", "band", "y", "x"))
    stack = stack.assign_coords(band=l2a_bands)
    with pytest.raises(InputError) as err:
        s2cloudless_probability(stack)
    assert "B01 (coastal)" in str(err.value) and "B09 (nir09)" in str(err.value)
    assert "B10 (cirrus)" in str(err.value) and "B02" not in str(err.value).split("lacks")[1]


def test_s2cloudless_real_l2a_item_lacks_b10() -> None:
    folder = realdata_path(*S2_FIXTURE)
    item = json.loads((folder / "S2A_29RKH_20200219_0_L2A.json").read_text())
    assets = [k for k in item["assets"] if not k.endswith("-jp2")]
    stack = xr.DataArray(np.zeros((1, len(assets), 1, 1)), dims=("time", "band", "y", "x"))
    with pytest.raises(InputError, match=r"lacks B10 \(cirrus\)\. "):
        s2cloudless_probability(stack.assign_coords(band=assets))


# ---- real scenes -------------------------------------------------------------------------------


def _read_as_stack(path: Path, band: str, platform: str) -> xr.DataArray:
    """One single-band GeoTIFF as a one-scene (time, band, y, x) float stack with UTM coords."""
    with rasterio.open(path) as ds:
        data = ds.read(1).astype(np.float32)
        t = ds.transform
        assert ds.crs.to_epsg() is not None and 32601 <= ds.crs.to_epsg() <= 32760
    ny, nx = data.shape
    return xr.DataArray(
        data[None, None],
        dims=("time", "band", "y", "x"),
        coords={
            "band": [band],
            "y": t.f + t.e * (np.arange(ny) + 0.5),
            "x": t.c + t.a * (np.arange(nx) + 0.5),
            "id": ("time", [path.parent.name]),
            "platform": ("time", [platform]),
        },
    )


def _landsat_scenes() -> list[Path]:
    files = [
        realdata_path(
            *STACTOOLS, "assets", "LC08_L2SP_005009_20150710_20200908_02_T2_QA_PIXEL.TIF"
        ),
        realdata_path(
            *STACTOOLS, "assets3", "LC08_L2SP_008059_20191201_20200825_02_T1_QA_PIXEL.TIF"
        ),
        realdata_path(*USGS_SCENE, "LC08_L2SP_001062_20201031_20201106_02_T2_QA_PIXEL.TIF"),
    ]
    return files


# MTL CLOUD_COVER is the percentage of QA_PIXEL cloud-bit (bit 3) pixels among the scene's
# non-fill pixels, computed on the full-resolution 30 m scene. The fixtures are nearest-neighbour
# subsamples (512x512 and 5 %), i.e. unbiased samples of ~1.5e5 pixels: the decoded fraction
# differed by 0.02-0.04 percentage points on these three scenes. 1.0 pp leaves room for another
# subsample while a wrong bit (e.g. counting the dilated-cloud bit too: +3.2 and +3.9 pp on the
# stactools scenes) fails.
LANDSAT_CLOUD_COVER_TOL_PP = 1.0


def test_landsat_cloud_fraction_matches_mtl_cloud_cover() -> None:
    for qa_path in _landsat_scenes():
        mtl = json.loads(Path(str(qa_path).replace("QA_PIXEL.TIF", "MTL.json")).read_text())
        cloud_cover = float(mtl["LANDSAT_METADATA_FILE"]["IMAGE_ATTRIBUTES"]["CLOUD_COVER"])
        qa = _read_as_stack(qa_path, "qa_pixel", "landsat-8").isel(band=0, time=0)
        footprint = landsat_footprint(qa)
        cloud = landsat_flag(qa, QaPixelBit.CLOUD) & footprint
        decoded = 100.0 * float(cloud.sum() / footprint.sum())
        assert decoded == pytest.approx(cloud_cover, abs=LANDSAT_CLOUD_COVER_TOL_PP), qa_path.name
        if "stactools" in str(qa_path):  # the tolerance tells the cloud bit from cloud|dilated
            dilated = landsat_flag(qa, QaPixelBit.DILATED_CLOUD) & footprint
            with_dilated = 100.0 * float((cloud | dilated).sum() / footprint.sum())
            assert abs(with_dilated - cloud_cover) > LANDSAT_CLOUD_COVER_TOL_PP


def test_landsat_real_scene_999_percent_cloud_is_rejected() -> None:
    qa_path = _landsat_scenes()[2]
    stack = _read_as_stack(qa_path, "qa_pixel", "landsat-8")
    red = _read_as_stack(qa_path.with_name(qa_path.name.replace("QA_PIXEL", "SR_B4")), "red", "")
    stack = xr.concat([red.assign_coords(platform=stack["platform"]), stack], dim="band")
    masked, report = mask_stack(stack.chunk({"y": 128, "x": 128}), min_clear_fraction=0.1)
    assert report.rejected_ids == (qa_path.parent.name,)
    assert report.clear_fraction[qa_path.parent.name] < 0.001
    assert masked.sizes["time"] == 0


# Sen2Cor's s2:*_percentage are shares of the tile's valid (non-no-data) 20 m pixels. The
# fixture keeps one SCL pixel in 100 (10x decimation, 549x549 = 3.0e5 samples): the binomial
# standard error is at most 0.09 pp (at 50 %) and the largest observed difference is 0.05 pp
# (thin cirrus 3.46 vs 3.41). 0.25 pp per class is about 3 standard errors at worst.
S2_CLASS_TOL_PP = 0.25
S2_CLASS_PROPERTY = {
    SclClass.SATURATED_OR_DEFECTIVE: "s2:saturated_defective_pixel_percentage",
    SclClass.DARK_AREA_OR_CAST_SHADOW: "s2:dark_features_percentage",
    SclClass.CLOUD_SHADOW: "s2:cloud_shadow_percentage",
    SclClass.VEGETATION: "s2:vegetation_percentage",
    SclClass.NOT_VEGETATED: "s2:not_vegetated_percentage",
    SclClass.WATER: "s2:water_percentage",
    SclClass.UNCLASSIFIED: "s2:unclassified_percentage",
    SclClass.CLOUD_MEDIUM_PROBABILITY: "s2:medium_proba_clouds_percentage",
    SclClass.CLOUD_HIGH_PROBABILITY: "s2:high_proba_clouds_percentage",
    SclClass.THIN_CIRRUS: "s2:thin_cirrus_percentage",
    SclClass.SNOW_ICE: "s2:snow_ice_percentage",
}


def test_s2_scl_class_fractions_match_item_percentages() -> None:
    folder = realdata_path(*S2_FIXTURE)
    props = json.loads((folder / "S2A_29RKH_20200219_0_L2A.json").read_text())["properties"]
    stack = _read_as_stack(folder / "SCL.tif", "scl", props["platform"])
    scl = stack.isel(time=0, band=0)
    n_valid = float(s2_footprint(scl).sum())
    for cls, prop in S2_CLASS_PROPERTY.items():
        share = 100.0 * float((scl == cls).sum()) / n_valid
        assert share == pytest.approx(props[prop], abs=S2_CLASS_TOL_PP), prop
    # The mask's flagged share = the item's shadow + cloud + cirrus + saturated percentages.
    flagged_pp = sum(
        props[S2_CLASS_PROPERTY[c]]
        for c in (
            SclClass.SATURATED_OR_DEFECTIVE,
            SclClass.CLOUD_SHADOW,
            SclClass.CLOUD_MEDIUM_PROBABILITY,
            SclClass.CLOUD_HIGH_PROBABILITY,
            SclClass.THIN_CIRRUS,
        )
    )
    frac = float(clear_fraction(cloud_masks(stack))[0])
    assert 100.0 * (1.0 - frac) == pytest.approx(flagged_pp, abs=2 * S2_CLASS_TOL_PP)
    assert 100.0 * (1.0 - frac) == pytest.approx(props["eo:cloud_cover"], abs=2 * S2_CLASS_TOL_PP)


# ---- synthetic archive -------------------------------------------------------------------------
# The archive's SCL / QA_PIXEL come from a simulated imperfect classifier (errors at cloud and
# shadow edges, undetectable thin cirrus on TM/ETM+, bright roofs taken for cloud): measured
# agreement with the truth was 0.979-0.981 pooled and >= 0.953 per scene on the tiny archive
# (two generator revisions); 0.90 per scene leaves room for a cloudier draw.
SYNTHETIC_MIN_AGREEMENT = 0.95
SYNTHETIC_MIN_SCENE_AGREEMENT = 0.90


def _sample_onto(codes: np.ndarray, src_transform: Affine, like: Raster) -> np.ndarray:
    """Mask codes sampled (nearest, by pixel centre) onto the grid of `like`; NaN outside."""
    rows, cols = np.mgrid[: like.array.shape[0], : like.array.shape[1]]
    t, s = like.transform, src_transform  # north-up grids: no rotation terms
    xs, ys = t.c + t.a * (cols + 0.5), t.f + t.e * (rows + 0.5)
    c = np.floor((xs - s.c) / s.a).astype(int)
    r = np.floor((ys - s.f) / s.e).astype(int)
    inside = (r >= 0) & (r < codes.shape[0]) & (c >= 0) & (c < codes.shape[1])
    out = np.full(like.array.shape, np.nan, np.float32)
    out[inside] = codes[r[inside], c[inside]]
    return out


def test_mask_agrees_with_synthetic_truth(
    tiny_items: list[dict[str, Any]], tiny_truth: Truth
) -> None:
    agree = total = 0
    for item in tiny_items:
        sentinel = str(item["properties"]["platform"]).startswith("sentinel-2")
        asset = item["assets"]["scl" if sentinel else "qa_pixel"]["href"]
        with rasterio.open(asset) as ds:
            codes, transform = ds.read(1).astype(np.float32), ds.transform
        truth = tiny_truth.cloud_mask(item["id"])
        sampled = xr.DataArray(_sample_onto(codes, transform, truth), dims=("y", "x"))
        if sentinel:
            footprint, clear = s2_footprint(sampled).values, s2_valid_mask(sampled).values
        else:
            footprint, clear = landsat_footprint(sampled).values, landsat_valid_mask(sampled).values
        both = footprint & (truth.array != TruthClass.NODATA)
        same = (~clear == (truth.array != TruthClass.CLEAR)) & both
        assert both.sum() > 0, item["id"]
        assert same.sum() / both.sum() >= SYNTHETIC_MIN_SCENE_AGREEMENT, item["id"]
        agree += int(same.sum())
        total += int(both.sum())
    assert agree / total >= SYNTHETIC_MIN_AGREEMENT

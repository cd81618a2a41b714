"""The written archive: COGs, STAC Items as Earth Search writes them, product conventions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import pytest
import rasterio
import shapely
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import shape
from skimage.filters import window
from skimage.registration import phase_cross_correlation

from tasks.errors import InputError
from tasks.synthetic import (
    ArchiveInfo,
    LandCover,
    Truth,
    TruthClass,
    archive_items,
    create_archive,
    open_truth,
    tiny_config,
)
from tasks.synthetic.masks import QA
from tasks.synthetic.stac import s2_boa_offset
from tests.conftest import realdata_path
from tests.unit.synthetic.conftest import asset_path

CASSETTE = (
    "_derived",
    "pystac-client-cassettes",
    "test_multiple_collections__00_FeatureCollection.json",
)


def _reflectance(item: dict[str, Any], asset: str) -> np.ndarray:
    """Decode an asset with its own raster:bands scale/offset; nodata becomes NaN."""
    band = item["assets"][asset]["raster:bands"][0]
    with rasterio.open(asset_path(item, asset)) as src:
        dn = src.read(1)
    return np.where(dn == band["nodata"], np.nan, dn * band["scale"] + band["offset"])


def _read(item: dict[str, Any], asset: str) -> np.ndarray:
    with rasterio.open(asset_path(item, asset)) as src:
        return src.read(1)


def _s2(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in items if i["collection"] == "sentinel-2-l2a"]


def _landsat(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in items if i["collection"] == "landsat-c2-l2"]


def test_create_archive_reports_what_it_wrote(tiny_archive: ArchiveInfo, tiny_items: list) -> None:
    assert set(tiny_archive.collections) == {"sentinel-2-l2a", "landsat-c2-l2"}
    assert sum(tiny_archive.n_items.values()) == len(tiny_items)
    assert tiny_archive.epsg == 32632
    aoi = shape(tiny_archive.aoi)
    assert aoi.contains(
        shapely.Point(tiny_archive.config.center_lon, tiny_archive.config.center_lat)
    )
    assert 1.4 < aoi.area * 111.32**2 * np.cos(np.radians(51.35)) < 3.0  # km2 of a ~1.5 km square


def test_create_archive_is_idempotent(tiny_archive: ArchiveInfo) -> None:
    stamp = (tiny_archive.root / "archive.json").stat().st_mtime_ns
    again = create_archive(tiny_archive.root, tiny_archive.config)
    assert again == tiny_archive
    assert (tiny_archive.root / "archive.json").stat().st_mtime_ns == stamp
    assert not [p for p in tiny_archive.root.parent.iterdir() if p.name.startswith(".")]


def test_create_archive_same_seed_same_bytes_other_seed_other_data(
    tiny_archive: ArchiveInfo, tiny_items: list, tmp_path: Path
) -> None:
    twin = create_archive(tmp_path / "twin", tiny_archive.config, workers=2)
    for item in tiny_items[:4]:
        for asset in item["assets"]:
            mine = asset_path(item, asset).read_bytes()
            theirs = (
                twin.root / asset_path(item, asset).relative_to(tiny_archive.root)
            ).read_bytes()
            assert mine == theirs, f"{item['id']}/{asset} differs between runs"
    twin_items = archive_items(twin.root)
    as_text = json.dumps(twin_items).replace(str(twin.root), str(tiny_archive.root))
    assert json.loads(as_text) == tiny_items

    other = create_archive(
        tmp_path / "other", tiny_archive.config.model_copy(update={"seed": 1}), workers=1
    )
    year = tiny_archive.config.end_year
    assert not np.array_equal(
        open_truth(other.root).landcover(year), open_truth(tiny_archive.root).landcover(year)
    )
    first = archive_items(other.root)[0]
    assert first["id"] != tiny_items[0]["id"] or not np.array_equal(
        _read(first, "red"), _read(tiny_items[0], "red")
    )


def test_archive_cogs_are_valid(tiny_archive: ArchiveInfo, tiny_items: list) -> None:
    for item in (_s2(tiny_items)[0], _landsat(tiny_items)[0]):
        for asset in item["assets"]:
            valid, errors, _ = cog_validate(asset_path(item, asset), quiet=True)
            assert valid, (item["id"], asset, errors)
            with rasterio.open(asset_path(item, asset)) as src:
                assert src.profile["tiled"] and src.compression is not None
                assert src.overviews(1), "COGs carry overviews"


def test_sentinel2_20m_bands_are_written_at_20m(tiny_items: list) -> None:
    item = _s2(tiny_items)[0]
    for asset, resolution in (
        ("blue", 10),
        ("nir", 10),
        ("rededge1", 20),
        ("swir22", 20),
        ("scl", 20),
    ):
        with rasterio.open(asset_path(item, asset)) as src:
            assert src.res == (resolution, resolution)
            assert list(src.shape) == item["assets"][asset]["proj:shape"]
            assert list(src.transform)[:6] == item["assets"][asset]["proj:transform"]


def test_digital_numbers_decode_to_the_noise_free_rendering(
    tiny_items: list, tiny_truth: Truth
) -> None:
    for item in tiny_items:
        for asset in ("red", "swir16"):
            decoded = _reflectance(item, asset)
            clean, transform, crs = tiny_truth.noise_free(item["id"], asset)
            assert crs == item["assets"][asset]["proj:code"]
            assert list(transform)[:6] == item["assets"][asset]["proj:transform"]
            assert np.array_equal(np.isnan(decoded), np.isnan(clean))
            residual = (decoded - clean)[np.isfinite(clean)]
            assert abs(residual.mean()) < 1e-3
            assert 0.001 < residual.std() < 0.006  # the stated sensor noise (0.0015-0.005)


def test_sentinel2_offset_follows_the_processing_baseline(tiny_items: list) -> None:
    for item in _s2(tiny_items):
        props = item["properties"]
        offset = item["assets"]["red"]["raster:bands"][0]["offset"]
        assert props["earthsearch:boa_offset_applied"] is (
            props["s2:processing_baseline"] >= "04.00"
        )
        assert offset == (-0.1 if props["earthsearch:boa_offset_applied"] else 0.0)
    assert s2_boa_offset(datetime(2021, 6, 1, tzinfo=UTC)) == 0.0


def _invalid(item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Product mask decoded as a masking stage would: (invalid, valid data) on the item's
    finest grid."""
    if item["collection"] == "sentinel-2-l2a":
        scl = np.repeat(np.repeat(_read(item, "scl"), 2, axis=0), 2, axis=1)
        return np.isin(scl, [3, 8, 9, 10]), scl != 0
    qa = _read(item, "qa_pixel")
    flags = QA.CLOUD | QA.CIRRUS | QA.SHADOW | QA.DILATED
    return (qa & flags) != 0, qa != QA.FILL


def test_quality_layers_agree_with_the_truth_cloud_mask(
    tiny_items: list, tiny_truth: Truth
) -> None:
    for item in tiny_items:
        truth = tiny_truth.cloud_mask(item["id"]).array
        invalid, data = _invalid(item)
        both = data & (truth != TruthClass.NODATA)
        assert both.sum() > 0.98 * data.sum(), "quality layer and truth share the data extent"
        truly_invalid = np.isin(truth, [TruthClass.CLOUD, TruthClass.CIRRUS, TruthClass.SHADOW])
        agreement = float((invalid == truly_invalid)[both].mean())
        assert agreement >= 0.95, (item["id"], agreement)


def test_misregistration_is_recorded_and_present(tiny_items: list, tiny_truth: Truth) -> None:
    full = [i for i in _s2(tiny_items) if tiny_truth.scenes[i["id"]].valid_fraction == 1.0]
    item = min(full, key=lambda i: tiny_truth.scenes[i["id"]].cloud_fraction)
    shift = tiny_truth.shift(item["id"])
    assert shift.dcol_px == pytest.approx(shift.dx_m / 10.0)
    assert shift.drow_px == pytest.approx(-shift.dy_m / 10.0)
    moved = _reflectance(item, "nir")
    reference = tiny_truth.noise_free(item["id"], "nir", shifted=False).array
    taper = window("hann", moved.shape)
    found, _, _ = phase_cross_correlation(
        (reference - reference.mean()) * taper, (moved - moved.mean()) * taper,
        upsample_factor=50, normalization=None,
    )  # fmt: skip
    assert max(abs(shift.drow_px), abs(shift.dcol_px)) > 0.1
    np.testing.assert_allclose(-found, [shift.drow_px, shift.dcol_px], atol=0.1)


def test_items_carry_the_earth_search_v1_fields(tiny_items: list) -> None:
    real = {
        f["collection"]: f for f in json.loads(realdata_path(*CASSETTE).read_text())["features"]
    }
    for item in tiny_items:
        ref = real[item["collection"]]
        assert set(ref["properties"]) <= set(item["properties"]), item["id"]
        storage = {e for e in ref["stac_extensions"] if "/storage/" in e}  # no storage:* fields
        assert set(item["stac_extensions"]) == set(ref["stac_extensions"]) - storage
        assert {"type", "stac_version", "id", "geometry", "bbox", "assets", "collection"} <= set(
            item
        )
        for asset, fields in item["assets"].items():
            assert set(ref["assets"][asset]) - {
                "storage:platform",
                "storage:region",
                "storage:requester_pays",
            } <= set(fields)
            assert {"proj:epsg", "proj:code", "proj:shape", "proj:transform"} <= set(fields)
            assert Path(fields["href"]).is_absolute() and Path(fields["href"]).is_file()
    ids = [i["id"] for i in tiny_items]
    assert "S2B_32UQB_20230511_0_L2A" in ids and "LC08_L2SP_194024_20130529_02_T1" in ids
    platforms = {i["properties"]["platform"] for i in tiny_items}
    assert platforms == {"landsat-7", "landsat-8", "sentinel-2a", "sentinel-2b"}


def test_items_in_the_neighbouring_zone_use_its_crs(tiny_items: list) -> None:
    for item in tiny_items:
        props = item["properties"]
        in_33 = props.get("grid:code") in ("MGRS-33UTS", "WRS2-193024")
        assert props["proj:epsg"] == (32633 if in_33 else 32632), item["id"]
        with rasterio.open(asset_path(item, "red")) as src:
            assert src.crs.to_epsg() == props["proj:epsg"]
        origin_x = item["assets"]["red"]["proj:transform"][2]
        if item["collection"] == "landsat-c2-l2":
            assert origin_x % 30 == 15
        else:
            assert origin_x % 20 == (199960.0 if in_33 else 699960.0) % 20


def _inside_outside(item: dict[str, Any], shape_: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose centres lie well inside / well outside the item's STAC geometry."""
    footprint = shape(item["geometry"])
    epsg = item["properties"]["proj:epsg"]
    t = rasterio.Affine(*item["assets"]["red"]["proj:transform"])
    rows, cols = np.indices(shape_)
    x, y = t @ (cols + 0.5, rows + 0.5)
    lon, lat = pyproj.Transformer.from_crs(epsg, 4326, always_xy=True).transform(x, y)
    inside = shapely.contains_xy(footprint.buffer(-0.0005), lon, lat)
    outside = ~shapely.contains_xy(footprint.buffer(0.0005), lon, lat)
    return inside, outside


def test_partial_swath_scenes_have_nodata_outside_their_footprint(tiny_items: list) -> None:
    partial = [
        i for i in tiny_items
        if "R065" in i["properties"].get("s2:product_uri", "") or "_194024_" in i["id"]
    ]  # fmt: skip
    assert partial
    for item in partial:
        data = ~np.isnan(_reflectance(item, "red"))
        inside, outside = _inside_outside(item, data.shape)
        assert outside.any() and not data[outside].any(), item["id"]
        slc_off = item["properties"]["platform"] == "landsat-7"
        assert data[inside].mean() > (0.4 if slc_off else 0.999), item["id"]


def test_landsat7_slc_off_scenes_have_stripes_of_nodata(tiny_items: list) -> None:
    l7 = [i for i in tiny_items if i["properties"]["platform"] == "landsat-7"]
    assert l7
    for item in l7:
        gaps = _read(item, "red") == 0
        for asset in ("blue", "nir08", "swir22"):
            assert np.array_equal(_read(item, asset) == 0, gaps)
        assert np.array_equal(_read(item, "qa_pixel") == QA.FILL, gaps)
        inside, _ = _inside_outside(item, gaps.shape)
        assert 0.02 < gaps[inside].mean() < 0.6, item["id"]
        assert gaps.any(axis=1).mean() > 0.1, "stripes cross the scene"


def test_truth_api(tiny_truth: Truth, tiny_items: list) -> None:
    year = tiny_truth.years[-1]
    lc = tiny_truth.landcover(year)
    assert lc.shape == tiny_truth.grid.shape
    assert np.array_equal(tiny_truth.builtup(year), lc == LandCover.BUILTUP)
    assert not tiny_truth.change(year, year).any()
    assert tiny_truth.change(tiny_truth.years[0], year).mean() > 0.05
    assert set(tiny_truth.scenes) == {i["id"] for i in tiny_items}
    item = _s2(tiny_items)[0]
    mask = tiny_truth.cloud_mask(item["id"])
    assert list(mask.array.shape) == item["assets"]["red"]["proj:shape"]
    scene = tiny_truth.scenes[item["id"]]
    assert scene.platform == item["properties"]["platform"]
    assert scene.epsg == item["properties"]["proj:epsg"]
    with pytest.raises(InputError, match="unknown scene id"):
        tiny_truth.shift("S2A_00XXX_20230101_0_L2A")
    with pytest.raises(InputError, match="year 1900"):
        tiny_truth.landcover(1900)


def test_create_archive_refuses_a_folder_that_is_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty and holds no synthetic archive"):
        create_archive(tmp_path, tiny_config())
    assert (tmp_path / "notes.txt").read_text() == "keep me"

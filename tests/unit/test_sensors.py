"""Tests of tasks.sensors against every real Sentinel-2 / Landsat STAC Item in ../shared/realdata.

The expected band of each asset is read from the asset's file name (``…/B02.tif``,
``…_B02_10m.tif``, ``…_SR_B2.TIF``), which the catalogs derive from the ESA/USGS product, not from
the tables under test.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import stackstac

from tasks.errors import InputError
from tasks.sensors import (
    KNOWN_COLLECTIONS,
    collection_family,
    normalize_item,
    resolve_item,
)

CASSETTES = ("_derived", "pystac-client-cassettes")
ODC = ("opendatacube+odc-stac", "tests", "data")

# Band ids as the products name their files (ESA S2 PSD; USGS LSDS-1618 / LSDS-1619).
S2_FILE_BAND = {
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "rededge1": "B05",
    "rededge2": "B06",
    "rededge3": "B07",
    "nir": "B08",
    "nir08": "B8A",
    "swir16": "B11",
    "swir22": "B12",
}
OLI_FILE_BAND = {
    "blue": "SR_B2",
    "green": "SR_B3",
    "red": "SR_B4",
    "nir": "SR_B5",
    "swir16": "SR_B6",
    "swir22": "SR_B7",
}
TM_FILE_BAND = {
    "blue": "SR_B1",
    "green": "SR_B2",
    "red": "SR_B3",
    "nir": "SR_B4",
    "swir16": "SR_B5",
    "swir22": "SR_B7",
}


def _items_in(path: Path) -> list[dict[str, Any]]:
    doc = json.loads(path.read_text())
    if doc.get("type") == "Feature":
        return [doc]
    if doc.get("type") == "FeatureCollection":
        return list(doc.get("features") or [])
    return []


def all_real_items(realdata: Path) -> list[tuple[str, dict[str, Any]]]:
    """(file name, item) for every STAC Item in the real data (json and geojson)."""
    files = sorted([*realdata.rglob("*.json"), *realdata.rglob("*.geojson")])
    return [(f.name, item) for f in files for item in _items_in(f)]


def real_items_of_known_collections(realdata: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, item in all_real_items(realdata):
        coll = item.get("collection") or item["properties"].get("collection")
        if coll in KNOWN_COLLECTIONS:
            out.append((name, item))
    return out


def find_item(realdata: Path, item_id: str) -> dict[str, Any]:
    for _, item in all_real_items(realdata):
        if item["id"] == item_id:
            return copy.deepcopy(item)
    pytest.skip(f"real item {item_id} not found")


def file_band(href: str) -> str:
    """The product band id in an asset's file name: B02, B8A, SCL, SR_B2, QA_PIXEL."""
    name = href.rsplit("/", 1)[-1]
    m = re.search(r"(SR_B\d|QA_PIXEL|B\d[\dA]|SCL)(?=[_.])", name)
    assert m, f"no band id in {name}"
    return m.group(1)


# ---- every real item -------------------------------------------------------------------------


def test_resolve_item_every_real_item_maps_bands_to_their_files(realdata: Path) -> None:
    items = real_items_of_known_collections(realdata)
    seen: Counter[tuple[str, str]] = Counter()
    for name, item in items:
        r = resolve_item(item)
        seen[(r.catalog, r.collection)] += 1
        where = f"{name}:{item['id']}"
        if r.family == "sentinel-2":
            expected = S2_FILE_BAND
            mask_band = "SCL"
        else:
            tm = r.platform in {"landsat-4", "landsat-5", "landsat-7"}
            expected = TM_FILE_BAND if tm else OLI_FILE_BAND
            mask_band = "QA_PIXEL"
        assert r.missing == (), where
        assert list(r.bands) == list(expected), where
        for band, resolved in r.bands.items():
            assert file_band(resolved.href) == expected[band], (where, band, resolved.asset_key)
        assert r.mask is not None and file_band(r.mask.href) == mask_band, where
        assert r.mask.name == ("scl" if r.family == "sentinel-2" else "qa_pixel")
    # Every catalog layout the tables declare is exercised by real responses.
    assert set(seen) == {
        ("earth-search-v1", "sentinel-2-l2a"),
        ("earth-search-v1", "sentinel-2-c1-l2a"),
        ("planetary-computer", "sentinel-2-l2a"),
        ("earth-search-v0", "sentinel-s2-l2a-cogs"),
        ("earth-search-v1", "landsat-c2-l2"),
        ("planetary-computer", "landsat-c2-l2"),
        ("usgs", "landsat-c2l2-sr"),
    }
    assert sum(seen.values()) >= 80, seen


def test_resolve_item_every_real_item_has_product_scale_offset_nodata(realdata: Path) -> None:
    for name, item in real_items_of_known_collections(realdata):
        r = resolve_item(item)
        where = f"{name}:{item['id']}"
        for band in r.bands.values():
            assert band.kind == "reflectance" and band.nodata == 0, where
            if r.family == "sentinel-2":
                # ESA: BOA = (DN + BOA_ADD_OFFSET) / 10000, BOA_ADD_OFFSET = -1000 from 04.00.
                new_baseline = (r.processing_baseline or "00.00") >= "04.00"
                assert band.scale == pytest.approx(1e-4), where
                assert band.offset == pytest.approx(-0.1 if new_baseline else 0.0), where
            else:
                assert band.scale == pytest.approx(2.75e-05), where
                assert band.offset == pytest.approx(-0.2), where
        assert r.mask is not None and (r.mask.scale, r.mask.offset) == (1.0, 0.0), where
        assert r.mask.nodata == (0 if r.family == "sentinel-2" else 1), where


def test_resolve_item_other_real_items_raise_naming_known_collections(realdata: Path) -> None:
    others = [
        (name, item)
        for name, item in all_real_items(realdata)
        if (item.get("collection") or item["properties"].get("collection")) not in KNOWN_COLLECTIONS
    ]
    collections = {item.get("collection") for _, item in others}
    assert {"sentinel-1-grd", "sentinel-2-l1c", None} <= collections
    for name, item in others:
        with pytest.raises(InputError, match=r"landsat-c2-l2.*sentinel-2-l2a") as err:
            resolve_item(item)
        assert "collection" in str(err.value), name


# ---- named examples --------------------------------------------------------------------------


def test_resolve_item_earth_search_baselines(realdata: Path) -> None:
    new = resolve_item(find_item(realdata, "S2A_13TDE_20231008_0_L2A"))
    old = resolve_item(find_item(realdata, "S2A_29RKH_20200219_0_L2A"))
    assert (new.catalog, new.processing_baseline, new.epsg) == ("earth-search-v1", "05.09", 32613)
    assert new.bands["red"].offset == pytest.approx(-0.1)
    assert new.bands["red"].asset_key == "red" and new.bands["nir08"].asset_key == "nir08"
    assert (old.processing_baseline, old.bands["red"].offset) == ("02.14", 0.0)
    assert new.bands["blue"].resolution == 10 and new.bands["swir16"].resolution == 20


def test_resolve_item_planetary_computer_offset_from_baseline(realdata: Path) -> None:
    item = find_item(realdata, "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531")
    old = resolve_item(item)
    assert (old.catalog, old.processing_baseline) == ("planetary-computer", "02.12")
    assert old.bands["red"].asset_key == "B04" and old.bands["red"].offset == 0.0
    # PC's B8A says common_name "rededge": the table, not eo:bands, makes it nir08.
    assert old.bands["nir08"].asset_key == "B8A" and old.mask and old.mask.asset_key == "SCL"

    for baseline in ("04.00", "05.11"):
        edited = copy.deepcopy(item)
        edited["properties"]["s2:processing_baseline"] = baseline
        r = resolve_item(edited)
        assert all(b.offset == pytest.approx(-0.1) for b in r.bands.values()), baseline
        assert r.bands["red"].scale == pytest.approx(1e-4)
        assert r.mask and r.mask.offset == 0.0  # SCL codes are never shifted


def test_resolve_item_declared_offset_wins_over_baseline(realdata: Path) -> None:
    # PC item with raster:bands (nodata only) vs. the same with an explicit offset declared.
    item = find_item(realdata, "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531")
    raster_ext = [
        i
        for _, i in all_real_items(realdata)
        if i["id"] == item["id"] and "raster:bands" in i["assets"]["B04"]
    ]
    assert raster_ext, "the raster-extension variant of the PC item is part of the real data"
    edited = copy.deepcopy(raster_ext[0])
    edited["properties"]["s2:processing_baseline"] = "04.00"
    assert resolve_item(edited).bands["red"].offset == pytest.approx(-0.1)
    edited["assets"]["B04"]["raster:bands"][0]["offset"] = 0.0
    assert resolve_item(edited).bands["red"].offset == 0.0


def test_resolve_item_landsat_catalogs(realdata: Path) -> None:
    es = resolve_item(find_item(realdata, "LC08_L2SP_033032_20231008_02_T1"))
    assert (es.catalog, es.platform, es.epsg) == ("earth-search-v1", "landsat-8", 32613)
    assert es.bands["nir"].asset_key == "nir08"
    assert (es.bands["nir"].scale, es.bands["nir"].offset) == (2.75e-05, -0.2)

    pc = resolve_item(find_item(realdata, "LC09_L2SR_084082_20250722_02_T1"))
    assert (pc.catalog, pc.platform) == ("planetary-computer", "landsat-9")
    assert pc.mask and (pc.mask.asset_key, pc.mask.nodata) == ("qa_pixel", 1.0)


def test_resolve_item_usgs_landsat_band_numbers_follow_the_sensor(realdata: Path) -> None:
    le07 = resolve_item(find_item(realdata, "LE07_L2SP_044033_20210329_20210424_02_T1_SR"))
    assert (le07.catalog, le07.platform) == ("usgs", "landsat-7")
    assert le07.bands["blue"].asset_key == "blue"
    assert file_band(le07.bands["blue"].href) == "SR_B1"  # ETM+ blue is band 1
    assert file_band(le07.bands["nir"].href) == "SR_B4"

    lc08 = find_item(realdata, "LC08_L2SP_008059_20191201_20200825_02_T1")  # STAC 0.7, SR_B*.TIF
    r = resolve_item(lc08)
    assert (r.platform, r.epsg) == ("landsat-8", None)
    assert r.bands["blue"].asset_key == "SR_B2.TIF" and r.bands["nir"].asset_key == "SR_B5.TIF"
    assert r.mask and r.mask.asset_key == "QA_PIXEL.TIF"

    # The same layout from an ETM+ scene without eo:bands: the TM/ETM+ table is the default.
    etm = copy.deepcopy(lc08)
    etm["id"] = "LE07_L2SP_008059_20191201_20200825_02_T1"
    etm["properties"].pop("eo:platform")
    etm["properties"].pop("eo:bands")
    for asset in etm["assets"].values():
        asset.pop("eo:bands", None)
    r = resolve_item(etm)
    assert r.platform == "landsat-7"
    assert r.bands["blue"].asset_key == "SR_B1.TIF" and r.bands["nir"].asset_key == "SR_B4.TIF"
    assert r.bands["swir16"].asset_key == "SR_B5.TIF" and r.bands["swir22"].asset_key == "SR_B7.TIF"


def test_resolve_item_accepts_proj_code(realdata: Path) -> None:
    item = find_item(realdata, "S2A_13TDE_20231008_0_L2A")
    del item["properties"]["proj:epsg"]
    item["properties"]["proj:code"] = "EPSG:32633"
    item["assets"]["red"]["proj:code"] = "EPSG:32614"
    r = resolve_item(item)
    assert r.epsg == 32633
    assert r.bands["red"].epsg == 32614 and r.bands["green"].epsg == 32633


def test_resolve_item_relative_hrefs_resolve_against_self_link(realdata: Path) -> None:
    item = find_item(realdata, "S2A_13TDE_20231008_0_L2A")
    item["assets"]["red"]["href"] = "./B04.tif"
    item["assets"]["scl"]["href"] = "SCL.tif"
    item["links"] = [{"rel": "self", "href": "/archive/S2A_13TDE/S2A_13TDE.json"}]
    r = resolve_item(item)
    assert r.bands["red"].href == "/archive/S2A_13TDE/B04.tif"
    assert r.mask is not None and r.mask.href == "/archive/S2A_13TDE/SCL.tif"
    assert r.bands["blue"].href.startswith("https://")  # absolute hrefs are kept
    assert normalize_item(item)["assets"]["red"]["href"] == "/archive/S2A_13TDE/B04.tif"
    item["links"] = [{"rel": "self", "href": "https://example.com/items/x.json"}]
    assert resolve_item(item).bands["red"].href == "https://example.com/items/B04.tif"


def test_resolve_item_unknown_layout_raises(realdata: Path) -> None:
    item = find_item(realdata, "S2A_13TDE_20231008_0_L2A")
    item["assets"] = {"thumbnail": item["assets"]["thumbnail"]}
    with pytest.raises(InputError, match="none of the asset keys"):
        resolve_item(item)


# ---- normalize_item --------------------------------------------------------------------------


def test_normalize_item_renames_assets_and_corrects_raster_bands(realdata: Path) -> None:
    item = find_item(realdata, "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531")
    item["properties"]["s2:processing_baseline"] = "04.00"
    del item["properties"]["proj:epsg"]
    item["properties"]["proj:code"] = "EPSG:32606"
    before = copy.deepcopy(item)

    norm = normalize_item(item)
    assert item == before  # the input is not modified
    assert list(norm["assets"]) == [*S2_FILE_BAND, "scl"]
    assert norm["properties"]["proj:epsg"] == 32606
    assert norm["properties"]["platform"] == "sentinel-2b"
    red = norm["assets"]["red"]
    assert red["href"] == item["assets"]["B04"]["href"]
    assert red["raster:bands"] == [{"scale": 1e-4, "offset": -0.1, "nodata": 0.0}]
    assert red["proj:epsg"] == 32606
    assert norm["assets"]["scl"]["raster:bands"] == [{"scale": 1.0, "offset": 0.0, "nodata": 0.0}]


def test_normalize_item_usgs_stac07_eo_bands_resolved(realdata: Path) -> None:
    norm = normalize_item(find_item(realdata, "LC08_L2SP_008059_20191201_20200825_02_T1"))
    assert list(norm["assets"]) == [*OLI_FILE_BAND, "qa_pixel"]
    assert norm["assets"]["nir"]["eo:bands"][0]["name"] == "SR_B5"
    assert norm["assets"]["nir"]["raster:bands"][0]["offset"] == -0.2
    assert norm["properties"]["platform"] == "landsat-8"


def test_normalize_item_is_ready_for_stackstac(realdata: Path) -> None:
    item = find_item(realdata, "S2A_13TDE_20231008_0_L2A")
    item["properties"]["proj:code"] = "EPSG:32613"
    del item["properties"]["proj:epsg"]
    # stackstac 0.5 reads only proj:epsg: the raw item cannot pick a CRS, the normalised one can.
    with pytest.raises(ValueError, match="Cannot pick a common CRS"):
        stackstac.stack([item], assets=["red"])
    da = stackstac.stack([normalize_item(item)], assets=["red", "nir08", "scl"], resolution=10000)
    assert int(da["epsg"]) == 32613 and list(da["band"].values) == ["red", "nir08", "scl"]
    assert np.issubdtype(da.dtype, np.floating)


# ---- collection_family -----------------------------------------------------------------------


def test_collection_family_known_and_unknown() -> None:
    assert collection_family("sentinel-2-l2a") == "sentinel-2"
    assert collection_family("sentinel-s2-l2a-cogs") == "sentinel-2"
    assert collection_family("landsat-c2-l2") == "landsat"
    assert collection_family("landsat-c2l2-sr") == "landsat"
    with pytest.raises(InputError) as err:
        collection_family("sentinel-2-l1c")
    for known in KNOWN_COLLECTIONS:
        assert known in str(err.value)

"""Publishing: COG + GeoParquet 1.1 + STAC Item, atomic and idempotent, on a local prefix."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

import tasks.publish as publish_mod
from tasks.aoi import GridSpec
from tasks.errors import InputError
from tasks.publish import (
    COG_NODATA,
    ProductRef,
    list_products,
    product_id,
    publish_product,
    rebuild_index,
    write_product_cog,
    write_product_parquet,
    write_raster,
)
from tasks.refs import SceneRef
from tasks.storage import MAX_NAME_LENGTH, ObjectStore, open_store, safe_name
from tasks.tiling import grid_windows
from tasks.vectorize import change_polygons
from tests.conftest import SCHEMAS_DIR

RES = 10.0
SCENES = ("S2A_33UUP_20200601_0_L2A", "S2B_33UUP_20210601_0_L2A")


# ---- factories ----------------------------------------------------------------------------------
def make_grid(rows: int = 48, cols: int = 64) -> GridSpec:
    """A small UTM 33N grid of 10 m pixels (south of Berlin's latitude band)."""
    x0, y1 = 400_000.0, 5_800_000.0
    return GridSpec(epsg=32633, resolution=RES, bounds=(x0, y1 - rows * RES, x0 + cols * RES, y1))


def make_change(grid: GridSpec, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Change bands: a 10 x 10 px changed square on noise, a NaN strip, a 2-period count."""
    rng = np.random.default_rng(seed)
    prob = (rng.random(grid.shape) * 0.3).astype(np.float32)
    prob[10:20, 10:20] = 0.9
    prob[-1, :] = np.nan
    return {
        "probability": prob,
        "binary": np.where(np.isnan(prob), np.nan, prob >= 0.5).astype(np.float32),
        "confidence": np.maximum(prob, 1 - prob),
        "count": np.full(grid.shape, 7, dtype=np.float32),
    }


def publish_change(out: str, grid: GridSpec | None = None, **overrides: Any) -> ProductRef:
    grid = grid or make_grid()
    bands = make_change(grid)
    vectors = change_polygons(
        bands["probability"],
        grid,
        start="2020-06-01",
        end="2021-06-01",
        confidence=bands["confidence"],
    )
    kwargs: dict[str, Any] = {
        "grid": grid,
        "scene_ids": list(SCENES),
        "model": "ndvi-difference",
        "params": {"threshold": 0.5, "min_pixels": 4},
        "start": "2020-06-01",
        "end": "2021-06-01",
        "output_url": out,
        **overrides,
    }
    return publish_product("change", bands, vectors, **kwargs)


def all_files(root: Path) -> dict[str, int]:
    """Relative path -> mtime_ns of every file under `root`."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# ---- schema validation (offline, from ../shared/schemas) ----------------------------------------
def _schema_dir(*parts: str) -> Path:
    path = SCHEMAS_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"schemas not available: {Path(*parts)} (../shared/schemas is absent)")
    return path


def stac_validator(kind: str) -> Any:
    """A Draft 7 validator of the STAC 1.1.0 core ``item`` or ``collection`` schema, offline.

    Extension schemas are not checked (they would need the network).
    """
    from jsonschema import Draft7Validator
    from referencing import Registry, Resource

    spec = _schema_dir("stac-utils+pystac", "stac-spec", "v1.1.0")
    geojson = _schema_dir("stac-utils+pystac", "geojson")
    base = "https://schemas.stacspec.org/v1.1.0"
    resources = []
    for f in spec.glob("*.json"):
        contents = json.loads(f.read_text())
        folder = {"collection.json": "collection-spec", "catalog.json": "catalog-spec"}.get(
            f.name, "item-spec"
        )
        # common.json's own $id is misspelt ("commonjson"): register it where refs point
        resources.append((f"{base}/{folder}/json-schema/{f.name}", contents))
    for f in geojson.glob("*.json"):
        contents = json.loads(f.read_text())
        resources.append((contents["$id"], contents))
    registry: Registry = Registry().with_resources(
        (uri, Resource.from_contents(c, default_specification=_draft7())) for uri, c in resources
    )
    schema = dict(resources)[f"{base}/{kind}-spec/json-schema/{kind}.json"]
    return Draft7Validator(schema, registry=registry)


def _draft7() -> Any:
    from referencing.jsonschema import DRAFT7

    return DRAFT7


def geoparquet_validator() -> Any:
    from jsonschema import Draft7Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    schema = json.loads(
        (
            _schema_dir("opengeospatial+geoparquet", "v1.1.0", "format-specs") / "schema.json"
        ).read_text()
    )
    projjson = json.loads(
        (_schema_dir("OSGeo+PROJ", "schemas", "v0.7") / "projjson.schema.json").read_text()
    )
    registry: Registry = Registry().with_resource(
        projjson["$id"], Resource.from_contents(projjson, default_specification=DRAFT7)
    )
    return Draft7Validator(schema, registry=registry)


# ---- COG ----------------------------------------------------------------------------------------
def test_write_product_cog_valid_with_bands_nodata_and_overviews(tmp_path: Path) -> None:
    grid = make_grid(rows=128, cols=128)
    year = np.full(grid.shape, 2015.0, dtype=np.float32)
    year[:10] = np.nan
    bands = {
        "urbanization_year": year,
        "confidence": np.full(grid.shape, 0.8, dtype=np.float32),
        "count": np.full(grid.shape, 12, dtype=np.float32),
    }
    path = tmp_path / "dyn.tif"
    entries = write_product_cog(bands, grid, path, blocksize=32)
    valid, errors, warnings = cog_validate(str(path))
    assert valid, (errors, warnings)
    with rasterio.open(path) as src:
        assert src.count == 3
        assert src.descriptions == ("urbanization_year", "confidence", "count")
        assert src.nodata == COG_NODATA
        assert src.crs.to_epsg() == 32633
        assert src.transform == grid.transform
        assert src.overviews(1), "expected internal overviews"
        assert src.profile["compress"].lower() == "deflate"
        first = src.read(1)
    assert (first[:10] == COG_NODATA).all() and (first[10:] == 2015).all()
    assert [e["name"] for e in entries] == list(bands)
    assert entries[0]["statistics"]["minimum"] == 2015.0


def test_write_product_cog_from_a_raster_file_written_by_window_equals_the_arrays(
    tmp_path: Path,
) -> None:
    """A raster written window by window (the mosaic of `publish_tiles`) gives the COG and the
    statistics of the same bands given as arrays."""
    grid = make_grid(rows=70, cols=90)
    bands = make_change(grid)
    windows = [  # any order: column-major here
        (w, {n: a[w.rows, w.cols] for n, a in bands.items()})
        for w in sorted(grid_windows(grid, 32), key=lambda w: (w.col, w.row))
    ]
    raster = write_raster(tmp_path / "mosaic.tif", grid, list(bands), windows)
    from_file = write_product_cog(raster, grid, tmp_path / "file.tif", blocksize=32)
    from_arrays = write_product_cog(bands, grid, tmp_path / "arrays.tif", blocksize=32)
    assert (tmp_path / "file.tif").read_bytes() == (tmp_path / "arrays.tif").read_bytes()
    assert from_file == from_arrays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.tif", "file.tif", "mosaic.tif"]
    prob = bands["probability"][np.isfinite(bands["probability"])]
    stats = from_file[0]["statistics"]
    assert stats["mean"] == pytest.approx(float(prob.astype(np.float64).mean()), rel=1e-12)
    assert (stats["minimum"], stats["maximum"]) == (float(prob.min()), float(prob.max()))
    assert stats["valid_percent"] == pytest.approx(100.0 * prob.size / (70 * 90))


def test_write_raster_refuses_windows_that_miss_part_of_the_grid(tmp_path: Path) -> None:
    grid = make_grid(rows=40, cols=40)
    bands = make_change(grid)
    windows = [
        (w, {n: a[w.rows, w.cols] for n, a in bands.items()}) for w in grid_windows(grid, 16)
    ]
    with pytest.raises(InputError, match="cover the grid"):
        write_raster(tmp_path / "m.tif", grid, list(bands), windows[:-1])
    assert not (tmp_path / "m.tif").exists()


# ---- GeoParquet ---------------------------------------------------------------------------------
def test_write_product_parquet_geoparquet_1_1_metadata_valid(tmp_path: Path) -> None:
    grid = make_grid()
    prob = np.zeros(grid.shape, dtype=np.float32)
    prob[2:7, 3:8] = 0.9  # 5 x 5 px of 10 m = 2500 m²
    gdf = change_polygons(prob, grid, start="2020-01-01", end="2021-01-01")
    path = tmp_path / "v.parquet"
    write_product_parquet(gdf, path)

    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["version"] == "1.1.0"
    column = geo["columns"][geo["primary_column"]]
    assert column["crs"]["id"] == {"authority": "EPSG", "code": 32633}
    assert column["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    assert "bbox" in pq.read_schema(path).names
    geoparquet_validator().validate(geo)

    back = gpd.read_parquet(path)
    assert back.crs.to_epsg() == 32633
    assert back["area_m2"].tolist() == pytest.approx([2500.0])
    assert back.geometry.area.tolist() == pytest.approx([2500.0])


def test_geoparquet_validator_rejects_bad_metadata() -> None:
    """The schema check above can fail: a wrong version string is refused."""
    from jsonschema import ValidationError

    bad = {"version": "9", "primary_column": "geometry", "columns": {"geometry": {}}}
    with pytest.raises(ValidationError):
        geoparquet_validator().validate(bad)


def test_write_product_parquet_without_crs_raises(tmp_path: Path) -> None:
    gdf = gpd.GeoDataFrame({"a": []}, geometry=gpd.GeoSeries([]))
    with pytest.raises(InputError, match="no CRS"):
        write_product_parquet(gdf, tmp_path / "x.parquet")


# ---- STAC Item ----------------------------------------------------------------------------------
def test_publish_product_item_fields_checksums_and_lineage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    scene = SceneRef(
        id=SCENES[0],
        collection="sentinel-2-l2a",
        datetime=datetime(2020, 6, 1, tzinfo=UTC),
        platform="sentinel-2a",
        cloud_cover=3.0,
        item={"links": [{"rel": "self", "href": "http://stac.test/items/" + SCENES[0]}]},
    )
    ref = publish_change(str(out), scene_ids=[scene, SCENES[1]])
    item = json.loads(Path(ref.item_href).read_text())

    assert item["id"] == ref.id and item["collection"] == ref.collection == "eo-change"
    for ext in ("projection", "raster", "file", "processing"):
        assert any(f"/{ext}/" in url for url in item["stac_extensions"]), ext
    props = item["properties"]
    grid = make_grid()
    assert props["proj:code"] == "EPSG:32633"
    assert props["proj:shape"] == list(grid.shape)
    assert props["proj:transform"] == list(grid.transform)[:6]
    assert "eo-pipeline" in props["processing:software"]
    assert props["eo_pipeline:model"] == "ndvi-difference"
    assert props["eo_pipeline:parameters"] == {"min_pixels": 4, "threshold": 0.5}
    assert props["start_datetime"] == "2020-06-01T00:00:00Z"
    west, south, east, north = item["bbox"]
    assert 10 < west < east < 17 and 50 < south < north < 54  # UTM 33N, ~52° N, in lon/lat

    folder = Path(ref.item_href).parent
    for key in ("data", "vectors"):
        asset = item["assets"][key]
        data = (folder / asset["href"]).read_bytes()
        assert asset["file:size"] == len(data)
        assert asset["file:checksum"] == "1220" + hashlib.sha256(data).hexdigest()
        assert Path(ref.asset_href(key)) == folder / asset["href"].removeprefix("./")
    bands = [b["name"] for b in item["assets"]["data"]["raster:bands"]]
    assert bands == ["probability", "binary", "confidence", "count"]

    derived = [lk for lk in item["links"] if lk["rel"] == "derived_from"]
    assert [lk["title"] for lk in derived] == list(SCENES)
    assert derived[0]["href"] == "http://stac.test/items/" + SCENES[0]
    assert props["eo_pipeline:scene_ids"] == list(SCENES)

    stac_validator("item").validate(item)
    collection = json.loads((out / "eo-change" / "collection.json").read_text())
    stac_validator("collection").validate(collection)
    index = (out / "index.ndjson").read_text().splitlines()
    assert [json.loads(line)["id"] for line in index] == [ref.id]


def test_stac_validator_rejects_item_without_datetime(tmp_path: Path) -> None:
    from jsonschema import ValidationError

    ref = publish_change(str(tmp_path / "out"))
    item = json.loads(Path(ref.item_href).read_text())
    del item["properties"]["datetime"]  # core: datetime is required (null needs start/end)
    with pytest.raises(ValidationError):
        stac_validator("item").validate(item)


def test_product_id_stable_and_sensitive_to_every_input() -> None:
    base = product_id("change", ["b", "a"], "sha", {"t": 0.5, "mmu": 4})
    assert base == product_id("change", ["a", "b"], "sha", {"mmu": 4, "t": 0.5})
    assert base.startswith("change-")
    variants = {
        product_id("footprint", ["a", "b"], "sha", {"t": 0.5, "mmu": 4}),
        product_id("change", ["a"], "sha", {"t": 0.5, "mmu": 4}),
        product_id("change", ["a", "b"], "sha2", {"t": 0.5, "mmu": 4}),
        product_id("change", ["a", "b"], "sha", {"t": 0.6, "mmu": 4}),
    }
    assert base not in variants and len(variants) == 4


def test_publish_product_missing_count_band_raises(tmp_path: Path) -> None:
    grid = make_grid()
    bands = make_change(grid)
    del bands["count"]
    with pytest.raises(InputError, match="count"):
        publish_product(
            "change",
            bands,
            None,
            grid=grid,
            scene_ids=list(SCENES),
            model="m",
            params={},
            start="2020-01-01",
            end="2021-01-01",
            output_url=str(tmp_path),
        )


# ---- atomic and idempotent ----------------------------------------------------------------------
def test_publish_product_rerun_rewrites_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = publish_change(str(out))
    before = all_files(out)
    second = publish_change(str(out))
    assert second.skipped and not first.skipped
    assert second.id == first.id
    assert all_files(out) == before  # same files, same mtimes: nothing rewritten


def test_publish_product_rerun_restores_a_lost_index_entry(tmp_path: Path) -> None:
    """A crash after the Item but before the index update: the rerun indexes the product."""
    out = tmp_path / "out"
    ref = publish_change(str(out))
    (out / "index.ndjson").unlink()
    tif_mtime = Path(ref.asset_href("data")).stat().st_mtime_ns
    again = publish_change(str(out))
    assert again.skipped
    assert [json.loads(x)["id"] for x in (out / "index.ndjson").read_text().splitlines()] == [
        ref.id
    ]
    assert Path(ref.asset_href("data")).stat().st_mtime_ns == tif_mtime


def test_publish_product_damaged_asset_is_republished(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ref = publish_change(str(out))
    tif = Path(ref.asset_href("data"))
    tif.write_bytes(tif.read_bytes()[:-10])  # truncated
    again = publish_change(str(out))
    assert not again.skipped
    item = json.loads(Path(again.item_href).read_text())
    assert item["assets"]["data"]["file:size"] == tif.stat().st_size
    assert cog_validate(str(tif))[0]


@pytest.mark.parametrize("crash_at", ["move", "item"])
def test_publish_product_crash_before_item_leaves_nothing_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    """A crash while moving staged files, or after the move but before the Item write: the
    failed publish rolls back what it wrote (staging and moved files)."""
    out = tmp_path / "out"

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("simulated crash before the Item write")

    with monkeypatch.context() as m:
        if crash_at == "move":
            m.setattr(ObjectStore, "move", crash)
        else:
            m.setattr(publish_mod, "_write_item", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            publish_change(str(out))
    assert list_products(str(out)) == []
    assert not list(out.rglob("item.json"))
    assert not (out / "index.ndjson").exists()
    left = [p for p in out.rglob("*") if p.is_file()]
    assert not left, f"the failed publish left {left}"

    ref = publish_change(str(out))  # the rerun completes the product
    assert not ref.skipped
    assert [i["id"] for i in list_products(str(out))] == [ref.id]
    assert not [p for p in (out / ".tmp").rglob("*") if p.is_file()], "temp files not cleaned"
    assert rebuild_index(str(out)) == 1


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc/passwd", "../../..", "東京/../ü", "a" * 500, "..\\..\\win", ".hidden"],
)
def test_publish_product_hostile_collection_stays_under_prefix(tmp_path: Path, name: str) -> None:
    out = tmp_path / "deep" / "out"
    ref = publish_change(str(out), collection=name)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(p.resolve().is_relative_to(out.resolve()) for p in written)
    assert len(ref.collection) <= MAX_NAME_LENGTH
    assert not ref.collection.startswith(".")
    assert [i["collection"] for i in list_products(str(out))] == [ref.collection]


@pytest.mark.parametrize("name", ["..", "../x", "/etc/passwd", "a/../../b", "\x00", "ü" * 300])
def test_safe_name_is_one_safe_component(name: str) -> None:
    safe = safe_name(name)
    assert "/" not in safe and "\\" not in safe and ".." not in safe
    assert not safe.startswith(".") and 0 < len(safe) <= MAX_NAME_LENGTH
    assert safe == safe_name(name)  # deterministic


def test_object_store_path_refuses_traversal(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    with pytest.raises(InputError, match="unsafe key"):
        store.path("..", "x")


# ---- bands from inference results ---------------------------------------------------------------
def test_product_bands_change_binary_and_counts_per_period() -> None:
    import xarray as xr

    from tasks.publish import product_bands

    prob = np.array([[0.2, 0.7], [np.nan, 0.5]], dtype=np.float32)
    ds = xr.Dataset(
        {"probability": (("y", "x"), prob), "confidence": (("y", "x"), np.maximum(prob, 1 - prob))}
    )
    counts = {"2020": np.ones((2, 2)), "2021": np.full((2, 2), 2)}
    bands = product_bands("change", ds, counts)
    assert list(bands) == ["probability", "binary", "confidence", "count_2020", "count_2021"]
    np.testing.assert_array_equal(bands["binary"], [[0, 1], [np.nan, 1]])


def test_product_bands_dynamics_confidence_of_the_urbanization_year() -> None:
    import xarray as xr

    from tasks.publish import product_bands

    conf = np.stack([np.full((1, 2), 0.6), np.full((1, 2), 0.9)]).astype(np.float32)
    ds = xr.Dataset(
        {
            "confidence": (("year", "y", "x"), conf),
            "urbanization_year": (("y", "x"), np.array([[2000.0, np.nan]], dtype=np.float32)),
        },
        coords={"year": [2000, 2001]},
    )
    bands = product_bands("dynamics", ds, np.zeros((1, 2)))
    # urbanized in 2000: that year's confidence; never urbanized: the last year's
    np.testing.assert_allclose(bands["confidence"], [[0.6, 0.9]])
    assert list(bands) == ["urbanization_year", "confidence", "count"]

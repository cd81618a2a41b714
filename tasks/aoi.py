"""Areas of interest: parse, validate, and choose the grid they are processed on.

An AOI arrives as a bbox ``(west, south, east, north)`` in degrees, a GeoJSON geometry (dict), a
GeoJSON Feature, or a GeoJSON string. It always means WGS84 longitude/latitude (RFC 7946).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pyproj
import shapely
from affine import Affine
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from tasks.errors import InputError
from tasks.settings import Settings, get_settings

__all__ = [
    "MAX_AOI_KM2",
    "AoiLike",
    "GridSpec",
    "grid_for_aoi",
    "parse_aoi",
    "reproject_geometry",
    "utm_epsg",
]

AoiLike: TypeAlias = str | Sequence[float] | Mapping[str, Any] | BaseGeometry

#: Default of the largest AOI accepted (km²), ``EO_MAX_AOI_KM2``
#: (`tasks.settings.Settings.max_aoi_km2`). One Sentinel-2 tile is ~12 000 km².
MAX_AOI_KM2: float = Settings.model_fields["max_aoi_km2"].default


def parse_aoi(aoi: AoiLike, *, field: str = "aoi", max_km2: float | None = None) -> BaseGeometry:
    """Return the AOI as a valid shapely (Multi)Polygon in EPSG:4326.

    Raises `InputError` naming `field` when the AOI is malformed, empty, self-intersecting,
    outside longitude/latitude bounds or larger than `max_km2` (default ``EO_MAX_AOI_KM2``);
    the messages name the allowed range.
    """
    limit_name = "max_km2"
    if max_km2 is None:
        max_km2, limit_name = get_settings().max_aoi_km2, "EO_MAX_AOI_KM2"
    geom = _to_geometry(aoi, field)
    if geom.is_empty:
        raise InputError(f"{field}: the geometry is empty; give a polygon or a bbox with area.")
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise InputError(
            f"{field}: expected a Polygon or MultiPolygon (or a bbox), got {geom.geom_type}."
        )
    if not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        raise InputError(
            f"{field}: the polygon is invalid ({reason}); fix self-intersections, "
            "e.g. with shapely.make_valid, and send it again."
        )
    west, south, east, north = geom.bounds
    if west < -180 or east > 180 or south < -90 or north > 90:
        raise InputError(
            f"{field}: coordinates must be longitude/latitude in degrees (EPSG:4326), "
            f"got bounds {geom.bounds}; reproject the AOI to WGS84."
        )
    area_km2 = _geodesic_area_km2(geom)
    allowed = f"allowed: 0 < area <= {max_km2:,.0f} km² ({limit_name})"
    if area_km2 <= 0:
        raise InputError(f"{field}: the polygon has zero area; {allowed}.")
    if area_km2 > max_km2:
        raise InputError(
            f"{field}: the AOI covers {area_km2:,.0f} km², over the limit {limit_name} = "
            f"{max_km2:,.0f} km²; {allowed}. Split it into smaller AOIs"
            + (", or raise EO_MAX_AOI_KM2." if limit_name == "EO_MAX_AOI_KM2" else ".")
        )
    return geom


def _to_geometry(aoi: AoiLike, field: str) -> BaseGeometry:
    if isinstance(aoi, BaseGeometry):
        return aoi
    if isinstance(aoi, str):
        text = aoi.strip()
        if not text:
            raise InputError(f"{field}: empty string; give a bbox or a GeoJSON geometry.")
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parts = text.split(",")
            try:
                parsed = [float(p) for p in parts]
            except ValueError:
                raise InputError(
                    f"{field}: {text[:80]!r} is neither GeoJSON nor a bbox 'west,south,east,north'."
                ) from None
        return _to_geometry(parsed, field)
    if isinstance(aoi, Mapping):
        if aoi.get("type") == "Feature":
            return _to_geometry(aoi.get("geometry") or {}, field)
        if aoi.get("type") == "FeatureCollection":
            feats = aoi.get("features") or []
            if not feats:
                raise InputError(f"{field}: the FeatureCollection has no features.")
            return shapely.union_all([_to_geometry(f, field) for f in feats])
        try:
            return shape(aoi)
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            shapely.errors.GEOSException,
        ) as err:
            raise InputError(f"{field}: not a GeoJSON geometry ({err}).") from err
    if isinstance(aoi, Sequence):
        if len(aoi) != 4:
            raise InputError(
                f"{field}: a bbox has 4 numbers (west, south, east, north), got {len(aoi)}."
            )
        west, south, east, north = (float(v) for v in aoi)
        if not (west < east and south < north):
            raise InputError(
                f"{field}: bbox {list(aoi)} must be (west, south, east, north) with "
                "west < east and south < north."
            )
        return box(west, south, east, north)
    raise InputError(f"{field}: unsupported type {type(aoi).__name__}; give a bbox or GeoJSON.")


def _geodesic_area_km2(geom: BaseGeometry) -> float:
    area_m2, _ = pyproj.Geod(ellps="WGS84").geometry_area_perimeter(geom)
    return abs(area_m2) / 1e6


def reproject_geometry(geom: BaseGeometry, src_epsg: int, dst_epsg: int) -> BaseGeometry:
    """`geom` from `src_epsg` to `dst_epsg` (x/y = lon/lat order for EPSG:4326)."""
    t = pyproj.Transformer.from_crs(src_epsg, dst_epsg, always_xy=True)

    def _xy(coords: np.ndarray) -> np.ndarray:
        x, y = t.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, _xy)


def utm_epsg(geom: BaseGeometry) -> int:
    """EPSG code of the WGS84 UTM zone holding the AOI's centroid (pyproj's CRS database)."""
    c = geom.centroid
    infos = query_utm_crs_info(
        datum_name="WGS 84",
        area_of_interest=AreaOfInterest(c.x, c.y, c.x, c.y),
    )
    if not infos:  # polar regions: UTM is undefined, UPS would be needed
        raise InputError(
            f"aoi: no UTM zone covers ({c.x:.3f}, {c.y:.3f}); polar AOIs are unsupported."
        )
    return int(infos[0].code)


@dataclass(frozen=True)
class GridSpec:
    """A north-up grid: CRS, pixel size and bounds snapped to whole pixels.

    `bounds` are (xmin, ymin, xmax, ymax) in the CRS's units (metres for UTM).
    """

    epsg: int
    resolution: float
    bounds: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        if self.resolution <= 0:
            raise InputError(f"resolution must be > 0, got {self.resolution}")
        xmin, ymin, xmax, ymax = self.bounds
        if not (xmax > xmin and ymax > ymin):
            raise InputError(f"grid bounds {self.bounds} are empty")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        xmin, ymin, xmax, ymax = self.bounds
        return (round((ymax - ymin) / self.resolution), round((xmax - xmin) / self.resolution))

    @property
    def transform(self) -> Affine:
        return Affine(self.resolution, 0.0, self.bounds[0], 0.0, -self.resolution, self.bounds[3])

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    def geotiff_profile(self, count: int, dtype: str = "float32", **options: Any) -> dict[str, Any]:
        """A rasterio GeoTIFF profile of `count` bands of `dtype` on this grid; `options`
        (compression, tiling, nodata, ...) are added as given."""
        rows, cols = self.shape
        return {
            "driver": "GTiff",
            "width": cols,
            "height": rows,
            "count": count,
            "dtype": dtype,
            "crs": self.crs,
            "transform": self.transform,
            **options,
        }

    def to_geojson(self) -> dict[str, Any]:
        """The grid's footprint as a GeoJSON geometry in EPSG:4326."""
        poly = reproject_geometry(
            box(*self.bounds).segmentize(self.resolution * 64), self.epsg, 4326
        )
        return dict(mapping(poly))


def grid_for_aoi(
    aoi: AoiLike,
    resolution: float,
    *,
    epsg: int | None = None,
    origin: tuple[float, float] = (0.0, 0.0),
) -> GridSpec:
    """The grid an AOI is processed on: its UTM zone (or `epsg`), `resolution` metres,
    bounds snapped outwards to pixel edges at ``origin + k * resolution`` (default whole
    multiples of the resolution) so grids of different runs align. `origin`: a point on the
    pixel edges, e.g. a Landsat scene's corner (Collection 2 edges lie 15 m off multiples of
    30 m): `tasks.load.scene_grid` follows the scenes' own grid."""
    geom = parse_aoi(aoi)
    epsg = epsg or utm_epsg(geom)
    xmin, ymin, xmax, ymax = reproject_geometry(geom.segmentize(0.01), 4326, epsg).bounds
    r = float(resolution)
    ox, oy = (float(origin[0]) % r, float(origin[1]) % r)
    snapped = (
        math.floor((xmin - ox) / r) * r + ox,
        math.floor((ymin - oy) / r) * r + oy,
        math.ceil((xmax - ox) / r) * r + ox,
        math.ceil((ymax - oy) / r) * r + oy,
    )
    return GridSpec(epsg=epsg, resolution=r, bounds=snapped)

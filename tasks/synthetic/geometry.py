"""Where scenes lie: product grids (MGRS tiles, Landsat UTM grids), swath footprints and
Landsat 7 SLC-off gaps.

Grid conventions, as the real products:

* Landsat Collection 2: UTM zone of the WRS-2 scene centre, 30 m pixels whose *corners* lie on
  coordinates = 15 (mod 30) m, so pixel centres fall on multiples of 30 m (e.g. a real
  ``proj:transform`` origin of 449085, 4581915).
* Sentinel-2 MGRS tiles: the tile's own UTM zone, 109 800 m square; upper-left corner 40 m west
  of its 100 km MGRS square and on the square's north edge (e.g. 399960, 4500000); 10/20/60 m
  pixels on that origin.

The written rasters cover the AOI (plus a small margin) in those grids, not whole tiles/scenes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyproj
import shapely
from numpy.typing import NDArray
from shapely.geometry import box

from tasks.aoi import GridSpec
from tasks.synthetic.orbits import Track

__all__ = [
    "SLC_GAP_PERIOD_LINES",
    "SLC_MAX_GAP_LINES",
    "Bilinear",
    "MgrsTile",
    "SwathFrame",
    "footprint",
    "landsat_grid",
    "mesh_in",
    "mgrs_tiles",
    "pixel_centers",
    "s2_grids",
    "track_frame",
    "transform_points",
    "transformer",
    "utm_zone",
]

Bounds = tuple[float, float, float, float]  # (xmin, ymin, xmax, ymax) in metres

_S2_TILE_SIZE_M = 109_800.0
_WINDOW_MARGIN_M = 60.0
#: SLC-off geometry (USGS, "SLC-off Products: Background"): ~22 % of a scene lost, gaps about one
#: pixel wide near nadir widening to ~14 pixels at the swath edges; on each side of the track a
#: gap opens between every second 16-line scan (every 32 lines).
SLC_MAX_GAP_LINES = 14.0
SLC_GAP_PERIOD_LINES = 32.0

_LAT_BANDS = "CDEFGHJKLMNPQRSTUVWX"
_COLUMN_SETS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"


@dataclass(frozen=True)
class MgrsTile:
    """A Sentinel-2 tile: id (e.g. ``32UQB``), UTM zone, EPSG and upper-left corner (m)."""

    id: str
    zone: int
    epsg: int
    ulx: float
    uly: float

    @property
    def latitude_band(self) -> str:
        return self.id[len(str(self.zone))]

    @property
    def grid_square(self) -> str:
        return self.id[-2:]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (self.ulx, self.uly - _S2_TILE_SIZE_M, self.ulx + _S2_TILE_SIZE_M, self.uly)


@lru_cache(maxsize=64)
def transformer(src: int, dst: int) -> pyproj.Transformer:
    """A cached lon/lat-ordered (always_xy) transformer between two EPSG codes."""
    return pyproj.Transformer.from_crs(src, dst, always_xy=True)


def transform_points(
    x: NDArray[np.float64], y: NDArray[np.float64], src: int, dst: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Coordinates (m) from EPSG `src` to EPSG `dst`; a no-op when they are equal."""
    if src == dst:
        return x, y
    xx, yy = transformer(src, dst).transform(x, y)
    return np.asarray(xx), np.asarray(yy)


def utm_zone(lon: float) -> int:
    """Regular 6-degree UTM zone number of longitude `lon` (deg E)."""
    return int((lon + 180.0) // 6.0) % 60 + 1


def _utm_epsg_of_zone(zone: int, lat: float) -> int:
    return (32600 if lat >= 0 else 32700) + zone


def _tile_in_zone(zone: int, lon: float, lat: float) -> MgrsTile | None:
    """The MGRS tile of `zone` whose 100 km square holds (lon, lat), or None when that square
    lies wholly outside the zone (no such tile exists)."""
    epsg = _utm_epsg_of_zone(zone, lat)
    to_utm = transformer(4326, epsg)
    x, y = to_utm.transform(lon, lat)
    col, row = math.floor(x / 100_000), math.floor(y / 100_000)
    west_lon = -180.0 + 6.0 * (zone - 1)
    x_west, _ = to_utm.transform(west_lon, lat)
    x_east, _ = to_utm.transform(west_lon + 6.0, lat)
    if not (col * 100_000 < x_east and (col + 1) * 100_000 > x_west) or not 1 <= col <= 8:
        return None
    letters = _COLUMN_SETS[(zone - 1) % 3]
    row_letter = _ROW_LETTERS[(row + (5 if zone % 2 == 0 else 0)) % 20]
    band = _LAT_BANDS[min(int((lat + 80.0) // 8.0), len(_LAT_BANDS) - 1)]
    tile_id = f"{zone}{band}{letters[col - 1]}{row_letter}"
    return MgrsTile(tile_id, zone, epsg, col * 100_000 - 40.0, (row + 1) * 100_000.0)


def mgrs_tiles(lon: float, lat: float) -> tuple[MgrsTile, ...]:
    """Sentinel-2 tiles that hold (lon, lat): the one of its own UTM zone and, near a zone
    boundary, the one of the neighbouring zone (real archives deliver the AOI in both)."""
    zone = utm_zone(lon)
    west_edge = -180.0 + 6.0 * (zone - 1)
    neighbour = zone - 1 if lon - west_edge < 3.0 else zone + 1
    neighbour = (neighbour - 1) % 60 + 1
    tiles = [_tile_in_zone(z, lon, lat) for z in (zone, neighbour)]
    return tuple(t for t in tiles if t is not None)


def _window(aoi: Bounds, aoi_epsg: int, epsg: int) -> Bounds:
    """Bounds of the AOI square in `epsg`, plus the write margin."""
    edge = shapely.get_coordinates(box(*aoi).segmentize(100.0))
    x, y = transform_points(edge[:, 0], edge[:, 1], aoi_epsg, epsg)
    m = _WINDOW_MARGIN_M
    return float(x.min()) - m, float(y.min()) - m, float(x.max()) + m, float(y.max()) + m


def _snap(bounds: Bounds, step: float, origin_x: float, origin_y: float) -> Bounds:
    xmin, ymin, xmax, ymax = bounds
    return (
        origin_x + math.floor((xmin - origin_x) / step) * step,
        origin_y + math.floor((ymin - origin_y) / step) * step,
        origin_x + math.ceil((xmax - origin_x) / step) * step,
        origin_y + math.ceil((ymax - origin_y) / step) * step,
    )


def landsat_grid(aoi: Bounds, aoi_epsg: int, scene_lon: float, scene_lat: float) -> GridSpec:
    """The 30 m Landsat grid written for a scene centred at (scene_lon, scene_lat): that
    point's UTM zone, pixel corners at 15 (mod 30) m, covering the AOI."""
    epsg = _utm_epsg_of_zone(utm_zone(scene_lon), scene_lat)
    return GridSpec(epsg, 30.0, _snap(_window(aoi, aoi_epsg, epsg), 30.0, 15.0, 15.0))


def s2_grids(aoi: Bounds, aoi_epsg: int, tile: MgrsTile) -> tuple[GridSpec, GridSpec]:
    """The 10 m and 20 m grids written for `tile`: same extent (snapped to 60 m from the tile
    origin, clipped to the tile), so the 20 m raster has exactly half the 10 m shape."""
    snapped = _snap(_window(aoi, aoi_epsg, tile.epsg), 60.0, tile.ulx, tile.uly)
    txmin, tymin, txmax, tymax = tile.bounds
    clipped = (
        max(snapped[0], txmin),
        max(snapped[1], tymin),
        min(snapped[2], txmax),
        min(snapped[3], tymax),
    )
    return GridSpec(tile.epsg, 10.0, clipped), GridSpec(tile.epsg, 20.0, clipped)


def pixel_centers(
    grid: GridSpec, oversample: int = 1
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Map coordinates (x, y) of the centres of `grid`'s pixels, each split into
    `oversample` x `oversample` sub-pixels: arrays of shape (rows*k, cols*k)."""
    rows, cols = grid.shape
    step = grid.resolution / oversample
    xmin, _, _, ymax = grid.bounds
    xs = xmin + (np.arange(cols * oversample) + 0.5) * step
    ys = ymax - (np.arange(rows * oversample) + 0.5) * step
    xx, yy = np.meshgrid(xs, ys)
    return xx, yy


class Bilinear:
    """Bilinear interpolation at fixed fractional (row, col) positions of an image of a given
    shape, reusable for many images (much faster than one `scipy.ndimage.map_coordinates`
    call per band). Positions outside the image are clamped to its edge; the result has the
    image's dtype (float64 images keep full precision, e.g. map coordinates)."""

    def __init__(
        self, rows: NDArray[np.float64], cols: NDArray[np.float64], shape: tuple[int, int]
    ) -> None:
        h, w = shape
        r = np.clip(rows, 0, h - 1.000001)
        c = np.clip(cols, 0, w - 1.000001)
        r0, c0 = np.floor(r).astype(np.intp), np.floor(c).astype(np.intp)
        fr, fc = r - r0, c - c0
        self._weights: dict[np.dtype[Any], tuple[NDArray[Any], NDArray[Any]]] = {
            np.dtype(np.float64): (fr, fc),
            np.dtype(np.float32): (fr.astype(np.float32), fc.astype(np.float32)),
        }
        self.index = r0 * w + c0
        self.width = w

    def __call__(self, image: NDArray[Any]) -> NDArray[Any]:
        fr, fc = self._weights[image.dtype]
        flat = image.reshape(-1)
        i, w = self.index, self.width
        top = flat[i] + (flat[i + 1] - flat[i]) * fc
        bottom = flat[i + w] + (flat[i + w + 1] - flat[i + w]) * fc
        return np.asarray(top + (bottom - top) * fr)


def mesh_in(
    grid: GridSpec, oversample: int, dst: int, lattice: int = 16
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """`pixel_centers(grid, oversample)` expressed in EPSG `dst`. Across zones, pyproj
    transforms every `lattice`-th point and the rest are interpolated bilinearly (the map is
    smooth: under a millimetre of error over a few km)."""
    xx, yy = pixel_centers(grid, oversample)
    if grid.epsg == dst:
        return xx, yy
    rows, cols = xx.shape
    r_idx = np.arange(0, rows + lattice, lattice)
    c_idx = np.arange(0, cols + lattice, lattice)
    dx, dy = xx[0, 1] - xx[0, 0], yy[1, 0] - yy[0, 0]
    lx, ly = np.meshgrid(xx[0, 0] + c_idx * dx, yy[0, 0] + r_idx * dy)
    tx, ty = transformer(grid.epsg, dst).transform(lx, ly)
    rr, cc = np.meshgrid(np.arange(rows) / lattice, np.arange(cols) / lattice, indexing="ij")
    interpolate = Bilinear(rr, cc, lx.shape)
    return (
        interpolate(np.asarray(tx, dtype=np.float64)),
        interpolate(np.asarray(ty, dtype=np.float64)),
    )


@dataclass(frozen=True)
class SwathFrame:
    """Along/across-track coordinates of a pass, in the main UTM zone (m).

    `origin` is the AOI centre; `heading_deg` the ground-track azimuth; `center_offset_m` the
    across-track position of the swath centre line (positive toward east-south-east).
    """

    origin: tuple[float, float]
    heading_deg: float
    center_offset_m: float
    half_swath_m: float

    def coordinates(
        self, x: NDArray[np.float64], y: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(along, across) of map points, across measured from the swath centre line."""
        h = math.radians(self.heading_deg)
        dx, dy = x - self.origin[0], y - self.origin[1]
        along = dx * math.sin(h) + dy * math.cos(h)
        across = dx * math.sin(h - math.pi / 2) + dy * math.cos(h - math.pi / 2)
        return along, across - self.center_offset_m

    def inside(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.bool_]:
        """True for points inside the swath."""
        _, across = self.coordinates(x, y)
        return np.asarray(np.abs(across) <= self.half_swath_m)

    def polygon(self, length_m: float = 1.0e6) -> shapely.Polygon:
        """The swath as a polygon in the main zone, `length_m` long along the track."""
        h = math.radians(self.heading_deg)
        along = np.array([math.sin(h), math.cos(h)])
        across = np.array([math.sin(h - math.pi / 2), math.cos(h - math.pi / 2)])
        centre = np.asarray(self.origin) + self.center_offset_m * across
        half = length_m / 2.0
        corners = [
            centre + s * half * along + c * self.half_swath_m * across
            for s, c in ((-1, -1), (1, -1), (1, 1), (-1, 1))
        ]
        return shapely.Polygon(corners)

    def slc_gaps(
        self, x: NDArray[np.float64], y: NDArray[np.float64], phase_lines: float
    ) -> NDArray[np.bool_]:
        """True inside Landsat 7 SLC-off gaps: stripes across the track, one per 32 lines on
        each side (the two sides half a period apart), widening linearly from nadir to ~14
        lines at the swath edge. `phase_lines` places the stripe pattern of this scene."""
        along, across = self.coordinates(x, y)
        line = along / 30.0 + phase_lines + np.where(across > 0, 0.0, SLC_GAP_PERIOD_LINES / 2)
        width = SLC_MAX_GAP_LINES * np.abs(across) / self.half_swath_m
        return np.asarray(np.mod(line, SLC_GAP_PERIOD_LINES) < width)


def track_frame(
    track: Track, origin: tuple[float, float], heading_deg: float, jitter_m: float
) -> SwathFrame:
    """The swath of one pass over `track`, its centre line moved by `jitter_m` (orbit control)."""
    return SwathFrame(origin, heading_deg, track.center_offset_m + jitter_m, track.half_swath_m)


def footprint(
    swath: SwathFrame, grid: GridSpec, main_epsg: int
) -> tuple[dict[str, object], list[float]]:
    """The data footprint of a product written on `grid`: its extent cut by the swath, as a
    GeoJSON Polygon in EPSG:4326 (counter-clockwise, 7 decimals) and its bbox. Vertices are
    carried over unsegmented: over a few km, UTM to lon/lat is linear to well under a metre."""
    corners = shapely.get_coordinates(box(*grid.bounds))
    x, y = transform_points(corners[:, 0], corners[:, 1], grid.epsg, main_epsg)
    data = shapely.Polygon(np.column_stack([x, y])).intersection(swath.polygon())
    ring = shapely.get_coordinates(shapely.orient_polygons(data).exterior)
    lon, lat = transform_points(ring[:, 0], ring[:, 1], main_epsg, 4326)
    coords = [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat, strict=True)]
    lons, lats = [c[0] for c in coords], [c[1] for c in coords]
    return {"type": "Polygon", "coordinates": [coords]}, [
        min(lons),
        min(lats),
        max(lons),
        max(lats),
    ]

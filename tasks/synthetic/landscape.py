"""The static layout of the simulated area: parcels, fields, roads, forest, water, texture.

Everything is drawn once from the seed on the world grid (10 m, the main UTM zone, the AOI plus a
margin so that shifted and neighbouring-zone scenes sample inside it). `tasks.synthetic.world`
evolves it year by year.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from rasterio.features import rasterize
from scipy.ndimage import distance_transform_edt, gaussian_filter
from scipy.spatial import cKDTree
from shapely.geometry import LineString

from tasks.aoi import GridSpec
from tasks.synthetic.config import ArchiveConfig
from tasks.synthetic.geometry import transformer

__all__ = [
    "TRUTH_RESOLUTION",
    "Layout",
    "aoi_bounds",
    "build_layout",
    "rng_for",
    "smooth_noise",
    "world_margin_m",
]

#: Resolution of the truth grid (m): the finest simulated detail, Sentinel-2's 10 m bands.
TRUTH_RESOLUTION = 10.0


_PARCEL_SPACING_M = 70.0  # development parcels (building blocks)
_FIELD_SPACING_M = 220.0  # agricultural fields in central Germany: a few hectares
_MEADOW_SHARE = 0.18  # fields kept as permanent grassland
_FOREST_SHARE = 0.22


def world_margin_m(size_m: float) -> float:
    """Margin of the world grid around the AOI (m): room for the write margin of product grids
    (60 m), misregistration, the point spread function and, above all, the neighbouring zone's
    grids, which are rotated by the grid convergence (~2-3 degrees here) and so reach out by
    a few % of the AOI size."""
    return 250.0 + 0.1 * size_m


def rng_for(config: ArchiveConfig, *tags: str | int) -> np.random.Generator:
    """An independent random stream per purpose: same seed and tags, same numbers, whatever
    else the configuration (years, thinning) asks for."""
    words = [config.seed & 0xFFFFFFFF] + [zlib.crc32(str(t).encode()) for t in tags]
    return np.random.default_rng(words)


def aoi_bounds(config: ArchiveConfig, epsg: int) -> tuple[float, float, float, float]:
    """The AOI square in `epsg` (the main UTM zone), snapped to 30 m so every sensor grid
    nests in it: (xmin, ymin, xmax, ymax) in metres."""
    cx, cy = transformer(4326, epsg).transform(config.center_lon, config.center_lat)
    half = config.size_m / 2.0
    return (
        math.floor((cx - half) / 30.0) * 30.0,
        math.floor((cy - half) / 30.0) * 30.0,
        math.ceil((cx + half) / 30.0) * 30.0,
        math.ceil((cy + half) / 30.0) * 30.0,
    )


@dataclass(frozen=True)
class Layout:
    """Static layers on the world grid, arrays of shape ``grid.shape`` (rows, cols).

    `parcel`/`field`: Voronoi ids of development parcels and agricultural fields; `meadow`:
    per field id, True for permanent grassland; `road`, `lake`, `reservoir`, `quarry`,
    `forest`: masks; `road_distance`: metres to the nearest road; `brightness`: multiplicative
    within-class texture (~1); `urban_green`: green share of a built-up pixel (0-1);
    `field_delay`: per field id, days a field's crop cycle runs behind the calendar;
    `rotation_phase`: per field id, offset into the crop rotation.
    """

    grid: GridSpec
    aoi_window: tuple[slice, slice]
    center_rc: tuple[float, float]
    parcel: NDArray[np.int32]
    field: NDArray[np.int32]
    meadow: NDArray[np.bool_]
    road: NDArray[np.bool_]
    road_distance: NDArray[np.float32]
    lake: NDArray[np.bool_]
    reservoir: NDArray[np.bool_]
    quarry: NDArray[np.bool_]
    forest: NDArray[np.bool_]
    brightness: NDArray[np.float32]
    urban_green: NDArray[np.float32]
    field_delay: NDArray[np.float32]
    rotation_phase: NDArray[np.int64]

    @property
    def n_parcels(self) -> int:
        return int(self.parcel.max()) + 1

    @property
    def n_fields(self) -> int:
        return int(self.field.max()) + 1


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma_px: float
) -> NDArray[np.float32]:
    """Gaussian-filtered white noise scaled to zero mean, unit standard deviation."""
    field = gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    return ((field - field.mean()) / field.std()).astype(np.float32)


def _voronoi(
    rng: np.random.Generator, shape: tuple[int, int], spacing_px: float
) -> NDArray[np.int32]:
    """Label every pixel with its nearest seed of a jittered square lattice (`spacing_px`)."""
    rows, cols = shape
    gy, gx = np.mgrid[0 : rows + spacing_px : spacing_px, 0 : cols + spacing_px : spacing_px]
    seeds = np.column_stack([gy.ravel(), gx.ravel()])
    seeds += rng.uniform(-0.4, 0.4, seeds.shape) * spacing_px
    yy, xx = np.mgrid[0:rows, 0:cols]
    _, label = cKDTree(seeds).query(np.column_stack([yy.ravel(), xx.ravel()]))
    _, dense = np.unique(label, return_inverse=True)
    return dense.reshape(shape).astype(np.int32)


def _blob(
    rng: np.random.Generator, shape: tuple[int, int], center: tuple[float, float], radius_px: float
) -> NDArray[np.bool_]:
    """An irregular compact patch: a disc whose edge is perturbed by smooth noise."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    dist = np.hypot(yy - center[0], xx - center[1]) / radius_px
    return np.asarray(dist + 0.25 * smooth_noise(rng, shape, radius_px / 3) < 1.0)


def _roads(
    rng: np.random.Generator, grid: GridSpec, center_rc: tuple[float, float]
) -> NDArray[np.bool_]:
    """Four to five arterial roads radiating from the centre, wandering gently (10 m wide)."""
    rows, cols = grid.shape
    n_roads = int(rng.integers(4, 6))
    angles = np.linspace(0, 2 * np.pi, n_roads, endpoint=False) + rng.uniform(0, 2 * np.pi)
    lines = []
    for angle in angles + rng.normal(0, 0.25, n_roads):
        points = [(center_rc[1], center_rc[0])]
        heading = angle
        for _ in range(int(np.hypot(rows, cols) / 20) + 2):
            heading += rng.normal(0, 0.08)
            x, y = points[-1]
            points.append((x + 20 * math.cos(heading), y + 20 * math.sin(heading)))
        lines.append(LineString(points))
    burned = rasterize(lines, out_shape=(rows, cols), all_touched=True, dtype="uint8")
    return burned.astype(bool)


def _window(grid: GridSpec, bounds: tuple[float, float, float, float]) -> tuple[slice, slice]:
    xmin, _, _, ymax = grid.bounds
    r = grid.resolution
    c0, r0 = round((bounds[0] - xmin) / r), round((ymax - bounds[3]) / r)
    c1, r1 = round((bounds[2] - xmin) / r), round((ymax - bounds[1]) / r)
    return slice(r0, r1), slice(c0, c1)


def build_layout(config: ArchiveConfig, epsg: int) -> Layout:
    """Draw the static layout of the area around the AOI of `config` on a 10 m grid in `epsg`."""
    rng = rng_for(config, "layout")
    aoi = aoi_bounds(config, epsg)
    m = world_margin_m(config.size_m)
    grid = GridSpec(epsg, TRUTH_RESOLUTION, (aoi[0] - m, aoi[1] - m, aoi[2] + m, aoi[3] + m))
    shape = grid.shape
    window = _window(grid, aoi)
    aoi_px = config.size_m / TRUTH_RESOLUTION
    mid_r = (window[0].start + window[0].stop) / 2
    mid_c = (window[1].start + window[1].stop) / 2
    center = (mid_r + rng.uniform(-0.15, 0.15) * aoi_px, mid_c + rng.uniform(-0.15, 0.15) * aoi_px)

    parcel = _voronoi(rng, shape, _PARCEL_SPACING_M / TRUTH_RESOLUTION)
    field = _voronoi(rng, shape, _FIELD_SPACING_M / TRUTH_RESOLUTION)
    n_fields = int(field.max()) + 1
    road = _roads(rng, grid, center)
    road_distance = (distance_transform_edt(~road) * TRUTH_RESOLUTION).astype(np.float32)

    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    centre_dist = np.hypot(yy - center[0], xx - center[1]) / aoi_px
    # Water, reservoir and quarry sit away from the centre, each in its own direction.
    spots = rng.permutation(4)[:3] * (np.pi / 2) + rng.uniform(0, np.pi / 2)
    away = [
        (center[0] + 0.38 * aoi_px * math.sin(a), center[1] + 0.38 * aoi_px * math.cos(a))
        for a in spots
    ]
    lake = _blob(rng, shape, away[0], 0.07 * aoi_px)
    reservoir = _blob(rng, shape, away[1], 0.10 * aoi_px) & ~lake
    quarry = _blob(rng, shape, away[2], 0.045 * aoi_px) & ~lake & ~reservoir

    # Forest on the smooth-noise highs, kept out of the old town by a radial penalty.
    forest_score = smooth_noise(rng, shape, 250.0 / TRUTH_RESOLUTION) - 1.5 * np.exp(
        -centre_dist / 0.2
    )
    forest = (forest_score > np.quantile(forest_score, 1 - _FOREST_SHARE)) & ~lake & ~quarry

    fine = smooth_noise(rng, shape, 1.5)
    per_field = rng.normal(0, 1, n_fields).astype(np.float32)[field]
    brightness = np.clip(1.0 + 0.05 * fine + 0.04 * per_field, 0.85, 1.15).astype(np.float32)
    green_noise = smooth_noise(rng, shape, 3.0)
    urban_green = np.clip(0.2 + 0.1 * green_noise, 0.03, 0.45).astype(np.float32)

    return Layout(
        grid=grid,
        aoi_window=window,
        center_rc=center,
        parcel=parcel,
        field=field,
        meadow=rng.random(n_fields) < _MEADOW_SHARE,
        road=road,
        road_distance=road_distance,
        lake=lake,
        reservoir=reservoir,
        quarry=quarry,
        forest=forest,
        brightness=brightness,
        urban_green=urban_green,
        field_delay=rng.normal(0, 6, n_fields).astype(np.float32),
        rotation_phase=rng.integers(0, 4, n_fields),
    )

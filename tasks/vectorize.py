"""Vectorize: threshold + polygonize product rasters into GeoDataFrames with attributes.

Every input array is ``(y, x)`` on a `tasks.aoi.GridSpec` (north-up, row 0 = north edge);
probabilities and confidences are unitless 0-1 floats (NaN = no data), years are calendar years
as floats (NaN = never / no data). Output polygons are in the grid's CRS (UTM, metres).

| function             | one row per                               | attributes               |
|----------------------|-------------------------------------------|--------------------------|
| `change_polygons`    | connected patch of change                 | area, confidence, period |
| `footprint_polygons` | connected built-up patch of each year     | area, confidence, year   |
| `dynamics_polygons`  | connected patch urbanized within an epoch | area, confidence, epoch  |

Common columns: ``area_m2`` (planar area in the grid CRS, m²), ``n_pixels``, ``mean_confidence``
(mean of the confidence band over the patch's pixels, NaN ignored).

**Minimum mapping unit.** Patches smaller than ``min_pixels`` (4-connected pixels) are dropped
after thresholding; holes are kept as they are. Patches are 4-connected because
`rasterio.features.shapes` with 8-connectivity returns polygons that touch themselves at a
corner, which are invalid simple features.

**Rasters larger than memory.** `WindowedPolygonizer` takes a mask window by window and joins
the patches that cross window edges; `polygonize` is its one-window case. A patch inside one
window comes out as `rasterio.features.shapes` gives it; a patch over several windows is the
union of its parts (collinear vertices removed, rings in shapely's normal form), with the same
pixels, area and attributes as in one pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features
import shapely
from affine import Affine
from scipy import ndimage
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from tasks.aoi import GridSpec
from tasks.errors import InputError
from tasks.tiling import PixelWindow

__all__ = [
    "DEFAULT_EPOCH_YEARS",
    "DEFAULT_THRESHOLD",
    "WindowedPolygonizer",
    "binary_mask",
    "change_polygons",
    "concat_frames",
    "dynamics_polygons",
    "epoch_index",
    "footprint_polygons",
    "iso_date",
    "polygonize",
]

#: Probability above which a pixel is mapped as the positive class: the Bayes decision threshold
#: of a calibrated binary classifier under equal costs (see tasks.infer, temperature scaling).
DEFAULT_THRESHOLD = 0.5

#: Width of an urban-dynamics epoch, years (5-year bins as in the GHSL built-up epochs, Pesaresi
#: et al. 2016, JRC Technical Report EUR 27872).
DEFAULT_EPOCH_YEARS = 5

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def _check_2d(name: str, array: np.ndarray, grid: GridSpec) -> np.ndarray:
    a = np.asarray(array)
    if a.shape != grid.shape:
        raise InputError(
            f"{name}: shape {a.shape} does not match the grid's (rows, cols) {grid.shape}."
        )
    return a


def polygonize(
    mask: np.ndarray,
    grid: GridSpec,
    *,
    confidence: np.ndarray | None = None,
    min_pixels: int = 1,
    attributes: Mapping[str, Any] | None = None,
) -> gpd.GeoDataFrame:
    """Polygons of the 4-connected ``True`` patches of `mask` (y, x) with at least `min_pixels`.

    Columns: ``geometry`` (Polygon, grid CRS), ``area_m2``, ``n_pixels``, ``mean_confidence``
    (NaN without `confidence`) and every key of `attributes` (one value for all rows).
    """
    mask = _check_2d("mask", mask, grid)
    if confidence is not None:
        confidence = _check_2d("confidence", confidence, grid)
    rows, cols = grid.shape
    patches = WindowedPolygonizer(grid, min_pixels=min_pixels)
    patches.add(PixelWindow(0, 0, rows, cols), mask, confidence)
    return patches.result(attributes)


@dataclass
class _Patch:
    """A patch's part in one window: pixels, confidence sum and count, polygon (pixel
    coordinates of the grid), and where it came out: (window number, rank in that window)."""

    pixels: int
    confidence_sum: float
    confidence_count: float
    order: tuple[int, int]
    parts: list[BaseGeometry] = field(default_factory=list)


class WindowedPolygonizer:
    """`polygonize` of a mask given window by window: memory holds a window, the polygons kept
    and the patches open along window edges, not the raster.

    Add windows (`PixelWindow` of the grid) so that each window's neighbours above and to the
    left come before it: row-major order, e.g. `tasks.tiling.grid_windows` or the cores of
    `tasks.tiling.split_grid`; windows must not overlap. In each window, 4-connected patches
    are labelled, measured and polygonized in pixel coordinates (exact integers); the labels
    facing each other across a window edge are joined (union-find), and `result` merges the
    parts of each patch: pixel counts and confidence sums add up, polygons are united. A patch
    smaller than `min_pixels` that touches no window edge is dropped at once.

    Results do not depend on the windows, except for the order of the rows (by window, then
    `rasterio.features.shapes`' order in it) and the vertex order of merged polygons.
    """

    def __init__(self, grid: GridSpec, *, min_pixels: int = 1) -> None:
        if min_pixels < 1:
            raise InputError(f"min_pixels: {min_pixels} must be >= 1 (pixels of a patch).")
        self.grid = grid
        self.min_pixels = min_pixels
        rows, cols = grid.shape
        # the patch id of the last pixel added above each column / left of each row, and where
        self._above_id = np.zeros(cols, np.int64)
        self._above_row = np.full(cols, -2, np.int64)
        self._left_id = np.zeros(rows, np.int64)
        self._left_col = np.full(rows, -2, np.int64)
        self._patches: dict[int, _Patch] = {}
        self._parent: dict[int, int] = {}
        self._next_id = 1
        self._windows = 0

    def add(
        self, window: PixelWindow, mask: np.ndarray, confidence: np.ndarray | None = None
    ) -> None:
        """Add `mask` (bool, window's shape) and its `confidence` (NaN ignored) of `window`."""
        rows, cols = self.grid.shape
        r0, c0, h, w = window.row, window.col, window.height, window.width
        if r0 < 0 or c0 < 0 or r0 + h > rows or c0 + w > cols:
            raise InputError(f"window {window} reaches outside the grid {self.grid.shape}.")
        mask = np.asarray(mask).astype(bool)
        if mask.shape != (h, w):
            raise InputError(f"mask: shape {mask.shape} is not the window's ({h}, {w}).")
        seq = self._windows
        self._windows += 1
        labels, n = ndimage.label(mask, structure=_FOUR_CONNECTED)
        if not n:
            return  # the edges of earlier windows stay unmatched: nothing here touches them
        index = np.arange(1, n + 1)
        sizes = ndimage.sum_labels(mask, labels, index).astype(np.int64)
        sums = np.zeros(n)
        counts = np.zeros(n)
        if confidence is not None:
            conf = np.asarray(confidence, dtype=np.float64)
            if conf.shape != (h, w):
                raise InputError(f"confidence: shape {conf.shape} is not the window's ({h}, {w}).")
            finite = np.isfinite(conf)
            sums = ndimage.sum_labels(np.where(finite, conf, 0.0), labels, index)
            counts = ndimage.sum_labels(finite, labels, index)
        # patches on an edge shared with another window may grow there: kept whatever their size
        open_ = np.zeros(n + 1, dtype=bool)
        for inner, line in (
            (r0 > 0, labels[0]),
            (r0 + h < rows, labels[-1]),
            (c0 > 0, labels[:, 0]),
            (c0 + w < cols, labels[:, -1]),
        ):
            if inner:
                open_[line] = True
        keep = open_[1:] | (sizes >= self.min_pixels)
        kept = np.where(keep[labels - 1] & (labels > 0), labels, 0).astype(np.int32)
        base = self._next_id - 1  # patch id = base + label
        self._next_id += n
        shapes = rasterio.features.shapes(
            kept, mask=kept > 0, connectivity=4, transform=Affine.translation(c0, r0)
        )
        for rank, (geom, value) in enumerate(shapes):
            label = int(value)
            self._patches[base + label] = _Patch(
                int(sizes[label - 1]),
                float(sums[label - 1]),
                float(counts[label - 1]),
                (seq, rank),
                [shape(geom)],
            )
        ids = np.where(kept > 0, base + kept, 0)
        self._join(ids[0], self._above_id[c0 : c0 + w], self._above_row[c0 : c0 + w] == r0 - 1)
        self._join(ids[:, 0], self._left_id[r0 : r0 + h], self._left_col[r0 : r0 + h] == c0 - 1)
        self._above_id[c0 : c0 + w] = ids[-1]
        self._above_row[c0 : c0 + w] = r0 + h - 1
        self._left_id[r0 : r0 + h] = ids[:, -1]
        self._left_col[r0 : r0 + h] = c0 + w - 1

    def _join(self, here: np.ndarray, there: np.ndarray, facing: np.ndarray) -> None:
        """Join the patches of pixels `here` with those of the adjacent pixels `there`."""
        both = facing & (here > 0) & (there > 0)
        if both.any():
            for a, b in np.unique(np.stack([here[both], there[both]], axis=1), axis=0):
                ra, rb = self._find(int(a)), self._find(int(b))
                if ra != rb:
                    self._parent[max(ra, rb)] = min(ra, rb)

    def _find(self, pid: int) -> int:
        root = pid
        while root in self._parent:
            root = self._parent[root]
        while pid != root:  # path compression
            up = self._parent[pid]
            self._parent[pid] = root
            pid = up
        return root

    def result(self, attributes: Mapping[str, Any] | None = None) -> gpd.GeoDataFrame:
        """The polygons of the patches of at least `min_pixels`, as `polygonize` returns them."""
        merged: dict[int, _Patch] = {}
        for pid, part in self._patches.items():
            root = self._find(pid)
            into = merged.get(root)
            if into is None:
                merged[root] = _Patch(
                    part.pixels,
                    part.confidence_sum,
                    part.confidence_count,
                    part.order,
                    list(part.parts),
                )
            else:
                into.pixels += part.pixels
                into.confidence_sum += part.confidence_sum
                into.confidence_count += part.confidence_count
                into.order = min(into.order, part.order)
                into.parts.extend(part.parts)
        kept = sorted(
            (p for p in merged.values() if p.pixels >= self.min_pixels), key=lambda p: p.order
        )
        geoms = [_merge(p.parts) for p in kept]
        world = shapely.transform(np.asarray(geoms, dtype=object), _to_map(self.grid.transform))
        multi = np.array([len(p.parts) > 1 for p in kept], dtype=bool)
        world[multi] = shapely.normalize(world[multi])
        data: dict[str, Any] = {
            "area_m2": np.asarray(shapely.area(world), dtype=np.float64),
            "n_pixels": np.asarray([p.pixels for p in kept], dtype=np.int64),
            "mean_confidence": np.asarray(
                [
                    p.confidence_sum / p.confidence_count if p.confidence_count > 0 else np.nan
                    for p in kept
                ],
                dtype=np.float64,
            ),
        }
        for key, value in (attributes or {}).items():
            data[key] = [value] * len(kept)
        crs = self.grid.crs
        return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(list(world), crs=crs), crs=crs)


def _merge(parts: Sequence[BaseGeometry]) -> BaseGeometry:
    """One patch's polygon from its parts in adjacent windows (pixel coordinates: exact)."""
    if len(parts) == 1:
        return parts[0]
    # the union keeps a vertex where each window edge crossed the outline: drop them (a
    # tolerance of 0 removes collinear vertices only), as one pass over the raster has none
    return shapely.simplify(shapely.union_all(parts), 0.0)


def _to_map(transform: Affine) -> Any:
    """Pixel (col, row) -> map (x, y) coordinates with `transform`, in GDAL's order of
    operations (``x = c + col * a + row * b``), so the vertices are bit for bit those that
    `rasterio.features.shapes` computes with the grid's transform."""
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f

    def apply(xy: np.ndarray) -> np.ndarray:
        out = np.empty_like(xy)
        out[:, 0] = c + xy[:, 0] * a + xy[:, 1] * b
        out[:, 1] = f + xy[:, 0] * d + xy[:, 1] * e
        return out

    return apply


def binary_mask(probability: np.ndarray, threshold: float) -> np.ndarray:
    """True where `probability` >= `threshold` (NaN: no data, False)."""
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold: {threshold} must be strictly between 0 and 1.")
    with np.errstate(invalid="ignore"):
        return np.asarray(probability) >= threshold  # NaN compares False: no data is no change


def iso_date(value: date | datetime | str, name: str) -> str:
    """``YYYY-MM-DD`` of `value` (a date, datetime or ISO string); `name` is the argument's."""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    try:
        return date.fromisoformat(str(value)[:10]).isoformat()
    except ValueError as err:
        raise InputError(f"{name}: {value!r} is not an ISO date (YYYY-MM-DD).") from err


def change_polygons(
    probability: np.ndarray,
    grid: GridSpec,
    *,
    start: date | datetime | str,
    end: date | datetime | str,
    confidence: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    min_pixels: int = 4,
) -> gpd.GeoDataFrame:
    """Change patches: P(change) (y, x) >= `threshold`, at least `min_pixels` pixels.

    Rows carry ``period_start`` / ``period_end`` (ISO dates of the compared periods).
    """
    p = _check_2d("probability", probability, grid)
    return polygonize(
        binary_mask(p, threshold),
        grid,
        confidence=confidence,
        min_pixels=min_pixels,
        attributes={"period_start": iso_date(start, "start"), "period_end": iso_date(end, "end")},
    )


def footprint_polygons(
    probability: Mapping[int, np.ndarray] | np.ndarray,
    grid: GridSpec,
    *,
    years: Sequence[int] | None = None,
    confidence: Mapping[int, np.ndarray] | np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    min_pixels: int = 4,
) -> gpd.GeoDataFrame:
    """Built-up patches of each year: P(built-up) >= `threshold`, one set of rows per year.

    `probability` is ``{year: (y, x)}`` or an array ``(year, y, x)`` with `years`; a single
    ``(y, x)`` array needs `years` of length 1. `confidence` has the same form.
    """
    probs = _per_year("probability", probability, years, grid)
    confs = _per_year("confidence", confidence, years, grid) if confidence is not None else {}
    frames = [
        polygonize(
            binary_mask(p, threshold),
            grid,
            confidence=confs.get(year),
            min_pixels=min_pixels,
            attributes={"year": int(year)},
        )
        for year, p in probs.items()
    ]
    return concat_frames(frames, grid)


def _per_year(
    name: str,
    values: Mapping[int, np.ndarray] | np.ndarray,
    years: Sequence[int] | None,
    grid: GridSpec,
) -> dict[int, np.ndarray]:
    if isinstance(values, Mapping):
        return {int(y): _check_2d(f"{name}[{y}]", v, grid) for y, v in sorted(values.items())}
    a = np.asarray(values)
    if a.ndim == 2:
        a = a[None]
    if years is None or len(years) != a.shape[0]:
        raise InputError(
            f"years: give one year per {name} layer ({a.shape[0]}), got {years!r}; "
            "or pass a {year: array} mapping."
        )
    return {int(y): _check_2d(f"{name}[{y}]", a[i], grid) for i, y in enumerate(years)}


def dynamics_polygons(
    urbanization_year: np.ndarray,
    grid: GridSpec,
    *,
    confidence: np.ndarray | None = None,
    epoch_years: int = DEFAULT_EPOCH_YEARS,
    origin_year: int | None = None,
    min_pixels: int = 4,
) -> gpd.GeoDataFrame:
    """Patches urbanized within the same epoch: years binned by `epoch_years` from `origin_year`.

    `urbanization_year` (y, x) is the first built-up year (NaN = never built / no data).
    Epoch ``k`` holds years ``origin + k*epoch_years`` to ``origin + (k+1)*epoch_years - 1``;
    `origin_year` defaults to the earliest year present. Rows carry ``epoch_start`` and
    ``epoch_end`` (inclusive calendar years).
    """
    year = _check_2d("urbanization_year", urbanization_year, grid).astype(np.float64)
    if epoch_years < 1:
        raise InputError(f"epoch_years: {epoch_years} must be >= 1.")
    finite = np.isfinite(year)
    if not finite.any():
        empty = np.zeros(grid.shape, dtype=bool)
        return polygonize(empty, grid, attributes={"epoch_start": 0, "epoch_end": 0})
    origin = int(np.nanmin(year)) if origin_year is None else int(origin_year)
    epoch = epoch_index(year, origin, epoch_years)
    frames = []
    for k in np.unique(epoch[finite & (epoch >= 0)]):
        first = origin + int(k) * epoch_years
        frames.append(
            polygonize(
                epoch == k,
                grid,
                confidence=confidence,
                min_pixels=min_pixels,
                attributes={"epoch_start": first, "epoch_end": first + epoch_years - 1},
            )
        )
    return concat_frames(frames, grid)


def epoch_index(year: np.ndarray, origin: int, epoch_years: int) -> np.ndarray:
    """Epoch of each pixel of `year` (calendar years, NaN = none): ``(floor(year) - origin) //
    epoch_years`` as int64, -1 where `year` is NaN (see `dynamics_polygons`)."""
    year = np.asarray(year, dtype=np.float64)
    finite = np.isfinite(year)
    epoch = np.full(year.shape, -1, dtype=np.int64)
    epoch[finite] = (np.floor(year[finite]).astype(np.int64) - origin) // epoch_years
    return epoch


def concat_frames(frames: Sequence[gpd.GeoDataFrame], grid: GridSpec) -> gpd.GeoDataFrame:
    """The rows of `frames` in order (the first frame, empty, when all are empty)."""
    non_empty = [f for f in frames if len(f)]
    if not non_empty:
        return frames[0] if frames else polygonize(np.zeros(grid.shape, dtype=bool), grid)
    return gpd.GeoDataFrame(pd.concat(non_empty, ignore_index=True), crs=grid.crs)

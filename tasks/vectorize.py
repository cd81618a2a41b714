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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features
from scipy import ndimage
from shapely.geometry import shape

from tasks.aoi import GridSpec
from tasks.errors import InputError

__all__ = [
    "DEFAULT_EPOCH_YEARS",
    "DEFAULT_THRESHOLD",
    "change_polygons",
    "dynamics_polygons",
    "footprint_polygons",
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
    mask = _check_2d("mask", mask, grid).astype(bool)
    if min_pixels < 1:
        raise InputError(f"min_pixels: {min_pixels} must be >= 1 (pixels of a patch).")
    labels, n = ndimage.label(mask, structure=_FOUR_CONNECTED)
    columns: dict[str, list[Any]] = {"area_m2": [], "n_pixels": [], "mean_confidence": []}
    geoms: list[Any] = []
    if n:
        index = np.arange(1, n + 1)
        sizes = ndimage.sum_labels(mask, labels, index).astype(np.int64)
        conf_means = np.full(n, np.nan)
        if confidence is not None:
            conf = _check_2d("confidence", confidence, grid).astype(np.float64)
            finite = np.isfinite(conf)
            sums = ndimage.sum_labels(np.where(finite, conf, 0.0), labels, index)
            counts = ndimage.sum_labels(finite, labels, index)
            with np.errstate(invalid="ignore", divide="ignore"):
                conf_means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        keep = sizes >= min_pixels
        kept = np.where(keep[labels - 1] & (labels > 0), labels, 0).astype(np.int32)
        for geom, value in rasterio.features.shapes(
            kept, mask=kept > 0, connectivity=4, transform=grid.transform
        ):
            label = int(value)
            poly = shape(geom)
            geoms.append(poly)
            columns["area_m2"].append(float(poly.area))
            columns["n_pixels"].append(int(sizes[label - 1]))
            columns["mean_confidence"].append(float(conf_means[label - 1]))
    data: dict[str, Any] = {
        "area_m2": np.asarray(columns["area_m2"], dtype=np.float64),
        "n_pixels": np.asarray(columns["n_pixels"], dtype=np.int64),
        "mean_confidence": np.asarray(columns["mean_confidence"], dtype=np.float64),
    }
    for key, value in (attributes or {}).items():
        data[key] = [value] * len(geoms)
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=grid.crs), crs=grid.crs)


def _binary(probability: np.ndarray, threshold: float) -> np.ndarray:
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold: {threshold} must be strictly between 0 and 1.")
    with np.errstate(invalid="ignore"):
        return np.asarray(probability) >= threshold  # NaN compares False: no data is no change


def _as_date(value: date | datetime | str, name: str) -> str:
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
        _binary(p, threshold),
        grid,
        confidence=confidence,
        min_pixels=min_pixels,
        attributes={"period_start": _as_date(start, "start"), "period_end": _as_date(end, "end")},
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
            _binary(p, threshold),
            grid,
            confidence=confs.get(year),
            min_pixels=min_pixels,
            attributes={"year": int(year)},
        )
        for year, p in probs.items()
    ]
    return _concat(frames, grid)


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
    epoch = np.full(year.shape, -1, dtype=np.int64)
    epoch[finite] = (np.floor(year[finite]).astype(np.int64) - origin) // epoch_years
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
    return _concat(frames, grid)


def _concat(frames: Sequence[gpd.GeoDataFrame], grid: GridSpec) -> gpd.GeoDataFrame:
    non_empty = [f for f in frames if len(f)]
    if not non_empty:
        return frames[0] if frames else polygonize(np.zeros(grid.shape, dtype=bool), grid)
    return gpd.GeoDataFrame(pd.concat(non_empty, ignore_index=True), crs=grid.crs)

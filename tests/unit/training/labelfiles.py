"""Label files for the tests of `models.training.labels` and the train flow: made from the
tiny synthetic archive's ground truth, written as COGs (on its grid or warped to another CRS) and
as polygons vectorized with `rasterio.features.shapes`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
from rasterio.warp import Resampling, calculate_default_transform, reproject
from shapely.geometry import shape

from tasks.aoi import GridSpec
from tasks.synthetic import Truth


def write_cog(
    path: Path, array: np.ndarray, grid: GridSpec, *, nodata: float | None = 255, **extra: Any
) -> Path:
    """`array` (y, x) on `grid` as a single-band COG."""
    profile = {
        "driver": "COG",
        "width": grid.shape[1],
        "height": grid.shape[0],
        "count": 1,
        "dtype": array.dtype.name,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        **extra,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array[None])
    return path


def write_reprojected_cog(
    path: Path, array: np.ndarray, grid: GridSpec, crs: str, resolution: float | None
) -> Path:
    """`array` (uint8, 255 = nodata) warped from `grid` to `crs` (nearest neighbour)."""
    kw = {} if resolution is None else {"resolution": resolution}
    transform, width, height = calculate_default_transform(
        grid.crs, crs, grid.shape[1], grid.shape[0], *grid.bounds, **kw
    )
    out = np.full((height, width), 255, np.uint8)
    reproject(
        array,
        out,
        src_transform=grid.transform,
        src_crs=grid.crs,
        dst_transform=transform,
        dst_crs=crs,
        src_nodata=255,
        dst_nodata=255,
        resampling=Resampling.nearest,
    )
    profile = {
        "driver": "COG",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint8",
        "crs": crs,
        "transform": transform,
        "nodata": 255,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(out[None])
    return path


def vectorize(
    values: np.ndarray, grid: GridSpec, *, column: str | None = None, crs: str | None = None
) -> gpd.GeoDataFrame:
    """Polygons of the non-zero pixels of `values` (with `column` = the pixel value)."""
    geoms, vals = [], []
    for geom, v in rasterio.features.shapes(values, mask=values > 0, transform=grid.transform):
        geoms.append(shape(geom))
        vals.append(int(v))
    data = {column: np.asarray(vals, dtype=np.int32)} if column else {}
    gdf = gpd.GeoDataFrame(data, geometry=geoms, crs=grid.crs)
    return gdf.to_crs(crs) if crs else gdf


def urbanization_year(truth: Truth) -> np.ndarray:
    """(y, x) int16 on the truth grid: first year built-up, 0 = never."""
    built = np.stack([truth.builtup(y) for y in truth.years])
    built = np.maximum.accumulate(built, axis=0)
    years = np.asarray(truth.years, dtype=np.int16)
    return np.where(built.any(axis=0), years[np.argmax(built, axis=0)], 0).astype(np.int16)

"""Training data from user labels: a raster (COG) or GeoParquet polygons -> `WorldData`.

The shipped models train on the synthetic archive's ground truth (`models.training.data`). This
module turns *user* labels over a real AOI into the same arrays, so the same recipes
(`models.training.recipes`) train on them:

    label file (raster on any CRS/grid, or GeoParquet polygons)
      -> labels on the model grid (`grid_for_aoi`: 30 m change/dynamics, 10 m footprint;
         unlabelled pixels masked out of the loss)
      -> + composites from the production chain (`tasks.discover.discover` ->
         `tasks.ard.composites_for`), exactly what inference will see
      -> `WorldData` with `labelled30` / `labelled10` set.

What the labels mean, per model kind (`Task`):

- ``footprint`` (10 m; one ``year``): raster values 1 = built-up, 0 = not built-up, the raster's
  nodata (or mask) = unlabelled. Polygons = built-up.
- ``change`` (30 m; ``before`` < ``after`` years): raster 1 = the land cover changed between
  the two years, 0 = no change. Polygons = areas of change.
- ``dynamics`` (30 m; ``first_year`` .. ``last_year``): raster values = the year a pixel became
  built-up, 0 = not built-up by ``last_year``; a year before ``first_year`` means built-up from
  the start. Polygons carry an integer ``year`` column, the year of urbanization.

Polygons are *exhaustive* by default: every pixel of the AOI outside all polygons is a negative
(not built-up / no change / never urbanized). With a ``class`` column (integers 0/1) they are
*sparse*: only pixels under a polygon are labelled, ``class`` 1 positive, 0 negative (for
dynamics, class-1 rows need a ``year``), and everything else is unlabelled. Where polygons
overlap, positives win over negatives and an earlier urbanization year over a later one.

On the 30 m grids labels are first put on 10 m sub-pixels (the truth resolution of the synthetic
worlds), then aggregated 3 x 3 with the rule the synthetic labels use (`data.LABEL_SHARE`): a
30 m pixel is labelled when at least half its sub-pixels are, positive when at least half of its
labelled sub-pixels are, and urbanized in the first year by which at least half of them are
built-up. Rasters are resampled to the sub-pixel grid with nearest neighbour, or with the mode
when they are finer than it (a mean or bilinear kernel would invent classes and years).

Arrays: ``(y, x)`` on the model grid (`GridSpec`, UTM of the AOI, north up); label values int32.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fsspec
import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import rasterio.features
import rasterio.warp
import rasterio.windows
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError, WindowError
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from models.spec import Task, TrainingData, WeightsSpec
from models.training.data import BANDS, LABEL_SHARE, WorldData
from models.training.split import split_by_area
from tasks.aoi import AoiLike, GridSpec, grid_for_aoi, parse_aoi, reproject_geometry
from tasks.ard import ArdOptions, composites_for, read_composite
from tasks.composite import growing_season
from tasks.discover import discover
from tasks.errors import InputError, TransientIOError
from tasks.refs import SceneRef
from tasks.settings import get_settings

__all__ = [
    "CLASS_COLUMN",
    "DEFAULT_COLLECTIONS",
    "FINE_RESOLUTION",
    "MIN_LABELLED_PIXELS",
    "RESOLUTION",
    "YEAR_COLUMN",
    "LabelFile",
    "LabelGrid",
    "LabelledWorld",
    "ValEdge",
    "check_coverage",
    "fetch_labels",
    "label_extent",
    "label_periods",
    "label_world",
    "labels_on_grid",
    "load_labelled_world",
    "rasterize_polygons",
    "read_polygons",
    "record_label_source",
    "reproject_label_raster",
    "save_labelled_world",
]

log = logging.getLogger(__name__)

LabelFormat = Literal["auto", "raster", "geoparquet"]
ValEdge = Literal["top", "bottom", "left", "right"]

#: Model grid resolution per kind (metres), as the product flows use it
#: (`flows.products.RESOLUTION`): change and dynamics on 30 m (Landsat is the only sensor of
#: the early years), the footprint on 10 m Sentinel-2.
RESOLUTION: dict[str, float] = {"change": 30.0, "footprint": 10.0, "dynamics": 30.0}
#: Sub-pixel size labels are put on before aggregation to a coarser model grid (metres): the
#: synthetic truth's resolution, so both kinds of labels follow the same 3 x 3 rule.
FINE_RESOLUTION = 10.0
#: Collections searched by default: the footprint U-Net is a 10 m Sentinel-2 model (as in the
#: urban-footprint flow); change and dynamics use Landsat and Sentinel-2 harmonized.
DEFAULT_COLLECTIONS: dict[str, tuple[str, ...]] = {
    "footprint": ("sentinel-2-l2a",),
    "change": ("landsat-c2-l2", "sentinel-2-l2a"),
    "dynamics": ("landsat-c2-l2", "sentinel-2-l2a"),
}
#: Attribute columns of label polygons.
CLASS_COLUMN = "class"
YEAR_COLUMN = "year"
#: Plausible years of urbanization: anything else in a dynamics label is a coding error
#: (e.g. class codes 1/2 given as years).
YEAR_RANGE = (1800, 2100)
#: Fewest labelled pixels (with a clear observation) in each of the training and validation
#: areas: below this the validation metrics and the early stopping are noise.
MIN_LABELLED_PIXELS = 100
#: Label worlds get seeds from here up (synthetic worlds use small seeds): the recipes key the
#: area split by seed, so a mix of synthetic and label worlds must not share one.
LABEL_SEED_BASE = 1_000_000
#: Earliest year with Landsat TM data (as `flows.params.FIRST_LANDSAT_YEAR`).
FIRST_YEAR = 1984

_RASTER_SUFFIXES = (".tif", ".tiff", ".cog", ".vrt", ".img", ".jp2")
_PARQUET_SUFFIXES = (".parquet", ".geoparquet", ".pq")
_UNLABELLED = -1  # sentinel of label arrays before aggregation
_NEVER = np.iinfo(np.int32).max - 1  # "not built-up by the last year" while sorting years
_CHUNK = 1 << 20


# ---- the label file -------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelFile:
    """A label file ready to read: `source` as given (path or URL), a `local` copy, the sha256
    of its bytes and its format."""

    source: str
    local: Path
    sha256: str
    format: Literal["raster", "geoparquet"]

    @property
    def name(self) -> str:
        return self.source.rstrip("/").rsplit("/", 1)[-1]


def _format_of(source: str, fmt: LabelFormat) -> Literal["raster", "geoparquet"]:
    if fmt != "auto":
        return fmt
    suffix = Path(source.split("?", 1)[0]).suffix.lower()
    if suffix in _RASTER_SUFFIXES:
        return "raster"
    if suffix in _PARQUET_SUFFIXES:
        return "geoparquet"
    raise InputError(
        f"labels: cannot tell the format of {source!r} from its extension {suffix!r}; name it "
        f"*.tif (raster) or *.parquet (GeoParquet), or give format='raster'/'geoparquet'."
    )


def _is_url(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


def fetch_labels(
    source: str | Path, *, format: LabelFormat = "auto", cache_dir: Path | None = None
) -> LabelFile:
    """Locate the label file, hash it and tell its format (from the extension unless given).

    `source`: a local path, or an ``http(s)://`` / ``s3://`` URL (read with fsspec; S3 through
    ``EO_S3_ENDPOINT_URL`` when set), copied once to ``<cache_dir>/labels/<sha256><suffix>``.
    """
    text = str(source)
    fmt = _format_of(text, format)
    if not _is_url(text):
        local = Path(text.removeprefix("file://")).expanduser()
        if not local.is_file():
            raise InputError(f"labels: {text} is not a file; check the path.")
        return LabelFile(text, local, _sha256_file(local), fmt)
    cache = Path(cache_dir or get_settings().cache_dir) / "labels"
    cache.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {}
    endpoint = get_settings().s3_endpoint_url
    if text.startswith(("s3://", "s3a://")) and endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    suffix = Path(text.split("?", 1)[0]).suffix.lower()
    fd, tmp = tempfile.mkstemp(prefix=".labels.", suffix=".tmp", dir=cache)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, fsspec.open(text, "rb", **options) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
        local = cache / f"{h.hexdigest()}{suffix}"
        os.replace(tmp, local)
    except FileNotFoundError as err:
        raise InputError(f"labels: {text} does not exist; check the URL.") from err
    except OSError as err:
        raise TransientIOError(f"labels: reading {text} failed: {err}") from err
    finally:
        Path(tmp).unlink(missing_ok=True)
    return LabelFile(text, local, h.hexdigest(), fmt)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _open_raster(path: Path, source: str) -> Iterator[rasterio.DatasetReader]:
    try:
        src = rasterio.open(path)
    except RasterioIOError as err:
        raise InputError(
            f"labels: {source} is not a readable raster ({err}); give a GeoTIFF/COG."
        ) from err
    with src:
        if src.crs is None:
            raise InputError(
                f"labels: the raster {source} has no CRS; set it (e.g. `rio edit-info --crs "
                "EPSG:32632 FILE`) and try again."
            )
        if src.count != 1:
            raise InputError(
                f"labels: the raster {source} has {src.count} bands; give one band of labels."
            )
        dtype = np.dtype(src.dtypes[0])
        if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
            raise InputError(
                f"labels: the raster {source} is {dtype}; labels must be integer codes "
                "(uint8/int16/...: 0/1, or years for dynamics). Convert it, e.g. "
                "`gdal_translate -ot Int16 ...`."
            )
        yield src


def read_polygons(path: Path | str, *, source: str | None = None) -> gpd.GeoDataFrame:
    """Read and check a GeoParquet file of label polygons (any CRS, which must be set)."""
    source = source or str(path)
    try:
        gdf = gpd.read_parquet(path)
    except FileNotFoundError as err:
        raise InputError(f"labels: {source} is not a file; check the path.") from err
    except ValueError as err:  # pyarrow.ArrowInvalid is a ValueError too
        raise InputError(
            f"labels: {source} is not GeoParquet ({str(err).splitlines()[0]}); write it with "
            "GeoDataFrame.to_parquet(...)."
        ) from err
    if gdf.crs is None:
        raise InputError(
            f"labels: {source} has no CRS; set it with gdf.set_crs('EPSG:...') and write it again."
        )
    if gdf.empty:
        raise InputError(f"labels: {source} has no rows; give at least one polygon.")
    geoms = gdf.geometry
    missing = int((geoms.isna() | geoms.is_empty).sum())
    if missing:
        raise InputError(f"labels: {missing} row(s) of {source} have no geometry; drop them.")
    kinds = sorted(set(geoms.geom_type) - {"Polygon", "MultiPolygon"})
    if kinds:
        raise InputError(
            f"labels: {source} holds {kinds} geometries; labels are areas (Polygon/MultiPolygon): "
            "buffer points or lines into polygons first."
        )
    invalid = int((~geoms.is_valid).sum())
    if invalid:
        raise InputError(
            f"labels: {invalid} polygon(s) of {source} are invalid (self-intersections); repair "
            "them with shapely.make_valid / GeoSeries.make_valid() and write the file again."
        )
    return gdf


def label_extent(labels: LabelFile) -> BaseGeometry:
    """The labels' bounding box as a polygon in EPSG:4326 (the default AOI)."""
    if labels.format == "raster":
        with _open_raster(labels.local, labels.source) as src:
            w, s, e, n = rasterio.warp.transform_bounds(
                src.crs, "EPSG:4326", *src.bounds, densify_pts=21
            )
    else:
        w, s, e, n = read_polygons(labels.local, source=labels.source).to_crs(4326).total_bounds
    return box(float(w), float(s), float(e), float(n))


# ---- labels on the model grid -----------------------------------------------------------------
@dataclass(frozen=True)
class LabelGrid:
    """Labels on a model `grid`: `value` (y, x) int32 — footprint/change 1 positive, 0
    negative; dynamics the year of urbanization, 0 = not built-up by the end — meaningful
    where `labelled` (y, x) bool is True."""

    grid: GridSpec
    value: np.ndarray
    labelled: np.ndarray

    @property
    def n_labelled(self) -> int:
        return int(self.labelled.sum())

    def positive(self) -> np.ndarray:
        """(y, x) bool: built-up / changed / urbanized at some time, and labelled."""
        return self.labelled & (self.value > 0)


def _fine_grid(grid: GridSpec) -> tuple[GridSpec, int]:
    """The `FINE_RESOLUTION` grid over `grid` and the sub-pixels per side (1 when `grid` is
    not a whole multiple of it)."""
    factor = grid.resolution / FINE_RESOLUTION
    if factor < 1.5 or abs(factor - round(factor)) > 1e-6:
        return grid, 1
    return GridSpec(grid.epsg, FINE_RESOLUTION, grid.bounds), round(factor)


def _aggregate(fine: np.ndarray, factor: int, kind: Task) -> tuple[np.ndarray, np.ndarray]:
    """`factor` x `factor` blocks of int32 sub-pixel labels (-1 unlabelled) -> (value,
    labelled) by the rule of the module docstring."""
    if factor == 1:
        labelled = fine != _UNLABELLED
        return np.where(labelled, fine, 0).astype(np.int32), labelled
    h, w = fine.shape[0] // factor, fine.shape[1] // factor
    crop = fine[: h * factor, : w * factor].reshape(h, factor, w, factor)
    blocks = crop.transpose(0, 2, 1, 3).reshape(h, w, factor * factor)
    is_lab = blocks != _UNLABELLED
    n_lab = is_lab.sum(axis=-1)
    labelled = n_lab >= LABEL_SHARE * factor * factor
    if kind != "dynamics":
        n_pos = (blocks == 1).sum(axis=-1)
        value = (n_pos >= LABEL_SHARE * np.maximum(n_lab, 1)).astype(np.int32)
    else:
        # The k-th earliest year among labelled sub-pixels (never = _NEVER, unlabelled sort
        # last), k = ceil(share * labelled): the first year by which >= share are built-up.
        years = np.where(blocks > 0, blocks, _NEVER)
        years = np.where(is_lab, years, np.iinfo(np.int32).max)
        years.sort(axis=-1)
        k = np.clip(np.ceil(LABEL_SHARE * n_lab).astype(int) - 1, 0, factor * factor - 1)
        kth = np.take_along_axis(years, k[..., None], axis=-1)[..., 0]
        value = np.where(kth < _NEVER, kth, 0).astype(np.int32)
    return np.where(labelled, value, 0).astype(np.int32), labelled


def _check_values(values: np.ndarray, kind: Task, source: str) -> None:
    """Refuse label codes that do not mean anything for `kind` (module docstring)."""
    present = np.unique(values)
    if kind == "dynamics":
        bad = present[(present != 0) & ((present < YEAR_RANGE[0]) | (present > YEAR_RANGE[1]))]
        if bad.size:
            raise InputError(
                f"labels: {source} has values {bad[:5].tolist()}; dynamics labels are years of "
                f"urbanization ({YEAR_RANGE[0]}-{YEAR_RANGE[1]}) or 0 for never. Is it a class "
                "raster? Then train footprint or change."
            )
    else:
        bad = present[(present != 0) & (present != 1)]
        if bad.size:
            raise InputError(
                f"labels: {source} has values {bad[:5].tolist()}; {kind} labels are 1 "
                f"({'built-up' if kind == 'footprint' else 'change'}), 0 (not) and nodata "
                "(unlabelled). Recode the raster (or set its nodata)."
            )


def reproject_label_raster(labels: LabelFile, kind: Task, grid: GridSpec) -> LabelGrid:
    """A label raster (any CRS and pixel size; nodata and masks = unlabelled) on `grid`:
    nearest neighbour, or the mode when the raster is finer than the sub-pixel grid."""
    fine, factor = _fine_grid(grid)
    out = np.full(fine.shape, _UNLABELLED, dtype=np.int32)
    with _open_raster(labels.local, labels.source) as src:
        # read only the part under the grid (plus a margin of two source pixels)
        left, bottom, right, top = rasterio.warp.transform_bounds(
            fine.crs, src.crs, *fine.bounds, densify_pts=21
        )
        window = rasterio.windows.from_bounds(left, bottom, right, top, transform=src.transform)
        window = window.round_offsets().round_lengths()
        full = rasterio.windows.Window(0, 0, src.width, src.height)
        padded = rasterio.windows.Window(
            window.col_off - 2, window.row_off - 2, window.width + 4, window.height + 4
        )
        try:
            window = padded.intersection(full)
        except WindowError:
            window = None
        if window is None or window.width < 1 or window.height < 1:
            raise InputError(_outside_message(labels, grid))
        data = src.read(1, window=window)
        valid = src.read_masks(1, window=window) > 0
        _check_values(data[valid], kind, labels.source)
        src_values = np.where(valid, data.astype(np.int32), _UNLABELLED).astype(np.int32)
        w_transform = src.window_transform(window)
        native, _, _ = rasterio.warp.calculate_default_transform(
            src.crs, fine.crs, src.width, src.height, *src.bounds
        )
        finer = abs(native.a) < 0.75 * fine.resolution
        rasterio.warp.reproject(
            source=src_values,
            destination=out,
            src_transform=w_transform,
            src_crs=src.crs,
            src_nodata=_UNLABELLED,
            dst_transform=fine.transform,
            dst_crs=fine.crs,
            dst_nodata=_UNLABELLED,
            resampling=Resampling.mode if finer else Resampling.nearest,
        )
    value, labelled = _aggregate(out, factor, kind)
    return LabelGrid(grid, value, labelled)


def _column(gdf: gpd.GeoDataFrame, name: str, source: str, *, nullable: bool) -> pd.Series:
    col = gdf[name]
    if not (pd.api.types.is_integer_dtype(col) or pd.api.types.is_bool_dtype(col)):
        raise InputError(
            f"labels: column {name!r} of {source} is {col.dtype}; it must hold integers "
            f"(cast it, e.g. gdf[{name!r}] = gdf[{name!r}].astype('int32'))."
        )
    if not nullable and col.isna().any():
        raise InputError(f"labels: column {name!r} of {source} has empty values; fill them.")
    return col


def rasterize_polygons(
    gdf: gpd.GeoDataFrame,
    kind: Task,
    grid: GridSpec,
    *,
    area: BaseGeometry | None = None,
    source: str = "labels",
) -> LabelGrid:
    """Label polygons (`read_polygons`) on `grid`, by the rules of the module docstring.

    `area`: where exhaustive polygons label the negatives (EPSG:4326; default: the grid).
    A pixel is under a polygon when its centre is (``all_touched=False``).
    """
    fine, factor = _fine_grid(grid)
    sparse = CLASS_COLUMN in gdf.columns
    if sparse:
        cls = _column(gdf, CLASS_COLUMN, source, nullable=False).astype(np.int64)
        bad = sorted(set(cls.unique()) - {0, 1})
        if bad:
            raise InputError(
                f"labels: column {CLASS_COLUMN!r} of {source} has values {bad[:5]}; use 1 "
                "(built-up / change / urbanized) and 0 (not)."
            )
    else:
        cls = pd.Series(1, index=gdf.index, dtype=np.int64)
    if kind == "dynamics":
        if YEAR_COLUMN not in gdf.columns:
            raise InputError(
                f"labels: {source} has no {YEAR_COLUMN!r} column (columns: "
                f"{[c for c in gdf.columns if c != gdf.geometry.name]}); dynamics polygons "
                "need the integer year of urbanization."
            )
        year = _column(gdf, YEAR_COLUMN, source, nullable=True)
        positive_years = year[cls == 1]
        if positive_years.isna().any():
            raise InputError(
                f"labels: {int(positive_years.isna().sum())} urbanized polygon(s) of {source} "
                f"have no {YEAR_COLUMN!r}; fill it (or give them {CLASS_COLUMN!r} 0)."
            )
        _check_values(positive_years.to_numpy(np.int64), kind, source)
        burn = np.where(cls == 1, year.fillna(0).to_numpy(np.int64), 0)
        # negatives first, then positives from the latest year to the earliest (the last
        # painted wins: positives over negatives, earlier urbanization over later)
        order = np.lexsort((-burn, cls.to_numpy()))
    else:
        burn = cls.to_numpy(np.int64)
        order = np.argsort(burn, kind="stable")
    geoms = gdf.geometry.to_crs(grid.epsg).to_numpy()
    if sparse:
        out = np.full(fine.shape, _UNLABELLED, dtype=np.int32)
    else:
        region = _area_mask(area, fine) if area is not None else np.ones(fine.shape, bool)
        out = np.where(region, 0, _UNLABELLED).astype(np.int32)
    shapes = [(mapping(geoms[i]), int(burn[i])) for i in order]
    if shapes:
        rasterio.features.rasterize(
            shapes, out=out, transform=fine.transform, all_touched=False, dtype=np.int32
        )
    value, labelled = _aggregate(out, factor, kind)
    return LabelGrid(grid, value, labelled)


def _area_mask(area: BaseGeometry, grid: GridSpec) -> np.ndarray:
    """(y, x) bool: pixel centres of `grid` inside `area` (EPSG:4326)."""
    projected = reproject_geometry(area.segmentize(0.001), 4326, grid.epsg)
    return rasterio.features.geometry_mask(
        [mapping(projected)], out_shape=grid.shape, transform=grid.transform, invert=True
    )


def _outside_message(labels: LabelFile, grid: GridSpec, aoi: BaseGeometry | None = None) -> str:
    extent = label_extent(labels)
    target = aoi if aoi is not None else parse_aoi(grid.to_geojson())
    fmt = ", ".join(f"{v:.4f}" for v in extent.bounds)
    fmt_aoi = ", ".join(f"{v:.4f}" for v in target.bounds)
    return (
        f"labels: {labels.source} lie outside the AOI (labels cover lon/lat {fmt}, the AOI "
        f"{fmt_aoi}); give an AOI that overlaps the labels, or none to use their extent."
    )


def labels_on_grid(
    labels: LabelFile, kind: Task, grid: GridSpec, *, aoi: BaseGeometry | None = None
) -> LabelGrid:
    """`labels` (either format) on `grid`; pixels outside `aoi` (EPSG:4326) are unlabelled.

    Raises `InputError` when the labels do not overlap the AOI or leave no pixel labelled.
    """
    if aoi is not None and not label_extent(labels).intersects(aoi):
        raise InputError(_outside_message(labels, grid, aoi))
    if labels.format == "raster":
        lg = reproject_label_raster(labels, kind, grid)
    else:
        gdf = read_polygons(labels.local, source=labels.source)
        lg = rasterize_polygons(gdf, kind, grid, area=aoi, source=labels.source)
    labelled = lg.labelled
    if aoi is not None:
        labelled = labelled & _area_mask(aoi, grid)
    if not labelled.any():
        raise InputError(
            f"labels: {labels.source} leave no pixel of the AOI labelled (all nodata there?); "
            "check the raster's nodata value, or give an AOI over the labels."
        )
    return LabelGrid(grid, np.where(labelled, lg.value, 0).astype(np.int32), labelled)


# ---- periods, composites, the world ------------------------------------------------------------
def label_periods(
    kind: Task,
    *,
    year: int | None = None,
    before: int | None = None,
    after: int | None = None,
    first_year: int | None = None,
    last_year: int | None = None,
) -> dict[str, tuple[str, str]]:
    """The composite periods ``{"YYYY": (start, end)}`` the labels refer to: footprint `year`
    and dynamics `first_year`..`last_year` (calendar years); change `before` and `after` (their
    growing seasons, `tasks.composite.GROWING_SEASON`, as the change model is trained).
    Raises `InputError` naming the parameter when one is missing, misplaced or out of range."""
    given = {
        "year": year,
        "before": before,
        "after": after,
        "first_year": first_year,
        "last_year": last_year,
    }
    needed = {
        "footprint": ("year",),
        "change": ("before", "after"),
        "dynamics": ("first_year", "last_year"),
    }[kind]
    missing = [k for k in needed if given[k] is None]
    if missing:
        raise InputError(
            f"{', '.join(missing)}: {kind} labels need {' and '.join(needed)} (the calendar "
            f"year{'s' if len(needed) > 1 else ''} they describe)."
        )
    extra = [k for k, v in given.items() if v is not None and k not in needed]
    if extra:
        raise InputError(
            f"{', '.join(extra)}: not used by {kind} labels, which take {' and '.join(needed)}."
        )
    years = [int(given[k]) for k in needed]  # type: ignore[arg-type]
    low = [y for y in years if y < FIRST_YEAR]
    if low:
        raise InputError(f"years {low}: before {FIRST_YEAR} there are no Landsat TM data.")
    if kind == "change":
        assert before is not None and after is not None
        if after <= before:
            raise InputError(f"after ({after}) must be later than before ({before}).")
    elif kind == "dynamics":
        assert first_year is not None and last_year is not None
        if last_year < first_year + 2:
            raise InputError(
                f"last_year ({last_year}) must be >= first_year + 2 ({first_year + 2})."
            )
        years = list(range(first_year, last_year + 1))
    if kind == "change":  # the change model compares growing seasons (`GROWING_SEASON`)
        return {str(y): growing_season(y) for y in years}
    return {str(y): (f"{y}-01-01", f"{y}-12-31") for y in years}


def _label_seed(labels: LabelFile, kind: Task, grid: GridSpec, val_edge: ValEdge | None) -> int:
    """A seed of this label world (>= `LABEL_SEED_BASE`) from the labels' content, kind and
    grid; with `val_edge`, the first such seed whose area split holds out that edge."""
    key = json.dumps([labels.sha256, kind, grid.epsg, grid.resolution, grid.bounds])
    seed = LABEL_SEED_BASE + int(hashlib.sha256(key.encode()).hexdigest()[:6], 16)
    if val_edge is None:
        return seed
    for s in range(seed, seed + 256):  # each seed picks an edge with probability 1/4
        if split_by_area(*grid.shape, seed=s).edge == val_edge:
            return s
    raise AssertionError("no seed in 256 picks the edge")  # p = (3/4)**256


def check_coverage(
    world: WorldData,
    kind: Task,
    *,
    val_fraction: float = 0.25,
    min_pixels: int = MIN_LABELLED_PIXELS,
    source: str = "labels",
) -> dict[str, int]:
    """Count labelled pixels with a clear observation in the training and validation areas
    (`split_by_area`, as the recipes split) and refuse too few, or a single class.

    Returns ``{"train": n, "val": n, "positive": n}``.
    """
    # positive: built-up / changed / built-up by the last year; negative: not / not / not
    # built-up in the first year (a dynamics model needs pixels whose state changes or not)
    if kind == "footprint":
        labelled = world.label_mask10()
        positive, negative = world.built10, ~world.built10
        observed = np.isfinite(world.recent).all(axis=0)
    else:
        labelled = world.label_mask30()
        if kind == "change":
            positive = world.change_label(*world.years)
            negative = ~positive
            observed = np.isfinite(world.annual).all(axis=(0, 1))
        else:
            built = world.built_label()
            positive, negative = built[-1], ~built[0]
            observed = np.isfinite(world.annual).all(axis=1).any(axis=0)
    split = split_by_area(*labelled.shape, val_fraction=val_fraction, seed=world.seed)
    usable = labelled & observed
    counts = {
        "train": int((usable & split.mask(usable.shape, "train")).sum()),
        "val": int((usable & split.mask(usable.shape, "val")).sum()),
        "positive": int((positive & usable).sum()),
    }
    for part in ("train", "val"):
        if counts[part] < min_pixels:
            where = (
                f"the {split.edge} {val_fraction:.0%} of the AOI"
                if part == "val"
                else (f"the AOI outside its {split.edge} {val_fraction:.0%}")
            )
            raise InputError(
                f"labels: only {counts[part]} labelled pixel(s) with a clear observation in the "
                f"{'validation' if part == 'val' else 'training'} area ({where}); need "
                f"{min_pixels}. Label more there, choose val_edge where you have labels, or "
                "widen the dates/collections if the composites are empty."
            )
    if counts["positive"] == 0 or not (negative & usable).any():
        which = "positive" if counts["positive"] == 0 else "negative"
        raise InputError(
            f"labels: {source} give no {which} pixel; a model needs both classes. Check the "
            f"values (1 = positive, 0 = negative) or the {CLASS_COLUMN!r} column."
        )
    return counts


@dataclass(frozen=True)
class LabelledWorld:
    """A `WorldData` made from user labels, with where it came from."""

    world: WorldData
    labels: LabelFile
    kind: Task
    grid: GridSpec
    periods: dict[str, tuple[str, str]]
    scene_ids: tuple[str, ...]
    counts: dict[str, int]

    def describe(self) -> str:
        """One line for the spec's notes and the logs."""
        return (
            f"{self.kind} labels {self.labels.name} ({self.labels.format}) on a "
            f"{self.grid.resolution:g} m grid {self.grid.shape} EPSG:{self.grid.epsg}: "
            f"{self.counts['train']} training / {self.counts['val']} validation labelled "
            f"pixels, {self.counts['positive']} positive; composites {sorted(self.periods)} "
            f"of {len(self.scene_ids)} scenes"
        )


def _scenes(
    aoi: BaseGeometry,
    periods: Mapping[str, tuple[str, str]],
    collections: Sequence[str],
    *,
    stac_url: str | None,
    max_cloud_cover: float | None,
    kind: Task,
) -> list[SceneRef]:
    found: dict[tuple[str, str], SceneRef] = {}
    empty: list[str] = []
    for label, (start, end) in periods.items():
        scenes = discover(
            aoi, start, end, collections, stac_url=stac_url, max_cloud_cover=max_cloud_cover
        )
        if not scenes:
            empty.append(label)
        found.update({(s.collection, s.id): s for s in scenes})
    if not found or (kind != "dynamics" and empty):
        raise InputError(
            f"no scenes of {list(collections)} over the AOI in {empty or sorted(periods)}; "
            "choose other years or collections, or raise max_cloud_cover."
        )
    return sorted(found.values(), key=lambda s: (s.datetime, s.collection, s.id))


def label_world(
    source: str | Path,
    kind: Task,
    *,
    aoi: AoiLike | None = None,
    year: int | None = None,
    before: int | None = None,
    after: int | None = None,
    first_year: int | None = None,
    last_year: int | None = None,
    stac_url: str | None = None,
    collections: Sequence[str] | None = None,
    max_cloud_cover: float | None = 80.0,
    format: LabelFormat = "auto",
    val_edge: ValEdge | None = None,
    val_fraction: float = 0.25,
    min_pixels: int = MIN_LABELLED_PIXELS,
    cache_dir: Path | None = None,
    options: ArdOptions | None = None,
) -> LabelledWorld:
    """Training data of `kind` from the user labels at `source` (see the module docstring).

    `aoi` (EPSG:4326; default: the labels' extent) sets the model grid
    (``grid_for_aoi(aoi, RESOLUTION[kind])``, as the product flows do). The composites are
    annual (calendar years or growing seasons, see `label_periods`) from `collections` (default
    `DEFAULT_COLLECTIONS`) of the STAC API `stac_url` (default ``EO_STAC_API_URL``), built by
    `composites_for` (cached under `cache_dir`). `val_edge`: the edge whose `val_fraction`
    band is held out for validation (default: picked by the labels' hash).
    """
    periods = label_periods(
        kind, year=year, before=before, after=after, first_year=first_year, last_year=last_year
    )
    cache_dir = Path(cache_dir or get_settings().cache_dir)
    labels = fetch_labels(source, format=format, cache_dir=cache_dir)
    aoi_geom = parse_aoi(aoi) if aoi is not None else label_extent(labels)
    grid = grid_for_aoi(aoi_geom, RESOLUTION[kind])
    lg = labels_on_grid(labels, kind, grid, aoi=aoi_geom)
    seed = _label_seed(labels, kind, grid, val_edge)
    log.info("%s labels %s: %d labelled pixels on %s", kind, labels.source, lg.n_labelled, grid)
    # refuse too few labels before the (slow) composites: count them as if all were observed
    nan_free = _assemble(seed, kind, lg, periods, None)
    check_coverage(
        nan_free, kind, val_fraction=val_fraction, min_pixels=min_pixels, source=labels.source
    )
    scenes = _scenes(
        aoi_geom,
        periods,
        list(collections or DEFAULT_COLLECTIONS[kind]),
        stac_url=stac_url,
        max_cloud_cover=max_cloud_cover,
        kind=kind,
    )
    ref = composites_for(
        scenes, grid, dict(periods), options=options or ArdOptions(), cache_dir=cache_dir
    )
    refl = np.stack(
        [read_composite(ref, p)[0].sel(band=list(BANDS)).values for p in periods]
    ).astype(np.float32)  # (period, band, y, x)
    world = _assemble(seed, kind, lg, periods, refl)
    counts = check_coverage(
        world, kind, val_fraction=val_fraction, min_pixels=min_pixels, source=labels.source
    )
    return LabelledWorld(world, labels, kind, grid, dict(periods), ref.scene_ids, counts)


def _assemble(
    seed: int,
    kind: Task,
    lg: LabelGrid,
    periods: Mapping[str, tuple[str, str]],
    refl: np.ndarray | None,
) -> WorldData:
    """The `WorldData` of one label world. `refl` (period, band, y, x): the composites (None:
    zeros, to count labels before building them). Arrays a kind does not use are empty."""
    years = tuple(int(p) for p in periods)
    shape = lg.grid.shape
    if refl is None:
        refl = np.zeros((len(years), len(BANDS), *shape), dtype=np.float32)
    n_bands = len(BANDS)
    none3 = np.zeros((0, 0, 0), dtype=np.float32)
    if kind == "footprint":
        return WorldData(
            seed=seed,
            years=(),
            annual=np.zeros((0, n_bands, 0, 0), dtype=np.float32),
            built30=none3,
            landcover30=none3.astype(np.uint8),
            footprint_year=years[0],
            recent=refl[0],
            built10=lg.positive(),
            labelled10=lg.labelled,
        )
    if kind == "change":
        # two pseudo land-cover classes, so that `WorldData.change_label(before, after)` is
        # the labelled change
        landcover = np.stack([np.zeros(shape, np.uint8), lg.positive().astype(np.uint8)])
        built30 = none3
    else:
        yrs = np.asarray(years, dtype=np.int32)[:, None, None]
        built30 = ((lg.value[None] > 0) & (lg.value[None] <= yrs)).astype(np.float32)
        landcover = none3.astype(np.uint8)
    return WorldData(
        seed=seed,
        years=years,
        annual=refl,
        built30=built30,
        landcover30=landcover,
        footprint_year=years[-1],
        recent=np.zeros((n_bands, 0, 0), dtype=np.float32),
        built10=np.zeros((0, 0), dtype=bool),
        labelled30=lg.labelled,
    )


# ---- on disk between tasks, and into the weights spec ------------------------------------------
_ARRAYS = ("annual", "built30", "landcover30", "recent", "built10", "labelled30", "labelled10")


def save_labelled_world(lw: LabelledWorld, cache_dir: Path | None = None) -> Path:
    """Write `lw` to ``<cache_dir>/training/labels-<key>.npz`` (atomically) and return the
    path: a small reference for Prefect tasks to pass."""
    cache_dir = Path(cache_dir or get_settings().cache_dir)
    w = lw.world
    meta = {
        "seed": w.seed,
        "years": list(w.years),
        "footprint_year": w.footprint_year,
        "source": lw.labels.source,
        "local": str(lw.labels.local),
        "sha256": lw.labels.sha256,
        "format": lw.labels.format,
        "kind": lw.kind,
        "grid": [lw.grid.epsg, lw.grid.resolution, list(lw.grid.bounds)],
        "periods": lw.periods,
        "scene_ids": list(lw.scene_ids),
        "counts": lw.counts,
    }
    text = json.dumps(meta, sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    out_dir = cache_dir / "training"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"labels-{key}.npz"
    arrays: dict[str, np.ndarray] = {"meta": np.asarray(text)}
    for name in _ARRAYS:
        value = getattr(w, name)
        if value is not None:
            arrays[name] = value
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_labelled_world(path: Path | str) -> LabelledWorld:
    """Read a `save_labelled_world` file."""
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {name: z[name] for name in _ARRAYS if name in z.files}
    epsg, resolution, bounds = meta["grid"]
    world = WorldData(
        seed=int(meta["seed"]),
        years=tuple(int(y) for y in meta["years"]),
        footprint_year=int(meta["footprint_year"]),
        labelled30=arrays.pop("labelled30", None),
        labelled10=arrays.pop("labelled10", None),
        **arrays,
    )
    labels = LabelFile(meta["source"], Path(meta["local"]), meta["sha256"], meta["format"])
    return LabelledWorld(
        world,
        labels,
        meta["kind"],
        GridSpec(int(epsg), float(resolution), tuple(bounds)),
        {k: (v[0], v[1]) for k, v in meta["periods"].items()},
        tuple(meta["scene_ids"]),
        {k: int(v) for k, v in meta["counts"].items()},
    )


def record_label_source(
    spec_path: Path, lw: LabelledWorld, *, synthetic_seeds: Sequence[int] = ()
) -> WeightsSpec:
    """Rewrite the spec at `spec_path` (written by `save_weights`) so that its training data
    names the label file (as given) and its sha256, plus any synthetic worlds trained
    alongside. The weights file and its sha256 are unchanged."""
    spec = WeightsSpec.model_validate_json(Path(spec_path).read_bytes())
    old = spec.training_data
    data = TrainingData(
        source="labels",
        world_seeds=tuple(synthetic_seeds),
        labels=lw.labels.source,
        labels_sha256=lw.labels.sha256,
        years=old.years,
        notes=f"{lw.describe()}; {old.notes}",
    )
    done = spec.model_copy(update={"training_data": data})
    done = WeightsSpec.model_validate(done.model_dump())
    text = json.dumps(done.model_dump(mode="json"), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{spec_path.name}.", suffix=".tmp", dir=spec_path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, spec_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return done

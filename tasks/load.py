"""Load: STAC scenes -> one lazy (time, band, y, x) reflectance stack on one grid.

stackstac builds the dask graph (one chunk per asset and spatial tile, GDAL WarpedVRT for
reprojection); this module only decides what to ask it for and turns raw DNs into physical
values. Output conventions:

- dims ``(time, band, y, x)``; ``time`` ascending (ties broken by collection and id); coords per
  time: ``id``, ``collection``, ``platform``, ``eo:cloud_cover`` (percent, NaN if unknown).
- ``band``: the requested reflectance bands (common names, see `tasks.sensors`), then the mask
  bands (``scl`` for Sentinel-2, ``qa_pixel`` for Landsat) of the families present.
- float32. Reflectance is unitless (nominally 0-1): ``DN * scale + offset`` with the per-scene
  scale/offset of `tasks.sensors.resolve_item` (Sentinel-2 baseline >= 04.00 offset included).
  Masks are the raw integer codes (SCL classes, QA_PIXEL bit fields) as float, never rescaled.
  NaN wherever a scene has no observation: outside its footprint, DN == nodata, a band its sensor
  does not have (Landsat has no red-edge), a mask band of the other family.
- CRS and pixel grid are exactly the `GridSpec`'s (``attrs["crs"]``, ``attrs["transform"]``);
  ``x``/``y`` are pixel-centre coordinates in metres of that UTM zone. Scenes from other zones are
  reprojected on the fly.
- Lazy: dask chunks of one scene x one band x at most ``chunksize``² pixels, so memory stays
  bounded whatever the AOI size; nothing is read until computed.
- One time slice per acquisition (``mosaic=True``): the same acquisition is published as several
  items where tiles overlap (Sentinel-2 MGRS tiles of two UTM zones, adjacent Landsat rows). Items
  of one platform less than `SAME_ACQUISITION_S` apart are merged, first valid pixel wins, the
  item already in the grid's CRS first (no resampling where avoidable). ``id`` is that item's id;
  ``source_ids`` lists every merged item (provenance). Without merging, an acquisition would count
  twice in valid-observation counts and composites.

Resampling: mask codes are always resampled with ``nearest`` (interpolating class codes or bit
fields invents codes that mean something else). Reflectance uses ``resampling`` (default nearest:
exact DNs on a native grid, and files without a GeoTIFF nodata tag never blend their nodata 0 into
valid pixels). stackstac takes one resampling per call, so reflectance and masks are stacked
separately on the same grid and concatenated along ``band``.

Pre-flight (`check_scenes`): stackstac reads lazily, so a missing, truncated or non-TIFF asset
would only fail the whole computation, long after the load. `check_scenes` opens every asset a
load would read, in parallel threads, before anything is computed, and splits the scenes into
usable ones and `RejectedScene` records (id + reason, also logged): the run goes on with the
rest. Throttling and 5xx answers are not a reason to drop a scene: they raise `TransientIOError`.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import dask.array
import numpy as np
import pandas as pd
import rasterio
import stackstac
import xarray as xr
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from stackstac.rio_reader import AutoParallelRioReader

from tasks.aoi import AoiLike, GridSpec, grid_for_aoi, parse_aoi, utm_epsg
from tasks.errors import InputError, SceneRejectedError, TransientIOError
from tasks.refs import SceneRef
from tasks.sensors import (
    CANONICAL_BANDS,
    MASK_BANDS,
    PROFILES,
    ResolvedItem,
    check_item,
    collection_family,
    normalize_item,
    resolve_item,
)
from tasks.storage import gdal_env, gdal_session, redact

__all__ = [
    "MAX_RESOLUTION_M",
    "MIN_RESOLUTION_M",
    "SAME_ACQUISITION_S",
    "RejectedScene",
    "check_scenes",
    "default_grid",
    "load",
    "scene_epsg",
    "scene_grid",
]

log = logging.getLogger(__name__)

#: Items of one platform closer in time than this are one acquisition (tiles of one datatake).
SAME_ACQUISITION_S = 60.0

#: Accepted grid resolutions (metres). Below 1 m nothing in these archives has detail (Sentinel-2's
#: finest band is 10 m); above 1 km the stack is no longer an analysis-ready view of 10-30 m data.
MIN_RESOLUTION_M = 1.0
MAX_RESOLUTION_M = 1000.0
#: Default grid resolution per family: Sentinel-2's 10 m bands (B02-B04, B08), Landsat's 30 m.
DEFAULT_RESOLUTION_M = {"sentinel-2": 10.0, "landsat": 30.0}


def load(
    scenes: Sequence[SceneRef],
    grid: GridSpec,
    *,
    bands: Sequence[str] | None = None,
    with_mask: bool = True,
    chunksize: int = 1024,
    resampling: Resampling | str = Resampling.nearest,
    mosaic: bool = True,
) -> xr.DataArray:
    """Stack `scenes` on `grid` as a lazy float32 DataArray (time, band, y, x).

    Parameters
    ----------
    scenes: the acquisitions to load (`SceneRef` from discovery; any supported catalog, Sentinel-2
        and Landsat may be mixed).
    grid: the output grid: a WGS84 UTM zone (EPSG:326xx/327xx), resolution in metres, bounds in
        that CRS spanning whole pixels (`tasks.aoi.grid_for_aoi` builds one).
    bands: reflectance bands by common name (``blue``, ``green``, ``red``, ``rededge1``-``3``,
        ``nir``, ``nir08``, ``swir16``, ``swir22``). Default: the bands every scene's sensor has.
        A band another sensor lacks is NaN for that sensor's scenes.
    with_mask: append the mask band(s) (``scl`` / ``qa_pixel``) as raw codes.
    chunksize: spatial chunk edge in pixels (memory per chunk = 4 * chunksize² bytes).
    resampling: reflectance resampling (`rasterio.enums.Resampling` or its name); masks always
        use nearest.
    mosaic: merge the items of one acquisition into one time slice (see the module docstring).

    Raises `InputError` naming the argument for no scenes, unknown or unavailable bands, a
    non-UTM grid or an out-of-range resolution, and for items of unsupported collections.
    """
    if not scenes:
        raise InputError("scenes: no scenes to load; widen the dates or the AOI of the search.")
    _check_grid(grid)
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise InputError(f"chunksize: expected a positive number of pixels, got {chunksize!r}.")
    reflectance_resampling = _resampling(resampling)

    ordered = sorted(scenes, key=lambda s: (_utc(s.datetime), s.collection, s.id))
    resolved = [_resolve_scene(s) for s in ordered]
    band_names = _select_bands(bands, ordered, resolved)
    families = {r.family for r in resolved}
    mask_names = (
        [MASK_BANDS[f] for f in ("sentinel-2", "landsat") if f in families] if with_mask else []
    )

    # Unique per-position ids: stackstac drops scenes with no overlapping asset, and the result is
    # re-aligned on these keys so that every scene keeps its place in `time`.
    keys = [f"{i:06d}" for i in range(len(ordered))]
    items = [{**normalize_item(s.item), "id": k} for s, k in zip(ordered, keys, strict=True)]

    parts = []
    if band_names:
        raw = _stack(items, band_names, grid, chunksize, reflectance_resampling)
        parts.append(_to_physical(raw, resolved, keys, band_names, reflectance=True))
    if mask_names:
        raw = _stack(items, mask_names, grid, chunksize, Resampling.nearest)
        parts.append(_to_physical(raw, resolved, keys, mask_names, reflectance=False))
    out = xr.concat(parts, dim="band") if len(parts) > 1 else parts[0]

    rows, cols = grid.shape
    xmin, _, _, ymax = grid.bounds
    res = grid.resolution
    times = pd.DatetimeIndex([_utc(s.datetime) for s in ordered]).tz_convert(None)
    cloud = [np.nan if s.cloud_cover is None else s.cloud_cover for s in ordered]
    coords: dict[str, tuple[str, Any]] = {
        "time": ("time", times.values),
        "y": ("y", ymax - (np.arange(rows) + 0.5) * res),
        "x": ("x", xmin + (np.arange(cols) + 0.5) * res),
        "id": ("time", [s.id for s in ordered]),
        "collection": ("time", [s.collection for s in ordered]),
        "platform": (
            "time",
            [r.platform or s.platform for s, r in zip(ordered, resolved, strict=True)],
        ),
        "eo:cloud_cover": ("time", np.asarray(cloud, dtype="float64")),
    }
    out = out.assign_coords(coords)
    out = out.assign_coords(source_ids=("time", [s.id for s in ordered]))
    if mosaic:
        out = _mosaic_acquisitions(out, ordered, resolved, grid.epsg)
    out.name = "reflectance"
    out.attrs = {
        "crs": grid.crs,
        "epsg": grid.epsg,
        "transform": tuple(grid.transform)[:6],
        "resolution": grid.resolution,
        "units": "1 (reflectance); mask bands: raw codes",
        "mask_bands": tuple(mask_names),
    }
    return out


def _mosaic_acquisitions(
    stack: xr.DataArray, scenes: list[SceneRef], resolved: list[ResolvedItem], epsg: int
) -> xr.DataArray:
    """Merge time slices of one acquisition (same platform, < SAME_ACQUISITION_S apart)."""
    groups: list[list[int]] = []
    for i, scene in enumerate(scenes):
        last = groups[-1][0] if groups else None
        if (
            last is not None
            and stack["platform"].values[last] == stack["platform"].values[i]
            and abs((_utc(scene.datetime) - _utc(scenes[last].datetime)).total_seconds())
            < SAME_ACQUISITION_S
        ):
            groups[-1].append(i)
        else:
            groups.append([i])
    if all(len(g) == 1 for g in groups):
        return stack
    slices = []
    for group in groups:
        # the item already in the grid's CRS first: its pixels were not resampled
        group = sorted(group, key=lambda i: resolved[i].epsg != epsg)
        primary = stack.isel(time=group[0])
        data = primary.data
        for i in group[1:]:
            other = stack.isel(time=i).data
            data = dask.array.where(dask.array.isnan(data), other, data)
        merged = primary.copy(data=data).assign_coords(
            source_ids=",".join(scenes[i].id for i in group)
        )
        slices.append(merged)
    per_time = [str(c) for c in stack.coords if stack[c].dims == ("time",) and c != "time"]
    return xr.concat(slices, dim="time", coords=per_time, compat="equals", join="exact")


@dataclass(frozen=True)
class RejectedScene:
    """A scene left out of a run and why: for the log, the run report and product provenance."""

    id: str
    collection: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "collection": self.collection, "reason": self.reason}


#: GeoTIFF drivers (GDAL names a COG opened for reading ``GTiff``).
_TIFF_DRIVERS = frozenset({"GTiff", "COG"})


def check_scenes(
    scenes: Sequence[SceneRef],
    *,
    bands: Sequence[str] | None = None,
    with_mask: bool = True,
    max_workers: int = 8,
) -> tuple[list[SceneRef], list[RejectedScene]]:
    """Pre-flight of `load`: the scenes whose assets can all be read, and the others with why.

    For each scene the Item is checked (`tasks.sensors.check_item`), then every asset `load`
    would read (`bands`, default all reflectance bands of the scene's sensor, and the mask band
    when `with_mask`) is opened with rasterio: it must be a GeoTIFF with a CRS and at least one
    pixel, and the last internal block of its last band must be readable. In a COG that block
    lies at the end of the file (full-resolution tiles are written after the overviews), so a
    truncated download or upload fails here. Assets are checked in up to `max_workers` threads
    (I/O bound: GDAL releases the GIL).

    Returns ``(usable scenes in input order, rejected scenes)``; each rejection is logged with
    the scene id and reason. Raises `TransientIOError` when an asset's server answers 429/5xx or
    times out (a retry of the task may succeed; dropping the scene would change the product).
    """
    if isinstance(bands, str):
        bands = [bands]
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise InputError(
            f"max_workers: expected a positive number of threads, got {max_workers!r}."
        )
    wanted = None if bands is None else set(bands)
    reasons: dict[int, str] = {}
    jobs: list[tuple[int, str]] = []
    for i, scene in enumerate(scenes):
        try:
            resolved = check_item(scene.item)
        except SceneRejectedError as err:
            reasons[i] = str(err)
            continue
        hrefs = [b.href for name, b in resolved.bands.items() if wanted is None or name in wanted]
        if with_mask and resolved.mask is not None:
            hrefs.append(resolved.mask.href)
        jobs.extend((i, href) for href in dict.fromkeys(hrefs))
    # A PNG or JPEG has no geotransform: rasterio warns when opening it, and the check below
    # rejects it anyway. Warning filters are process-wide: set once around all the threads.
    with (
        warnings.catch_warnings(),
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="eo-check") as pool,
    ):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        results = list(pool.map(lambda job: _asset_problem(job[1]), jobs))
    for (i, _), problem in zip(jobs, results, strict=True):
        if problem is not None and i not in reasons:
            reasons[i] = problem
    good = [s for i, s in enumerate(scenes) if i not in reasons]
    rejected = [
        RejectedScene(scenes[i].id, scenes[i].collection, reasons[i]) for i in sorted(reasons)
    ]
    for r in rejected:
        log.warning("scene %s rejected: %s", r.id, r.reason)
    if rejected:
        log.info("pre-flight: %d scene(s) usable, %d rejected", len(good), len(rejected))
    return good, rejected


def _asset_problem(href: str) -> str | None:
    """Why the asset at `href` cannot be loaded, or None; raises `TransientIOError` for 5xx."""
    try:
        with gdal_env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(href) as ds:
            if ds.driver not in _TIFF_DRIVERS:
                return f"{href} is not a GeoTIFF (GDAL reads it as {ds.driver})."
            if ds.width < 1 or ds.height < 1 or ds.count < 1:
                return f"{href} has no pixels ({ds.count} band(s) of {ds.height}x{ds.width})."
            if ds.crs is None:
                return f"{href} has no CRS; the scene cannot be placed on the grid."
            block_rows, block_cols = ds.block_shapes[-1]
            last = ds.block_window(
                ds.count, (ds.height - 1) // block_rows, (ds.width - 1) // block_cols
            )
            ds.read(ds.count, window=last)
    except RasterioError as err:
        detail = f"{err}; cause: {err.__cause__}" if err.__cause__ else str(err)
        if _TRANSIENT.search(detail):
            raise TransientIOError(
                redact(f"reading {href} failed, worth a retry: {detail}")
            ) from err
        return redact(f"cannot read {href}: {detail[:300]} (missing, truncated or corrupt).")
    return None


def default_grid(aoi: AoiLike, collections: Sequence[str]) -> GridSpec:
    """The grid to load `collections` over `aoi` on: the AOI's UTM zone, 10 m if any collection is
    Sentinel-2 (its finest bands) else 30 m (Landsat), bounds snapped to whole pixels."""
    if isinstance(collections, str):
        collections = [collections]
    if not collections:
        raise InputError("collections: give at least one collection id to choose a resolution.")
    families = {collection_family(c) for c in collections}
    return grid_for_aoi(aoi, min(DEFAULT_RESOLUTION_M[f] for f in families))


def _epsg_of(source: Mapping[str, Any]) -> int | None:
    """``proj:epsg`` or ``proj:code`` (``EPSG:NNNN``) of an Item's properties or an asset."""
    code = source.get("proj:epsg") or source.get("proj:code")
    if code is None:
        return None
    try:
        return int(str(code).split(":")[-1])
    except ValueError:
        return None


def scene_epsg(scene: SceneRef) -> int | None:
    """The CRS (EPSG code) an Item declares for itself, else for its first asset that does."""
    props = scene.item.get("properties", {})
    for source in (props, *scene.item.get("assets", {}).values()):
        if (epsg := _epsg_of(source)) is not None:
            return epsg
    return None


def _scene_pixel_grid(scene: SceneRef, resolution: float) -> tuple[int, float, float] | None:
    """(EPSG, x, y of a pixel corner) of the first asset of `scene` on a `resolution` grid
    (its ``proj:*``, each falling back to the Item's), or None where undeclared."""
    props = scene.item.get("properties", {})
    for source in (*scene.item.get("assets", {}).values(), props):
        transform = source.get("proj:transform") or props.get("proj:transform")
        epsg = _epsg_of(source) or _epsg_of(props)
        if not transform or len(transform) < 6 or epsg is None:
            continue
        if abs(abs(float(transform[0])) - resolution) <= 1e-6:
            return epsg, float(transform[2]), float(transform[5])
    return None


def scene_grid(
    aoi: AoiLike,
    resolution: float,
    scenes: Sequence[SceneRef],
    *,
    epsg: int | None = None,
) -> GridSpec:
    """The product grid of `aoi` at `resolution` on the scenes' own pixel grid, so that a
    stack of one zone and one pixel grid is never resampled.

    CRS: `epsg` when given, else the one most `scenes` are in (a tie: the AOI's UTM zone where
    it is among them, else the smallest code; no scene declares one: the AOI's zone). Pixel
    edges: those most of the scenes of that CRS with `resolution` pixels share (Landsat
    Collection 2: 15 m off multiples of 30 m); none: whole multiples (`grid_for_aoi`).
    """
    if epsg is None:
        votes = Counter(e for e in (scene_epsg(s) for s in scenes) if e is not None)
        if votes:
            top = max(votes.values())
            tied = sorted(e for e, n in votes.items() if n == top)
            own = utm_epsg(parse_aoi(aoi))
            epsg = own if own in tied else tied[0]
    r = float(resolution)
    edges: Counter[tuple[float, float]] = Counter()
    for s in scenes:
        found = _scene_pixel_grid(s, r)
        if found is not None and (epsg is None or found[0] == epsg):
            edges[(round(found[1] % r, 6) % r, round(found[2] % r, 6) % r)] += 1
    origin = edges.most_common(1)[0][0] if edges else (0.0, 0.0)
    return grid_for_aoi(aoi, r, epsg=epsg, origin=origin)


# ---- private helpers -------------------------------------------------------------------------


def _check_grid(grid: GridSpec) -> None:
    if not isinstance(grid, GridSpec):
        raise InputError(f"grid: expected a GridSpec, got {type(grid).__name__}.")
    if not (32601 <= grid.epsg <= 32660 or 32701 <= grid.epsg <= 32760):
        raise InputError(
            f"grid: EPSG:{grid.epsg} is not a WGS84 UTM zone (EPSG:32601-32660 north, "
            "32701-32760 south); build the grid with tasks.aoi.grid_for_aoi."
        )
    if not MIN_RESOLUTION_M <= grid.resolution <= MAX_RESOLUTION_M:
        raise InputError(
            f"grid: resolution {grid.resolution} m is outside {MIN_RESOLUTION_M:g}-"
            f"{MAX_RESOLUTION_M:g} m; use 10 (Sentinel-2), 20 or 30 (Landsat)."
        )
    xmin, ymin, xmax, ymax = grid.bounds
    for extent in (xmax - xmin, ymax - ymin):
        n = extent / grid.resolution
        if abs(n - round(n)) > 1e-6:
            raise InputError(
                f"grid: bounds {grid.bounds} do not span whole {grid.resolution} m pixels; "
                "snap them (tasks.aoi.grid_for_aoi does)."
            )


def _resampling(value: Resampling | str) -> Resampling:
    if isinstance(value, Resampling):
        return value
    try:
        return Resampling[str(value)]
    except KeyError:
        names = ", ".join(r.name for r in Resampling)
        raise InputError(f"resampling: {value!r} is not one of {names}.") from None


def _utc(dt: Any) -> pd.Timestamp:
    ts = pd.Timestamp(dt)
    return ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)


def _resolve_scene(scene: SceneRef) -> ResolvedItem:
    try:
        return resolve_item(scene.item)
    except InputError as err:
        raise InputError(f"scenes: scene {scene.id!r}: {err}") from err


def _select_bands(
    bands: Sequence[str] | None, scenes: Sequence[SceneRef], resolved: Sequence[ResolvedItem]
) -> list[str]:
    """Requested (or default) reflectance bands, checked against every scene's sensor and item."""
    defined = {r.family: _family_bands(r.family) for r in resolved}
    if bands is None:
        common = set.intersection(*(set(b) for b in defined.values()))
        return [b for b in CANONICAL_BANDS if b in common]
    if isinstance(bands, str):
        bands = [bands]
    names = list(dict.fromkeys(bands))
    if not names:
        raise InputError("bands: empty; give band names or None for the default bands.")
    known = set().union(*defined.values())
    for name in names:
        if name in MASK_BANDS.values():
            raise InputError(
                f"bands: {name!r} is a mask band; leave it out of `bands` and pass with_mask=True."
            )
        if name not in known:
            raise InputError(
                f"bands: {name!r} is not a band of these scenes' sensors; use some of "
                f"{[b for b in CANONICAL_BANDS if b in known]}."
            )
    for scene, r in zip(scenes, resolved, strict=True):
        lacking = [n for n in names if n in defined[r.family] and n not in r.bands]
        if lacking:
            raise InputError(
                f"bands: scene {scene.id!r} ({r.catalog} {r.collection}) has no asset for "
                f"{lacking}; drop these bands or the scene."
            )
    return names


def _family_bands(family: str) -> set[str]:
    return {b for p in PROFILES if p.family == family for b in p.band_names}


def _stack(
    items: list[dict[str, Any]],
    assets: list[str],
    grid: GridSpec,
    chunksize: int,
    resampling: Resampling,
) -> xr.DataArray:
    """Raw DNs (float32, NaN outside footprints) of `assets` on `grid`, one chunk per asset+tile.

    stackstac's own rescaling is off: its nodata comes from the GeoTIFF tag only, which Landsat
    QA_PIXEL files lack, so nodata and scale/offset are applied afterwards from the STAC metadata.
    """
    return stackstac.stack(
        items,
        assets=assets,
        epsg=grid.epsg,
        resolution=grid.resolution,
        bounds=grid.bounds,
        snap_bounds=False,
        resampling=resampling,
        chunksize=chunksize,
        dtype=np.dtype("float32"),
        fill_value=np.float32(np.nan),
        rescale=False,
        sortby_date=False,
        xy_coords="center",
        properties=False,
        band_coords=False,
        reader=_ReportingReader,
        **_gdal_session_env(),
    )


def _gdal_session_env() -> dict[str, Any]:
    """stackstac's GDAL environment with the S3 credentials of ``EO_S3_SECRET_BLOCK``, if set
    (the session pickles, so dask workers get it too); empty: stackstac's default."""
    session = gdal_session()
    if session is None:
        return {}
    from stackstac.rio_reader import DEFAULT_GDAL_ENV

    return {"gdal_env": DEFAULT_GDAL_ENV.updated(always={"session": session})}


#: Read failures worth retrying (GDAL's messages for HTTP throttling/5xx, timeouts, resets).
_TRANSIENT = re.compile(
    r"HTTP response code: (429|5\d\d)|timed out|timeout|Connection (reset|refused)|"
    r"Could not resolve host",
    re.IGNORECASE,
)


class _ReportingReader(AutoParallelRioReader):
    """stackstac's reader, with read failures (at compute time) turned into the pipeline's errors.

    stackstac wraps every GDAL failure in a bare ``RuntimeError``; callers could not tell a
    throttled request (retry) from a corrupt file (skip the scene). This names the asset href and
    raises `TransientIOError` or `SceneRejectedError`.
    """

    def read(self, window: Window, **kwargs: Any) -> np.ndarray:
        try:
            return super().read(window, **kwargs)
        except RuntimeError as err:
            detail = f"{err}; cause: {err.__cause__!r}" if err.__cause__ else str(err)
            if _TRANSIENT.search(detail):
                raise TransientIOError(
                    f"reading {self.url} failed, worth a retry: {detail}"
                ) from err
            raise SceneRejectedError(
                f"cannot read {self.url} ({detail[:300]}); the file is missing or corrupt: "
                "drop its scene from the stack."
            ) from err


def _to_physical(
    raw: xr.DataArray,
    resolved: Sequence[ResolvedItem],
    keys: Sequence[str],
    names: Sequence[str],
    *,
    reflectance: bool,
) -> xr.DataArray:
    """Align `raw` to every scene x band (missing -> NaN), mask nodata, apply scale/offset.

    Scale, offset and nodata are per (scene, band) tables broadcast over (y, x): elementwise dask
    operations applied chunk by chunk right after each read. Arithmetic runs in float64 and is
    rounded once to float32 (the result is then exactly ``float32(DN * scale + offset)``).
    """
    raw = raw.drop_vars([c for c in raw.coords if c not in ("id", "band")])
    raw = raw.assign_coords(time=raw["id"].values).drop_vars("id")
    raw = raw.reindex(time=list(keys), band=list(names))
    n_t, n_b = len(keys), len(names)
    scale = np.ones((n_t, n_b))
    offset = np.zeros((n_t, n_b))
    nodata = np.full((n_t, n_b), np.nan)
    for i, r in enumerate(resolved):
        for j, name in enumerate(names):
            band = (
                r.bands.get(name)
                if reflectance
                else (r.mask if r.mask and r.mask.name == name else None)
            )
            if band is None:
                continue
            scale[i, j], offset[i, j], nodata[i, j] = band.scale, band.offset, band.nodata
    tb = ("time", "band")
    valid = raw != xr.DataArray(nodata.astype("float32"), dims=tb)
    physical = raw.astype("float64") * xr.DataArray(scale, dims=tb) + xr.DataArray(offset, dims=tb)
    return physical.where(valid).astype("float32")

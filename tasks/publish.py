"""Publish products: COG + GeoParquet 1.1 + STAC Item, atomically and idempotently.

Layout under the output prefix (a local folder or ``s3://bucket/prefix``, `tasks.storage`)::

    <prefix>/index.ndjson                         one STAC Item per line, every product
    <prefix>/<collection>/collection.json         STAC Collection (extent updated on publish)
    <prefix>/<collection>/<id>/<id>.tif           COG: product bands + confidence + count
    <prefix>/<collection>/<id>/<id>.parquet       GeoParquet 1.1 polygons (grid CRS)
    <prefix>/<collection>/<id>/item.json          STAC Item: the commit marker, written last
    <prefix>/.tmp/<id>-<uuid>/...                 staging area of a publish in progress

**Protocol.** The product id is a hash of its inputs (kind, scene ids, grid, model name +
weights sha256, parameters, period), so the same inputs always give the same keys.
`publish_product`:

1. returns at once when ``item.json`` exists and every asset it lists has the recorded
   ``file:size`` and sha256 (nothing is written; a damaged product is republished);
2. removes staging folders ``.tmp/<id>-*`` left by an earlier, interrupted publish of that id;
3. writes the files to a local temporary folder, uploads them to ``.tmp/<id>-<uuid>/``, reads
   them back and checks size and sha256;
4. moves them to ``<collection>/<id>/`` (a rename locally, a server-side copy on S3);
5. writes ``item.json`` LAST (staged then moved: a reader sees all of it or nothing) -- a
   product exists only when its Item does (`list_products` reads Items only);
6. updates ``collection.json`` and ``index.ndjson`` (derived listings, rebuildable from the
   Items with `rebuild_index`; concurrent publishers to one prefix may race on them, never on
   products) and removes the staging folder.

A crash anywhere before step 5 leaves no visible product; the next publish of the same inputs
cleans the staging leftovers and completes it. A failure that Python sees (the object store
failing after its bounded retries, `tasks.storage`) also rolls back: the files already moved
into ``<collection>/<id>/`` and the staging folder are removed (best effort, unless the Item
did get written), so nothing of the product is left under the prefix. A process killed outright
(SIGKILL, out of memory) cannot roll back: the next publish of that id removes its remote
staging folder, and any publish removes the local working folders (``eo-publish-<pid>-*`` in the
temporary directory) of processes that no longer run.

**Rasters.** One COG per product (rio-cogeo, DEFLATE, internal tiles, overviews with nearest
resampling so binary maps, years and counts keep their values), float32, ``nodata`` -9999 where
the input is NaN, band descriptions = band names. Required bands: one or more product bands,
``confidence`` and at least one valid-observation count band (name starting with ``count``).

**Memory.** The bands are given as arrays or as a `RasterFile`: a local GeoTIFF that
`write_raster` wrote window by window (`WINDOW_PX` a side), e.g. a mosaic of tiles larger than
memory. Either way the COG is made from such a file (rio-cogeo from file to file, its
intermediate on disk, GDAL's block cache capped at `GDAL_CACHE_BYTES`) and the band statistics
of the Item are accumulated window by window: the Python heap holds one window.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import geopandas as gpd
import numpy as np
import rasterio
import xarray as xr
from prefect import task
from prefect.cache_policies import NO_CACHE
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles
from shapely.geometry import shape

from models.spec import WeightsSpec, software_version
from tasks.aoi import GridSpec
from tasks.errors import InputError, PipelineError
from tasks.refs import SceneRef
from tasks.retry import retry_transient_only
from tasks.storage import ObjectStore, multihash_sha256, open_store, safe_name
from tasks.tiling import PixelWindow, grid_windows

__all__ = [
    "COG_NODATA",
    "GDAL_CACHE_BYTES",
    "STAC_EXTENSIONS",
    "WINDOW_PX",
    "ProductKind",
    "ProductRef",
    "RasterFile",
    "list_products",
    "local_workdir",
    "product_bands",
    "product_id",
    "publish",
    "publish_product",
    "rebuild_index",
    "write_product_cog",
    "write_product_parquet",
    "write_raster",
]

log = logging.getLogger(__name__)

ProductKind = Literal["change", "footprint", "dynamics"]
_KINDS: tuple[str, ...] = ("change", "footprint", "dynamics")

#: Nodata of the published COGs (float32). An explicit number rather than NaN: NaN nodata is
#: not handled by every reader (nodata equality tests fail for NaN).
COG_NODATA = -9999.0

#: Side (pixels) of the windows in which rasters are written, read and summarized, and of the
#: blocks of the intermediate GeoTIFFs: a multiple of 16 (GeoTIFF tiles) that keeps a window of
#: a few float32 bands near 1 MiB.
WINDOW_PX = 256
#: GDAL's raster block cache while a COG is written (bytes). Its default, 5 % of the RAM, grows
#: with the machine; this bound keeps the COG's memory the same for any product size (our choice:
#: a few hundred 512 px float32 blocks, ample for a copy that reads each block once).
GDAL_CACHE_BYTES = 256 * 2**20

STAC_VERSION = "1.1.0"
#: Extension schema URLs, versions current in November 2026 (stac-extensions on GitHub).
STAC_EXTENSIONS = (
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
)
#: Media types: the COG one from the STAC best practices, the Parquet one registered at IANA
#: (application/vnd.apache.parquet, 2024).
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"

_TMP = ".tmp"
_ITEM = "item.json"
_INDEX = "index.ndjson"
_COLLECTION = "collection.json"
_ID_HASH_CHARS = 24  # 96 bits of sha256: collisions are not a concern at any product count

_DESCRIPTIONS = {
    "probability": "calibrated probability of the positive class (0-1)",
    "binary": "1 where probability >= threshold, else 0",
    "confidence": "probability of the predicted class (0-1)",
    "urbanization_year": "year the pixel became built-up (model: centre of the most probable "
    "3-year window of its year distribution; baseline: index breakpoint)",
}


@dataclass(frozen=True)
class ProductRef:
    """A published product: what travels between tasks and into reports."""

    id: str
    collection: str
    kind: str
    item_href: str
    assets: tuple[tuple[str, str], ...]  # (asset key, href)
    skipped: bool = False  # True when the product was already published (nothing written)

    def asset_href(self, key: str) -> str:
        for k, href in self.assets:
            if k == key:
                return href
        raise InputError(
            f"product {self.id} has no asset {key!r}; it has {[k for k, _ in self.assets]}."
        )


# ---- identity -----------------------------------------------------------------------------------
def _canonical(value: Any) -> Any:
    """JSON-ready form with a stable order: tuples -> lists, dates -> ISO, numpy -> Python."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise InputError(f"parameter value {value!r} ({type(value).__name__}) is not JSON-like.")


def product_id(kind: str, inputs: Sequence[str], model_sha: str, params: Mapping[str, Any]) -> str:
    """Stable id ``<kind>-<hash>``: sha256 of kind, sorted inputs, model sha and parameters.

    The same arguments give the same id in every process (canonical JSON, sorted keys).
    """
    if kind not in _KINDS:
        raise InputError(f"kind: {kind!r} is not one of {list(_KINDS)}.")
    payload = {
        "kind": kind,
        "inputs": sorted(str(i) for i in inputs),
        "model": str(model_sha),
        "params": _canonical(dict(params)),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:_ID_HASH_CHARS]}"


# ---- files --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RasterFile:
    """A product raster on disk, as `write_raster` wrote it: a local float32 GeoTIFF on `grid`
    in the encoding of the published COG (no data = `nodata`, band descriptions = `bands`),
    with each band's ``raster:bands`` statistics (None: no valid pixel)."""

    path: Path
    grid: GridSpec
    bands: tuple[str, ...]
    statistics: tuple[dict[str, float] | None, ...]
    nodata: float = COG_NODATA


class _BandStats:
    """Minimum, maximum, mean and valid share of one band, accumulated window by window (sums
    in float64: the mean does not depend on the order of the windows beyond rounding)."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf

    def add(self, valid: np.ndarray) -> None:
        if valid.size:
            self.count += int(valid.size)
            self.total += float(valid.sum(dtype=np.float64))
            self.minimum = min(self.minimum, float(valid.min()))
            self.maximum = max(self.maximum, float(valid.max()))

    def result(self, pixels: int) -> dict[str, float] | None:
        if not self.count:
            return None
        return {
            "minimum": self.minimum,
            "maximum": self.maximum,
            "mean": self.total / self.count,
            "valid_percent": 100.0 * self.count / pixels,
        }


def write_raster(
    path: str | Path,
    grid: GridSpec,
    bands: Sequence[str],
    windows: Iterable[tuple[PixelWindow, Mapping[str, np.ndarray]]],
    *,
    nodata: float = COG_NODATA,
) -> RasterFile:
    """Write a product raster window by window: ``(window, {band: (h, w) array})`` pairs whose
    windows partition `grid` (each pixel once, any order; windows on the `WINDOW_PX` lattice of
    `grid_windows` write each GeoTIFF block once). NaN becomes `nodata`.

    Memory holds one window. Returns the `RasterFile` with each band's statistics. Raises
    `InputError` when a window has other bands or shapes, or the windows do not cover `grid`.
    """
    names = list(bands)
    if not names:
        raise InputError("rasters: no bands given.")
    rows, cols = grid.shape
    profile = grid.geotiff_profile(
        len(names),
        nodata=nodata,
        tiled=True,
        blockxsize=WINDOW_PX,
        blockysize=WINDOW_PX,
        # lossless and fast (level 1: a fifth of the default's time, measured on 2048 px
        # products); an intermediate file, read twice, never published
        compress="deflate",
        zlevel=1,
    )
    stats = [_BandStats() for _ in names]
    written = 0
    fill = np.float32(nodata)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), rasterio.open(path, "w", **profile) as dst:
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
        for window, arrays in windows:
            if set(arrays) != set(names):
                raise InputError(f"window {window}: bands {sorted(arrays)}, expected {names}.")
            if window.row < 0 or window.col < 0 or window.row + window.height > rows:
                raise InputError(f"window {window} reaches outside the grid {grid.shape}.")
            if window.col + window.width > cols:
                raise InputError(f"window {window} reaches outside the grid {grid.shape}.")
            target = Window(window.col, window.row, window.width, window.height)
            for i, name in enumerate(names):
                values = np.asarray(arrays[name], dtype=np.float32)
                if values.shape != (window.height, window.width):
                    raise InputError(
                        f"rasters[{name!r}]: {values.shape} in window {window}, which is "
                        f"({window.height}, {window.width})."
                    )
                finite = np.isfinite(values)
                encoded = np.where(finite, values, fill)
                stats[i].add(encoded[encoded != fill])
                dst.write(encoded, i + 1, window=target)
            written += window.height * window.width
    if written != rows * cols:
        Path(path).unlink(missing_ok=True)
        raise InputError(
            f"rasters: the windows hold {written} pixels, the grid {rows * cols}; they must "
            "cover the grid once."
        )
    return RasterFile(
        Path(path), grid, tuple(names), tuple(s.result(rows * cols) for s in stats), nodata
    )


def _array_windows(
    bands: Mapping[str, np.ndarray], grid: GridSpec
) -> Iterator[tuple[PixelWindow, dict[str, np.ndarray]]]:
    for w in grid_windows(grid, WINDOW_PX):
        yield w, {name: np.asarray(a)[w.rows, w.cols] for name, a in bands.items()}


def _check_bands(bands: Mapping[str, np.ndarray] | RasterFile, grid: GridSpec) -> list[str]:
    """The band names of `bands`, checked: shapes on `grid`, confidence and count present."""
    if isinstance(bands, RasterFile):
        if bands.grid != grid:
            raise InputError(f"rasters: {bands.path} is on {bands.grid}, not on {grid}.")
        names = list(bands.bands)
    else:
        for name, a in bands.items():
            if np.shape(a) != grid.shape:
                raise InputError(
                    f"rasters[{name!r}]: shape {np.shape(a)} does not match the grid {grid.shape}."
                )
        names = list(bands)
    if not names:
        raise InputError("rasters: no bands given.")
    if "confidence" not in names:
        raise InputError("rasters: a 'confidence' band is required (honest products).")
    if not any(n.startswith("count") for n in names):
        raise InputError(
            "rasters: a valid-observation count band ('count' or 'count_<period>') is required; "
            "take it from the composites (CompositeRef) the product was made from."
        )
    return names


def product_bands(
    kind: ProductKind,
    result: xr.Dataset,
    counts: np.ndarray | Mapping[str, np.ndarray],
    *,
    threshold: float = 0.5,
) -> dict[str, np.ndarray]:
    """The bands to publish from an inference result (`tasks.infer`) and composite counts.

    - change / footprint: ``probability``, ``binary`` (probability >= `threshold`, NaN where
      the probability is), ``confidence``;
    - dynamics: ``urbanization_year`` and its ``confidence``: the confidence of the year of
      urbanization where there is one, of the last year (not built) elsewhere;

    then the valid-observation counts: a ``(y, x)`` array gives ``count``; a mapping
    ``{period: (y, x)}`` gives ``count_<period>`` (e.g. the before and after composites).
    Arrays are ``(y, x)`` float32; probabilities and confidences are 0-1.
    """
    if kind in ("change", "footprint"):
        prob = np.asarray(result["probability"].values, dtype=np.float32)
        if prob.ndim != 2:
            raise InputError(
                f"{kind}: probability must be (y, x), got dims {result['probability'].dims}; "
                "select one year first."
            )
        with np.errstate(invalid="ignore"):
            binary = np.where(np.isnan(prob), np.nan, prob >= threshold).astype(np.float32)
        bands = {
            "probability": prob,
            "binary": binary,
            "confidence": np.asarray(result["confidence"].values, dtype=np.float32),
        }
    elif kind == "dynamics":
        year = np.asarray(result["urbanization_year"].values, dtype=np.float32)
        conf = np.asarray(result["confidence"].values, dtype=np.float32)  # (year, y, x)
        years = np.asarray(result["year"].values, dtype=np.float32)
        at = np.where(np.isnan(year), len(years) - 1, np.searchsorted(years, year))
        at = np.clip(at, 0, len(years) - 1)
        bands = {
            "urbanization_year": year,
            "confidence": np.take_along_axis(conf, at[None].astype(np.intp), axis=0)[0],
        }
    else:
        raise InputError(f"kind: {kind!r} is not one of {list(_KINDS)}.")
    if isinstance(counts, Mapping):
        for period, c in counts.items():
            bands[f"count_{safe_name(str(period), max_length=40)}"] = np.asarray(c, np.float32)
    else:
        bands["count"] = np.asarray(counts, dtype=np.float32)
    return bands


def write_product_cog(
    bands: Mapping[str, np.ndarray] | RasterFile,
    grid: GridSpec,
    path: str | Path,
    *,
    nodata: float = COG_NODATA,
    blocksize: int = 512,
    profile: str = "deflate",
) -> list[dict[str, Any]]:
    """Write `bands` (``{name: (y, x) array}`` or a `RasterFile`) as one float32 COG at local
    `path`.

    NaN becomes `nodata`; band descriptions are the names, in their order. Overviews are built
    down to one tile with nearest resampling. Arrays are first written to a GeoTIFF beside
    `path` (`write_raster`, removed after), so both forms give the same bytes; memory holds a
    window. Returns the ``raster:bands`` entries.
    """
    path = Path(path)
    source: RasterFile | None = None
    if isinstance(bands, RasterFile):
        if bands.grid != grid or bands.nodata != nodata:
            raise InputError(
                f"rasters: {bands.path} is on {bands.grid} with nodata {bands.nodata}, not on "
                f"{grid} with {nodata}."
            )
        raster = bands
    else:
        source = raster = write_raster(
            path.with_name(f".{path.stem}.src.tif"),
            grid,
            list(bands),
            _array_windows(bands, grid),
            nodata=nodata,
        )
    dst_profile = cog_profiles.get(profile)
    dst_profile.update(blockxsize=blocksize, blockysize=blocksize)
    try:
        # the intermediate (full resolution + overviews) goes to a temporary file beside
        # `path`, not to GDAL's memory; uncompressed: compressing it doubled the time of the
        # COG (measured on 2048 px products). The output is the same as with in_memory=True.
        cog_translate(
            str(raster.path),
            str(path),
            dst_profile,
            overview_resampling="nearest",
            in_memory=False,
            config={"GDAL_CACHEMAX": GDAL_CACHE_BYTES},
            quiet=True,
        )
    finally:
        if source is not None:
            source.path.unlink(missing_ok=True)
    entries = []
    for name, stats in zip(raster.bands, raster.statistics, strict=True):
        entry: dict[str, Any] = {
            "name": name,
            "description": _DESCRIPTIONS.get(
                name, "valid-observation count" if name.startswith("count") else name
            ),
            "data_type": "float32",
            "nodata": nodata,
            "spatial_resolution": grid.resolution,
        }
        if stats is not None:
            entry["statistics"] = dict(stats)
        if name == "urbanization_year":
            entry["unit"] = "year"
        entries.append(entry)
    return entries


def write_product_parquet(gdf: gpd.GeoDataFrame, path: str | Path) -> None:
    """Write `gdf` as GeoParquet 1.1 with a bbox covering column (CRS as PROJJSON)."""
    if gdf.crs is None:
        raise InputError("vectors: the GeoDataFrame has no CRS; set it to the grid's CRS.")
    gdf.to_parquet(str(path), index=False, schema_version="1.1.0", write_covering_bbox=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---- STAC ---------------------------------------------------------------------------------------
def _scene_links(scenes: Sequence[str | SceneRef]) -> tuple[list[str], list[dict[str, Any]]]:
    """Scene ids and ``derived_from`` links: the scene Item's self href when known, else a URN.

    A bare id has no resolvable address; ``urn:eo-pipeline:scene:<id>`` keeps the link valid
    (``href`` is required) and machine-readable.
    """
    ids: list[str] = []
    links: list[dict[str, Any]] = []
    for scene in scenes:
        if isinstance(scene, SceneRef):
            sid = scene.id
            href = next(
                (lk.get("href") for lk in scene.item.get("links", []) if lk.get("rel") == "self"),
                None,
            )
        else:
            sid, href = str(scene), None
        ids.append(sid)
        links.append(
            {
                "rel": "derived_from",
                "href": href or f"urn:eo-pipeline:scene:{quote(sid, safe='')}",
                "type": "application/geo+json",
                "title": sid,
            }
        )
    return ids, links


def _bbox(geometry: Mapping[str, Any]) -> list[float]:
    w, s, e, n = shape(geometry).bounds
    return [w, s, e, n]


def _iso(value: date | datetime | str) -> str:
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return f"{value.isoformat()}T00:00:00Z"
    try:
        return _iso(datetime.fromisoformat(str(value)))
    except ValueError as err:
        raise InputError(f"{value!r} is not an ISO date or datetime.") from err


def _collection_dict(collection: str, kind: str, item: Mapping[str, Any]) -> dict[str, Any]:
    props = item["properties"]
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "id": collection,
        "description": f"eo-pipeline {kind} products (COG + GeoParquet), one Item per product.",
        "license": "other",
        "extent": {
            "spatial": {"bbox": [list(item["bbox"])]},
            "temporal": {"interval": [[props["start_datetime"], props["end_datetime"]]]},
        },
        "links": [{"rel": "items", "href": "../index.ndjson", "type": "application/x-ndjson"}],
    }


def _extend_collection(coll: dict[str, Any], item: Mapping[str, Any]) -> dict[str, Any]:
    b = coll["extent"]["spatial"]["bbox"][0]
    ib = item["bbox"]
    coll["extent"]["spatial"]["bbox"][0] = [
        min(b[0], ib[0]),
        min(b[1], ib[1]),
        max(b[2], ib[2]),
        max(b[3], ib[3]),
    ]
    start, end = coll["extent"]["temporal"]["interval"][0]
    p = item["properties"]
    coll["extent"]["temporal"]["interval"][0] = [
        min(start, p["start_datetime"]) if start else p["start_datetime"],
        max(end, p["end_datetime"]) if end else p["end_datetime"],
    ]
    return coll


# ---- publish ------------------------------------------------------------------------------------
def _verify_item(store: ObjectStore, folder: str, item: Mapping[str, Any]) -> bool:
    """True when every asset of `item` exists with its recorded size and sha256."""
    for key, asset in item.get("assets", {}).items():
        path = f"{folder}/{asset['href'].removeprefix('./')}"
        if not store.exists(path):
            log.warning("product %s: asset %s missing at %s", item.get("id"), key, path)
            return False
        if store.size(path) != asset.get("file:size"):
            log.warning("product %s: asset %s has the wrong size", item.get("id"), key)
            return False
        if multihash_sha256(store.sha256(path)) != asset.get("file:checksum"):
            log.warning("product %s: asset %s fails its checksum", item.get("id"), key)
            return False
    return True


def _ref(
    store: ObjectStore, item: Mapping[str, Any], collection: str, *, skipped: bool
) -> ProductRef:
    pid = str(item["id"])
    return ProductRef(
        id=pid,
        collection=collection,
        kind=str(item["properties"].get("eo_pipeline:product_kind", "")),
        item_href=store.url(collection, pid, _ITEM),
        assets=tuple(
            (k, store.url(collection, pid, a["href"].removeprefix("./")))
            for k, a in item["assets"].items()
        ),
        skipped=skipped,
    )


def _clean_staging(store: ObjectStore, pid: str) -> None:
    for name in store.listdir(store.path(_TMP)):
        if name.startswith(f"{pid}-"):
            log.info("removing staging leftovers %s/%s", _TMP, name)
            store.remove(store.path(_TMP, name), recursive=True)


_LOCAL_PREFIX = "eo-publish-"
_LOCAL_NAME = re.compile(rf"{_LOCAL_PREFIX}(\d+)-.+")


@contextmanager
def local_workdir() -> Iterator[Path]:
    """A local temporary folder ``eo-publish-<pid>-<random>`` for the files of one publish
    (removed on exit; a killed process's are removed by the next publish on the host).

    The pid in the name lets a later publish on the same host recognise the folders of a process
    that was killed before it could remove them (`_remove_dead_workdirs`).
    """
    _remove_dead_workdirs()
    with tempfile.TemporaryDirectory(prefix=f"{_LOCAL_PREFIX}{os.getpid()}-") as tmp:
        yield Path(tmp)


def _remove_dead_workdirs() -> None:
    """Remove ``eo-publish-<pid>-*`` folders whose process no longer runs on this host.

    Processes that share one temporary directory must share a PID namespace (one host, or one
    container); a folder whose pid is alive, or not ours to signal, is left alone.
    """
    for folder in Path(tempfile.gettempdir()).glob(f"{_LOCAL_PREFIX}*"):
        m = _LOCAL_NAME.fullmatch(folder.name)
        if m is None or not folder.is_dir() or _pid_alive(int(m.group(1))):
            continue
        log.info("removing the local leftovers of a killed publish: %s", folder)
        shutil.rmtree(folder, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence and permission check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _roll_back(store: ObjectStore, item_path: str, moved: Sequence[str], staging: str) -> None:
    """After a failed publish: remove the files it moved into the product folder and its staging.

    Skipped when the Item exists after all (a commit whose answer was lost: the product is
    complete). Best effort: when the store is down this fails too; it is logged and the next
    publish of the same inputs replaces the files.
    """
    try:
        if store.exists(item_path):
            return
        for path in moved:
            store.remove(path)
        store.remove(staging, recursive=True)
    except (PipelineError, OSError) as err:
        log.warning(
            "publish failed and its partial files could not be removed (%s); they are not "
            "visible as a product, and the next publish of the same inputs replaces them",
            err,
        )


def publish_product(
    kind: ProductKind,
    rasters: Mapping[str, np.ndarray] | RasterFile,
    vectors: gpd.GeoDataFrame | None,
    *,
    grid: GridSpec,
    scene_ids: Sequence[str | SceneRef],
    model: WeightsSpec | str,
    params: Mapping[str, Any],
    start: date | datetime | str,
    end: date | datetime | str,
    output_url: str | None = None,
    collection: str | None = None,
    blocksize: int = 512,
    properties: Mapping[str, Any] | None = None,
) -> ProductRef:
    """Publish one product (COG + optional GeoParquet + STAC Item); see the module docstring.

    `rasters`: ``{band: (y, x) array}`` on `grid` (product bands, ``confidence``, ``count...``),
    or a `RasterFile` with those bands (`write_raster`: a raster larger than memory).
    `vectors`: polygons in the grid CRS (`tasks.vectorize`), or None for a raster-only product.
    `model`: the weights spec (its name and sha256 are recorded) or a baseline's name.
    `params`: thresholds, minimum mapping unit, inference options: recorded in the Item and part
    of the product id. `start`/`end`: the period the product describes. `properties`: more Item
    properties derived from the inputs (``eo_pipeline:domain``: how far they were from the
    training data); recorded, not part of the id.
    Returns the `ProductRef`; ``skipped=True`` when an identical product was already there.
    """
    if kind not in _KINDS:
        raise InputError(f"kind: {kind!r} is not one of {list(_KINDS)}.")
    band_names = _check_bands(rasters, grid)
    foreign = [k for k in properties or {} if not k.startswith("eo_pipeline:")]
    if foreign:
        raise InputError(f"properties: {foreign} are not eo_pipeline: properties.")
    if not scene_ids:
        raise InputError("scene_ids: a product needs the ids of the scenes it was made from.")
    store = open_store(output_url)
    ids, derived = _scene_links(scene_ids)
    if isinstance(model, WeightsSpec):
        model_name, model_sha = model.name, model.sha256
    else:
        model_name, model_sha = str(model), None
    start_iso, end_iso = _iso(start), _iso(end)
    if end_iso < start_iso:
        raise InputError(f"end {end_iso} is before start {start_iso}.")
    params_json = _canonical(dict(params))
    pid = safe_name(
        product_id(
            kind,
            ids,
            model_sha or f"baseline:{model_name}",
            {
                "params": params_json,
                "grid": [grid.epsg, grid.resolution, list(grid.bounds)],
                "period": [start_iso, end_iso],
                "bands": band_names,
                "vectors": vectors is not None,
            },
        )
    )
    coll = safe_name(collection or f"eo-{kind}")
    folder = store.path(coll, pid)
    item_path = store.path(coll, pid, _ITEM)

    # 1. already published?
    if store.exists(item_path):
        existing = json.loads(store.read_bytes(item_path))
        if _verify_item(store, folder, existing):
            _clean_staging(store, pid)
            _ensure_indexed(store, coll, kind, existing)
            log.info("product %s already published: nothing to do", pid)
            return _ref(store, existing, coll, skipped=True)
        log.warning("product %s is damaged: republishing it", pid)
        store.remove(item_path)  # un-commit first, so the damaged product is not visible

    # 2. leftovers of an interrupted publish of this id
    _clean_staging(store, pid)
    staging = store.path(_TMP, f"{pid}-{uuid.uuid4().hex}")
    moved: list[str] = []
    try:
        item = _stage_and_commit(
            store,
            kind,
            rasters,
            vectors,
            grid=grid,
            band_names=band_names,
            pid=pid,
            coll=coll,
            staging=staging,
            moved=moved,
            ids=ids,
            derived=derived,
            model_name=model_name,
            model_sha=model_sha,
            params_json=params_json,
            period=(start_iso, end_iso),
            blocksize=blocksize,
            properties=dict(properties or {}),
        )
    except BaseException:  # re-raised: the rollback only removes what this publish wrote
        _roll_back(store, item_path, moved, staging)
        raise

    # 6. derived listings, then clean up
    _ensure_indexed(store, coll, kind, item, force=True)
    store.remove(staging, recursive=True)
    return _ref(store, item, coll, skipped=False)


def _stage_and_commit(
    store: ObjectStore,
    kind: str,
    rasters: Mapping[str, np.ndarray] | RasterFile,
    vectors: gpd.GeoDataFrame | None,
    *,
    grid: GridSpec,
    band_names: list[str],
    pid: str,
    coll: str,
    staging: str,
    moved: list[str],
    ids: list[str],
    derived: list[dict[str, Any]],
    model_name: str,
    model_sha: str | None,
    params_json: Any,
    period: tuple[str, str],
    blocksize: int,
    properties: dict[str, Any],
) -> dict[str, Any]:
    """Steps 3-5 of the protocol; appends to `moved` each file moved into the product folder."""
    folder = store.path(coll, pid)
    start_iso, end_iso = period
    with local_workdir() as local:
        files: dict[str, Path] = {"data": local / f"{pid}.tif"}
        raster_bands = write_product_cog(rasters, grid, files["data"], blocksize=blocksize)
        if vectors is not None:
            files["vectors"] = local / f"{pid}.parquet"
            write_product_parquet(vectors, files["vectors"])
        checksums = {k: (_sha256_file(p), p.stat().st_size) for k, p in files.items()}

        # 3. stage and verify
        for key, p in files.items():
            remote = f"{staging}/{p.name}"
            store.put_file(str(p), remote)
            sha, size = checksums[key]
            if store.size(remote) != size or store.sha256(remote) != sha:
                raise PipelineError(
                    f"publish {pid}: {p.name} read back from {store.url()} differs from what was "
                    "written; check the object store and run again."
                )
        # 4. move into place
        for p in files.values():
            store.move(f"{staging}/{p.name}", f"{folder}/{p.name}")
            moved.append(f"{folder}/{p.name}")

    # 5. the Item, last
    geometry = grid.to_geojson()
    assets: dict[str, Any] = {
        "data": {
            "href": f"./{files['data'].name}",
            "type": COG_MEDIA_TYPE,
            "title": f"{kind} raster: {', '.join(band_names)}",
            "roles": ["data"],
            "raster:bands": raster_bands,
            "file:checksum": multihash_sha256(checksums["data"][0]),
            "file:size": checksums["data"][1],
        }
    }
    if "vectors" in files:
        assets["vectors"] = {
            "href": f"./{files['vectors'].name}",
            "type": PARQUET_MEDIA_TYPE,
            "title": f"{kind} polygons (GeoParquet 1.1, EPSG:{grid.epsg})",
            "roles": ["data"],
            "file:checksum": multihash_sha256(checksums["vectors"][0]),
            "file:size": checksums["vectors"][1],
        }
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": list(STAC_EXTENSIONS),
        "id": pid,
        "collection": coll,
        "geometry": geometry,
        "bbox": _bbox(geometry),
        "properties": {
            "datetime": None,
            "start_datetime": start_iso,
            "end_datetime": end_iso,
            "created": now,
            "proj:code": grid.crs,
            "proj:shape": list(grid.shape),
            "proj:transform": list(grid.transform)[:6],
            "proj:bbox": list(grid.bounds),
            "processing:software": {"eo-pipeline": software_version()},
            "processing:lineage": f"eo-pipeline {kind}: composites -> {model_name} -> vectorize",
            "eo_pipeline:product_kind": kind,
            "eo_pipeline:model": model_name,
            "eo_pipeline:weights_sha256": model_sha,
            "eo_pipeline:parameters": params_json,
            "eo_pipeline:scene_ids": ids,
            **properties,
        },
        "links": [
            {"rel": "self", "href": store.url(coll, pid, _ITEM), "type": "application/geo+json"},
            {"rel": "collection", "href": f"../{_COLLECTION}", "type": "application/json"},
            {"rel": "parent", "href": f"../{_COLLECTION}", "type": "application/json"},
            *derived,
        ],
        "assets": assets,
    }
    _write_item(store, store.path(coll, pid, _ITEM), item, staging)
    return item


def _write_item(store: ObjectStore, path: str, item: Mapping[str, Any], staging: str) -> None:
    """The commit point: the Item appears whole (staged, then moved) or not at all."""
    store.write_atomic(path, json.dumps(item, indent=2).encode(), tmp_dir=staging)


def _ensure_indexed(
    store: ObjectStore, coll: str, kind: str, item: Mapping[str, Any], *, force: bool = False
) -> None:
    """Put `item` in ``index.ndjson`` and the collection extent (no write when already there)."""
    index_path = store.path(_INDEX)
    lines = store.read_bytes(index_path).decode().splitlines() if store.exists(index_path) else []
    entries = [json.loads(line) for line in lines if line.strip()]
    current = [e for e in entries if e.get("id") == item["id"] and e.get("collection") == coll]
    staging = store.path(_TMP, f"index-{uuid.uuid4().hex}")
    if force or not current or current[0] != item:
        kept = [
            e for e in entries if not (e.get("id") == item["id"] and e.get("collection") == coll)
        ]
        kept.append(dict(item))
        kept.sort(key=lambda e: (str(e.get("collection")), str(e.get("id"))))
        body = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in kept)
        store.write_atomic(index_path, body.encode(), tmp_dir=staging)
    _reconcile_index(store, staging)

    coll_path = store.path(coll, _COLLECTION)
    if store.exists(coll_path):
        old = json.loads(store.read_bytes(coll_path))
        new = _extend_collection(json.loads(json.dumps(old)), item)
        if new != old:
            store.write_atomic(coll_path, json.dumps(new, indent=2).encode(), tmp_dir=staging)
    else:
        new = _collection_dict(coll, kind, item)
        store.write_atomic(coll_path, json.dumps(new, indent=2).encode(), tmp_dir=staging)
    store.remove(staging, recursive=True)


def _reconcile_index(store: ObjectStore, staging: str, *, attempts: int = 8) -> None:
    """Add to ``index.ndjson`` every committed Item it lacks.

    Concurrent publishes each rewrite the index from what they read, so one that read before
    another's write drops that entry (a lost update: object stores have no lock, and conditional
    writes are not portable across S3-compatible stores). Every publisher therefore checks after
    its own write that the index lists every committed Item (the ``item.json`` commit markers)
    and adds the missing ones. The last write is followed by its writer's check, which comes
    after every commit, so the index converges to the Items. Cost: one listing per publish.
    """
    index_path = store.path(_INDEX)
    pattern = store.path("*", "*", _ITEM)
    for _ in range(attempts):
        raw = store.read_bytes(index_path).decode() if store.exists(index_path) else ""
        entries = [json.loads(line) for line in raw.splitlines() if line.strip()]
        listed = {(str(e.get("collection")), safe_name(str(e.get("id")))) for e in entries}
        missing = []
        for path in store.glob(pattern):
            rel = path[len(store.root) + 1 :]
            if rel.startswith("."):  # the staging area is never a collection
                continue
            coll, pid = rel.split("/")[-3:-1]
            if (coll, pid) not in listed:
                missing.append(json.loads(store.read_bytes(path)))
        if not missing:
            return
        entries.extend(missing)
        entries.sort(key=lambda e: (str(e.get("collection")), str(e.get("id"))))
        body = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries)
        store.write_atomic(index_path, body.encode(), tmp_dir=staging)
    log.warning(
        "index.ndjson still lags the Items after %d rewrites; run rebuild_index()", attempts
    )


def list_products(
    output_url: str | None = None, *, collection: str | None = None
) -> list[dict[str, Any]]:
    """STAC Items (dicts) of every published product, sorted by collection and id.

    Reads the Items themselves (the commit markers), never the staging area: a product whose
    publish did not finish is not listed.
    """
    store = open_store(output_url)
    pattern = store.path(safe_name(collection) if collection else "*", "*", _ITEM)
    # names starting with "." (the staging area) are never collections: safe_name strips them
    paths = [p for p in store.glob(pattern) if not p[len(store.root) + 1 :].startswith(".")]
    items = [json.loads(store.read_bytes(p)) for p in paths]
    return sorted(items, key=lambda i: (str(i.get("collection")), str(i.get("id"))))


def rebuild_index(output_url: str | None = None) -> int:
    """Rewrite ``index.ndjson`` from the Items (after concurrent publishes); returns the count."""
    store = open_store(output_url)
    items = list_products(output_url)
    body = "".join(json.dumps(i, separators=(",", ":")) + "\n" for i in items)
    store.write_atomic(
        store.path(_INDEX), body.encode(), tmp_dir=store.path(_TMP, f"index-{uuid.uuid4().hex}")
    )
    return len(items)


# ---- Prefect tasks ------------------------------------------------------------------------------
# Arrays in, so no input hashing (it would read them); idempotence comes from the product id.
@task(
    name="publish-product",
    retries=2,
    retry_condition_fn=retry_transient_only,
    cache_policy=NO_CACHE,
    tags=["io"],
)
def publish(
    kind: ProductKind,
    rasters: Mapping[str, np.ndarray],
    vectors: gpd.GeoDataFrame | None,
    *,
    grid: GridSpec,
    scene_ids: Sequence[str | SceneRef],
    model: WeightsSpec | str,
    params: Mapping[str, Any],
    start: date | datetime | str,
    end: date | datetime | str,
    output_url: str | None = None,
    collection: str | None = None,
) -> ProductRef:
    """Prefect task around `publish_product` (transient store errors are retried)."""
    return publish_product(
        kind,
        rasters,
        vectors,
        grid=grid,
        scene_ids=scene_ids,
        model=model,
        params=params,
        start=start,
        end=end,
        output_url=output_url,
        collection=collection,
    )

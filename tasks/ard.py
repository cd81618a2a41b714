"""Analysis-ready data: scenes -> masked, co-registered, harmonized stack -> composites on disk.

The stages (`tasks.load`, `tasks.cloudmask`, `tasks.coregister`, `tasks.harmonize`,
`tasks.composite`) work on lazy arrays. This module chains them and persists what later stages
consume, so that Prefect tasks pass small references (`CompositeRef`: period labels, their files,
the grid, the scene ids) instead of arrays:

    scenes (SceneRef) + GridSpec + ArdOptions + periods
      -> split the scenes by period
      -> per period not in the cache:
           load -> mask_stack -> coregister (pinned reference) -> harmonize -> composite
      -> <cache>/composites/periods/<period key>/composite.tif + period.json   (atomic)
      -> <cache>/composites/<request key>/composites.json (labels -> period files)

A period's GeoTIFF (COG layout) holds the harmonized bands in `HARMONIZED_BANDS` order as float32
reflectance (NaN = no clear observation) plus a last band ``count`` (valid observations).
``period.json`` records that period's input scene ids, rejected scenes with reasons and per-scene
co-registration shifts; ``composites.json`` merges them for the request: the provenance that
reaches the products' STAC Items.

Incremental by period
---------------------
A period's composite depends only on the scenes acquired in it, the grid, the options, the
period's dates and the co-registration reference, and it is cached under a hash of exactly those
(scene ids with their STAC ``updated`` time, so a reprocessed item counts as new). A new
acquisition changes the key of the period it falls in and of no other: a monitoring run
recomputes this season's composite and reuses, without loading a pixel, the 'before' season or
the other annual composites of the decadal series. Scenes that fall in no period (between the
'before' and 'after' of a change) are neither loaded nor counted as inputs. Rerunning the same
inputs finds the request's manifest and is a no-op; a new request whose periods are all cached
only writes a manifest.

Co-registration reference: pinned once per grid
-----------------------------------------------
Every scene is shifted onto one reference image. Were that the clearest scene of each request (as
`tasks.coregister.select_reference` picks it), one new clear scene could become the reference and
move every period's shifts, and an incremental result would differ from a recompute. So the
reference is chosen once per grid — the clearest scene (within 10 % of it: the sharper sensor,
`tasks.coregister.SHARPER_MARGIN`) among the scenes of the first request on that grid — and
kept as state in ``<state_url>/coregistration/``: ``<key>.json`` (scene id, sensor, date,
sha256, grid) and the reference image itself, ``<key>-<sha>.tif`` (its masked NIR band on the
grid, float32; the image, not the id, so that neither the request's dates nor a reprocessed
archive item can change it).
Every later request on the grid, for any dates and product, is matched against that image: the
'before' and 'after' of a change share one geometry, each period depends on its own scenes only,
and incremental == full recompute for the same state. Trade-offs:

- It is not re-chosen when a clearer or sharper scene arrives: stable results over the last
  hundredth of a pixel. Deleting the state chooses again; every composite on the grid is then
  recomputed (the reference is in their keys), and products change.
- The first request decides. A first run over Landsat-only years pins a 30 m reference for the
  Sentinel-2 years too; call `pin_reference` with the scenes to choose from (e.g. a clear recent
  summer) before the first product to decide deliberately.
- Years between the reference and a scene (land-cover change) leave fewer matching windows; the
  robust window combination of `tasks.coregister` drops changed windows, and a scene it cannot
  match is flagged and left unshifted. A whole-archive reference had the same trade-off.
- A grid lying inside a pinned grid (a tile of a large AOI, or an AOI inside another; same CRS,
  resolution and pixel alignment) gets the crop of that reference, provided at least
  `MIN_REFERENCE_VALID` of the crop is clear, so tiles share their AOI's geometry: pin the AOI's
  grid before fanning out its tiles. The crop is pinned for the small grid in turn.
- Where it lives: by default beside the cache (``<cache_dir>/state``), enough for one machine. A
  deployment whose workers share no disk must pass ``state_url`` on durable storage (e.g.
  ``<output_url>/_state``), or workers would pin different references.
- Two first runs on one grid at the same moment: locally the first to commit wins (a hard link
  never overwrites) and both then use it. On S3 there is no create-if-absent through s3fs: the
  later writer's choice may replace the earlier one; composites made against the replaced one
  stay correct (the reference is in their key) but are not reused.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import dask
import numpy as np
import pandas as pd
import rasterio
import xarray as xr
from dask.utils import key_split
from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from rasterio.io import MemoryFile
from rasterio.windows import Window

from tasks.aoi import GridSpec
from tasks.cloudmask import mask_stack
from tasks.composite import DateRange, Method, Period, build_composites, parse_periods
from tasks.coregister import (
    DEFAULT_BAND,
    SHARPER_MARGIN,
    ReferenceImage,
    apply_shifts,
    estimate_shifts,
)
from tasks.coregister import select_reference as _select_reference
from tasks.errors import InputError, PipelineError
from tasks.harmonize import HARMONIZED_BANDS, harmonize
from tasks.load import check_scenes, load
from tasks.refs import SceneRef
from tasks.settings import get_settings
from tasks.storage import ObjectStore, open_store

__all__ = [
    "MIN_REFERENCE_VALID",
    "ArdOptions",
    "CompositeRef",
    "PinnedReference",
    "analysis_ready_stack",
    "ard_bands",
    "composites_for",
    "find_reference",
    "make_composites",
    "open_composites",
    "pin_reference",
    "read_composite",
    "release_dask_bookkeeping",
    "write_composites",
]

log = logging.getLogger(__name__)

PeriodArg = Literal["year", "season", "month"] | Mapping[str, DateRange]

#: Band of the pinned reference: the band `tasks.coregister` matches on (its docstring says why).
REFERENCE_BAND = DEFAULT_BAND
#: Smallest clear share of a containing grid's reference crop for a grid inside it to use it.
#: Our choice: below half, too few 64-128 px matching windows (`tasks.coregister.MIN_WINDOWS`)
#: are left on a small grid, and the grid pins a reference of its own instead.
MIN_REFERENCE_VALID = 0.5
#: Scenes whose cloud-mask clear fraction is within this share of the best are the candidates
#: for a pinned reference. `select_reference` ranks them on its own clear share (valid NIR as
#: well), which differs from the mask's by the few % of missing data at most, and prefers the
#: sharper sensor within `SHARPER_MARGIN` (10 %) of the best: 5 % more keeps every scene it
#: could pick (our margin).
_CANDIDATE_MARGIN = SHARPER_MARGIN + 0.05
#: Part of every cache key and of the state's key: bump it when what a key stands for changes.
_KEY_VERSION = 2
_STATE_DIR = "coregistration"
_PERIOD_TIF = "composite.tif"
_PERIOD_META = "period.json"


@dataclass(frozen=True)
class ArdOptions:
    """How scenes become analysis-ready. Defaults work for Sentinel-2 and Landsat alike."""

    min_clear_fraction: float = 0.1  # scenes with less clear area are skipped (logged)
    buffer_m: float = 0.0  # extra dilation of clouds/shadows, metres
    # Snow is a state of the day, not the land cover a product maps: flagged snow (SCL 11,
    # QA_PIXEL bit 5) is no observation of the surface.
    mask_snow: bool = True
    coregister: bool = True
    harmonize: bool = True
    # Bilinear: nearest neighbour moves 30 m Landsat pixels on a 10 m grid by up to half a pixel.
    resampling: str = "bilinear"
    method: Method = "median"

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_clear_fraction <= 1.0:
            raise InputError(
                f"min_clear_fraction: {self.min_clear_fraction} is outside 0-1 (a fraction)."
            )
        if self.buffer_m < 0:
            raise InputError(f"buffer_m: {self.buffer_m} must be >= 0 metres.")


def ard_bands(scenes: Sequence[SceneRef]) -> list[str]:
    """The bands the analysis-ready chain reads from `scenes`."""
    bands = list(HARMONIZED_BANDS)
    if any(s.sensor == "sentinel-2" for s in scenes):
        bands.append("nir08")  # B8A: the NIR band HLS pairs with OLI band 5
    return bands


def analysis_ready_stack(
    scenes: Sequence[SceneRef],
    grid: GridSpec,
    options: ArdOptions = ArdOptions(),
    *,
    reference: ReferenceImage | None = None,
) -> tuple[xr.DataArray, dict[str, Any]]:
    """Lazy (time, band, y, x) reflectance on `grid`: clouds/shadows NaN, co-registered,
    harmonized to OLI bandpasses on `HARMONIZED_BANDS`; plus a provenance report.

    `reference`: the image to co-register against (a pinned one, see the module docstring);
    None picks the clearest scene of `scenes`. The report holds the kept and rejected scene ids
    (with reasons) and, when co-registered, each scene's shift in pixels and metres with its
    quality flag.
    """
    stack = load(scenes, grid, bands=ard_bands(scenes), resampling=options.resampling)
    masked, mask_report = mask_stack(
        stack,
        min_clear_fraction=options.min_clear_fraction,
        buffer_m=options.buffer_m,
        mask_snow=options.mask_snow,
    )
    report: dict[str, Any] = {"mask": mask_report.to_dict(), "coregistration": None}
    if masked.sizes["time"] == 0:
        return masked.sel(band=list(HARMONIZED_BANDS)), report
    if options.coregister:
        shifts = estimate_shifts(
            masked, band=REFERENCE_BAND, reference="clearest" if reference is None else reference
        )
        masked = apply_shifts(masked, shifts)
        report["coregistration"] = _shift_report(shifts)
    if options.harmonize:
        masked = harmonize(masked)
    return masked.sel(band=list(HARMONIZED_BANDS)), report


def _shift_report(shifts: xr.Dataset) -> dict[str, Any]:
    ids = [str(i) for i in shifts["id"].values] if "id" in shifts else []
    rows = {}
    for i, sid in enumerate(ids):
        rows[sid] = {
            "dy_px": float(shifts["coreg_shift_y_px"].values[i]),
            "dx_px": float(shifts["coreg_shift_x_px"].values[i]),
            "dy_m": float(shifts["coreg_shift_y_m"].values[i]),
            "dx_m": float(shifts["coreg_shift_x_m"].values[i]),
            "flagged": bool(shifts["coreg_flagged"].values[i]),
            "status": str(shifts["coreg_status"].values[i]),
        }
    return {"reference": shifts.attrs.get("coreg_reference"), "scenes": rows}


# ---- the pinned co-registration reference ------------------------------------------------------
@dataclass(frozen=True)
class PinnedReference:
    """The co-registration reference kept as state for one grid (see the module docstring).

    `scene_id` etc. describe the scene it was cut from; `image` is the GeoTIFF's file name under
    ``<state_url>/coregistration/``, `sha256` its checksum, `window` the ``(row0, row1, col0,
    col1)`` of that image that covers this grid (None: the whole image is this grid's).
    `identity` goes into every composite key made with it.
    """

    key: str
    scene_id: str
    collection: str
    platform: str
    datetime: str
    native_resolution: float
    valid_fraction: float
    image: str
    sha256: str
    window: tuple[int, int, int, int] | None
    url: str

    @property
    def identity(self) -> str:
        """``<scene id>:<hash of the image and window>``: what composite keys depend on."""
        digest = hashlib.sha256(f"{self.sha256}/{self.window}".encode()).hexdigest()[:16]
        return f"{self.scene_id}:{digest}"


def reference_key(grid: GridSpec, options: ArdOptions) -> str:
    """State key of `grid`'s reference: the grid and the options that shape the image."""
    payload = json.dumps(
        {
            "grid": asdict(grid),
            "band": REFERENCE_BAND,
            "resampling": options.resampling,
            "buffer_m": options.buffer_m,
            "version": _KEY_VERSION,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _state_store(state_url: str | None, cache_dir: Path | None) -> ObjectStore:
    """Where references are kept: `state_url`, else ``<cache_dir>/state`` (module docstring)."""
    if state_url:
        return open_store(state_url)
    return open_store(str(Path(cache_dir or get_settings().cache_dir).resolve() / "state"))


def _put_if_absent(store: ObjectStore, path: str, data: bytes) -> None:
    """Write `data` at `path` unless something is there already: the first writer wins."""
    if store.is_local:
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, final)  # atomic and never overwrites: FileExistsError if there
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    elif not store.exists(path):
        store.write_bytes(path, data)  # a PUT is atomic; see the module docstring on races


def _read_pinned(store: ObjectStore, key: str) -> PinnedReference | None:
    path = store.path(_STATE_DIR, f"{key}.json")
    if not store.exists(path):
        return None
    meta = json.loads(store.read_bytes(path))
    window = meta.get("window")
    return PinnedReference(
        key=key,
        scene_id=meta["scene_id"],
        collection=meta["collection"],
        platform=meta["platform"],
        datetime=meta["datetime"],
        native_resolution=float(meta["native_resolution"]),
        valid_fraction=float(meta["valid_fraction"]),
        image=meta["image"],
        sha256=meta["sha256"],
        window=None if window is None else (window[0], window[1], window[2], window[3]),
        url=store.url(_STATE_DIR, f"{key}.json"),
    )


def _reference_image(store: ObjectStore, pinned: PinnedReference) -> ReferenceImage:
    """The pinned image (cropped to its window) as `tasks.coregister` matches against it."""
    data = store.read_bytes(store.path(_STATE_DIR, pinned.image))
    if hashlib.sha256(data).hexdigest() != pinned.sha256:
        raise PipelineError(
            f"the co-registration reference {pinned.url} does not match its checksum; delete "
            f"{pinned.key}.json there to pin a new one (the grid's composites are then redone)."
        )
    window = None
    if pinned.window is not None:  # decode the crop only: a tile's, not its whole AOI's
        r0, r1, c0, c1 = pinned.window
        window = Window.from_slices((r0, r1), (c0, c1))
    with MemoryFile(data) as mem, mem.open() as src:
        image = src.read(1, window=window).astype(np.float64)
    return ReferenceImage(image, pinned.scene_id, None, pinned.native_resolution)


def find_reference(
    grid: GridSpec,
    *,
    options: ArdOptions = ArdOptions(),
    state_url: str | None = None,
    cache_dir: Path | None = None,
) -> PinnedReference | None:
    """The reference pinned for `grid`, or the crop of one pinned for a grid containing it
    (then pinned for `grid` too); None when there is none yet. Reads only small JSON files,
    except when a containing grid's image is checked."""
    store = _state_store(state_url, cache_dir)
    key = reference_key(grid, options)
    return _read_pinned(store, key) or _pin_crop(store, grid, options, key)


def _pin_crop(
    store: ObjectStore, grid: GridSpec, options: ArdOptions, key: str
) -> PinnedReference | None:
    """Pin for `grid` the crop of the earliest-pinned containing reference that is clear enough."""
    candidates = []
    for name in store.listdir(store.path(_STATE_DIR)):
        if not name.endswith(".json"):
            continue
        meta = json.loads(store.read_bytes(store.path(_STATE_DIR, name)))
        window = _window_in(meta, grid, options)
        if window is not None:
            candidates.append((meta["created"], name, meta, window))
    for _, name, meta, window in sorted(candidates, key=lambda c: (c[0], c[1])):
        parent = _read_pinned(store, name.removesuffix(".json"))
        assert parent is not None  # listed a moment ago; pins are never removed
        crop = _reference_image(store, replace(parent, window=window)).image
        valid = float(np.isfinite(crop).mean())
        if valid < MIN_REFERENCE_VALID:
            continue
        pin = {
            **{k: meta[k] for k in ("scene_id", "collection", "platform", "datetime")},
            **{k: meta[k] for k in ("native_resolution", "image", "sha256", "band", "options")},
            "key": key,
            "grid": asdict(grid),
            "window": list(window),
            "valid_fraction": valid,
            "parent": name.removesuffix(".json"),
            "created": datetime.now(UTC).isoformat(),
        }
        _put_if_absent(store, store.path(_STATE_DIR, f"{key}.json"), _json_bytes(pin))
        return _read_pinned(store, key)
    return None


def _window_in(
    meta: Mapping[str, Any], grid: GridSpec, options: ArdOptions
) -> tuple[int, int, int, int] | None:
    """Rows/columns of `meta`'s (uncropped) reference image that make `grid`, if it holds it."""
    if meta.get("window") is not None or meta.get("band") != REFERENCE_BAND:
        return None
    if meta.get("options") != {"resampling": options.resampling, "buffer_m": options.buffer_m}:
        return None
    g = meta["grid"]
    res = grid.resolution
    if g["epsg"] != grid.epsg or abs(g["resolution"] - res) > 1e-9 * res:
        return None
    pxmin, pymin, pxmax, pymax = g["bounds"]
    xmin, ymin, xmax, ymax = grid.bounds
    col, row = (xmin - pxmin) / res, (pymax - ymax) / res
    aligned = abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6
    inside = xmin >= pxmin and ymin >= pymin and xmax <= pxmax and ymax <= pymax
    if not (aligned and inside):
        return None
    rows, cols = grid.shape
    return (round(row), round(row) + rows, round(col), round(col) + cols)


def pin_reference(
    scenes: Sequence[SceneRef],
    grid: GridSpec,
    *,
    options: ArdOptions = ArdOptions(),
    state_url: str | None = None,
    cache_dir: Path | None = None,
) -> PinnedReference | None:
    """The reference of `grid`: the one already pinned (see `find_reference`), else the clearest
    of `scenes` after cloud masking (`select_reference`'s rule) pinned now.

    None when no scene of `scenes` has a clear pixel. The first time only, reads the mask bands
    of every scene and the NIR band of the clearest few; the image is kept, not just its id.
    """
    store = _state_store(state_url, cache_dir)
    key = reference_key(grid, options)
    found = _read_pinned(store, key) or _pin_crop(store, grid, options, key)
    if found is not None or not scenes:
        return found
    scenes, _ = check_scenes(scenes, bands=[REFERENCE_BAND])  # unreadable ones are logged
    if not scenes:
        return None
    stack = load(scenes, grid, bands=[REFERENCE_BAND], resampling=options.resampling)
    masked, _ = mask_stack(
        stack,
        min_clear_fraction=options.min_clear_fraction,
        buffer_m=options.buffer_m,
        mask_snow=options.mask_snow,
    )
    if masked.sizes["time"] == 0:
        return None
    # mask_stack has the clear fractions (from the mask bands alone): only the scenes near the
    # best are read in full by select_reference, whose own clear share is within a few % of it
    fractions = masked["clear_fraction"].values.astype(float)
    near = np.flatnonzero(fractions >= (1.0 - _CANDIDATE_MARGIN) * fractions.max())
    masked = masked.isel(time=near)
    ref = _select_reference(masked, band=REFERENCE_BAND, method="clearest")
    release_dask_bookkeeping()
    assert ref.index is not None  # "clearest" is a scene of the stack
    data = _geotiff_bytes(ref.image.astype(np.float32), grid)
    sha = hashlib.sha256(data).hexdigest()
    image = f"{key}-{sha[:12]}.tif"
    _put_if_absent(store, store.path(_STATE_DIR, image), data)
    at = masked.isel(time=ref.index)
    meta = {
        "key": key,
        "grid": asdict(grid),
        "band": REFERENCE_BAND,
        "options": {"resampling": options.resampling, "buffer_m": options.buffer_m},
        "scene_id": ref.label,
        "collection": str(at["collection"].values),
        "platform": str(at["platform"].values),
        "datetime": str(pd.Timestamp(at["time"].values).isoformat()),
        "native_resolution": ref.native_resolution,
        "valid_fraction": float(np.isfinite(ref.image).mean()),
        "chosen_from": int(fractions.size),
        "image": image,
        "sha256": sha,
        "window": None,
        "created": datetime.now(UTC).isoformat(),
    }
    _put_if_absent(store, store.path(_STATE_DIR, f"{key}.json"), _json_bytes(meta))
    pinned = _read_pinned(store, key)  # ours, or a concurrent run's that committed first
    assert pinned is not None
    log.info("co-registration reference of grid %s pinned: %s", key, pinned.scene_id)
    return pinned


def _geotiff_bytes(image: np.ndarray, grid: GridSpec) -> bytes:
    profile = grid.geotiff_profile(1, nodata=float("nan"), compress="deflate", predictor=3)
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(image, 1)
            dst.set_band_description(1, REFERENCE_BAND)
        return bytes(mem.read())


def _json_bytes(meta: Mapping[str, Any]) -> bytes:
    return json.dumps(meta, indent=1, sort_keys=True, default=str).encode()


def release_dask_bookkeeping() -> None:
    """Free what dask keeps of the graphs it computed, so that tile after tile does not add up.

    Measured with tracemalloc between the 2nd and the 12th tile of a 12-tile footprint
    (tests/faults/test_memory_scaling.py, 3 scenes, 32 px tiles), per tile: ~0.13 MiB kept by
    `dask.utils.key_split`, which memoizes up to 100 000 task keys (``functools.lru_cache``;
    ~15 MiB when full): keys carry their graph's unique token, so a computed graph's entries are
    never hit again. ~1 MiB of reference cycles left by dask's scheduler (the closures of
    ``dask.order``), which only a full collection frees; CPython runs one when its long-lived
    objects have grown by a quarter, i.e. ever later in a large process. Costs one full
    collection (~0.2 s with the flows imported): call it once per request, not per chunk.
    """
    cache_clear = getattr(key_split, "cache_clear", None)  # dask's own cache: may change
    if cache_clear is not None:
        cache_clear()
    gc.collect()


# ---- composites on disk ------------------------------------------------------------------------
@dataclass(frozen=True)
class CompositeRef:
    """Composites on disk, one GeoTIFF per period (bands + ``count``), and their provenance.

    `path`: the folder of ``composites.json``; `files`: each period's GeoTIFF, in the order of
    `periods` (empty: ``<path>/<period>.tif``, the layout `write_composites` writes). Use
    `tif(period)` rather than either.
    """

    path: str
    periods: tuple[str, ...]
    bands: tuple[str, ...]
    grid: GridSpec
    scene_ids: tuple[str, ...]
    provenance: dict[str, Any] = field(compare=False, hash=False, repr=False)
    files: tuple[str, ...] = ()

    def tif(self, period: str) -> Path:
        if period not in self.periods:
            raise InputError(f"period {period!r} is not in {list(self.periods)}.")
        if self.files:
            return Path(self.files[self.periods.index(period)])
        return Path(self.path) / f"{period}.tif"

    def period_provenance(self, period: str) -> dict[str, Any]:
        """What went into one period: its scene ids, those kept, rejected scenes with reasons,
        shifts, the reference, its dates (``period.json`` beside its GeoTIFF); empty for the
        self-contained layout of `write_composites`, whose ``provenance`` covers all periods."""
        meta = self.tif(period).with_name(_PERIOD_META)
        return dict(json.loads(meta.read_text())) if self.files and meta.is_file() else {}


def write_composites(
    composites: xr.Dataset,
    grid: GridSpec,
    folder: Path,
    provenance: dict[str, Any],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> CompositeRef:
    """Compute `composites` chunk by chunk and write them to `folder` atomically, one
    ``<period>.tif`` each and ``composites.json`` (a self-contained folder, outside the cache).

    Written under a temporary sibling and renamed into place: `folder` either holds every period
    and ``composites.json`` or does not exist. `progress(done, total)` is called after each
    period (e.g. to update a Prefect progress artifact).
    """
    folder = Path(folder)
    tmp = _tmp_sibling(folder)
    try:
        periods = [str(p) for p in composites["period"].values]
        bands = [str(b) for b in composites["band"].values]
        for i, label in enumerate(periods):
            refl = composites["reflectance"].isel(period=i)
            count = composites["count"].isel(period=i)
            with dask.config.set(scheduler="threads"):
                r, c = dask.compute(refl.data, count.data)
            _write_period(tmp / f"{label}.tif", np.asarray(r), np.asarray(c), grid, bands)
            if progress is not None:
                progress(i + 1, len(periods))
        meta = {
            "grid": asdict(grid),
            "periods": periods,
            "bands": bands,
            "start": [str(v)[:10] for v in composites["start"].values],
            "end": [str(v)[:10] for v in composites["end"].values],
            **provenance,
        }
        (tmp / "composites.json").write_text(json.dumps(meta, indent=1, default=str))
        _commit(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_composites(folder)


def _tmp_sibling(folder: Path) -> Path:
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    return tmp


def _commit(tmp: Path, folder: Path) -> None:
    """Rename the complete `tmp` folder to `folder`; if a concurrent run got there first, keep
    its result (the same inputs give the same result) and drop ours."""
    try:
        if folder.exists():
            raise FileExistsError(folder)
        os.replace(tmp, folder)
    except OSError:  # FileExistsError, or ENOTEMPTY when the other run renamed in between
        if not folder.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _write_period(
    path: Path, refl: np.ndarray, count: np.ndarray, grid: GridSpec, bands: list[str]
) -> None:
    rows, cols = grid.shape
    data = np.concatenate([refl.astype("float32"), count[None].astype("float32")], axis=0)
    profile = {
        "driver": "COG",
        "width": cols,
        "height": rows,
        "count": data.shape[0],
        "dtype": "float32",
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": float("nan"),
        "compress": "deflate",
        "predictor": 3,
        "blocksize": 256,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate([*bands, "count"], start=1):
            dst.set_band_description(i, name)


def open_composites(folder: Path | str) -> CompositeRef:
    """The `CompositeRef` of a complete composites folder (``composites.json``)."""
    folder = Path(folder)
    meta_path = folder / "composites.json"
    if not meta_path.is_file():
        raise InputError(f"{folder} holds no composites (composites.json is missing).")
    meta = json.loads(meta_path.read_text())
    g = meta["grid"]
    files = meta.get("files", {})
    keys = ("mask", "coregistration", "start", "end", "period_keys", "reference")
    return CompositeRef(
        path=str(folder),
        periods=tuple(meta["periods"]),
        bands=tuple(meta["bands"]),
        grid=GridSpec(epsg=g["epsg"], resolution=g["resolution"], bounds=tuple(g["bounds"])),
        scene_ids=tuple(meta["scene_ids"]),
        provenance={k: meta[k] for k in keys if k in meta},
        files=tuple(os.path.normpath(folder / files[p]) for p in meta["periods"]) if files else (),
    )


def read_composite(ref: CompositeRef, period: str) -> tuple[xr.DataArray, xr.DataArray]:
    """(reflectance (band, y, x), count (y, x)) of one period, in memory."""
    with rasterio.open(ref.tif(period)) as src:
        data = src.read()
    rows, cols = ref.grid.shape
    xmin, _, _, ymax = ref.grid.bounds
    res = ref.grid.resolution
    coords = {
        "y": ymax - (np.arange(rows) + 0.5) * res,
        "x": xmin + (np.arange(cols) + 0.5) * res,
    }
    refl = xr.DataArray(
        data[:-1], dims=("band", "y", "x"), coords={"band": list(ref.bands), **coords}
    )
    count = xr.DataArray(data[-1].astype("int16"), dims=("y", "x"), coords=coords)
    return refl, count


# ---- per-period composites ---------------------------------------------------------------------
def _utc_naive(value: datetime) -> np.datetime64:
    ts = pd.Timestamp(value)
    ts = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
    return np.datetime64(ts.to_datetime64(), "ns")


def _scene_token(scene: SceneRef) -> str:
    """A scene in a cache key: collection, id and STAC ``updated`` (a reprocessed item differs)."""
    updated = scene.item.get("properties", {}).get("updated", "")
    return f"{scene.collection}/{scene.id}@{updated}"


def period_key(
    scenes: Sequence[SceneRef],
    grid: GridSpec,
    options: ArdOptions,
    period: Period,
    reference: PinnedReference | None,
) -> str:
    """Hash of everything one period's composite depends on (its label excluded: the same
    composite serves 'after' in one request and '2023' in another)."""
    payload = json.dumps(
        {
            "scenes": sorted(_scene_token(s) for s in scenes),
            "grid": asdict(grid),
            "options": asdict(options),
            "start": period.start.isoformat(),
            "end": period.end.isoformat(),
            "reference": reference.identity if options.coregister and reference else None,
            "version": _KEY_VERSION,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _build_period(
    scenes: Sequence[SceneRef],
    grid: GridSpec,
    period: Period,
    options: ArdOptions,
    reference: ReferenceImage | None,
    folder: Path,
    provenance: Mapping[str, Any],
) -> None:
    """Composite of `period` from its `scenes` (all of them in it) into `folder`, atomically.

    No scene, or every scene rejected as cloudy: NaN reflectance with count 0.
    """
    bands = list(HARMONIZED_BANDS)
    rows, cols = grid.shape
    refl = np.full((len(bands), rows, cols), np.nan, np.float32)
    count = np.zeros((rows, cols), np.int16)
    report: dict[str, Any] = {
        "mask": {"min_clear_fraction": options.min_clear_fraction, "clear_fraction": {}},
        "coregistration": None,
    }
    kept: list[str] = []
    # a scene with a missing, truncated or non-TIFF asset is left out with its reason (a 5xx
    # raises TransientIOError instead: retrying may succeed, dropping would change the product)
    readable, unreadable = check_scenes(scenes, bands=ard_bands(scenes)) if scenes else ([], [])
    if readable:
        stack, report = analysis_ready_stack(readable, grid, options, reference=reference)
        kept = [str(i) for i in stack["id"].values] if "id" in stack.coords else []
        if stack.sizes["time"]:
            ds = build_composites(stack, [period], method=options.method)
            with dask.config.set(scheduler="threads"):
                r, c = dask.compute(
                    ds["reflectance"].isel(period=0).data, ds["count"].isel(period=0).data
                )
            refl, count = np.asarray(r), np.asarray(c)
    meta = {
        **provenance,
        "grid": asdict(grid),
        "bands": bands,
        "start": str(period.start)[:10],
        "end": str(period.end)[:10],  # exclusive, as in `tasks.composite.Period`
        "scene_ids": sorted({s.id for s in scenes}),
        "kept": kept,
        **report,
        "unreadable": [r.to_dict() for r in unreadable],
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(folder)
    try:
        _write_period(tmp / _PERIOD_TIF, refl, count, grid, bands)
        (tmp / _PERIOD_META).write_text(json.dumps(meta, indent=1, default=str))
        _commit(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _merged_provenance(
    labels: Sequence[str], metas: Sequence[Mapping[str, Any]], options: ArdOptions
) -> dict[str, Any]:
    """One request's provenance from its periods': scenes, mask report, shifts."""
    clear: dict[str, float] = {}
    rejected: dict[str, Any] = {}
    shifts: dict[str, Any] = {}
    for meta in metas:
        clear.update(meta["mask"].get("clear_fraction", {}))
        rejected.update({r["id"]: r for r in meta["mask"].get("rejected", [])})
        rejected.update({r["id"]: r for r in meta.get("unreadable", [])})
        if meta.get("coregistration"):
            shifts.update(meta["coregistration"]["scenes"])
    reference = next((m["reference"] for m in metas if m.get("reference")), None)
    return {
        "scene_ids": sorted({i for m in metas for i in m["scene_ids"]}),
        "mask": {
            "min_clear_fraction": options.min_clear_fraction,
            "clear_fraction": clear,
            "rejected": [rejected[i] for i in sorted(rejected)],
            "kept": sorted({i for m in metas for i in m["kept"]}),
        },
        "coregistration": {
            "reference": reference["scene_id"] if reference else None,
            "scenes": shifts,
        }
        if options.coregister
        else None,
        "reference": reference,
        "period_keys": {lab: m["key"] for lab, m in zip(labels, metas, strict=True)},
    }


def composites_for(
    scenes: Sequence[SceneRef],
    grid: GridSpec,
    periods: PeriodArg,
    *,
    options: ArdOptions = ArdOptions(),
    cache_dir: Path | None = None,
    state_url: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CompositeRef:
    """Composites of `scenes` on `grid` per period, each computed once and reused.

    `periods`: ``"year"``, ``"season"``, ``"month"`` (every such period from the first to the
    last scene) or ``{label: (start, end)}`` (inclusive ISO dates), e.g.
    ``{"before": ("2018-05-01", "2018-09-30"), "after": (...)}``. Each period is composited from
    the scenes acquired in it alone and cached under ``<cache_dir>/composites/periods``; only the
    periods whose inputs changed are computed (module docstring). A period without any clear
    observation is NaN with count 0 (not an error). `state_url`: where the co-registration
    reference is pinned (default ``<cache_dir>/state``). `progress(done, total)` follows the
    periods. Raises `InputError` when no scene is given, none falls in a period, or every scene
    was rejected as too cloudy.
    """
    if not scenes:
        raise InputError("scenes: nothing to composite; widen the dates or the AOI.")
    cache_dir = Path(cache_dir or get_settings().cache_dir)
    root = cache_dir / "composites"
    times = np.array([_utc_naive(s.datetime) for s in scenes], dtype="datetime64[ns]")
    parsed = parse_periods(periods, times)
    members = [
        [s for s, t in zip(scenes, times, strict=True) if p.start <= t < p.end] for p in parsed
    ]
    used = {s for m in members for s in m}
    if not used:
        raise InputError(
            f"none of the {len(scenes)} scene(s) falls in the periods "
            f"{[p.label for p in parsed]}; widen the dates or check the periods."
        )
    pinned: PinnedReference | None = None
    store: ObjectStore | None = None
    if options.coregister:
        store = _state_store(state_url, cache_dir)
        order = sorted(used, key=lambda s: (_utc_naive(s.datetime), s.collection, s.id))
        pinned = pin_reference(order, grid, options=options, state_url=store.url())
    keys = [period_key(m, grid, options, p, pinned) for m, p in zip(members, parsed, strict=True)]
    request = hashlib.sha256(
        json.dumps([[p.label, k] for p, k in zip(parsed, keys, strict=True)]).encode()
    ).hexdigest()[:20]
    folder = root / request
    if (folder / "composites.json").is_file():
        ref = open_composites(folder)
        if all(Path(f).is_file() for f in ref.files):
            log.info("composites %s exist; reused", folder.name)
            return ref
    reference: ReferenceImage | None = None
    metas: list[dict[str, Any]] = []
    computed: list[str] = []
    for i, (p, m, k) in enumerate(zip(parsed, members, keys, strict=True)):
        pdir = root / "periods" / k
        if not (pdir / _PERIOD_META).is_file():
            if reference is None and pinned is not None and m:
                assert store is not None
                reference = _reference_image(store, pinned)
            provenance = {"key": k, "reference": asdict(pinned) if pinned else None}
            _build_period(m, grid, p, options, reference, pdir, provenance)
            computed.append(p.label)
        metas.append(json.loads((pdir / _PERIOD_META).read_text()))
        if progress is not None:
            progress(i + 1, len(parsed))
    log.info(
        "composites: %d of %d period(s) computed %s, the others reused",
        len(computed),
        len(parsed),
        computed,
    )
    if computed:
        release_dask_bookkeeping()
    if not any(m["kept"] for m in metas):
        unreadable = [r for m in metas for r in m.get("unreadable", [])]
        if len(unreadable) == len(used):
            raise InputError(
                f"every one of the {len(used)} scene(s) in the periods has an unreadable asset, "
                f"e.g. {unreadable[0]['id']}: {unreadable[0]['reason']}; check the archive."
            )
        raise InputError(
            f"every one of the {len(used)} scene(s) in the periods was rejected as too cloudy "
            f"(min_clear_fraction={options.min_clear_fraction}); widen the dates or lower it."
        )
    labels = [p.label for p in parsed]
    manifest = {
        "grid": asdict(grid),
        "periods": labels,
        "bands": list(HARMONIZED_BANDS),
        "start": [m["start"] for m in metas],
        "end": [m["end"] for m in metas],
        "files": {
            lab: f"../periods/{k}/{_PERIOD_TIF}" for lab, k in zip(labels, keys, strict=True)
        },
        **_merged_provenance(labels, metas, options),
    }
    tmp = _tmp_sibling(folder)
    try:
        (tmp / "composites.json").write_text(json.dumps(manifest, indent=1, default=str))
        if folder.exists():  # a manifest whose period files were evicted: replace it
            shutil.rmtree(folder, ignore_errors=True)
        _commit(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_composites(folder)


# ---- Prefect tasks -------------------------------------------------------
# Inputs are references (scene refs, a grid spec, options), the output a reference to files:
# cheap to hash and readable in the UI. The heavy work runs chunk by chunk inside the task.
@task(name="make-composites", cache_policy=NO_CACHE, tags=["cpu"])
def make_composites(
    scenes: list[SceneRef],
    grid: GridSpec,
    periods: PeriodArg,
    *,
    options: ArdOptions = ArdOptions(),
    state_url: str | None = None,
) -> CompositeRef:
    """Prefect task around `composites_for` (computes only the periods not cached); a progress
    artifact follows the periods (decades of annual composites take a while)."""
    artifact_id = create_progress_artifact(0.0, description="composites written (%)")
    assert isinstance(artifact_id, uuid.UUID)  # sync context: not a coroutine

    def report(done: int, total: int) -> None:
        update_progress_artifact(artifact_id, 100.0 * done / total)

    return composites_for(
        scenes, grid, periods, options=options, state_url=state_url, progress=report
    )

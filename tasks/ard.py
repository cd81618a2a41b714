"""Analysis-ready data: scenes -> masked, co-registered, harmonized stack -> composites on disk.

The stages (`tasks.load`, `tasks.cloudmask`, `tasks.coregister`, `tasks.harmonize`,
`tasks.composite`) work on lazy arrays. This module chains them and persists what later stages
consume, so that Prefect tasks pass small references (`CompositeRef`: a folder, period labels,
the grid, the scene ids) instead of arrays:

    scenes (SceneRef) + GridSpec + ArdOptions
      -> load -> mask_stack -> coregister_stack -> harmonize      (lazy, bounded memory)
      -> composite per period                                     (chunk by chunk)
      -> <cache>/composites/<key>/<period>.tif + composites.json  (written atomically)

Each period is one GeoTIFF (COG layout): the harmonized bands in `HARMONIZED_BANDS` order as
float32 reflectance (NaN = no clear observation) plus a last band ``count`` (valid observations).
``composites.json`` records the grid, periods, input scene ids, rejected scenes with reasons and
per-scene co-registration shifts: the provenance that reaches the products' STAC Items.

The folder name is a hash of the inputs (scene ids, grid, options, periods), so a rerun with the
same inputs finds the complete result and does not recompute it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask
import numpy as np
import rasterio
import xarray as xr
from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from tasks.aoi import GridSpec
from tasks.cloudmask import mask_stack
from tasks.composite import DateRange, Method, build_composites, parse_periods
from tasks.coregister import apply_shifts, estimate_shifts
from tasks.errors import InputError
from tasks.harmonize import HARMONIZED_BANDS, harmonize
from tasks.load import load
from tasks.refs import SceneRef
from tasks.settings import get_settings

__all__ = [
    "ArdOptions",
    "CompositeRef",
    "analysis_ready_stack",
    "make_composites",
    "open_composites",
    "write_composites",
]

log = logging.getLogger(__name__)

PeriodArg = Literal["year", "season", "month"] | Mapping[str, DateRange]


@dataclass(frozen=True)
class ArdOptions:
    """How scenes become analysis-ready. Defaults work for Sentinel-2 and Landsat alike."""

    min_clear_fraction: float = 0.1  # scenes with less clear area are skipped (logged)
    buffer_m: float = 0.0  # extra dilation of clouds/shadows, metres
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


def analysis_ready_stack(
    scenes: Sequence[SceneRef], grid: GridSpec, options: ArdOptions = ArdOptions()
) -> tuple[xr.DataArray, dict[str, Any]]:
    """Lazy (time, band, y, x) reflectance on `grid`: clouds/shadows NaN, co-registered,
    harmonized to OLI bandpasses on `HARMONIZED_BANDS`; plus a provenance report.

    The report holds the kept and rejected scene ids (with reasons) and, when co-registered,
    each scene's shift in pixels and metres with its quality flag.
    """
    bands = list(HARMONIZED_BANDS)
    if any(s.sensor == "sentinel-2" for s in scenes):
        bands.append("nir08")  # B8A: the NIR band HLS pairs with OLI band 5
    stack = load(scenes, grid, bands=bands, resampling=options.resampling)
    masked, mask_report = mask_stack(
        stack, min_clear_fraction=options.min_clear_fraction, buffer_m=options.buffer_m
    )
    report: dict[str, Any] = {"mask": mask_report.to_dict(), "coregistration": None}
    if masked.sizes["time"] == 0:
        return masked.sel(band=list(HARMONIZED_BANDS)), report
    if options.coregister:
        shifts = estimate_shifts(masked)
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


@dataclass(frozen=True)
class CompositeRef:
    """Composites on disk: ``<path>/<period>.tif`` (bands + ``count``) and ``composites.json``."""

    path: str
    periods: tuple[str, ...]
    bands: tuple[str, ...]
    grid: GridSpec
    scene_ids: tuple[str, ...]
    provenance: dict[str, Any] = field(compare=False, hash=False, repr=False)

    def tif(self, period: str) -> Path:
        if period not in self.periods:
            raise InputError(f"period {period!r} is not in {list(self.periods)}.")
        return Path(self.path) / f"{period}.tif"


def composite_key(
    scenes: Sequence[SceneRef], grid: GridSpec, options: ArdOptions, periods: PeriodArg
) -> str:
    """Hash of everything that determines the composites (inputs, grid, options, periods)."""
    payload = json.dumps(
        {
            "scenes": sorted(f"{s.collection}/{s.id}" for s in scenes),
            "grid": asdict(grid),
            "options": asdict(options),
            "periods": periods,
            "version": 1,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def write_composites(
    composites: xr.Dataset,
    grid: GridSpec,
    folder: Path,
    provenance: dict[str, Any],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> CompositeRef:
    """Compute `composites` chunk by chunk and write them to `folder` atomically.

    Written under a temporary sibling and renamed into place: `folder` either holds every period
    and ``composites.json`` or does not exist. `progress(done, total)` is called after each
    period (e.g. to update a Prefect progress artifact).
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
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
        if folder.exists():  # a concurrent run finished first: keep its identical result
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_composites(folder)


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
    """The `CompositeRef` of a complete composites folder."""
    folder = Path(folder)
    meta_path = folder / "composites.json"
    if not meta_path.is_file():
        raise InputError(f"{folder} holds no composites (composites.json is missing).")
    meta = json.loads(meta_path.read_text())
    g = meta["grid"]
    return CompositeRef(
        path=str(folder),
        periods=tuple(meta["periods"]),
        bands=tuple(meta["bands"]),
        grid=GridSpec(epsg=g["epsg"], resolution=g["resolution"], bounds=tuple(g["bounds"])),
        scene_ids=tuple(meta["scene_ids"]),
        provenance={k: meta[k] for k in ("mask", "coregistration", "start", "end") if k in meta},
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


def composites_for(
    scenes: Sequence[SceneRef],
    grid: GridSpec,
    periods: PeriodArg,
    *,
    options: ArdOptions = ArdOptions(),
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CompositeRef:
    """Composites of `scenes` on `grid` per period, computed once and reused.

    `periods`: ``"year"``, ``"season"``, ``"month"`` or ``{label: (start, end)}`` (inclusive
    ISO dates), e.g. ``{"before": ("2018-05-01", "2018-09-30"), "after": (...)}``.
    A period without any clear observation is NaN with count 0 (not an error).
    Raises `InputError` when no scene is given or every scene was rejected as too cloudy.
    """
    if not scenes:
        raise InputError("scenes: nothing to composite; widen the dates or the AOI.")
    cache_dir = Path(cache_dir or get_settings().cache_dir)
    folder = cache_dir / "composites" / composite_key(scenes, grid, options, periods)
    if (folder / "composites.json").is_file():
        log.info("composites %s exist; reused", folder.name)
        return open_composites(folder)
    stack, report = analysis_ready_stack(scenes, grid, options)
    if stack.sizes["time"] == 0:
        raise InputError(
            f"every one of the {len(scenes)} scene(s) was rejected as too cloudy "
            f"(min_clear_fraction={options.min_clear_fraction}); widen the dates or lower it."
        )
    parsed = parse_periods(periods, stack["time"].values)
    composites = build_composites(stack, parsed, method=options.method)
    provenance = {"scene_ids": sorted({s.id for s in scenes}), **report}
    folder.parent.mkdir(parents=True, exist_ok=True)
    return write_composites(composites, grid, folder, provenance, progress=progress)


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
) -> CompositeRef:
    """Prefect task around `composites_for` (reuses a complete result on disk); a progress
    artifact follows the periods written (decades of annual composites take a while)."""
    artifact_id = create_progress_artifact(0.0, description="composites written (%)")
    assert isinstance(artifact_id, uuid.UUID)  # sync context: not a coroutine

    def report(done: int, total: int) -> None:
        update_progress_artifact(artifact_id, 100.0 * done / total)

    return composites_for(scenes, grid, periods, options=options, progress=report)

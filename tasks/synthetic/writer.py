"""Write a synthetic archive: COGs, STAC JSON and ground truth, atomically and idempotently."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray

from tasks.aoi import GridSpec
from tasks.errors import InputError
from tasks.synthetic.acquisitions import COLLECTIONS, Acquisition, plan_archive
from tasks.synthetic.bands import NOISE_SIGMA, reflectance_assets
from tasks.synthetic.config import DEMO_CONFIG, ArchiveConfig, config_hash
from tasks.synthetic.geometry import footprint
from tasks.synthetic.landscape import rng_for
from tasks.synthetic.render import RenderedItem, render_acquisition
from tasks.synthetic.stac import (
    LANDSAT_OFFSET,
    LANDSAT_SCALE,
    S2_SCALE,
    collection_dict,
    landsat_item,
    s2_boa_offset,
    sentinel2_item,
)
from tasks.synthetic.truth import aoi_grid, scene_record, write_truth_rasters
from tasks.synthetic.world import World, build_world

__all__ = ["ArchiveInfo", "archive_items", "create_archive", "stac_files", "write_cog"]

_BLOCKSIZE = 128


@dataclass(frozen=True)
class ArchiveInfo:
    """A written archive: where, from what configuration, what it holds.

    `bbox` (west, south, east, north) and `aoi` (GeoJSON Polygon) are in EPSG:4326 and describe
    the simulated area; `epsg` is its main UTM zone; `n_items` counts Items per collection.
    """

    root: Path
    config: ArchiveConfig
    collections: tuple[str, ...]
    n_items: dict[str, int] = field(hash=False)
    bbox: tuple[float, float, float, float]
    aoi: dict[str, Any] = field(hash=False)
    epsg: int
    config_hash: str


def _info(root: Path, meta: dict[str, Any]) -> ArchiveInfo:
    return ArchiveInfo(
        root=root,
        config=ArchiveConfig.model_validate(meta["config"]),
        collections=tuple(meta["collections"]),
        n_items=dict(meta["n_items"]),
        bbox=tuple(meta["bbox"]),
        aoi=meta["aoi"],
        epsg=int(meta["epsg"]),
        config_hash=meta["config_hash"],
    )


def _read_meta(root: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((root / "archive.json").read_text()))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise InputError(
            f"{root / 'archive.json'} is not valid JSON ({err}); "
            f"delete {root} and create the archive again."
        ) from err


# ---- rasters -------------------------------------------------------------------------------


def write_cog(
    path: Path, array: NDArray[Any], grid: GridSpec, nodata: int, resampling: str
) -> None:
    """Write `array` (dims (row, col)) on `grid` as a single-band COG: DEFLATE with horizontal
    predictor, 128 px tiles, at least one overview level (`resampling`: ``average`` for
    reflectance, ``nearest`` for class and bit-flag layers)."""
    rows, cols = array.shape
    levels = max(1, math.ceil(math.log2(max(rows, cols) / _BLOCKSIZE)))
    profile = {
        "driver": "COG",
        "width": cols,
        "height": rows,
        "count": 1,
        "dtype": array.dtype.name,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "compress": "DEFLATE",
        "predictor": 2,
        "blocksize": _BLOCKSIZE,
        "overview_count": levels,
        "overview_resampling": resampling,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)


def digital_numbers(
    reflectance: NDArray[np.float32], scale: float, offset: float
) -> NDArray[np.uint16]:
    """uint16 DN = (rho - offset) / scale, clipped to 1..65535; NaN (no data) becomes 0."""
    dn = np.rint((np.nan_to_num(reflectance, nan=0.0) - offset) / scale)
    dn = np.clip(dn, 1, 65535).astype(np.uint16)
    dn[np.isnan(reflectance)] = 0
    return dn


@dataclass(frozen=True)
class _Job:
    config: ArchiveConfig
    world: World
    staging: Path
    final: Path


_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _JOB
    _JOB = job


def _write_item(
    job: _Job, acq: Acquisition, item: RenderedItem
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    spec = item.spec
    relative = Path("data") / spec.collection / spec.id
    (job.staging / relative).mkdir(parents=True, exist_ok=True)
    hrefs: dict[str, Path] = {}
    rng = rng_for(job.config, "noise", spec.id)
    sigma = NOISE_SIGMA[acq.instrument]
    s2 = acq.track.family == "sentinel-2"
    scale, offset = (
        (S2_SCALE, s2_boa_offset(acq.datetime)) if s2 else (LANDSAT_SCALE, LANDSAT_OFFSET)
    )
    for band in reflectance_assets(acq.platform):
        clean, grid = item.band(band.asset)
        noisy = clean + rng.normal(0.0, sigma, clean.shape).astype(np.float32)
        name = relative / f"{band.asset}.tif"
        write_cog(job.staging / name, digital_numbers(noisy, scale, offset), grid, 0, "average")
        hrefs[band.asset] = job.final / name
    quality_name = "scl" if s2 else "qa_pixel"
    quality_grid = spec.grids[-1]
    name = relative / f"{quality_name}.tif"
    write_cog(job.staging / name, item.quality, quality_grid, 0 if s2 else 1, "nearest")
    hrefs[quality_name] = job.final / name

    clouds = job.staging / "truth" / "clouds"
    clouds.mkdir(parents=True, exist_ok=True)
    write_cog(clouds / f"{spec.id}.tif", item.truth_mask, spec.grids[0], 255, "nearest")
    geometry, bbox = footprint(acq.swath, quality_grid, job.world.layout.grid.epsg)
    make = sentinel2_item if s2 else landsat_item
    stac_item = make(acq, spec, item.quality, geometry, bbox, hrefs)
    return spec.collection, stac_item, scene_record(acq, item)


def _write_acquisition(acq: Acquisition) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Render and write every item of one acquisition (runs in a worker process)."""
    if _JOB is None:
        raise RuntimeError("worker not initialised: _init_worker must run first")
    rendered = render_acquisition(_JOB.config, _JOB.world, acq)
    return [_write_item(_JOB, acq, item) for item in rendered]


def _run(
    job: _Job, plan: list[Acquisition], workers: int
) -> Iterator[list[tuple[str, dict[str, Any], dict[str, Any]]]]:
    if workers <= 1:
        _init_worker(job)
        yield from map(_write_acquisition, plan)
        return
    # spawn, not fork: GDAL and BLAS threads do not survive a fork reliably.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(job,)
    ) as pool:
        yield from pool.map(_write_acquisition, plan, chunksize=4)


# ---- archive -------------------------------------------------------------------------------


def create_archive(
    root: Path, config: ArchiveConfig = DEMO_CONFIG, *, workers: int | None = None
) -> ArchiveInfo:
    """Write the synthetic archive of `config` to `root` and describe it.

    Idempotent: when `root` already holds a complete archive of the same configuration it is
    returned untouched. Otherwise the archive is written to a hidden sibling folder and renamed
    into place, so a half-written archive is never visible at `root` (an older archive there is
    replaced). `workers`: processes to render with (default min(2, CPUs); 1 runs in-process).
    More than one worker spawns processes, so a script calling this needs the usual
    ``if __name__ == "__main__":`` guard. Raises `InputError` when `root` is a non-empty folder
    that holds no synthetic archive.
    """
    root = Path(root).absolute()
    digest = config_hash(config)
    meta = _read_meta(root)
    if meta is not None and meta.get("config_hash") == digest and meta.get("complete"):
        return _info(root, meta)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    if workers < 1:
        raise InputError(f"workers={workers}: give 1 or more (1 renders in this process).")

    if meta is None and root.exists() and any(root.iterdir()):
        raise InputError(
            f"{root} is not empty and holds no synthetic archive; choose a new or empty folder "
            "(an archive there would replace its contents)."
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        meta = _write(staging, root, config, digest, workers)
        _swap_into_place(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _info(root, meta)


def _write(
    staging: Path, final: Path, config: ArchiveConfig, digest: str, workers: int
) -> dict[str, Any]:
    world = build_world(config)
    plan = plan_archive(config)
    write_truth_rasters(staging / "truth", world)
    items: dict[str, list[dict[str, Any]]] = {c: [] for c in COLLECTIONS.values()}
    scenes: dict[str, dict[str, Any]] = {}
    for results in _run(_Job(config, world, staging, final), plan, workers):
        for collection, item, record in results:
            items[collection].append(item)
            scenes[item["id"]] = record
    (staging / "truth" / "scenes.json").write_text(json.dumps(scenes, indent=1))

    stac_dir = staging / "stac"
    stac_dir.mkdir()
    collections = tuple(c for c, found in items.items() if found)
    for collection in collections:
        coll = collection_dict(collection, items[collection], final / "stac" / f"{collection}.json")
        (stac_dir / f"{collection}.json").write_text(json.dumps(coll, indent=1))
        lines = "".join(
            json.dumps(item, separators=(",", ":")) + "\n" for item in items[collection]
        )
        (stac_dir / f"{collection}.items.ndjson").write_text(lines)

    grid = aoi_grid(config)
    aoi = grid.to_geojson()
    ring = np.asarray(aoi["coordinates"][0])
    meta = {
        "generator": "tasks.synthetic",
        "config_hash": digest,
        "config": config.model_dump(mode="json"),
        "collections": list(collections),
        "n_items": {c: len(items[c]) for c in collections},
        "bbox": [
            float(ring[:, 0].min()),
            float(ring[:, 1].min()),
            float(ring[:, 0].max()),
            float(ring[:, 1].max()),
        ],
        "aoi": aoi,
        "epsg": grid.epsg,
        "complete": True,
    }
    text = json.dumps(meta, indent=1)
    (staging / "archive.json").write_text(text)
    return dict(json.loads(text))  # as a later run reads it back (lists, not tuples)


def _swap_into_place(staging: Path, root: Path) -> None:
    """Rename `staging` to `root`; an existing `root` is moved aside first, then deleted."""
    retired = root.parent / f".{root.name}.retired-{uuid.uuid4().hex[:8]}"
    if root.exists():
        root.rename(retired)
    staging.rename(root)
    shutil.rmtree(retired, ignore_errors=True)


def stac_files(root: Path) -> list[Path]:
    """Files to pass to ``rustac serve``: each Collection JSON followed by its Items
    (newline-delimited JSON), for every collection of the archive at `root`."""
    meta = _read_meta(Path(root))
    if meta is None:
        raise InputError(f"{root} holds no synthetic archive; create one with create_archive.")
    stac_dir = Path(root) / "stac"
    return [
        p
        for c in meta["collections"]
        for p in (stac_dir / f"{c}.json", stac_dir / f"{c}.items.ndjson")
    ]


def archive_items(root: Path) -> list[dict[str, Any]]:
    """Every STAC Item of the archive at `root`, as plain dicts, collection by collection."""
    return [
        json.loads(line)
        for path in stac_files(root)
        if path.name.endswith(".items.ndjson")
        for line in path.read_text().splitlines()
        if line.strip()
    ]

"""Product maps from composites: the DL model or its classical baseline, in one shape.

Every product is an ``xr.Dataset`` on the composites' grid with the bands that get published:

| product   | variables                                                                  |
|-----------|----------------------------------------------------------------------------|
| change    | ``probability`` (P(change)), ``binary`` (0/1), ``confidence``, ``count``   |
| footprint | ``probability`` (P(built-up)), ``binary`` (0/1), ``confidence``, ``count`` |
| dynamics  | ``urbanization_year`` (NaN = none), ``confidence``, ``count``              |

``count`` is the number of valid observations behind each pixel (the smaller of the two dates
for change; the number of observed years for dynamics). ``confidence`` is the calibrated
probability of the predicted class for the models (`tasks.infer`); for the baselines, which
have no probability, it is the margin to the decision threshold scaled to 0.5-1 (documented in
each function) — a ranking, not a calibrated probability. ``model="baseline"`` selects the
baseline; any other name is looked up in the weights registry (sha256 and bands checked).

**Tiles.** Every map function takes an optional `grid`: a pixel window of the composites' grid
to compute on (`tasks.tiling`). `make_tile_product` maps one tile on its outer window (core +
`HALO_PX`), crops the core and writes it next to the composites; `publish_tiles` mosaics the
cores on the AOI's grid, vectorizes the mosaic (polygons are not cut at tile edges) and
publishes one product. `make_product` is the one-tile case.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import xarray as xr
from prefect import task
from prefect.cache_policies import NO_CACHE
from shapely.geometry import box

from models.baselines import breakpoint_year, builtup_rule, change_vector_analysis
from models.registry import load_model, resolve
from models.spec import WeightsSpec
from tasks.aoi import GridSpec, reproject_geometry
from tasks.ard import CompositeRef, PeriodArg, make_composites, pin_reference, read_composite
from tasks.errors import InputError, PipelineError
from tasks.infer import (
    gpu_slot,
    predict_change,
    predict_dynamics,
    predict_footprint,
    resolve_device,
)
from tasks.publish import ProductKind, ProductRef, publish_product
from tasks.refs import SceneRef
from tasks.report import data_uri, overlay, rgb_quicklook
from tasks.settings import get_settings
from tasks.tiling import Tile, crop_core, local_dask_scheduler, mosaic, single_tile, window_in
from tasks.vectorize import change_polygons, dynamics_polygons, footprint_polygons

__all__ = [
    "BASELINE",
    "HALO_PX",
    "ProductSummary",
    "TileProduct",
    "change_map",
    "dynamics_map",
    "footprint_map",
    "make_product",
    "make_tile_product",
    "pin_reference_task",
    "product_dataset",
    "product_task",
    "publish_tiles",
    "publish_tiles_task",
    "tile_product_task",
]

BASELINE = "baseline"

#: Halo (pixels) around a tile, per product. It must cover whatever reads neighbouring pixels:
#: the composites' bilinear resampling (1 px) and co-registration shifts (at most
#: `tasks.coregister.MAX_SHIFT_PX` = 10 px) for every product, and the CNN's receptive field
#: for change (FC-Siam-diff) and footprint (U-Net). Measured with the shipped change model on
#: the tiny synthetic archive (53 x 53 px at 30 m, 16 px tiles, one composite for all): max
#: |P(tile) - P(whole grid)| was 0.64 without halo, 2e-3 with 16 px, 2e-4 with 24, 6e-6 with
#: 32 and 0 with 48 (the theoretical receptive field, ~46 px). Dynamics is per pixel.
HALO_PX: dict[str, int] = {"change": 32, "footprint": 32, "dynamics": 16}


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold: {threshold} is outside (0, 1); use a probability.")


def _read(
    ref: CompositeRef, period: str, grid: GridSpec | None
) -> tuple[xr.DataArray, xr.DataArray]:
    """`read_composite` of `period`, cut to `grid` (a pixel window of ``ref.grid``)."""
    refl, count = read_composite(ref, period)
    if grid is None or grid == ref.grid:
        return refl, count
    w = window_in(ref.grid, grid)
    return refl.isel(y=w.rows, x=w.cols), count.isel(y=w.rows, x=w.cols)


def _margin_confidence(score: xr.DataArray, threshold: float) -> xr.DataArray:
    """0.5 at the threshold, rising to 1 at the ends of the score's [0, 1] range."""
    span = xr.where(score >= threshold, 1.0 - threshold, threshold)
    return (0.5 + 0.5 * abs(score - threshold) / span).astype("float32")


def change_map(
    ref: CompositeRef,
    *,
    model: str = BASELINE,
    threshold: float = 0.5,
    before: str = "before",
    after: str = "after",
    device: str | None = None,
    grid: GridSpec | None = None,
) -> xr.Dataset:
    """Change between periods `before` and `after` of `ref` (on `grid`, a pixel window of
    ``ref.grid``; default all of it).

    Baseline: change vector analysis with Otsu's threshold; ``probability`` is its score
    (0.5 at the Otsu threshold) and `threshold` applies to that score. Otsu's threshold is a
    statistic of the pixels mapped: on a tile, of that tile.
    """
    _check_threshold(threshold)
    b, count_b = _read(ref, before, grid)
    a, count_a = _read(ref, after, grid)
    count = xr.where(count_b < count_a, count_b, count_a)
    attrs: dict[str, Any]
    if model == BASELINE:
        cva = change_vector_analysis(b, a)
        prob = cva["score"].where(cva["valid"])
        attrs = {"method": "cva-otsu", "otsu_threshold": float(cva.attrs["threshold"])}
        confidence = _margin_confidence(prob, threshold).where(cva["valid"])
    else:
        dev = resolve_device(device)
        with gpu_slot(dev):
            net, spec = load_model(model, device=dev)
            ds = predict_change(net, spec, b, a, device=dev, select_bands=True)
        prob, confidence = ds["probability"], ds["confidence"]
        attrs = {"method": spec.name, "weights_sha256": spec.sha256}
    return _binary_product(prob, confidence, count, threshold, attrs)


def footprint_map(
    ref: CompositeRef,
    period: str,
    *,
    model: str = BASELINE,
    threshold: float = 0.5,
    device: str | None = None,
    grid: GridSpec | None = None,
) -> xr.Dataset:
    """Built-up footprint of `period` of `ref` (on `grid`, a pixel window of ``ref.grid``).

    Baseline: the NDBI/NDVI/MNDWI rule (`models.baselines.builtup_rule`); ``probability`` is
    its 0/1 decision and ``confidence`` grows with the distance of NDBI - NDVI from 0.
    """
    _check_threshold(threshold)
    comp, count = _read(ref, period, grid)
    attrs: dict[str, Any]
    if model == BASELINE:
        rule = builtup_rule(comp)
        prob = rule["built"].astype("float32").where(rule["valid"])
        margin = (abs(rule["bu"]) / 0.5).clip(0.0, 1.0)  # |NDBI - NDVI| of 0.5 = certain
        confidence = (0.5 + 0.5 * margin).astype("float32").where(rule["valid"])
        attrs = {"method": "ndbi-rule"}
    else:
        dev = resolve_device(device)
        with gpu_slot(dev):
            net, spec = load_model(model, device=dev)
            ds = predict_footprint(net, spec, comp, device=dev, select_bands=True)
        prob, confidence = ds["probability"], ds["confidence"]
        attrs = {"method": spec.name, "weights_sha256": spec.sha256}
    return _binary_product(prob, confidence, count, threshold, attrs)


def _binary_product(
    prob: xr.DataArray,
    confidence: xr.DataArray,
    count: xr.DataArray,
    threshold: float,
    attrs: dict[str, Any],
) -> xr.Dataset:
    valid = prob.notnull()
    decision = (prob >= threshold).where(valid).astype("float32")
    return xr.Dataset(
        {
            "probability": prob.astype("float32"),
            "binary": decision,
            "confidence": confidence.astype("float32"),
            "count": count.astype("int16"),
        },
        attrs={**attrs, "threshold": threshold},
    )


def dynamics_map(
    ref: CompositeRef,
    *,
    model: str = BASELINE,
    device: str | None = None,
    grid: GridSpec | None = None,
) -> xr.Dataset:
    """Year of urbanization from the annual composites of `ref` (periods are years), on `grid`
    (a pixel window of ``ref.grid``; default all of it).

    Baseline: the breakpoint of NDBI - NDVI (`models.baselines.breakpoint_year`);
    ``confidence`` grows with the size of the step (a rise of 0.6 = certain).
    """
    years = [p for p in ref.periods if p.isdigit()]
    if len(years) < 3:
        raise InputError(f"dynamics needs >= 3 annual composites; {ref.path} has {ref.periods}.")
    layers, counts = [], []
    for y in years:
        refl, count = _read(ref, y, grid)
        layers.append(refl)
        counts.append(count > 0)
    annual = xr.concat(layers, dim="year").assign_coords(year=[int(y) for y in years])
    observed_years = xr.concat(counts, dim="year").sum("year").astype("int16")
    attrs: dict[str, Any]
    if model == BASELINE:
        bp = breakpoint_year(annual)
        year = bp["year"]
        confidence = (0.5 + 0.5 * (bp["step"] / 0.6).clip(0.0, 1.0)).where(bp["valid"])
        attrs = {"method": "bu-breakpoint"}
    else:
        dev = resolve_device(device)
        with gpu_slot(dev):
            net, spec = load_model(model, device=dev)
            ds = predict_dynamics(net, spec, annual, device=dev, select_bands=True)
        year = ds["urbanization_year"]
        # confidence of the final state (built-up or not) in the last year
        confidence = (
            ds["confidence"].isel(year=-1, drop=True)
            if "year" in ds["confidence"].dims
            else ds["confidence"]
        )
        attrs = {"method": spec.name, "weights_sha256": spec.sha256}
    return xr.Dataset(
        {
            "urbanization_year": year.astype("float32"),
            "confidence": confidence.astype("float32"),
            "count": observed_years,
        },
        attrs={**attrs, "first_year": int(years[0]), "last_year": int(years[-1])},
    )


# ---- publishing a product ----------------------------------------------------------------------
@dataclass(frozen=True)
class ProductSummary:
    """What a flow reports about one product: the reference, areas, a small quicklook."""

    product: ProductRef
    kind: str
    start: str
    end: str
    areas: tuple[dict[str, Any], ...]
    quicklook: str  # PNG data URI, at most tasks.report.QUICKLOOK_PX a side
    bounds: tuple[float, float, float, float]  # west, south, east, north (EPSG:4326)
    geojson: dict[str, Any] = field(hash=False, compare=False)


# ---- one product per tile, one mosaic per AOI ---------------------------------------------------
def product_dataset(
    kind: ProductKind,
    ref: CompositeRef,
    *,
    model: str = BASELINE,
    threshold: float = 0.5,
    period: str | None = None,
    device: str | None = None,
    grid: GridSpec | None = None,
) -> xr.Dataset:
    """The bands of product `kind` (module docstring) from the composites `ref`, on `grid`.

    change: periods ``before``/``after`` of `ref`; footprint: `period`; dynamics: every annual
    period. `grid`: a pixel window of ``ref.grid`` (default all of it).
    """
    if kind == "change":
        return change_map(ref, model=model, threshold=threshold, device=device, grid=grid)
    if kind == "footprint":
        if period is None:
            raise InputError("period: a footprint needs the composite period to map.")
        return footprint_map(
            ref, period, model=model, threshold=threshold, device=device, grid=grid
        )
    if kind == "dynamics":
        return dynamics_map(ref, model=model, device=device, grid=grid)
    raise InputError(f"kind: {kind!r} is not one of 'change', 'footprint', 'dynamics'.")


@dataclass(frozen=True)
class TileProduct:
    """The product bands of one tile's core, on disk: a float32 GeoTIFF on ``tile.core_grid``
    with one band per product variable (named in its description; NaN = no data)."""

    path: str
    tile: Tile
    bands: tuple[str, ...]
    method: str  # how the product was made (``ds.attrs["method"]``), the same for every tile
    composites: CompositeRef  # the tile's composites: quicklook backdrop and input scene ids


def _tile_path(
    kind: str,
    ref: CompositeRef,
    tile: Tile,
    *,
    model: str,
    threshold: float,
    period: str | None,
    cache_dir: Path,
) -> Path:
    """Where a tile's product goes: keyed by its inputs (concurrent runs of other inputs never
    share a file; a rerun overwrites its own)."""
    weights = resolve(model)[0].sha256 if model != BASELINE else BASELINE
    payload = json.dumps(
        {
            "kind": kind,
            "composites": ref.path,
            "weights": weights,
            "threshold": threshold,
            "period": period,
            "grid": [tile.grid.epsg, tile.grid.resolution, list(tile.grid.bounds)],
            "outer": astuple(tile.outer),
        },
        sort_keys=True,
    )
    key = hashlib.sha256(payload.encode()).hexdigest()[:20]
    return cache_dir / "tiles" / key / f"{tile.name}.tif"


def _write_tile(path: Path, bands: dict[str, np.ndarray], grid: GridSpec, *, method: str) -> None:
    """Write `bands` on `grid` as a float32 GeoTIFF, atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    rows, cols = grid.shape
    profile = {
        "driver": "GTiff",
        "width": cols,
        "height": rows,
        "count": len(bands),
        "dtype": "float32",
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": float("nan"),
        "compress": "deflate",  # lossless: the mosaic is bit-identical to the arrays
    }
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            for i, (name, values) in enumerate(bands.items(), start=1):
                dst.write(values.astype(np.float32, copy=False), i)
                dst.set_band_description(i, name)
            dst.update_tags(method=method)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_tile(part: TileProduct) -> dict[str, np.ndarray]:
    with rasterio.open(part.path) as src:
        names = [str(d) for d in src.descriptions]
        if tuple(names) != part.bands or src.shape != (part.tile.core.height, part.tile.core.width):
            raise PipelineError(
                f"tile {part.tile.name}: {part.path} holds {names} {src.shape}, not "
                f"{list(part.bands)} on its core; it was overwritten or truncated: run again."
            )
        return {name: src.read(i + 1) for i, name in enumerate(names)}


def make_tile_product(
    kind: ProductKind,
    ref: CompositeRef,
    tile: Tile,
    *,
    model: str = BASELINE,
    threshold: float = 0.5,
    period: str | None = None,
    device: str | None = None,
    cache_dir: Path | None = None,
) -> TileProduct:
    """Map `kind` on `tile`'s outer window (core + halo) and keep its core, written to
    ``<cache_dir>/tiles/`` (default ``EO_CACHE_DIR``).

    `ref`: composites whose grid holds ``tile.outer_grid`` on the same pixel grid: the tile's
    own (as the flows make them) or the whole grid's.
    """
    path = _tile_path(
        kind,
        ref,
        tile,
        model=model,
        threshold=threshold,
        period=period,
        cache_dir=Path(cache_dir or get_settings().cache_dir),
    )
    done = _read_tile_header(path, tile.core_grid)
    if done is not None:  # a rerun of the same inputs: the keyed file is complete, reuse it
        names, method = done
        return TileProduct(str(path), tile, names, method, ref)
    ds = product_dataset(
        kind,
        ref,
        model=model,
        threshold=threshold,
        period=period,
        device=device,
        grid=tile.outer_grid,
    )
    bands = {str(k): crop_core(np.asarray(ds[k].values, dtype=np.float32), tile) for k in ds}
    method = str(ds.attrs["method"])
    _write_tile(path, bands, tile.core_grid, method=method)
    return TileProduct(str(path), tile, tuple(bands), method, ref)


def _read_tile_header(path: Path, grid: GridSpec) -> tuple[tuple[str, ...], str] | None:
    """(band names, method) of a complete tile file on `grid`, or None (absent or not ours).

    Tile files are written atomically (temporary name, then rename), so one that exists with
    the expected shape and tags is complete.
    """
    if not path.is_file():
        return None
    try:
        with rasterio.open(path) as src:
            method = src.tags().get("method")
            names = tuple(str(d) for d in src.descriptions)
            if method is None or (src.height, src.width) != grid.shape or None in src.descriptions:
                return None
            return names, method
    except rasterio.errors.RasterioIOError:
        return None


def _backdrop(kind: str, parts: Sequence[TileProduct], period: str | None) -> np.ndarray:
    """True-colour composite under the product in the quicklook: (red, green, blue) on the grid
    (change: the ``after`` period; footprint: `period`; dynamics: the last year)."""
    first = parts[0].composites
    label = {"change": "after", "footprint": period}.get(kind) or first.periods[-1]
    rgb = ("red", "green", "blue")
    cores = []
    for p in parts:
        refl, _ = _read(p.composites, label, p.tile.outer_grid)
        values = refl.sel(band=list(rgb)).values
        cores.append((p.tile, {b: crop_core(values[i], p.tile) for i, b in enumerate(rgb)}))
    out = mosaic(cores, parts[0].tile.grid)
    return np.stack([out[b] for b in rgb])


def publish_tiles(
    kind: ProductKind,
    parts: Sequence[TileProduct],
    *,
    model: str = BASELINE,
    threshold: float = 0.5,
    period: str | None = None,
    start: str,
    end: str,
    output_url: str | None = None,
    min_pixels: int = 4,
) -> ProductSummary:
    """Mosaic the tiles' cores on their grid, vectorize the mosaic, publish it as one product
    (atomically, idempotently: `tasks.publish.publish_product`) and summarize it.

    Pixels of tiles left out (outside an irregular AOI) are NaN with ``count`` 0. A product of
    several tiles records ``tiling`` (tile size, halo, number of tiles) in its parameters, so
    it gets an id of its own: its composites were co-registered per tile.
    Returns a `ProductSummary` (a `ProductRef` plus areas and a quicklook).
    """
    if not parts:
        raise InputError("parts: no tiles to publish.")
    grid = parts[0].tile.grid
    methods = {p.method for p in parts}
    if len(methods) != 1:
        raise PipelineError(f"tiles of one product were made by different methods: {methods}.")
    method = methods.pop()
    rasters = mosaic(((p.tile, _read_tile(p)) for p in parts), grid, fill={"count": 0.0})
    if kind == "change":
        gdf = change_polygons(
            rasters["probability"],
            grid,
            start=start,
            end=end,
            confidence=rasters["confidence"],
            threshold=threshold,
            min_pixels=min_pixels,
        )
    elif kind == "footprint":
        gdf = footprint_polygons(
            rasters["probability"],
            grid,
            years=[int(start[:4])],
            confidence=rasters["confidence"],
            threshold=threshold,
            min_pixels=min_pixels,
        )
    else:
        gdf = dynamics_polygons(
            rasters["urbanization_year"],
            grid,
            confidence=rasters["confidence"],
            min_pixels=min_pixels,
        )
    spec: WeightsSpec | str = resolve(model)[0] if model != BASELINE else f"{BASELINE}:{method}"
    params: dict[str, Any] = {"threshold": threshold, "min_pixels": min_pixels, "method": method}
    if len(parts) > 1 or parts[0].tile.core != single_tile(grid).core:
        t = parts[0].tile
        params["tiling"] = {
            "tile_size_px": t.tile_size_px,
            "halo_px": t.halo_px,
            "tiles": len(parts),
        }
    scene_ids = list(dict.fromkeys(s for p in parts for s in p.composites.scene_ids))
    product = publish_product(
        kind,
        rasters,
        gdf,
        grid=grid,
        scene_ids=scene_ids,
        model=spec,
        params=params,
        start=start,
        end=end,
        output_url=output_url,
    )
    mask = (
        rasters["binary"] > 0.5
        if "binary" in rasters
        else np.isfinite(rasters["urbanization_year"])
    )
    image = overlay(rgb_quicklook(_backdrop(kind, parts, period), ["red", "green", "blue"]), mask)
    lonlat = reproject_geometry(box(*grid.bounds), grid.epsg, 4326).bounds
    return ProductSummary(
        product=product,
        kind=kind,
        start=start,
        end=end,
        areas=tuple(_areas(kind, gdf)),
        quicklook=data_uri(image),
        bounds=(lonlat[0], lonlat[1], lonlat[2], lonlat[3]),
        geojson=json.loads(gdf.to_crs(4326).to_json())
        if len(gdf)
        else {"type": "FeatureCollection", "features": []},
    )


def make_product(
    kind: ProductKind,
    ref: CompositeRef,
    *,
    model: str = BASELINE,
    threshold: float = 0.5,
    period: str | None = None,
    start: str,
    end: str,
    output_url: str | None = None,
    min_pixels: int = 4,
    device: str | None = None,
) -> ProductSummary:
    """Map `kind` from the composites `ref` on all of their grid (one tile), vectorize it,
    publish it (atomically, idempotently); see `publish_tiles`.

    change: periods ``before``/``after`` of `ref`; footprint: `period`; dynamics: every annual
    period. Returns a `ProductSummary` (a `ProductRef` plus areas and a quicklook).
    """
    part = make_tile_product(
        kind,
        ref,
        single_tile(ref.grid),
        model=model,
        threshold=threshold,
        period=period,
        device=device,
    )
    return publish_tiles(
        kind,
        [part],
        model=model,
        threshold=threshold,
        period=period,
        start=start,
        end=end,
        output_url=output_url,
        min_pixels=min_pixels,
    )


def _areas(kind: str, gdf: gpd.GeoDataFrame) -> list[dict[str, Any]]:
    """Areas by class/period: the table artifact of a product."""
    if not len(gdf):
        return [{"product": kind, "group": "-", "polygons": 0, "area_ha": 0.0}]
    key = {"change": "period_start", "footprint": "year", "dynamics": "epoch_start"}[kind]
    key = key if key in gdf.columns else gdf.columns[0]
    rows = []
    for group, sub in gdf.groupby(key):
        rows.append(
            {
                "product": kind,
                "group": str(group),
                "polygons": len(sub),
                "area_ha": round(float(sub["area_m2"].sum()) / 1e4, 2),
            }
        )
    return rows


# ---- Prefect tasks -------------------------------------------------------
# Inputs are references (scene refs, a CompositeRef, a Tile, names, numbers); the outputs small
# references (a TileProduct: a file) and a small summary. Model inference on CUDA holds the
# "gpu" global concurrency limit (`tasks.infer.gpu_slot`).
product_task = task(name="make-product", cache_policy=NO_CACHE, tags=["inference", "io"])(
    make_product
)


@task(name="pin-reference", cache_policy=NO_CACHE, tags=["cpu"])
def pin_reference_task(scenes: list[SceneRef], grid: GridSpec) -> str | None:
    """Pin the co-registration reference of the AOI's `grid` before its tiles fan out
    (`tasks.ard.pin_reference`; a no-op once pinned). Every tile's composites are then matched
    against a crop of that one image, as an untiled run's are, instead of each tile's clearest
    scene of its own: tiles share one geometry. Returns the reference scene's id (None: no
    scene has a clear pixel; tiles pin their own)."""
    with local_dask_scheduler():
        pinned = pin_reference(scenes, grid)
    return None if pinned is None else pinned.scene_id


@task(
    name="product-tile",
    task_run_name="{kind}-{tile.name}",
    cache_policy=NO_CACHE,
    tags=["cpu", "inference"],
)
def tile_product_task(
    kind: ProductKind,
    scenes: list[SceneRef],
    tile: Tile,
    periods: PeriodArg,
    *,
    model: str = BASELINE,
    threshold: float = 0.5,
    period: str | None = None,
    device: str | None = None,
) -> TileProduct:
    """One tile, start to end on the worker that runs it: the composites of its outer window
    (`tasks.ard.make_composites`, a nested task run) and its product (`make_tile_product`).

    Composites and model stay on one machine (no composite crosses the network); their dask
    graphs compute on this process's threads (`tasks.tiling.local_dask_scheduler`).
    """
    with local_dask_scheduler():
        ref = make_composites(scenes, tile.outer_grid, periods)
        return make_tile_product(
            kind, ref, tile, model=model, threshold=threshold, period=period, device=device
        )


publish_tiles_task = task(name="publish-mosaic", cache_policy=NO_CACHE, tags=["io"])(publish_tiles)

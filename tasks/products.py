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

**Domain score and adaptation** (`tasks.adapt`). A model product records how far its inputs
are from the training distribution (``domain_score`` and ``domain_channel`` attrs, the tile
file's tags, the Item's ``eo_pipeline:domain``: the worst tile) and logs a warning above
`tasks.adapt.DOMAIN_WARN_SCORE`; above `tasks.adapt.DOMAIN_ADAPT_SCORE` the change and the
footprint models are fine-tuned on the tile itself before they map it (``adapt="auto"``;
``"always"``, ``"never"``): attr ``adapted`` 1.

**Radiometric normalisation** (`tasks.radnorm`). Before a change map compares two
composites, model or baseline, the after composite is mapped onto the before one's
radiometry on their pseudo-invariant pixels (a gain and offset per band, per tile: a
statistic of the tile, as Otsu's threshold is); the tile's tags and the Item's
``eo_pipeline:radiometric_normalization`` record it.

**Memory.** A `TileProduct` is a small reference (its file, its tile, the scene ids; not the
composites' provenance), and `publish_tiles` never holds the mosaic: it writes it window by
window (`tasks.publish.WINDOW_PX`) from the tiles' files into a local GeoTIFF
(`tasks.publish.write_raster`, band statistics on the way), samples the quicklook as it goes,
vectorizes it window by window (`tasks.vectorize.WindowedPolygonizer`: patches are joined
across window edges) and makes the COG from the file. What grows with the AOI is the output:
the polygons (GeoParquet, and the GeoJSON of the `ProductSummary`) and the list of tiles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import xarray as xr
from prefect import task
from prefect.cache_policies import NO_CACHE
from rasterio.windows import Window
from shapely.geometry import box

from models.baselines import (
    breakpoint_year,
    builtup_rule,
    change_vector_analysis,
    slow_feature_analysis,
)
from models.registry import load_model, resolve
from models.spec import WeightsSpec
from tasks.adapt import (
    DOMAIN_ADAPT_SCORE,
    DOMAIN_WARN_SCORE,
    AdaptMode,
    DomainScore,
    change_seeds,
    domain_score,
    fine_tune_change,
    fine_tune_footprint,
    footprint_seeds,
    should_adapt,
)
from tasks.aoi import GridSpec, reproject_geometry
from tasks.ard import CompositeRef, PeriodArg, make_composites, pin_reference, read_composite
from tasks.errors import InputError, PipelineError
from tasks.infer import (
    gpu_slot,
    model_inputs,
    predict_change,
    predict_dynamics,
    predict_footprint,
    resolve_device,
)
from tasks.publish import (
    WINDOW_PX,
    ProductKind,
    ProductRef,
    RasterFile,
    local_workdir,
    publish_product,
    write_raster,
)
from tasks.radnorm import METHOD as RADNORM_METHOD
from tasks.radnorm import relative_normalization
from tasks.refs import SceneRef
from tasks.report import QUICKLOOK_PX, data_uri, overlay, rgb_quicklook
from tasks.settings import get_settings
from tasks.tiling import (
    PixelWindow,
    Tile,
    crop_core,
    grid_windows,
    local_dask_scheduler,
    single_tile,
    window_in,
)
from tasks.vectorize import (
    DEFAULT_EPOCH_YEARS,
    WindowedPolygonizer,
    binary_mask,
    concat_frames,
    epoch_index,
    iso_date,
)

__all__ = [
    "BASELINE",
    "HALO_PX",
    "Backdrop",
    "ProductSummary",
    "TileDomain",
    "TileProduct",
    "TileRadiometry",
    "change_map",
    "compare_composites",
    "domain_properties",
    "dynamics_map",
    "footprint_map",
    "make_product",
    "make_tile_product",
    "model_change",
    "model_footprint",
    "pin_reference_task",
    "product_dataset",
    "product_task",
    "publish_tiles",
    "publish_tiles_task",
    "radiometry_properties",
    "tile_product_task",
]

BASELINE = "baseline"

log = logging.getLogger(__name__)

#: Products whose model can be adapted at run time (`tasks.adapt`): their `adapt` mode keys
#: the tile cache and is recorded in the Item's processing parameters.
ADAPTIVE_KINDS = frozenset({"change", "footprint"})

#: Pixel stride of the dynamics domain score (decades of composites: a sample is enough).
DOMAIN_STRIDE_DYNAMICS = 4

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
    adapt: AdaptMode = "auto",
) -> xr.Dataset:
    """Change between periods `before` and `after` of `ref` (on `grid`, a pixel window of
    ``ref.grid``; default all of it).

    Baseline: change vector analysis with Otsu's threshold; ``probability`` is its score
    (0.5 at the Otsu threshold) and `threshold` applies to that score. Otsu's threshold is a
    statistic of the pixels mapped: on a tile, of that tile. Model: `adapt` says when the
    model is fine-tuned on these pixels first (`tasks.adapt`; module docstring).
    """
    _check_threshold(threshold)
    b, count_b = _read(ref, before, grid)
    a, count_a = _read(ref, after, grid)
    count = xr.where(count_b < count_a, count_b, count_a)
    ds = compare_composites(b, a, model=model, adapt=adapt, device=device)
    if model == BASELINE:
        confidence = _margin_confidence(ds["probability"], threshold).where(ds["valid"])
    else:
        confidence = ds["confidence"]
    return _binary_product(ds["probability"], confidence, count, threshold, dict(ds.attrs))


def compare_composites(
    before: xr.DataArray,
    after: xr.DataArray,
    *,
    model: str = BASELINE,
    adapt: AdaptMode = "auto",
    device: str | None = None,
    weights_dir: Path | str | None = None,
) -> xr.Dataset:
    """Change between two composites ``(band, y, x)`` of one grid, as every change product
    makes it: the after composite normalised onto the before one (`tasks.radnorm`), then the
    baseline (CVA + Otsu: ``probability`` its score, 0.5 at the threshold) or `model`
    (`model_change`). Returns ``probability``, ``valid`` (and the model's ``confidence``);
    attrs: the method's and the normalisation's. `weights_dir`: a folder searched for `model`
    before the registry's."""
    # one read of the two tiles for everything below
    b, a = before.compute(), after.compute()
    radiometry = relative_normalization(b, a)
    a = radiometry.apply(a)
    if model == BASELINE:
        cva = change_vector_analysis(b, a)
        out = xr.Dataset(
            {"probability": cva["score"].where(cva["valid"]), "valid": cva["valid"]},
            attrs={"method": "cva-otsu", "otsu_threshold": float(cva.attrs["threshold"])},
        )
    else:
        out = model_change(b, a, model=model, adapt=adapt, device=device, weights_dir=weights_dir)
    return out.assign_attrs(radiometry.attrs())


def model_change(
    before: xr.DataArray,
    after: xr.DataArray,
    *,
    model: str,
    adapt: AdaptMode = "auto",
    device: str | None = None,
    weights_dir: Path | str | None = None,
) -> xr.Dataset:
    """The change model `model` on two composites ``(band, y, x)`` of one grid (reflectance,
    NaN = no data): `tasks.infer.predict_change`, its domain score and, where `adapt` says so,
    the map of the model fine-tuned on this pair (`tasks.adapt`). Returns ``probability``,
    ``confidence`` and ``valid``; attrs ``method``, ``weights_sha256``, ``domain_score``,
    ``domain_channel`` and ``adapted`` (0/1)."""
    dev = resolve_device(device)
    # one read of the two tiles: the model, the domain score, ISFA and the adapted model all
    # read them (lazy composites would be read from disk each time)
    before, after = before.compute(), after.compute()
    with gpu_slot(dev):
        net, spec = load_model(model, device=dev, extra_dir=weights_dir)
        ds = predict_change(net, spec, before, after, device=dev, select_bands=True)
        x, observed = model_inputs(spec, before, after, select_bands=True)
        score = domain_score(spec, x, observed)
        _warn_out_of_domain(spec, score)
        adapted = (
            _adapt_change(net, spec, before, after, ds, x, device=dev)
            if should_adapt(adapt, score)
            else None
        )
    return _model_map(spec, score, ds, adapted)


def _model_map(
    spec: WeightsSpec, score: DomainScore, shipped: xr.Dataset, adapted: xr.Dataset | None
) -> xr.Dataset:
    """A model map (`model_change`, `model_footprint`): the adapted model's where there is
    one, else the shipped model's, with what the product records of both."""
    out = shipped if adapted is None else adapted
    attrs = {
        "method": spec.name,
        "weights_sha256": spec.sha256,
        **_domain_attrs(score),
        "adapted": int(adapted is not None),
    }
    return xr.Dataset({k: out[k] for k in ("probability", "confidence", "valid")}, attrs=attrs)


def _domain_attrs(score: DomainScore) -> dict[str, Any]:
    return {"domain_score": round(score.value, 4), "domain_channel": score.worst_channel}


def _warn_out_of_domain(spec: WeightsSpec, score: DomainScore) -> None:
    if score.out_of_domain:
        log.warning(
            "%s: the inputs are far from the training data of %s (%s > %.2f): treat the "
            "probabilities as uncalibrated; check the product against local reference data, "
            "compare it with the baseline (model='baseline') or train on your own labels "
            "(eo train ... --labels).",
            spec.task,
            spec.name,
            score.describe(),
            DOMAIN_WARN_SCORE,
        )


def _adapt_change(
    net: Any,
    spec: WeightsSpec,
    before: xr.DataArray,
    after: xr.DataArray,
    shipped: xr.Dataset,
    x: np.ndarray,
    *,
    device: Any,
) -> xr.Dataset | None:
    """The change map of a copy of `net` fine-tuned on this pair (`tasks.adapt`), or None
    where the pair gives no trustworthy seeds (`tasks.adapt.change_seeds`; the shipped map is
    kept, and the reason logged)."""
    bands = list(spec.bands)
    try:
        sfa = slow_feature_analysis(before.sel(band=bands), after.sel(band=bands))
        seeds = change_seeds(sfa["statistic"].values, shipped["probability"].values)
        tuned = fine_tune_change(net, x, seeds, device=device)
    except InputError as err:
        log.warning("change: not adapted (%s)", err)
        return None
    log.info(
        "change: %s adapted on %d changed and %d unchanged seed pixels",
        spec.name,
        int((seeds == 1).sum()),
        int((seeds == 0).sum()),
    )
    # fine-tuned with a plain BCE: its logits need no temperature
    return predict_change(
        tuned,
        spec.model_copy(update={"temperature": 1.0}),
        before,
        after,
        device=device,
        select_bands=True,
    )


def footprint_map(
    ref: CompositeRef,
    period: str,
    *,
    model: str = BASELINE,
    threshold: float = 0.5,
    device: str | None = None,
    grid: GridSpec | None = None,
    adapt: AdaptMode = "auto",
) -> xr.Dataset:
    """Built-up footprint of `period` of `ref` (on `grid`, a pixel window of ``ref.grid``).

    Baseline: the NDBI/NDVI/MNDWI rule (`models.baselines.builtup_rule`); ``probability`` is
    its 0/1 decision and ``confidence`` grows with the distance of NDBI - NDVI from 0.
    Model: `model_footprint` (`adapt` says when it is fine-tuned on the tile first).
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
        ds = model_footprint(comp, model=model, adapt=adapt, device=device)
        prob, confidence, attrs = ds["probability"], ds["confidence"], dict(ds.attrs)
    return _binary_product(prob, confidence, count, threshold, attrs)


def model_footprint(
    composite: xr.DataArray,
    *,
    model: str,
    adapt: AdaptMode = "auto",
    device: str | None = None,
    weights_dir: Path | str | None = None,
) -> xr.Dataset:
    """The footprint model `model` on one composite ``(band, y, x)`` (reflectance, NaN = no
    data): `tasks.infer.predict_footprint`, its domain score and, where `adapt` says so, the
    map of the model fine-tuned on this composite with seeds where it and the NDBI rule agree
    (`tasks.adapt.footprint_seeds`). Returns ``probability``, ``confidence`` and ``valid``;
    attrs as `model_change`'s."""
    dev = resolve_device(device)
    comp = composite.compute()  # read once: the model, the domain score and the rule read it
    with gpu_slot(dev):
        net, spec = load_model(model, device=dev, extra_dir=weights_dir)
        ds = predict_footprint(net, spec, comp, device=dev, select_bands=True)
        x, observed = model_inputs(spec, comp, select_bands=True)
        score = domain_score(spec, x, observed)
        _warn_out_of_domain(spec, score)
        adapted = (
            _adapt_footprint(net, spec, comp, ds, x[0], device=dev)
            if should_adapt(adapt, score)
            else None
        )
    return _model_map(spec, score, ds, adapted)


def _adapt_footprint(
    net: Any,
    spec: WeightsSpec,
    composite: xr.DataArray,
    shipped: xr.Dataset,
    x: np.ndarray,
    *,
    device: Any,
) -> xr.Dataset | None:
    """The footprint map of a copy of `net` fine-tuned on this composite (`tasks.adapt`), or
    None where it gives too few seeds (the shipped map is kept, and the reason logged)."""
    try:
        seeds = footprint_seeds(
            shipped["probability"].values, builtup_rule(composite)["built"].values
        )
        tuned = fine_tune_footprint(net, x, seeds, device=device)
    except InputError as err:
        log.warning("footprint: not adapted (%s)", err)
        return None
    log.info(
        "footprint: %s adapted on %d built-up and %d other seed pixels",
        spec.name,
        int((seeds == 1).sum()),
        int((seeds == 0).sum()),
    )
    return predict_footprint(
        tuned,
        spec.model_copy(update={"temperature": 1.0}),
        composite,
        device=device,
        select_bands=True,
    )


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
        step = DOMAIN_STRIDE_DYNAMICS
        sample = annual.isel(y=slice(None, None, step), x=slice(None, None, step))
        score = domain_score(
            spec,
            *model_inputs(
                spec, *(sample.isel(year=i) for i in range(len(years))), select_bands=True
            ),
        )
        _warn_out_of_domain(spec, score)
        year = ds["urbanization_year"]
        # confidence of the final state (built-up or not) in the last year
        confidence = (
            ds["confidence"].isel(year=-1, drop=True)
            if "year" in ds["confidence"].dims
            else ds["confidence"]
        )
        attrs = {
            "method": spec.name,
            "weights_sha256": spec.sha256,
            "year_rule": ds.attrs["year_rule"],
            **_domain_attrs(score),
        }
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
    # `eo_pipeline:domain` of the Item (empty for a baseline): how far the inputs were from
    # the training data
    domain: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


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
    adapt: AdaptMode = "auto",
) -> xr.Dataset:
    """The bands of product `kind` (module docstring) from the composites `ref`, on `grid`.

    change: periods ``before``/``after`` of `ref`; footprint: `period`; dynamics: every annual
    period. `grid`: a pixel window of ``ref.grid`` (default all of it). `adapt`: change and
    footprint (`change_map`, `footprint_map`).
    """
    if kind == "change":
        return change_map(
            ref, model=model, threshold=threshold, device=device, grid=grid, adapt=adapt
        )
    if kind == "footprint":
        if period is None:
            raise InputError("period: a footprint needs the composite period to map.")
        return footprint_map(
            ref, period, model=model, threshold=threshold, device=device, grid=grid, adapt=adapt
        )
    if kind == "dynamics":
        return dynamics_map(ref, model=model, device=device, grid=grid)
    raise InputError(f"kind: {kind!r} is not one of 'change', 'footprint', 'dynamics'.")


_RGB = ("red", "green", "blue")


@dataclass(frozen=True)
class Backdrop:
    """The true-colour image under a tile's quicklook: the composites' GeoTIFF of one period
    (`path`), the tile's core in it (`window`, pixels) and its red, green, blue bands (1-based)."""

    path: str
    window: PixelWindow
    bands: tuple[int, int, int]


@dataclass(frozen=True)
class TileProduct:
    """The product bands of one tile's core, on disk: a float32 GeoTIFF on ``tile.core_grid``
    with one band per product variable (named in its description; NaN = no data).

    A small reference (thousands travel from the tile tasks to `publish_tiles`): what the
    publish needs of the tile's composites, not the composites' provenance."""

    path: str
    tile: Tile
    bands: tuple[str, ...]
    method: str  # how the product was made (``ds.attrs["method"]``), the same for every tile
    scene_ids: tuple[str, ...]  # input scenes of the tile's composites
    backdrop: Backdrop  # the quicklook's true-colour image
    domain: TileDomain | None = None  # a model's domain score on this tile (None: baseline)
    radiometry: TileRadiometry | None = None  # change: the after date's normalisation


@dataclass(frozen=True)
class TileDomain:
    """What `tasks.adapt` said of one tile: its domain score, the channel farthest off, and
    whether the change model was adapted on it. Kept in the tile file's tags."""

    score: float
    channel: str
    adapted: bool

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TileDomain | None:
        if "domain_score" not in attrs:
            return None
        return cls(
            float(attrs["domain_score"]),
            str(attrs["domain_channel"]),
            bool(int(attrs.get("adapted", 0))),
        )

    def tags(self) -> dict[str, str]:
        return {
            "domain_score": repr(self.score),
            "domain_channel": self.channel,
            "adapted": str(int(self.adapted)),
        }


@dataclass(frozen=True)
class TileRadiometry:
    """The relative radiometric normalisation of one change tile (`tasks.radnorm`): the
    method (or why none), bands, gain and offset per band (comma-separated), invariant pixels.
    Kept in the tile file's tags (their keys are `Normalization.attrs`')."""

    method: str
    bands: str
    gain: str
    offset: str
    stable_pixels: int

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TileRadiometry | None:
        if "radiometric_normalization" not in attrs:
            return None
        return cls(
            str(attrs["radiometric_normalization"]),
            str(attrs["normalization_bands"]),
            str(attrs["normalization_gain"]),
            str(attrs["normalization_offset"]),
            int(attrs["normalization_stable_pixels"]),
        )

    def tags(self) -> dict[str, str]:
        return {
            "radiometric_normalization": self.method,
            "normalization_bands": self.bands,
            "normalization_gain": self.gain,
            "normalization_offset": self.offset,
            "normalization_stable_pixels": str(self.stable_pixels),
        }

    @property
    def applied(self) -> bool:
        return not self.method.startswith("none")


def radiometry_properties(parts: Sequence[TileProduct]) -> dict[str, Any]:
    """The Item's ``eo_pipeline:radiometric_normalization`` from its change tiles: the method,
    how many tiles it was applied on, and per band the median gain and offset over them."""
    done = [p.radiometry for p in parts if p.radiometry is not None]
    if not done:
        return {}
    applied = [r for r in done if r.applied]
    out: dict[str, Any] = {
        "method": applied[0].method if applied else done[0].method,
        "target": "after",
        "reference": "before",
        "normalized_tiles": len(applied),
        "tiles": len(done),
    }
    if applied:
        gains = np.array([[float(v) for v in r.gain.split(",")] for r in applied])
        offsets = np.array([[float(v) for v in r.offset.split(",")] for r in applied])
        out["bands"] = applied[0].bands.split(",")
        out["gain"] = [round(float(v), 4) for v in np.median(gains, axis=0)]
        out["offset"] = [round(float(v), 4) for v in np.median(offsets, axis=0)]
        out["stable_pixels"] = sum(r.stable_pixels for r in applied)
    return {"eo_pipeline:radiometric_normalization": out}


def domain_properties(parts: Sequence[TileProduct]) -> dict[str, Any]:
    """The Item's ``eo_pipeline:domain`` from its tiles (the worst tile's score), or nothing
    for a baseline product."""
    scored = [p.domain for p in parts if p.domain is not None]
    if not scored:
        return {}
    worst = max(scored, key=lambda d: d.score)
    return {
        "eo_pipeline:domain": {
            "score": worst.score,
            "channel": worst.channel,
            "threshold": DOMAIN_WARN_SCORE,
            "out_of_domain": worst.score > DOMAIN_WARN_SCORE,
            "adapt_threshold": DOMAIN_ADAPT_SCORE,
            "adapted_tiles": sum(d.adapted for d in scored),
            "tiles": len(scored),
            "method": "rms over input channels of sqrt(mean^2 + ln(std)^2), in training "
            "standard deviations (tasks.adapt)",
        }
    }


def _tile_product(
    kind: str,
    path: Path,
    tile: Tile,
    bands: tuple[str, ...],
    method: str,
    ref: CompositeRef,
    period: str | None,
    domain: TileDomain | None = None,
    radiometry: TileRadiometry | None = None,
) -> TileProduct:
    label = {"change": "after", "footprint": period}.get(kind) or ref.periods[-1]
    r, g, b = (ref.bands.index(band) + 1 for band in _RGB)
    backdrop = Backdrop(str(ref.tif(label)), window_in(ref.grid, tile.core_grid), (r, g, b))
    # interned: the tiles of one AOI share their scenes' ids instead of a copy per tile
    scene_ids = tuple(sys.intern(s) for s in ref.scene_ids)
    return TileProduct(str(path), tile, bands, method, scene_ids, backdrop, domain, radiometry)


def _tile_path(
    kind: str,
    ref: CompositeRef,
    tile: Tile,
    *,
    model: str,
    threshold: float,
    period: str | None,
    cache_dir: Path,
    adapt: AdaptMode = "auto",
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
            "adapt": adapt if kind in ADAPTIVE_KINDS else None,
            "radiometry": RADNORM_METHOD if kind == "change" else None,
            "grid": [tile.grid.epsg, tile.grid.resolution, list(tile.grid.bounds)],
            "outer": astuple(tile.outer),
        },
        sort_keys=True,
    )
    key = hashlib.sha256(payload.encode()).hexdigest()[:20]
    return cache_dir / "tiles" / key / f"{tile.name}.tif"


def _write_tile(
    path: Path,
    bands: dict[str, np.ndarray],
    grid: GridSpec,
    *,
    method: str,
    domain: TileDomain | None = None,
    radiometry: TileRadiometry | None = None,
) -> None:
    """Write `bands` on `grid` as a float32 GeoTIFF, atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    # lossless: the mosaic is bit-identical to the arrays
    profile = grid.geotiff_profile(len(bands), nodata=float("nan"), compress="deflate")
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            for i, (name, values) in enumerate(bands.items(), start=1):
                dst.write(values.astype(np.float32, copy=False), i)
                dst.set_band_description(i, name)
            dst.update_tags(
                method=method,
                **(domain.tags() if domain else {}),
                **(radiometry.tags() if radiometry else {}),
            )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_tile(part: TileProduct, rows: slice, cols: slice) -> dict[str, np.ndarray]:
    """Rows and columns (of the tile's core) of each band of a tile's file."""
    with rasterio.open(part.path) as src:
        names = [str(d) for d in src.descriptions]
        if tuple(names) != part.bands or src.shape != (part.tile.core.height, part.tile.core.width):
            raise PipelineError(
                f"tile {part.tile.name}: {part.path} holds {names} {src.shape}, not "
                f"{list(part.bands)} on its core; it was overwritten or truncated: run again."
            )
        window = Window.from_slices(rows, cols)
        return {name: src.read(i + 1, window=window) for i, name in enumerate(names)}


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
    adapt: AdaptMode = "auto",
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
        adapt=adapt,
    )
    done = _read_tile_header(path, tile.core_grid)
    if done is not None:  # a rerun of the same inputs: the keyed file is complete, reuse it
        names, method, tags = done
        return _tile_product(
            kind,
            path,
            tile,
            names,
            method,
            ref,
            period,
            TileDomain.from_attrs(tags),
            TileRadiometry.from_attrs(tags),
        )
    ds = product_dataset(
        kind,
        ref,
        model=model,
        threshold=threshold,
        period=period,
        device=device,
        grid=tile.outer_grid,
        adapt=adapt,
    )
    bands = {str(k): crop_core(np.asarray(ds[k].values, dtype=np.float32), tile) for k in ds}
    method = str(ds.attrs["method"])
    domain = TileDomain.from_attrs(ds.attrs)
    radiometry = TileRadiometry.from_attrs(ds.attrs)
    _write_tile(path, bands, tile.core_grid, method=method, domain=domain, radiometry=radiometry)
    return _tile_product(kind, path, tile, tuple(bands), method, ref, period, domain, radiometry)


def _read_tile_header(
    path: Path, grid: GridSpec
) -> tuple[tuple[str, ...], str, dict[str, str]] | None:
    """(band names, method, tags) of a complete tile file on `grid`, or None (absent or not
    ours).

    Tile files are written atomically (temporary name, then rename), so one that exists with
    the expected shape and tags is complete.
    """
    if not path.is_file():
        return None
    try:
        with rasterio.open(path) as src:
            tags = src.tags()
            method = tags.get("method")
            names = tuple(str(d) for d in src.descriptions)
            if method is None or (src.height, src.width) != grid.shape or None in src.descriptions:
                return None
            return names, method, tags
    except rasterio.errors.RasterioIOError:
        return None


def _intersection(a: PixelWindow, b: PixelWindow) -> PixelWindow | None:
    row, col = max(a.row, b.row), max(a.col, b.col)
    height = min(a.row + a.height, b.row + b.height) - row
    width = min(a.col + a.width, b.col + b.width) - col
    return PixelWindow(row, col, height, width) if height > 0 and width > 0 else None


def _samples(n: int, size: int) -> np.ndarray:
    """`size` pixel indexes of an axis of `n`, nearest to evenly spaced centres (PIL's
    nearest-neighbour rule: ``floor((i + 0.5) * n / size)``)."""
    return np.floor((np.arange(size) + 0.5) * (n / size)).astype(np.int64)


class _Quicklook:
    """The quicklook of a mosaic, sampled while the mosaic is written: the product's mask
    (`overlay`) over the true-colour backdrop of its tiles, at the nearest pixels of at most
    `QUICKLOOK_PX` a side (every pixel when the grid is no larger)."""

    def __init__(self, grid: GridSpec) -> None:
        rows, cols = grid.shape
        scale = max(1.0, max(rows, cols) / QUICKLOOK_PX)
        self.rows = _samples(rows, max(1, round(rows / scale)))
        self.cols = _samples(cols, max(1, round(cols / scale)))
        self.rgb = np.full((3, self.rows.size, self.cols.size), np.nan, dtype=np.float32)
        self.mask = np.zeros((self.rows.size, self.cols.size), dtype=bool)

    def _at(self, w: PixelWindow) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sample positions inside `w`: (sample rows, sample cols, rows in w, cols in w)."""
        i = np.flatnonzero((self.rows >= w.row) & (self.rows < w.row + w.height))
        j = np.flatnonzero((self.cols >= w.col) & (self.cols < w.col + w.width))
        return i, j, self.rows[i] - w.row, self.cols[j] - w.col

    def add_backdrop(self, part: TileProduct, w: PixelWindow) -> None:
        """The backdrop of `part` in `w` (a window of the grid inside the tile's core)."""
        i, j, r, c = self._at(w)
        if not (i.size and j.size):
            return
        b = part.backdrop  # its window is the tile's core in the backdrop's file
        row = b.window.row + w.row - part.tile.core.row
        col = b.window.col + w.col - part.tile.core.col
        with rasterio.open(b.path) as src:
            rgb = src.read(list(b.bands), window=Window(col, row, w.width, w.height))
        self.rgb[np.ix_(np.arange(3), i, j)] = rgb[np.ix_(np.arange(3), r, c)]

    def add_product(self, w: PixelWindow, bands: dict[str, np.ndarray]) -> None:
        """The mapped pixels in window `w` of the mosaic."""
        i, j, r, c = self._at(w)
        if not (i.size and j.size):
            return
        if "binary" in bands:
            mask = bands["binary"][np.ix_(r, c)] > 0.5
        else:
            mask = np.isfinite(bands["urbanization_year"][np.ix_(r, c)])
        self.mask[np.ix_(i, j)] = mask

    def data_uri(self) -> str:
        return data_uri(overlay(rgb_quicklook(self.rgb, list(_RGB)), self.mask))


def _mosaic_windows(
    parts: Sequence[TileProduct],
    grid: GridSpec,
    names: tuple[str, ...],
    look: _Quicklook,
) -> Iterator[tuple[PixelWindow, dict[str, np.ndarray]]]:
    """The mosaic of the tiles' cores, window by window (`grid_windows`, `WINDOW_PX`), each
    read from the tiles' files. Pixels no tile covers (tiles left out of an irregular AOI) are
    NaN, ``count`` 0. Raises `PipelineError` when two cores overlap."""
    at: defaultdict[tuple[int, int], list[TileProduct]] = defaultdict(list)
    for part in parts:
        c = part.tile.core
        for i in range(c.row // WINDOW_PX, (c.row + c.height - 1) // WINDOW_PX + 1):
            for j in range(c.col // WINDOW_PX, (c.col + c.width - 1) // WINDOW_PX + 1):
                at[i, j].append(part)
    fill = {"count": 0.0}
    for w in grid_windows(grid, WINDOW_PX):
        out = {
            b: np.full((w.height, w.width), fill.get(b, np.nan), dtype=np.float32) for b in names
        }
        covered = np.zeros((w.height, w.width), dtype=bool)
        for part in at.pop((w.row // WINDOW_PX, w.col // WINDOW_PX), []):
            inter = _intersection(part.tile.core, w)
            if inter is None:
                continue
            here = (
                slice(inter.row - w.row, inter.row - w.row + inter.height),
                slice(inter.col - w.col, inter.col - w.col + inter.width),
            )
            if covered[here].any():
                raise PipelineError(f"tile {part.tile.name} overlaps another tile's core.")
            covered[here] = True
            core = part.tile.core
            values = _read_tile(
                part,
                slice(inter.row - core.row, inter.row - core.row + inter.height),
                slice(inter.col - core.col, inter.col - core.col + inter.width),
            )
            for band, v in values.items():
                out[band][here] = v
            look.add_backdrop(part, inter)
        look.add_product(w, out)
        yield w, out


def _mosaic_read(
    raster: RasterFile, names: Sequence[str]
) -> Iterator[tuple[PixelWindow, dict[str, np.ndarray]]]:
    """Bands `names` of `raster`, window by window (`grid_windows`); no data -> NaN."""
    index = [raster.bands.index(n) + 1 for n in names]
    with rasterio.open(raster.path) as src:
        for w in grid_windows(raster.grid, WINDOW_PX):
            window = Window(w.col, w.row, w.width, w.height)
            values = [src.read(i, window=window) for i in index]
            yield (
                w,
                {
                    n: np.where(v == raster.nodata, np.nan, v)
                    for n, v in zip(names, values, strict=True)
                },
            )


def _polygons(
    kind: ProductKind,
    raster: RasterFile,
    *,
    start: str,
    end: str,
    threshold: float,
    min_pixels: int,
) -> gpd.GeoDataFrame:
    """The product's polygons (`tasks.vectorize`: `change_polygons`, `footprint_polygons`,
    `dynamics_polygons`), vectorized window by window from the mosaic on disk."""
    grid = raster.grid
    if kind in ("change", "footprint"):
        patches = WindowedPolygonizer(grid, min_pixels=min_pixels)
        for w, b in _mosaic_read(raster, ["probability", "confidence"]):
            patches.add(w, binary_mask(b["probability"], threshold), b["confidence"])
        if kind == "change":
            return patches.result(
                {"period_start": iso_date(start, "start"), "period_end": iso_date(end, "end")}
            )
        return concat_frames([patches.result({"year": int(start[:4])})], grid)
    stats = raster.statistics[raster.bands.index("urbanization_year")]
    if stats is None:  # no pixel urbanized
        return WindowedPolygonizer(grid).result({"epoch_start": 0, "epoch_end": 0})
    origin, years = int(stats["minimum"]), DEFAULT_EPOCH_YEARS
    epochs: dict[int, WindowedPolygonizer] = {}
    for w, b in _mosaic_read(raster, ["urbanization_year", "confidence"]):
        epoch = epoch_index(b["urbanization_year"], origin, years)
        for k in np.unique(epoch[epoch >= 0]):
            patches = epochs.setdefault(int(k), WindowedPolygonizer(grid, min_pixels=min_pixels))
            patches.add(w, epoch == k, b["confidence"])
    frames = [
        epochs[k].result(
            {"epoch_start": origin + k * years, "epoch_end": origin + (k + 1) * years - 1}
        )
        for k in sorted(epochs)
    ]
    return concat_frames(frames, grid)


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
    adapt: AdaptMode = "auto",
) -> ProductSummary:
    """Mosaic the tiles' cores on their grid, vectorize the mosaic, publish it as one product
    (atomically, idempotently: `tasks.publish.publish_product`) and summarize it.

    Pixels of tiles left out (outside an irregular AOI) are NaN with ``count`` 0. A product of
    several tiles records ``tiling`` (tile size, halo, number of tiles) in its parameters, so
    it gets an id of its own: its composites were co-registered per tile. The mosaic is
    written, vectorized and published window by window (module docstring: memory).
    `period`: the composite period under the quicklook (footprint). Returns a `ProductSummary`
    (a `ProductRef` plus areas and a quicklook).
    """
    if not parts:
        raise InputError("parts: no tiles to publish.")
    grid = parts[0].tile.grid
    methods = {p.method for p in parts}
    if len(methods) != 1:
        raise PipelineError(f"tiles of one product were made by different methods: {methods}.")
    method = methods.pop()
    names = parts[0].bands
    for p in parts:
        if p.tile.grid != grid:
            raise PipelineError(f"tile {p.tile.name} belongs to {p.tile.grid}, not to {grid}.")
        if p.bands != names:
            raise PipelineError(
                f"tile {p.tile.name} has bands {list(p.bands)}, the others {list(names)}."
            )
    spec: WeightsSpec | str = resolve(model)[0] if model != BASELINE else f"{BASELINE}:{method}"
    params: dict[str, Any] = {"threshold": threshold, "min_pixels": min_pixels, "method": method}
    if kind in ADAPTIVE_KINDS and model != BASELINE:
        params["adapt"] = adapt
    if len(parts) > 1 or parts[0].tile.core != single_tile(grid).core:
        t = parts[0].tile
        params["tiling"] = {
            "tile_size_px": t.tile_size_px,
            "halo_px": t.halo_px,
            "tiles": len(parts),
        }
    scene_ids = list(dict.fromkeys(s for p in parts for s in p.scene_ids))
    properties = {**domain_properties(parts), **radiometry_properties(parts)}
    look = _Quicklook(grid)
    with local_workdir() as work:
        raster = write_raster(
            work / "mosaic.tif", grid, names, _mosaic_windows(parts, grid, names, look)
        )
        gdf = _polygons(
            kind, raster, start=start, end=end, threshold=threshold, min_pixels=min_pixels
        )
        product = publish_product(
            kind,
            raster,
            gdf,
            grid=grid,
            scene_ids=scene_ids,
            model=spec,
            params=params,
            start=start,
            end=end,
            output_url=output_url,
            properties=properties,
        )
    lonlat = reproject_geometry(box(*grid.bounds), grid.epsg, 4326).bounds
    return ProductSummary(
        product=product,
        kind=kind,
        start=start,
        end=end,
        areas=tuple(_areas(kind, gdf)),
        quicklook=look.data_uri(),
        bounds=(lonlat[0], lonlat[1], lonlat[2], lonlat[3]),
        geojson=json.loads(gdf.to_crs(4326).to_json())
        if len(gdf)
        else {"type": "FeatureCollection", "features": []},
        domain=dict(properties.get("eo_pipeline:domain", {})),
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
    adapt: AdaptMode = "auto",
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
        adapt=adapt,
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
        adapt=adapt,
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
    adapt: AdaptMode = "auto",
) -> TileProduct:
    """One tile, start to end on the worker that runs it: the composites of its outer window
    (`tasks.ard.make_composites`, a nested task run) and its product (`make_tile_product`).

    Composites and model stay on one machine (no composite crosses the network); their dask
    graphs compute on this process's threads (`tasks.tiling.local_dask_scheduler`).
    """
    with local_dask_scheduler():
        ref = make_composites(scenes, tile.outer_grid, periods)
        return make_tile_product(
            kind,
            ref,
            tile,
            model=model,
            threshold=threshold,
            period=period,
            device=device,
            adapt=adapt,
        )


publish_tiles_task = task(name="publish-mosaic", cache_policy=NO_CACHE, tags=["io"])(publish_tiles)

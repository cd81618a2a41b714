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
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import xarray as xr
from prefect import task
from prefect.cache_policies import NO_CACHE
from shapely.geometry import box

from models.baselines import breakpoint_year, builtup_rule, change_vector_analysis
from models.registry import load_model, resolve
from models.spec import WeightsSpec
from tasks.aoi import reproject_geometry
from tasks.ard import CompositeRef, read_composite
from tasks.errors import InputError
from tasks.infer import predict_change, predict_dynamics, predict_footprint, resolve_device
from tasks.publish import ProductKind, ProductRef, publish_product
from tasks.report import data_uri, overlay, rgb_quicklook
from tasks.vectorize import change_polygons, dynamics_polygons, footprint_polygons

__all__ = [
    "BASELINE",
    "ProductSummary",
    "change_map",
    "dynamics_map",
    "footprint_map",
    "make_product",
    "product_task",
]

BASELINE = "baseline"


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold: {threshold} is outside (0, 1); use a probability.")


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
) -> xr.Dataset:
    """Change between periods `before` and `after` of `ref`.

    Baseline: change vector analysis with Otsu's threshold; ``probability`` is its score
    (0.5 at the Otsu threshold) and `threshold` applies to that score.
    """
    _check_threshold(threshold)
    b, count_b = read_composite(ref, before)
    a, count_a = read_composite(ref, after)
    count = xr.where(count_b < count_a, count_b, count_a)
    attrs: dict[str, Any]
    if model == BASELINE:
        cva = change_vector_analysis(b, a)
        prob = cva["score"].where(cva["valid"])
        attrs = {"method": "cva-otsu", "otsu_threshold": float(cva.attrs["threshold"])}
        confidence = _margin_confidence(prob, threshold).where(cva["valid"])
    else:
        net, spec = load_model(model, device=resolve_device(device))
        ds = predict_change(net, spec, b, a, device=device, select_bands=True)
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
) -> xr.Dataset:
    """Built-up footprint of `period` of `ref`.

    Baseline: the NDBI/NDVI/MNDWI rule (`models.baselines.builtup_rule`); ``probability`` is
    its 0/1 decision and ``confidence`` grows with the distance of NDBI - NDVI from 0.
    """
    _check_threshold(threshold)
    comp, count = read_composite(ref, period)
    attrs: dict[str, Any]
    if model == BASELINE:
        rule = builtup_rule(comp)
        prob = rule["built"].astype("float32").where(rule["valid"])
        margin = (abs(rule["bu"]) / 0.5).clip(0.0, 1.0)  # |NDBI - NDVI| of 0.5 = certain
        confidence = (0.5 + 0.5 * margin).astype("float32").where(rule["valid"])
        attrs = {"method": "ndbi-rule"}
    else:
        net, spec = load_model(model, device=resolve_device(device))
        ds = predict_footprint(net, spec, comp, device=device, select_bands=True)
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
    ref: CompositeRef, *, model: str = BASELINE, device: str | None = None
) -> xr.Dataset:
    """Year of urbanization from the annual composites of `ref` (periods are years).

    Baseline: the breakpoint of NDBI - NDVI (`models.baselines.breakpoint_year`);
    ``confidence`` grows with the size of the step (a rise of 0.6 = certain).
    """
    years = [p for p in ref.periods if p.isdigit()]
    if len(years) < 3:
        raise InputError(f"dynamics needs >= 3 annual composites; {ref.path} has {ref.periods}.")
    layers, counts = [], []
    for y in years:
        refl, count = read_composite(ref, y)
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
        net, spec = load_model(model, device=resolve_device(device))
        ds = predict_dynamics(net, spec, annual, device=device, select_bands=True)
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
    """Map `kind` from the composites `ref`, vectorize it, publish it (atomically, idempotently).

    change: periods ``before``/``after`` of `ref`; footprint: `period`; dynamics: every annual
    period. Returns a `ProductSummary` (a `ProductRef` plus areas and a quicklook).
    """
    grid = ref.grid
    if kind == "change":
        ds = change_map(ref, model=model, threshold=threshold, device=device)
        gdf = change_polygons(
            ds["probability"].values,
            grid,
            start=start,
            end=end,
            confidence=ds["confidence"].values,
            threshold=threshold,
            min_pixels=min_pixels,
        )
        backdrop, _ = read_composite(ref, "after")
    elif kind == "footprint":
        if period is None:
            raise InputError("period: a footprint needs the composite period to map.")
        ds = footprint_map(ref, period, model=model, threshold=threshold, device=device)
        year = int(start[:4])
        gdf = footprint_polygons(
            ds["probability"].values,
            grid,
            years=[year],
            confidence=ds["confidence"].values,
            threshold=threshold,
            min_pixels=min_pixels,
        )
        backdrop, _ = read_composite(ref, period)
    else:
        ds = dynamics_map(ref, model=model, device=device)
        gdf = dynamics_polygons(
            ds["urbanization_year"].values,
            grid,
            confidence=ds["confidence"].values,
            min_pixels=min_pixels,
        )
        backdrop, _ = read_composite(ref, ref.periods[-1])
    rasters = {str(k): np.asarray(ds[k].values, dtype=np.float32) for k in ds.data_vars}
    spec: WeightsSpec | str = (
        resolve(model)[0] if model != BASELINE else f"{BASELINE}:{ds.attrs['method']}"
    )
    params = {"threshold": threshold, "min_pixels": min_pixels, "method": ds.attrs["method"]}
    product = publish_product(
        kind,
        rasters,
        gdf,
        grid=grid,
        scene_ids=list(ref.scene_ids),
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
    image = overlay(rgb_quicklook(backdrop.values, [str(b) for b in backdrop["band"].values]), mask)
    footprint = box(*grid.bounds)
    lonlat = reproject_geometry(footprint, grid.epsg, 4326).bounds
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
# Inputs are references (a CompositeRef, names, numbers); the output a small summary.
product_task = task(name="make-product", cache_policy=NO_CACHE, tags=["inference", "io"])(
    make_product
)

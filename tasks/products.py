"""Product maps from composites: the DL model or its classical baseline, in one shape.

Every product is an ``xr.Dataset`` on the composites' grid with the bands that get published:

| product   | variables                                                                  |
|-----------|----------------------------------------------------------------------------|
| change    | ``probability`` (P(change)), ``change`` (0/1), ``confidence``, ``count``   |
| footprint | ``probability`` (P(built-up)), ``built`` (0/1), ``confidence``, ``count``  |
| dynamics  | ``year`` (year of urbanization, NaN = none), ``confidence``, ``count``     |

``count`` is the number of valid observations behind each pixel (the smaller of the two dates
for change; the number of observed years for dynamics). ``confidence`` is the calibrated
probability of the predicted class for the models (`tasks.infer`); for the baselines, which
have no probability, it is the margin to the decision threshold scaled to 0.5-1 (documented in
each function) — a ranking, not a calibrated probability. ``model="baseline"`` selects the
baseline; any other name is looked up in the weights registry (sha256 and bands checked).
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from models.baselines import breakpoint_year, builtup_rule, change_vector_analysis
from models.registry import load_model
from tasks.ard import CompositeRef, read_composite
from tasks.errors import InputError
from tasks.infer import predict_change, predict_dynamics, predict_footprint, resolve_device

__all__ = ["BASELINE", "change_map", "dynamics_map", "footprint_map"]

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
    return _binary_product(prob, confidence, count, threshold, "change", attrs)


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
    return _binary_product(prob, confidence, count, threshold, "built", attrs)


def _binary_product(
    prob: xr.DataArray,
    confidence: xr.DataArray,
    count: xr.DataArray,
    threshold: float,
    name: str,
    attrs: dict[str, Any],
) -> xr.Dataset:
    valid = prob.notnull()
    decision = (prob >= threshold).where(valid).astype("float32")
    return xr.Dataset(
        {
            "probability": prob.astype("float32"),
            name: decision,
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
            "year": year.astype("float32"),
            "confidence": confidence.astype("float32"),
            "count": observed_years,
        },
        attrs={**attrs, "first_year": int(years[0]), "last_year": int(years[-1])},
    )

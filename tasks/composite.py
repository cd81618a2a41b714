"""Composites: one clear-sky image per period (month, season, year, or explicit date ranges).

Input is a masked (and usually harmonized) stack: ``xr.DataArray`` with dims
``(time, band, y, x)``, float32 reflectance with NaN wherever a pixel is not a clear observation
(`tasks.cloudmask.mask_stack` does that). Output is an ``xr.Dataset``:

- ``reflectance``: float32 ``(period, band, y, x)``, the per-pixel composite;
- ``count``: int16 ``(period, y, x)``, the valid observations that went into it;
- coords ``period`` (label), ``start`` (inclusive) and ``end`` (exclusive) datetime64 per period,
  plus the stack's ``band``, ``y``, ``x`` and attributes (CRS etc.).

An observation counts for a pixel when *every* band is finite there, so all bands of a composite
come from the same set of observations and ``count`` describes them all.

Memory: for each period the stack's scenes of that period are gathered into one time chunk and
re-chunked in space so that one chunk holds at most `max_chunk_mib` MiB; the reduction runs chunk
by chunk (`xr.apply_ufunc`, ``dask="parallelized"``). Nothing is computed until the caller asks,
so decades of scenes take as much memory as a few chunks.

No valid observation in a period (no scene, or all cloudy) gives NaN and ``count`` 0 for those
pixels, never an error. A period with one scene gives that scene's clear pixels (count 0 or 1).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal, TypeAlias

import numpy as np
import pandas as pd
import xarray as xr
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.errors import InputError

__all__ = [
    "GROWING_SEASON",
    "Period",
    "annual_composites",
    "build_composites",
    "composite",
    "composite_pair",
    "growing_season",
    "make_annual_composites",
    "make_composite_pair",
    "medoid",
    "nanmedian",
    "parse_periods",
]

log = logging.getLogger(__name__)

DateLike: TypeAlias = str | date | datetime | pd.Timestamp | np.datetime64
DateRange: TypeAlias = tuple[DateLike, DateLike]
PeriodSpec: TypeAlias = (
    Literal["month", "season", "year"] | Sequence[DateRange] | Mapping[str, DateRange]
)
Method = Literal["median", "medoid"]

#: Default memory budget of one input chunk (time x band x y x x float32) in MiB. The median
#: sorts a copy, so a worker needs about 3x this per thread.
MAX_CHUNK_MIB = 64.0

#: Meteorological seasons; DJF is labelled with the year of its January.
_SEASONS = {12: "DJF", 1: "DJF", 2: "DJF", 3: "MAM", 4: "MAM", 5: "MAM"}
_SEASONS |= {6: "JJA", 7: "JJA", 8: "JJA", 9: "SON", 10: "SON", 11: "SON"}
_SEASON_START = {"DJF": 12, "MAM": 3, "JJA": 6, "SON": 9}

_MASK_BANDS = ("scl", "qa_pixel")

#: The growing season of the mid-latitudes, (first, last) day as MM-DD, inclusive: 1 April to
#: 31 October. The change product compares one season with another (the monitor flow's default,
#: and what the change model is trained on): winter scenes (snow, low sun, bare fields) would
#: make a composite's phenology depend on which months happened to be clear.
GROWING_SEASON: tuple[str, str] = ("04-01", "10-31")


def growing_season(year: int) -> tuple[str, str]:
    """The `GROWING_SEASON` of `year` as an inclusive (start, end) pair of ISO dates."""
    first, last = GROWING_SEASON
    return (f"{year:04d}-{first}", f"{year:04d}-{last}")


@dataclass(frozen=True)
class Period:
    """A compositing period: scenes with ``start <= time < end`` (naive UTC)."""

    label: str
    start: pd.Timestamp
    end: pd.Timestamp


# ---- period parsing -------------------------------------------------------------------------
def _timestamp(value: DateLike, what: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as err:
        raise InputError(
            f"{what}: {value!r} is not a date; use ISO 8601, e.g. 2020-06-01."
        ) from err
    if ts is pd.NaT:
        raise InputError(f"{what}: got an empty date (NaT); give ISO 8601, e.g. 2020-06-01.")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def _date_range_period(label: str, rng: DateRange) -> Period:
    if not (isinstance(rng, Sequence) and not isinstance(rng, str) and len(rng) == 2):
        raise InputError(f"period {label!r}: expected a (start, end) pair, got {rng!r}.")
    start = _timestamp(rng[0], f"period {label!r} start")
    end = _timestamp(rng[1], f"period {label!r} end")
    # An end given as a date (midnight) means "up to and including that day".
    end_excl = end + pd.Timedelta(days=1) if end == end.normalize() else end
    if end_excl <= start:
        raise InputError(f"period {label!r}: end {rng[1]!r} is before start {rng[0]!r}; swap them.")
    return Period(label, start, end_excl)


def parse_periods(period: PeriodSpec, times: Sequence[np.datetime64] | np.ndarray) -> list[Period]:
    """The periods of a composite.

    `period`: ``"month"``, ``"season"`` (DJF/MAM/JJA/SON, DJF labelled with its January's year) or
    ``"year"`` — every such period from the first to the last of `times`, including empty ones —
    or explicit ranges: a sequence of ``(start, end)`` (labelled ``start/end``) or a mapping
    ``label -> (start, end)``. Explicit dates are inclusive: ``("2020-01-01", "2020-12-31")``
    is the whole of 2020. Raises `InputError` for an unknown keyword, a bad date, end < start.
    """
    if isinstance(period, str):
        if period not in ("month", "season", "year"):
            raise InputError(
                f"period must be 'month', 'season', 'year' or (start, end) ranges, got {period!r}."
            )
        stamps = pd.DatetimeIndex(np.asarray(times, dtype="datetime64[ns]"))
        if len(stamps) == 0:
            raise InputError(
                f"period={period!r} takes its range from the scenes, and the stack has none; "
                "give explicit (start, end) ranges or a non-empty stack."
            )
        return _calendar_periods(period, stamps.min(), stamps.max())
    if isinstance(period, Mapping):
        items = [(str(k), v) for k, v in period.items()]
    elif isinstance(period, Sequence):
        items = []
        for rng in period:
            if isinstance(rng, Sequence) and not isinstance(rng, str) and len(rng) == 2:
                items.append((f"{_label_date(rng[0])}/{_label_date(rng[1])}", rng))
            else:
                raise InputError(f"period: expected (start, end) pairs, got {rng!r}.")
    else:
        raise InputError(f"period: unsupported type {type(period).__name__}.")
    if not items:
        raise InputError("period: no ranges given; give at least one (start, end).")
    labels = [lab for lab, _ in items]
    if len(set(labels)) != len(labels):
        raise InputError(f"period: labels must be unique, got {labels}.")
    return [_date_range_period(lab, rng) for lab, rng in items]


def _label_date(value: DateLike) -> str:
    if isinstance(value, str):
        return value
    ts = _timestamp(value, "period date")
    return ts.date().isoformat() if ts == ts.normalize() else ts.isoformat()


def _calendar_periods(kind: str, first: pd.Timestamp, last: pd.Timestamp) -> list[Period]:
    out: list[Period] = []
    if kind == "year":
        for y in range(first.year, last.year + 1):
            out.append(Period(str(y), pd.Timestamp(y, 1, 1), pd.Timestamp(y + 1, 1, 1)))
    elif kind == "month":
        for p in pd.period_range(first.to_period("M"), last.to_period("M"), freq="M"):
            start = p.start_time
            out.append(Period(str(p), start, start + pd.DateOffset(months=1)))
    else:
        season, year = _season_of(first)
        while True:
            m0 = _SEASON_START[season]
            start = pd.Timestamp(year - 1 if m0 == 12 else year, m0, 1)
            end = start + pd.DateOffset(months=3)
            out.append(Period(f"{year}-{season}", start, end))
            if end > last:
                break
            season, year = _season_of(end)
    return out


def _season_of(ts: pd.Timestamp) -> tuple[str, int]:
    season = _SEASONS[ts.month]
    return season, ts.year + 1 if ts.month == 12 else ts.year


# ---- per-chunk reducers ---------------------------------------------------------------------
def _valid_obs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (..., time, band) -> (x with invalid observations all-NaN, valid (..., time))."""
    valid = np.isfinite(x).all(axis=-1)
    return np.where(valid[..., None], x, np.nan).astype(x.dtype, copy=False), valid


def nanmedian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median over time of valid observations. `x`: (..., time, band) -> ((..., band), count).

    Same result as ``np.nanmedian`` (mean of the two middle values for an even count), written by
    hand because ``np.nanmedian`` goes through masked arrays and is ~8x slower here: one sort
    (NaN sorts last) and two gathers at the middle ranks of each pixel's valid count.
    """
    x, valid = _valid_obs(x)
    n = valid.sum(axis=-1)  # (...)
    xs = np.sort(np.swapaxes(x, -1, -2), axis=-1)  # (..., band, time), NaN last
    lo = np.maximum(n - 1, 0) // 2
    hi = n // 2
    hi = np.minimum(hi, max(x.shape[-2] - 1, 0))
    if x.shape[-2] == 0:
        med = np.full(x.shape[:-2] + x.shape[-1:], np.nan, x.dtype)
    else:
        a = np.take_along_axis(xs, lo[..., None, None], axis=-1)[..., 0]
        b = np.take_along_axis(xs, hi[..., None, None], axis=-1)[..., 0]
        med = np.where(n[..., None] > 0, (a + b) / 2, np.nan).astype(x.dtype)
    return med, n.astype(np.int16)


def medoid(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Medoid over time. `x`: (..., time, band) -> ((..., band), count).

    The medoid is the valid observation whose summed Euclidean distance (over bands) to every
    other valid observation of the pixel is smallest (Flood 2013, "Seasonal composite Landsat
    TM/ETM+ images using the medoid (a multi-dimensional median)", Remote Sens. 5:6481-6500).
    Unlike the median it is a real observation, so band ratios stay physical. Ties go to the
    earliest observation. Cost O(time² x band) per pixel; memory O(time x band) per pixel.
    """
    x, valid = _valid_obs(x)
    n = valid.sum(axis=-1)
    t, nb = x.shape[-2], x.shape[-1]
    lead = x.shape[:-2]
    if t == 0:
        return np.full((*lead, nb), np.nan, x.dtype), n.astype(np.int16)
    # Pixels last and contiguous, (time, band, pixel): each step below is a long vector op.
    flat = np.ascontiguousarray(np.nan_to_num(x).reshape(-1, t, nb).transpose(1, 2, 0))
    ok = valid.reshape(-1, t).T  # (time, pixel)
    total = np.empty((t, flat.shape[-1]), np.float32)
    sq = np.empty((t, flat.shape[-1]), np.float32)
    for i in range(t):
        sq.fill(0.0)
        for b in range(nb):
            diff = flat[:, b, :] - flat[i, b, :]
            sq += diff * diff
        np.sqrt(sq, out=sq)
        total[i] = np.where(ok, sq, 0.0).sum(axis=0)
    total[~ok] = np.inf
    best = np.argmin(total, axis=0).reshape(lead)  # first minimum: ties go to the earliest
    pick = np.take_along_axis(x, best[..., None, None], axis=-2)[..., 0, :]
    out = np.where(n[..., None] > 0, pick, np.nan).astype(x.dtype)
    return out, n.astype(np.int16)


_REDUCERS = {"median": nanmedian, "medoid": medoid}


def _reduce_block(x: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels are expected
        return _REDUCERS[method](x)


# ---- composites -----------------------------------------------------------------------------
def _spatial_chunk(n_time: int, n_band: int, ny: int, nx: int, max_chunk_mib: float) -> int:
    per_pixel = max(n_time, 1) * n_band * 4
    side = int(math.sqrt(max_chunk_mib * 2**20 / per_pixel))
    return max(16, min(side, max(ny, nx)))


def _check_stack(stack: xr.DataArray) -> None:
    missing = {"time", "band", "y", "x"} - set(stack.dims)
    if missing:
        raise InputError(f"the stack needs dims (time, band, y, x); it lacks {sorted(missing)}.")
    masks = [b for b in _MASK_BANDS if b in [str(v) for v in stack["band"].values]]
    if masks:
        raise InputError(
            f"the stack still has mask bands {masks}; mask it first "
            "(tasks.cloudmask.mask_stack), which drops them."
        )
    if stack.sizes["time"] == 0:
        raise InputError(
            "the stack has no scenes, so there is nothing to composite; widen the dates, add "
            "collections, or lower min_clear_fraction."
        )


def _period_composite(
    stack: xr.DataArray, idx: np.ndarray, method: str, max_chunk_mib: float
) -> tuple[xr.DataArray, xr.DataArray]:
    template = stack.isel(time=0, drop=True).drop_vars(
        [c for c in stack.coords if "time" in stack[c].dims], errors="ignore"
    )
    if idx.size == 0:
        refl = xr.full_like(template, np.nan, dtype=np.float32)
        count = xr.zeros_like(template.isel(band=0, drop=True), dtype=np.int16)
        return refl, count
    sub = stack.isel(time=idx).drop_vars(
        [c for c in stack.coords if c != "time" and "time" in stack[c].dims]
    )
    side = _spatial_chunk(
        idx.size, stack.sizes["band"], stack.sizes["y"], stack.sizes["x"], max_chunk_mib
    )
    # Wraps a numpy-backed stack in dask too: the reduction always runs chunk by chunk.
    sub = sub.chunk({"time": -1, "band": -1, "y": side, "x": side})
    refl, count = xr.apply_ufunc(
        _reduce_block,
        sub.astype(np.float32),
        input_core_dims=[["time", "band"]],
        output_core_dims=[["band"], []],
        dask="parallelized",
        output_dtypes=[np.float32, np.int16],
        kwargs={"method": method},
    )
    return refl.transpose("band", "y", "x"), count.transpose("y", "x")


def build_composites(
    stack: xr.DataArray,
    periods: Sequence[Period],
    *,
    method: Method = "median",
    max_chunk_mib: float = MAX_CHUNK_MIB,
) -> xr.Dataset:
    """Composite `stack` over already-parsed `periods` (see `composite` for the contract)."""
    _check_stack(stack)
    if method not in _REDUCERS:
        raise InputError(f"method must be one of {sorted(_REDUCERS)}, got {method!r}.")
    if max_chunk_mib <= 0:
        raise InputError(f"max_chunk_mib must be > 0, got {max_chunk_mib}.")
    if not periods:
        raise InputError("no periods to composite; give at least one.")
    times = pd.DatetimeIndex(np.asarray(stack["time"].values, dtype="datetime64[ns]"))
    refls, counts = [], []
    for p in periods:
        idx = np.flatnonzero((times >= p.start) & (times < p.end))
        if idx.size <= 1:
            log.info("period %s has %d scene(s)", p.label, idx.size)
        r, c = _period_composite(stack, idx, method, max_chunk_mib)
        refls.append(r)
        counts.append(c)
    period_coords = {
        "period": [p.label for p in periods],
        "start": ("period", np.array([p.start for p in periods], dtype="datetime64[ns]")),
        "end": ("period", np.array([p.end for p in periods], dtype="datetime64[ns]")),
    }
    refl = xr.concat(refls, dim="period", coords="minimal", compat="override", join="override")
    count = xr.concat(counts, dim="period", coords="minimal", compat="override", join="override")
    ds = xr.Dataset(
        {
            "reflectance": refl.transpose("period", "band", "y", "x"),
            "count": count.transpose("period", "y", "x"),
        }
    ).assign_coords(period_coords)
    ds.attrs = dict(stack.attrs)
    ds.attrs["composite_method"] = method
    ds["count"].attrs["long_name"] = "valid observations per pixel"
    ds["reflectance"].attrs["long_name"] = f"{method} clear-sky composite"
    return ds


def composite(
    stack: xr.DataArray,
    *,
    period: PeriodSpec = "year",
    method: Method = "median",
    max_chunk_mib: float = MAX_CHUNK_MIB,
) -> xr.Dataset:
    """Clear-sky composite per period, lazily.

    `stack`: masked reflectance, dims ``(time, band, y, x)`` (NaN = not a clear observation),
    no mask bands left. `period`: see `parse_periods`. `method`: ``"median"`` (per band, over the
    observations valid in all bands) or ``"medoid"`` (see `medoid`).

    Returns an ``xr.Dataset`` with ``reflectance`` float32 ``(period, band, y, x)`` and ``count``
    int16 ``(period, y, x)``, coords ``period``/``start``/``end`` (end exclusive). Periods or
    pixels without a valid observation are NaN with count 0. A one-scene stack gives that scene
    (count 0/1). Raises `InputError` for an empty stack (nothing to composite: widen the dates),
    mask bands still present, or a bad `period`/`method`.
    """
    _check_stack(stack)
    periods = parse_periods(period, stack["time"].values)
    return build_composites(stack, periods, method=method, max_chunk_mib=max_chunk_mib)


def annual_composites(
    stack: xr.DataArray,
    *,
    years: Sequence[int] | range | None = None,
    method: Method = "median",
    max_chunk_mib: float = MAX_CHUNK_MIB,
) -> xr.Dataset:
    """One composite per calendar year (the decadal model's input), lazily.

    `years`: e.g. ``range(1985, 2026)``; default every year from the first to the last scene.
    Years without a scene are NaN with count 0. Period labels are ``"1985"``, ...
    """
    if years is None:
        return composite(stack, period="year", method=method, max_chunk_mib=max_chunk_mib)
    ys = [int(y) for y in years]
    if not ys:
        raise InputError("years is empty; give e.g. range(1985, 2026).")
    bad = [y for y in ys if not 1972 <= y <= 2200]  # Landsat 1 launched in 1972
    if bad:
        raise InputError(f"years {bad} are outside 1972..2200; give calendar years.")
    periods = [Period(str(y), pd.Timestamp(y, 1, 1), pd.Timestamp(y + 1, 1, 1)) for y in ys]
    return build_composites(stack, periods, method=method, max_chunk_mib=max_chunk_mib)


def composite_pair(
    stack: xr.DataArray,
    *,
    before: DateRange,
    after: DateRange,
    method: Method = "median",
    max_chunk_mib: float = MAX_CHUNK_MIB,
) -> xr.Dataset:
    """Bi-temporal composites for change detection: periods ``"before"`` and ``"after"``.

    `before`, `after`: inclusive ``(start, end)`` dates; they must not overlap and `before` must
    come first (`InputError` otherwise). A side without any clear observation is NaN with count
    0: check ``count`` before trusting a change.
    """
    b = _date_range_period("before", before)
    a = _date_range_period("after", after)
    if b.end > a.start:
        raise InputError(
            f"before {before!r} and after {after!r} overlap or are in the wrong order; "
            "the before range must end before the after range starts."
        )
    return build_composites(stack, [b, a], method=method, max_chunk_mib=max_chunk_mib)


# ---- Prefect tasks -------------------------------------------------------
# Inputs are lazy stacks: hashing them for a cache key would read the data, so no caching here.
@task(name="annual-composites", cache_policy=NO_CACHE, persist_result=False, tags=["cpu"])
def make_annual_composites(
    stack: xr.DataArray,
    *,
    years: Sequence[int] | None = None,
    method: Method = "median",
    max_chunk_mib: float = MAX_CHUNK_MIB,
) -> xr.Dataset:
    """Prefect task around `annual_composites` (returns a lazy dataset)."""
    ds = annual_composites(stack, years=years, method=method, max_chunk_mib=max_chunk_mib)
    get_run_logger().info("annual composites: %d years, method=%s", ds.sizes["period"], method)
    return ds


@task(name="composite-pair", cache_policy=NO_CACHE, persist_result=False, tags=["cpu"])
def make_composite_pair(
    stack: xr.DataArray,
    *,
    before: DateRange,
    after: DateRange,
    method: Method = "median",
    max_chunk_mib: float = MAX_CHUNK_MIB,
) -> xr.Dataset:
    """Prefect task around `composite_pair` (returns a lazy dataset)."""
    ds = composite_pair(
        stack, before=before, after=after, method=method, max_chunk_mib=max_chunk_mib
    )
    get_run_logger().info("composite pair before=%s after=%s method=%s", before, after, method)
    return ds

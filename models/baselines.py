"""Classical, training-free baselines: product options and yardsticks for the learned models.

| function                 | product   | method                                                  |
|--------------------------|-----------|---------------------------------------------------------|
| `change_vector_analysis` | change    | magnitude of the spectral change vector (Malila 1980),  |
|                          |           | thresholded by Otsu's method (Otsu 1979)                |
| `builtup_rule`           | footprint | NDBI > 0 and NDVI < 0.2 and MNDWI < 0 (Zha et al. 2003; |
|                          |           | Sobrino et al. 2004; Xu 2006)                           |
| `breakpoint_year`        | dynamics  | single mean-shift breakpoint of the built-up index      |
|                          |           | ``bu = NDBI - NDVI`` over annual composites             |
| `slow_feature_analysis`  | change    | iterative slow feature analysis (ISFA, Wu et al. 2014): |
|                          |           | unsupervised, invariant to a linear radiometric change  |
|                          |           | between the dates; the seed of run-time adaptation      |

Inputs follow the analysis-ready contract: composites are ``xr.DataArray`` float reflectance
with dims ``(band, y, x)`` (annual: ``(year|period, band, y, x)``), common band names
(`tasks.harmonize.HARMONIZED_BANDS`), NaN where there is no valid observation. Outputs are
``xr.Dataset`` on the same ``y``/``x`` grid (coords and attrs kept) with a ``valid`` mask; they
stay lazy when the input is a dask array (only `change_vector_analysis`'s threshold is computed
eagerly, from a histogram, so memory stays bounded).

References: Malila 1980, "Change vector analysis: an approach for detecting forest changes with
Landsat", LARS Symposia 385; Otsu 1979, IEEE Trans. SMC 9:62; Zha, Gao & Ni 2003, Int. J. Remote
Sens. 24:583; Sobrino, Jiménez-Muñoz & Paolini 2004, Remote Sens. Environ. 90:434; Xu 2006,
Int. J. Remote Sens. 27:3025.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as dsa
import numpy as np
import xarray as xr
from scipy.linalg import eigh
from scipy.stats import chi2
from skimage.filters import threshold_otsu

from models.features import NORMALIZED_DIFFERENCES, annual_axis, normalized_difference
from tasks.errors import InputError

__all__ = [
    "BREAK_MIN_OBS",
    "BREAK_MIN_STEP",
    "MNDWI_MAX",
    "NDBI_MIN",
    "NDVI_MAX",
    "OTSU_BINS",
    "RIDGE",
    "annual_axis",
    "breakpoint_year",
    "builtup_rule",
    "change_vector_analysis",
    "mean_shift_breakpoint",
    "slow_feature_analysis",
]

#: Histogram bins for Otsu's threshold (scikit-image's default ``nbins``).
OTSU_BINS = 256
#: Built-up when NDBI is positive (Zha, Gao & Ni 2003, Section 3: built-up areas have NDBI > 0).
NDBI_MIN = 0.0
#: ... and not vegetated: NDVI < 0.2 is bare soil / non-vegetated (Sobrino et al. 2004, Sec. 3.1).
NDVI_MAX = 0.2
#: ... and not open water: MNDWI > 0 is water (Xu 2006, Section 3).
MNDWI_MAX = 0.0
#: Minimum rise of ``bu = NDBI - NDVI`` for a breakpoint to count as urbanization. Green
#: vegetation has bu ~ -1.1 and concrete or asphalt ~ +0.1 (band integrals of the USGS splib07
#: approximations in `tasks.synthetic.spectra`), so 0.3 is a quarter of a full conversion:
#: it keeps pixels that became ~30 % built-up and rejects inter-annual noise of stable pixels.
BREAK_MIN_STEP = 0.3
#: Ridge added to the (standardised, unit-diagonal) covariance of slow feature analysis.
RIDGE = 1e-6
#: Valid years required on each side of a breakpoint (1 would let a single noisy year decide).
BREAK_MIN_OBS = 2


def _grid_coords(da: xr.DataArray) -> dict[str, xr.DataArray]:
    """Coordinates of `da` that live on the (y, x) grid only (x, y, spatial_ref, ...)."""
    return {str(k): v for k, v in da.coords.items() if set(v.dims) <= {"y", "x"}}


def _as_bxy(da: xr.DataArray, name: str) -> xr.DataArray:
    missing = {"band", "y", "x"} - set(da.dims)
    if missing or da.ndim != 3:
        raise InputError(f"{name} must have dims (band, y, x); it has {da.dims}.")
    return da.transpose("band", "y", "x")


def _bands(da: xr.DataArray) -> list[str]:
    return [str(b) for b in da["band"].values] if "band" in da.coords else []


def change_vector_analysis(
    before: xr.DataArray,
    after: xr.DataArray,
    *,
    bands: Sequence[str] | None = None,
    threshold: float | None = None,
) -> xr.Dataset:
    """Change vector analysis: ``|after - before|`` over `bands`, thresholded by Otsu.

    `before`, `after`: ``(band, y, x)`` reflectance on the same grid. `bands`: the bands to use
    (default: all, in `before`'s order). `threshold`: magnitude above which a pixel changed;
    default Otsu's threshold of the valid magnitudes (from a histogram of `OTSU_BINS` bins).

    Returns ``magnitude`` (reflectance units, NaN where invalid), ``score`` =
    ``magnitude / (magnitude + threshold)`` in [0, 1) — 0.5 at the threshold, monotonic, *not*
    a calibrated probability — ``change`` (bool, False where invalid) and ``valid`` (every band
    finite on both dates); attribute ``threshold``.
    """
    b, a = _as_bxy(before, "before"), _as_bxy(after, "after")
    if b.sizes != a.sizes:
        raise InputError(f"before {dict(b.sizes)} and after {dict(a.sizes)} differ in shape.")
    for c in ("y", "x"):
        if c in b.coords and c in a.coords and not np.array_equal(b[c].values, a[c].values):
            raise InputError(
                f"before and after are on different grids ({c} differs); "
                "composite both on one GridSpec."
            )
    use = list(bands) if bands is not None else _bands(b)
    if use:
        for side, da in (("before", b), ("after", a)):
            lacking = [x for x in use if x not in _bands(da)]
            if lacking:
                raise InputError(f"{side} lacks bands {lacking}; it has {_bands(da)}.")
        b, a = b.sel(band=use), a.sel(band=use)
    # Variables: plain array arithmetic on identical dims (the grids were checked above), lazy
    # on dask.
    diff = a.variable.astype(np.float32) - b.variable.astype(np.float32)
    valid = diff.notnull().all("band")
    magnitude = ((diff**2).sum("band") ** 0.5).where(valid)
    if threshold is None:
        threshold = _otsu(magnitude.data)
    if not np.isfinite(threshold) or threshold < 0:
        raise InputError(f"threshold must be a finite number >= 0, got {threshold}.")
    if threshold > 0:
        score = magnitude / (magnitude + np.float32(threshold))
    else:
        score = (magnitude > 0).astype(np.float32).where(valid)
    change = valid & (magnitude > threshold)
    coords = _grid_coords(before)
    ds = xr.Dataset(
        {
            "magnitude": magnitude,
            "score": score.astype(np.float32),
            "change": change,
            "valid": valid,
        },
        coords=coords,
        attrs={**before.attrs, "threshold": float(threshold), "method": "cva-otsu"},
    )
    return ds


def slow_feature_analysis(
    before: xr.DataArray,
    after: xr.DataArray,
    *,
    max_iter: int = 20,
    tol: float = 1e-3,
) -> xr.Dataset:
    """Iterative slow feature analysis (ISFA; Wu, Du & Zhang 2014, Sections II-III).

    `before`, `after`: ``(band, y, x)`` reflectance on one grid (in memory: the statistics are
    global). Each date is standardised, then the projections ``w`` minimising the variance of
    ``w·(x_after - x_before)`` relative to the variance of ``w·x`` are found (the generalised
    eigenproblem ``A w = λ B w``; A the covariance of the differences, B the mean of the two
    covariances). A pixel's ``statistic`` is the sum of its squared projected differences, each
    scaled to unit variance: chi-square with ``band`` degrees of freedom where nothing changed.
    Each iteration re-weights the pixels by their chi-square probability of no change
    (Section III-B) until the weights move by less than `tol`, so changed pixels stop
    shaping the projection. A gain and offset per band between the dates (calibration drift,
    another atmosphere) is absorbed by the standardisation; CVA reads it as change.

    Hand-written (numpy + one ``scipy.linalg.eigh``): no maintained library implements SFA for
    change detection. Returns ``statistic`` (float32, NaN where invalid), ``weight`` (chi-square
    probability of no change, the last iteration's), ``valid`` (every band finite on both
    dates); attributes ``iterations`` and ``eigenvalues`` (ascending: slowest first).
    """
    b, a = _as_bxy(before, "before"), _as_bxy(after, "after")
    if b.sizes != a.sizes:
        raise InputError(f"before {dict(b.sizes)} and after {dict(a.sizes)} differ in shape.")
    if max_iter < 1 or not tol > 0:
        raise InputError(f"max_iter must be >= 1 and tol > 0, got {max_iter} and {tol}.")
    bv = np.asarray(b.values, dtype=np.float64).reshape(b.sizes["band"], -1).T
    av = np.asarray(a.values, dtype=np.float64).reshape(a.sizes["band"], -1).T
    valid = np.isfinite(bv).all(1) & np.isfinite(av).all(1)
    n_bands = bv.shape[1]
    if valid.sum() <= 2 * n_bands:
        raise InputError(
            f"slow feature analysis needs more than {2 * n_bands} pixels valid on both dates; "
            f"{int(valid.sum())} are."
        )
    x, y = bv[valid], av[valid]
    w = np.ones(len(x))
    stat = np.zeros(len(x))
    lam = np.zeros(n_bands)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is reported)
        ww = w / w.sum()
        xs = x - ww @ x
        ys = y - ww @ y
        xs /= np.sqrt(ww @ xs**2) + 1e-12
        ys /= np.sqrt(ww @ ys**2) + 1e-12
        d = xs - ys
        cov_d = (d * ww[:, None]).T @ d
        cov_xy = 0.5 * ((xs * ww[:, None]).T @ xs + (ys * ww[:, None]).T @ ys)
        # a small ridge keeps B positive definite where bands are (nearly) collinear
        cov_xy += RIDGE * np.eye(n_bands)
        lam, vec = eigh(cov_d, cov_xy)
        proj = d @ vec
        stat = (proj**2 / (ww @ proj**2 + 1e-12)).sum(1)
        w_new = chi2.sf(stat, n_bands)
        if w_new.sum() < n_bands:  # (almost) every pixel looks changed: keep the last weights
            break
        converged = float(np.abs(w_new - w).max()) < tol
        w = w_new
        if converged:
            break
    shape = (b.sizes["y"], b.sizes["x"])
    out_stat = np.full(valid.size, np.nan, dtype=np.float32)
    out_stat[valid] = stat
    out_w = np.full(valid.size, np.nan, dtype=np.float32)
    out_w[valid] = w
    return xr.Dataset(
        {
            "statistic": (("y", "x"), out_stat.reshape(shape)),
            "weight": (("y", "x"), out_w.reshape(shape)),
            "valid": (("y", "x"), valid.reshape(shape)),
        },
        coords=_grid_coords(before),
        attrs={"method": "isfa", "iterations": iterations, "eigenvalues": [float(v) for v in lam]},
    )


def _otsu(magnitude: np.ndarray | dsa.Array) -> float:
    """Otsu's threshold of the finite values, from a histogram (bounded memory on dask)."""
    if isinstance(magnitude, dsa.Array):
        top = float(dsa.nanmax(magnitude).compute())
    else:
        top = float(np.nanmax(magnitude)) if np.isfinite(magnitude).any() else float("nan")
    if not np.isfinite(top):
        raise InputError("no pixel is valid on both dates: nothing to threshold.")
    if top == 0:
        return 0.0
    if isinstance(magnitude, dsa.Array):
        counts, edges = dsa.histogram(magnitude, bins=OTSU_BINS, range=(0.0, top))
        counts = counts.compute()
    else:
        counts, edges = np.histogram(magnitude, bins=OTSU_BINS, range=(0.0, top))  # NaN dropped
    centers = (edges[:-1] + edges[1:]) / 2
    if np.count_nonzero(counts) < 2:  # one populated bin: every magnitude the same
        return float(top)
    return float(threshold_otsu(hist=(counts, centers)))


def _index(da: xr.DataArray, name: str) -> xr.DataArray:
    """Spectral index `name` of `da` (band dim ``band``), lazily on dask, float32."""
    if name == "bu":
        return _index(da, "ndbi") - _index(da, "ndvi")
    a, b = NORMALIZED_DIFFERENCES[name]
    names = _bands(da)
    for needed in (a, b):
        if needed not in names:
            raise InputError(f"index {name} needs band {needed!r}; the input has bands {names}.")
    return xr.apply_ufunc(
        normalized_difference,
        da.sel(band=a, drop=True),
        da.sel(band=b, drop=True),
        dask="parallelized",
        output_dtypes=[np.float32],
        keep_attrs=False,
    )


def builtup_rule(
    composite: xr.DataArray,
    *,
    ndbi_min: float = NDBI_MIN,
    ndvi_max: float = NDVI_MAX,
    mndwi_max: float | None = MNDWI_MAX,
) -> xr.Dataset:
    """Built-up where ``NDBI > ndbi_min`` and ``NDVI < ndvi_max`` (and ``MNDWI < mndwi_max``).

    `composite`: ``(band, y, x)`` with at least ``red, nir, swir16`` (and ``green`` unless
    `mndwi_max` is None). Returns ``bu`` = NDBI - NDVI (Zha et al. 2003; -2..2, higher = more
    built-up), ``ndbi``, ``ndvi`` (NaN where invalid), ``built`` (bool, False where invalid) and
    ``valid`` (every band finite). Known limitation of every NDBI rule: bare soil and dry fallow
    also have NDBI > 0 and low NDVI, so they are flagged too.
    """
    da = _as_bxy(composite, "composite")
    valid = da.notnull().all("band")
    ndbi, ndvi = _index(da, "ndbi"), _index(da, "ndvi")
    built = (ndbi > ndbi_min) & (ndvi < ndvi_max) & valid
    if mndwi_max is not None:
        built &= _index(da, "mndwi") < mndwi_max
    return xr.Dataset(
        {
            "bu": (ndbi - ndvi).where(valid),
            "ndbi": ndbi.where(valid),
            "ndvi": ndvi.where(valid),
            "built": built,
            "valid": valid,
        },
        coords=_grid_coords(composite),
        attrs={
            **composite.attrs,
            "method": "ndbi-rule",
            "ndbi_min": ndbi_min,
            "ndvi_max": ndvi_max,
            "mndwi_max": "none" if mndwi_max is None else mndwi_max,
        },
    )


def mean_shift_breakpoint(
    z: np.ndarray, *, min_step: float = BREAK_MIN_STEP, min_obs: int = BREAK_MIN_OBS
) -> tuple[np.ndarray, np.ndarray]:
    """Single upward mean-shift breakpoint per series; time on the **last** axis.

    `z`: ``(..., time)`` float, NaN = missing. For every candidate k (an observed time step),
    ``step_k = mean(z[k:]) - mean(z[:k])`` over the observed values, with at least `min_obs`
    observations on each side; the breakpoint is the k of the largest step (the first such k
    on ties). Returns ``(index, step)``: index int64 (-1 where the largest step is below
    `min_step` or no candidate exists) and the largest step (NaN where no candidate exists).

    Vectorised with cumulative sums, O(time) per series: a per-pixel loop over a change-point
    library (e.g. ``ruptures``) would be orders of magnitude slower on a whole AOI.
    """
    z = np.asarray(z, dtype=np.float64)
    obs = np.isfinite(z)
    cs = np.cumsum(np.where(obs, z, 0.0), axis=-1)
    cn = np.cumsum(obs, axis=-1)
    # candidate k = 1..t-1: "before" is [0, k), "after" is [k, t)
    s_before, n_before = cs[..., :-1], cn[..., :-1]
    s_after, n_after = cs[..., -1:] - s_before, cn[..., -1:] - n_before
    with np.errstate(invalid="ignore", divide="ignore"):
        step = s_after / n_after - s_before / n_before
    ok = (n_before >= min_obs) & (n_after >= min_obs) & obs[..., 1:]
    step = np.where(ok, step, -np.inf)
    k = np.argmax(step, axis=-1)
    best = np.take_along_axis(step, k[..., None], axis=-1)[..., 0]
    any_ok = ok.any(axis=-1)
    index = np.where(any_ok & (best >= min_step), k + 1, -1).astype(np.int64)
    return index, np.where(any_ok, best, np.nan)


def breakpoint_year(
    annual: xr.DataArray,
    *,
    index: str = "bu",
    min_step: float = BREAK_MIN_STEP,
    min_obs: int = BREAK_MIN_OBS,
) -> xr.Dataset:
    """Year of urbanization per pixel: the breakpoint of a built-up index trajectory.

    `annual`: ``(year|period, band, y, x)`` annual composites (see `annual_axis`); years without
    a valid observation are NaN and skipped. `index`: ``"bu"`` (NDBI - NDVI, default) or
    ``"ndbi"``. The year is the first *observed* year after the largest rise of the index's
    mean (`mean_shift_breakpoint`); pixels whose largest rise is below `min_step` (stable, or
    built before the first year) get no year.

    Returns ``year`` float32 (calendar year, NaN = no urbanization found), ``step`` (the rise,
    index units) and ``valid`` (at least ``2 * min_obs`` observed years: enough to test).
    """
    if index not in ("bu", "ndbi"):
        raise InputError(f"index must be 'bu' or 'ndbi', got {index!r}.")
    if min_obs < 1:
        raise InputError(f"min_obs must be >= 1, got {min_obs}.")
    dim, years = annual_axis(annual)
    missing = {"band", "y", "x"} - set(annual.dims)
    if missing or annual.ndim != 4:
        raise InputError(f"annual composites need dims ({dim}, band, y, x); got {annual.dims}.")
    da = annual.transpose(dim, "band", "y", "x")
    z = _index(da, index).where(da.notnull().all("band"))

    def per_block(series: np.ndarray) -> np.ndarray:
        k, step = mean_shift_breakpoint(series, min_step=min_step, min_obs=min_obs)
        year = np.where(k >= 0, years[np.maximum(k, 0)], np.nan)
        n_obs = np.isfinite(series).sum(axis=-1)
        return np.stack([year, step, n_obs >= 2 * min_obs], axis=-1).astype(np.float32)

    out = xr.apply_ufunc(
        per_block,
        z,
        input_core_dims=[[dim]],
        output_core_dims=[["out"]],
        dask="parallelized",
        output_dtypes=[np.float32],
        dask_gufunc_kwargs={"output_sizes": {"out": 3}, "allow_rechunk": True},
    )
    valid = out.isel(out=2, drop=True) > 0
    return xr.Dataset(
        {
            "year": out.isel(out=0, drop=True).where(valid),
            "step": out.isel(out=1, drop=True).where(valid),
            "valid": valid,
        },
        coords=_grid_coords(annual),
        attrs={
            **annual.attrs,
            "method": f"breakpoint-{index}",
            "min_step": min_step,
            "min_obs": min_obs,
        },
    )

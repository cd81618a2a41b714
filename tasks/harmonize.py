"""Harmonization: Landsat 4/5/7/8/9 and Sentinel-2 surface reflectance on one common band set.

Every scene is brought to the Landsat-8 OLI spectral bandpasses with a per-band linear
adjustment ``OLI = slope * sensor + offset`` (reflectance 0..1), chosen from its ``platform``:

| platform              | source of the coefficients                                        |
|-----------------------|-------------------------------------------------------------------|
| sentinel-2a / -2b     | HLS v2.0 bandpass adjustment, MSI -> OLI (Claverie et al. 2018)   |
| landsat-4 / -5 / -7   | Roy et al. 2016, Table 2, ETM+ -> OLI surface reflectance, OLS    |
|                       | (RMA fit available: `PLATFORM_ADJUSTMENTS_RMA`)                   |
| landsat-8 / -9        | identity (OLI / OLI-2 are the reference)                          |

The stack's resampling to one grid is the loader's job; this stage is pure per-pixel arithmetic,
lazy on dask, and NaN stays NaN (Landsat 7 SLC-off gaps are never filled).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np
import xarray as xr
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.errors import InputError

__all__ = [
    "HARMONIZED_BANDS",
    "HLS_S2A_TO_OLI",
    "HLS_S2B_TO_OLI",
    "IDENTITY",
    "PLATFORM_ADJUSTMENTS",
    "PLATFORM_ADJUSTMENTS_RMA",
    "ROY2016_ETM_TO_OLI",
    "ROY2016_ETM_TO_OLI_RMA",
    "BandAdjustment",
    "adjustment_for",
    "harmonize",
    "harmonize_stack",
    "normalize_platform",
]

log = logging.getLogger(__name__)

#: The common band set every sensor is harmonized to (Earth Search common names; OLI bands
#: 2, 3, 4, 5, 6, 7; MSI B02, B03, B04, B8A, B11, B12; TM/ETM+ bands 1, 2, 3, 4, 5, 7).
HARMONIZED_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir16", "swir22")


@dataclass(frozen=True)
class BandAdjustment:
    """``target = slope * source + offset``, reflectance 0..1."""

    slope: float
    offset: float


def _table(rows: Mapping[str, tuple[float, float]]) -> Mapping[str, BandAdjustment]:
    if set(rows) != set(HARMONIZED_BANDS):
        raise ValueError(f"an adjustment table needs exactly the bands {HARMONIZED_BANDS}")
    return MappingProxyType({b: BandAdjustment(*rows[b]) for b in HARMONIZED_BANDS})


#: Sentinel-2A MSI -> OLI, (slope, offset). Source: HLS v2.0 User Guide (Masek et al., NASA
#: GSFC), bandpass adjustment table, and hls.gsfc.nasa.gov/algorithms/bandpass-adjustment;
#: method in Claverie et al. 2018, Remote Sens. Environ. 219:145-161. NIR is MSI B8A (narrow
#: NIR), which HLS pairs with OLI band 5; HLS keeps B08 unadjusted.
HLS_S2A_TO_OLI = _table(
    {
        "blue": (0.9778, -0.004),
        "green": (1.0053, -0.0009),
        "red": (0.9765, 0.0009),
        "nir": (0.9983, -0.0001),
        "swir16": (0.9987, -0.0011),
        "swir22": (1.003, -0.0012),
    }
)

#: Sentinel-2B MSI -> OLI, (slope, offset); same source as `HLS_S2A_TO_OLI`. The guide notes
#: that S2A's CA and blue coefficients were derived with S2B's RSRs, hence equal blue rows.
HLS_S2B_TO_OLI = _table(
    {
        "blue": (0.9778, -0.004),
        "green": (1.0075, -0.0008),
        "red": (0.9761, 0.001),
        "nir": (0.9966, 0.000),
        "swir16": (1.000, -0.0003),
        "swir22": (0.9867, 0.0004),
    }
)

#: Landsat-7 ETM+ -> Landsat-8 OLI surface reflectance, (slope, intercept) of the OLS
#: regression ``OLI = intercept + slope * ETM+``. Source: Roy, D.P. et al. 2016,
#: "Characterization of Landsat-7 to Landsat-8 reflective wavelength and normalized difference
#: vegetation index continuity", Remote Sens. Environ. 185:57-70, Table 2 (surface reflectance,
#: OLS). Digits cross-checked against a reproduction of the table in a later paper (PubMed
#: Central PMC8113344, Table 3) and Google Earth Engine's "Landsat ETM+ to OLI harmonization"
#: tutorial, which uses this fit. Applied to TM (Landsat 4/5) too: TM and ETM+ bandpasses are
#: nearly identical and Roy et al. give no TM-specific fit (the tutorial does the same).
#: OLS is the best *prediction* of OLI from ETM+ over the paper's CONUS sample, regression to
#: the mean included (slopes 0.85-0.91, positive intercepts): it pulls bright targets down and
#: dark ones up. `ROY2016_ETM_TO_OLI_RMA` is the symmetric alternative.
ROY2016_ETM_TO_OLI = _table(
    {
        "blue": (0.8474, 0.0003),
        "green": (0.8483, 0.0088),
        "red": (0.9047, 0.0061),
        "nir": (0.8462, 0.0412),
        "swir16": (0.8937, 0.0254),
        "swir22": (0.9071, 0.0172),
    }
)

#: Same source, Table 2, reduced-major-axis (RMA) regression ``OLI = intercept + slope * ETM+``:
#: symmetric between the sensors and close to identity, for when regression to the mean is not
#: wanted (e.g. when spectra differ only by bandpass). Digits as reproduced in LandTrendr's GEE
#: code (Kennedy et al.) and the GEE tutorial; we have not seen the paper's table itself.
ROY2016_ETM_TO_OLI_RMA = _table(
    {
        "blue": (0.9785, -0.0095),
        "green": (0.9542, -0.0016),
        "red": (0.9825, -0.0022),
        "nir": (1.0073, -0.0021),
        "swir16": (1.0171, -0.0030),
        "swir22": (0.9949, 0.0029),
    }
)

#: OLI (Landsat 8) and OLI-2 (Landsat 9) are the reference: no adjustment (HLS v2.0 treats
#: Landsat 9 as Landsat 8).
IDENTITY = _table({b: (1.0, 0.0) for b in HARMONIZED_BANDS})

#: Adjustment table per normalized platform name (see `normalize_platform`); the default.
PLATFORM_ADJUSTMENTS: Mapping[str, Mapping[str, BandAdjustment]] = MappingProxyType(
    {
        "sentinel-2a": HLS_S2A_TO_OLI,
        "sentinel-2b": HLS_S2B_TO_OLI,
        "landsat-4": ROY2016_ETM_TO_OLI,
        "landsat-5": ROY2016_ETM_TO_OLI,
        "landsat-7": ROY2016_ETM_TO_OLI,
        "landsat-8": IDENTITY,
        "landsat-9": IDENTITY,
    }
)

#: The same with Roy et al.'s RMA fit for TM/ETM+ (`ROY2016_ETM_TO_OLI_RMA`).
PLATFORM_ADJUSTMENTS_RMA: Mapping[str, Mapping[str, BandAdjustment]] = MappingProxyType(
    {
        **PLATFORM_ADJUSTMENTS,
        "landsat-4": ROY2016_ETM_TO_OLI_RMA,
        "landsat-5": ROY2016_ETM_TO_OLI_RMA,
        "landsat-7": ROY2016_ETM_TO_OLI_RMA,
    }
)

#: Platforms without published coefficients in the sources above, and the table used for them
#: instead (logged as a warning). Sentinel-2C MSI copies the S2B design; the HLS table we cite
#: has no S2C row. This is an assumption, not a published value.
PLATFORM_FALLBACKS: Mapping[str, str] = MappingProxyType({"sentinel-2c": "sentinel-2b"})

#: Mask bands passed through unchanged when still present (see tasks.cloudmask).
_PASSTHROUGH = ("scl", "qa_pixel")


def normalize_platform(platform: str) -> str:
    """``Sentinel-2A``, ``LANDSAT_8``, ``landsat 8`` -> ``sentinel-2a``, ``landsat-8``."""
    p = platform.strip().lower().replace("_", "-").replace(" ", "-")
    if p.startswith("landsat") and not p.startswith("landsat-"):
        p = "landsat-" + p[len("landsat") :]
    return p


def adjustment_for(
    platform: str,
    *,
    adjustments: Mapping[str, Mapping[str, BandAdjustment]] = PLATFORM_ADJUSTMENTS,
    fallbacks: Mapping[str, str] = PLATFORM_FALLBACKS,
) -> Mapping[str, BandAdjustment]:
    """The band -> `BandAdjustment` table of one platform.

    Raises `InputError` for a platform with neither a table nor a fallback.
    """
    p = normalize_platform(platform)
    if p in adjustments:
        return adjustments[p]
    if p in fallbacks and fallbacks[p] in adjustments:
        log.warning(
            "no published bandpass adjustment for %s; using the %s coefficients", p, fallbacks[p]
        )
        return adjustments[fallbacks[p]]
    raise InputError(
        f"no bandpass adjustment for platform {platform!r}; known: "
        f"{', '.join(sorted(adjustments))}. Pass adjustments= with a table for it."
    )


def harmonize(
    stack: xr.DataArray,
    *,
    s2_nir_band: str = "nir08",
    adjustments: Mapping[str, Mapping[str, BandAdjustment]] = PLATFORM_ADJUSTMENTS,
    fallbacks: Mapping[str, str] = PLATFORM_FALLBACKS,
) -> xr.DataArray:
    """Adjust every scene of a stack to Landsat-8 OLI bandpasses on `HARMONIZED_BANDS`.

    `stack`: dims ``(time, band, y, x)``, surface reflectance 0..1 (NaN = no data), per-time
    coord ``platform``; it must hold ``blue, green, red, nir, swir16, swir22`` (common names).
    For Sentinel-2 scenes the NIR source is `s2_nir_band` (``nir08`` = B8A, as in HLS) when the
    stack has it; otherwise B08 (``nir``) is adjusted with the B8A coefficients and a warning is
    logged (B08 is broader than OLI band 5).

    Returns float32 ``(time, band, y, x)`` with bands `HARMONIZED_BANDS` (plus ``scl`` /
    ``qa_pixel`` unchanged when present), the stack's other coords, and a per-time coord
    ``bandpass_adjustment`` naming the table applied. Lazy; NaN stays NaN.
    """
    bands = [str(b) for b in stack["band"].values]
    missing = [b for b in HARMONIZED_BANDS if b not in bands]
    if missing:
        raise InputError(
            f"harmonize needs bands {', '.join(HARMONIZED_BANDS)}; the stack lacks "
            f"{', '.join(missing)}. Load these assets."
        )
    if "platform" not in stack.coords:
        raise InputError("the stack has no 'platform' coordinate; harmonize picks tables from it.")
    platforms = [str(p) for p in np.atleast_1d(stack["platform"].values)]
    tables = [adjustment_for(p, adjustments=adjustments, fallbacks=fallbacks) for p in platforms]
    slope = np.array([[t[b].slope for b in HARMONIZED_BANDS] for t in tables], np.float32)
    offset = np.array([[t[b].offset for b in HARMONIZED_BANDS] for t in tables], np.float32)
    names = [
        _table_name(normalize_platform(p), t, adjustments)
        for p, t in zip(platforms, tables, strict=True)
    ]

    src = stack.sel(band=list(HARMONIZED_BANDS))
    is_s2 = np.array([normalize_platform(p).startswith("sentinel-2") for p in platforms])
    if is_s2.any():
        if s2_nir_band in bands and s2_nir_band != "nir":
            swap = xr.DataArray(is_s2, dims="time") & (src["band"] == "nir")
            src = src.where(~swap, stack.sel(band=s2_nir_band, drop=True))
        elif s2_nir_band != "nir":
            log.warning(
                "stack has no %r band: Sentinel-2 NIR is B08, adjusted with B8A coefficients",
                s2_nir_band,
            )
    out = src * xr.DataArray(slope, dims=("time", "band")) + xr.DataArray(
        offset, dims=("time", "band")
    )
    out = out.astype(np.float32)
    extra = [b for b in _PASSTHROUGH if b in bands]
    if extra:
        out = xr.concat([out, stack.sel(band=extra)], dim="band")
    out = out.assign_coords(bandpass_adjustment=("time", names))
    out.attrs = dict(stack.attrs)
    out.attrs["harmonized_to"] = "Landsat-8 OLI"
    out.name = stack.name
    return out


def _table_name(
    platform: str,
    table: Mapping[str, BandAdjustment],
    adjustments: Mapping[str, Mapping[str, BandAdjustment]],
) -> str:
    if table is IDENTITY:
        return "identity (OLI reference)"
    if table is HLS_S2A_TO_OLI:
        return "HLS v2.0 S2A MSI->OLI"
    if table is HLS_S2B_TO_OLI:
        return "HLS v2.0 S2B MSI->OLI"
    if table is ROY2016_ETM_TO_OLI:
        return "Roy et al. 2016 ETM+->OLI (OLS, SR)"
    if table is ROY2016_ETM_TO_OLI_RMA:
        return "Roy et al. 2016 ETM+->OLI (RMA, SR)"
    return f"custom ({platform})" if platform in adjustments else "custom"


# ---- Prefect tasks -------------------------------------------------------
@task(name="harmonize", cache_policy=NO_CACHE, persist_result=False, tags=["cpu"])
def harmonize_stack(
    stack: xr.DataArray,
    *,
    s2_nir_band: str = "nir08",
    landsat_regression: Literal["ols", "rma"] = "ols",
) -> xr.DataArray:
    """Prefect task around `harmonize` (a lazy graph: the arithmetic runs downstream).

    `landsat_regression`: Roy et al. 2016's OLS (default) or RMA fit for TM/ETM+ -> OLI.
    """
    if landsat_regression not in ("ols", "rma"):
        raise InputError(f"landsat_regression must be 'ols' or 'rma', got {landsat_regression!r}.")
    tables = PLATFORM_ADJUSTMENTS if landsat_regression == "ols" else PLATFORM_ADJUSTMENTS_RMA
    out = harmonize(stack, s2_nir_band=s2_nir_band, adjustments=tables)
    counts: dict[str, int] = {}
    for name in out["bandpass_adjustment"].values:
        counts[str(name)] = counts.get(str(name), 0) + 1
    get_run_logger().info("harmonized %d scenes: %s", out.sizes["time"], counts)
    return out

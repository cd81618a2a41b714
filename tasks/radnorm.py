"""Relative radiometric normalisation of one composite to another, on pseudo-invariant pixels.

Two composites a change product compares rarely share their radiometry: another sensor (TM
against OLI), another atmosphere, a calibration drift, another sun. Harmonization
(`tasks.harmonize`) removes the nominal differences between sensors; what is left is a gain
and an offset per band that CVA reads as change everywhere and a model reads as another world.

`relative_normalization(reference, target)` finds the pixels that did not change and fits,
per band, the line that maps the target onto the reference there; `Normalization.apply`
applies it.

The method is IR-MAD's (Canty & Nielsen 2008, Remote Sens. Environ. 112, 1025: "Automatic
radiometric normalization of multitemporal satellite imagery with the iteratively re-weighted
MAD transformation"): the invariant pixels are those least changed under an iteratively
re-weighted, gain/offset-invariant change transformation, and each band is fitted by
orthogonal regression (both dates are noisy, so ordinary least squares would bias the gain
toward zero). The change transformation here is ISFA (`models.baselines.slow_feature_analysis`),
IR-MAD's slow-feature counterpart, already the project's invariant change statistic.

Hand-written (numpy): the maintained IR-MAD implementation (Canty's ``auxil``) is GPL, not
packaged, and works on files; this is fifteen lines on arrays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from models.baselines import slow_feature_analysis
from tasks.errors import InputError

__all__ = [
    "MAX_GAIN_RATIO",
    "METHOD",
    "MIN_CORRELATION",
    "MIN_STABLE_PIXELS",
    "STABLE_SHARE",
    "Normalization",
    "relative_normalization",
]

log = logging.getLogger(__name__)

#: Share of the valid pixels, those of the lowest ISFA statistic, taken as pseudo-invariant.
#: Canty & Nielsen threshold the chi-square probability of no change at 0.95; on real pairs the
#: statistic is heavy-tailed (texture, mixed pixels), and on the Nanjing TM pair that rule kept
#: 0.3 % of the pixels, most of them water. A rank keeps the fit on the many stable pixels of
#: every cover; 20 % is well inside the unchanged share of any scene a change map is useful on.
STABLE_SHARE = 0.2
#: Spatial autocorrelation (adjacent pixels) of a reference band below which its gain is not
#: fitted but only its offset: the band holds noise rather than a spread of covers, and a
#: slope through noise is no gain. (The correlation of the two dates on the invariant pixels
#: cannot tell: choosing pixels whose dates agree makes them agree; over all pixels, change
#: lowers it.)
MIN_CORRELATION = 0.5
#: Fewest invariant pixels a fit needs.
MIN_STABLE_PIXELS = 200
#: A fitted gain outside [1 / MAX_GAIN_RATIO, MAX_GAIN_RATIO] is no calibration difference but
#: a failed fit (e.g. snow on one date): that band is left as it is, and the reason logged.
MAX_GAIN_RATIO = 2.0

METHOD = "ISFA pseudo-invariant pixels (lowest 20 %), orthogonal regression per band"


@dataclass(frozen=True)
class Normalization:
    """Per-band ``gain`` and ``offset`` that map a target composite onto its reference
    (``reference ≈ offset + gain * target`` on the invariant pixels), the number of those
    pixels, and per band whether the fit was applied (``fitted``; False: identity, see
    `reason`)."""

    bands: tuple[str, ...]
    gain: tuple[float, ...]
    offset: tuple[float, ...]
    stable_pixels: int
    fitted: tuple[bool, ...]
    reason: str = ""

    @classmethod
    def identity(cls, bands: tuple[str, ...], reason: str) -> Normalization:
        n = len(bands)
        return cls(bands, (1.0,) * n, (0.0,) * n, 0, (False,) * n, reason)

    @property
    def applied(self) -> bool:
        return any(self.fitted)

    def apply(self, target: xr.DataArray) -> xr.DataArray:
        """`target` (``band`` dim holding `bands`) in the reference's radiometry."""
        gain = xr.DataArray(
            np.asarray(self.gain, np.float32), dims="band", coords={"band": list(self.bands)}
        )
        offset = xr.DataArray(
            np.asarray(self.offset, np.float32), dims="band", coords={"band": list(self.bands)}
        )
        out = (target.sel(band=list(self.bands)) * gain + offset).astype(target.dtype)
        return out.assign_attrs(target.attrs)

    def attrs(self) -> dict[str, Any]:
        """What a product records of the step (flat, for raster attrs and tags)."""
        return {
            "radiometric_normalization": METHOD if self.applied else f"none ({self.reason})",
            "normalization_bands": ",".join(self.bands),
            "normalization_gain": ",".join(f"{g:.4f}" for g in self.gain),
            "normalization_offset": ",".join(f"{o:.4f}" for o in self.offset),
            "normalization_stable_pixels": self.stable_pixels,
        }


def _orthogonal_fit(x: np.ndarray, y: np.ndarray, identifiable: bool) -> tuple[float, float]:
    """(gain, offset) of the total-least-squares line ``y = offset + gain * x``; only the
    offset (gain 1) where the gain is not `identifiable`."""
    mx, my = x.mean(), y.mean()
    sxx, syy = np.mean((x - mx) ** 2), np.mean((y - my) ** 2)
    sxy = np.mean((x - mx) * (y - my))
    if not identifiable or sxy <= 0:
        return 1.0, float(my - mx)
    gain = (syy - sxx + np.sqrt((syy - sxx) ** 2 + 4.0 * sxy**2)) / (2.0 * sxy)
    return float(gain), float(my - gain * mx)


def _autocorrelation(band: np.ndarray, valid: np.ndarray) -> float:
    """Correlation of horizontally adjacent valid pixels of one ``(y, x)`` band: near 1 where
    the band images covers, near 0 where it holds noise."""
    both = valid[:, :-1] & valid[:, 1:]
    left, right = band[:, :-1][both], band[:, 1:][both]
    if left.size < 3:
        return 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(left, right)[0, 1]
    return float(r) if np.isfinite(r) else 0.0


def relative_normalization(reference: xr.DataArray, target: xr.DataArray) -> Normalization:
    """The normalisation of `target` onto `reference` (both ``(band, y, x)`` reflectance on one
    grid, in memory, NaN = no data); identity with a logged reason where too few pixels are
    invariant (module docstring)."""
    bands = tuple(str(b) for b in reference["band"].values)
    try:
        sfa = slow_feature_analysis(reference, target.sel(band=list(bands)))
    except InputError as err:
        return _identity(bands, str(err))
    valid = sfa["valid"].values
    n_valid = int(valid.sum())
    if n_valid * STABLE_SHARE < MIN_STABLE_PIXELS:
        return _identity(bands, f"{n_valid} valid pixels; too few for a fit")
    statistic = sfa["statistic"].values
    cut = np.quantile(statistic[valid], STABLE_SHARE)
    stable = valid & (statistic <= cut)
    n_stable = int(stable.sum())
    ref = np.asarray(reference.values, np.float64)
    tgt = np.asarray(target.sel(band=list(bands)).values, np.float64)
    gains, offsets, fitted = [], [], []
    for band, x, y in zip(bands, tgt, ref, strict=True):
        identifiable = _autocorrelation(y, valid) >= MIN_CORRELATION
        gain, offset = _orthogonal_fit(x[stable], y[stable], identifiable)
        ok = 1.0 / MAX_GAIN_RATIO <= gain <= MAX_GAIN_RATIO
        if not ok:
            log.warning("radiometric normalization: band %s not normalized (gain %.3g)", band, gain)
        gains.append(gain if ok else 1.0)
        offsets.append(offset if ok else 0.0)
        fitted.append(ok)
    return Normalization(bands, tuple(gains), tuple(offsets), n_stable, tuple(fitted))


def _identity(bands: tuple[str, ...], reason: str) -> Normalization:
    log.warning("radiometric normalization: not applied (%s)", reason)
    return Normalization.identity(bands, reason)

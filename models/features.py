"""Spectral indices and model input channels.

A model's input is its raw bands in spec order followed by spectral indices computed from them
(`WeightsSpec.input_channels`). Every index here is a normalized difference
``(a - b) / (a + b)`` of two harmonized surface-reflectance bands (common names of
`tasks.harmonize.HARMONIZED_BANDS`):

| index   | a       | b       | source                                                     |
|---------|---------|---------|------------------------------------------------------------|
| ``ndvi``  | nir     | red     | Rouse et al. 1974 (NASA SP-351), vegetation                |
| ``ndbi``  | swir16  | nir     | Zha, Gao & Ni 2003 (Int. J. Remote Sens. 24:583), built-up |
| ``mndwi`` | green   | swir16  | Xu 2006 (Int. J. Remote Sens. 27:3025), open water         |
| ``ndwi``  | green   | nir     | McFeeters 1996 (Int. J. Remote Sens. 17:1425), water       |

plus ``bu = ndbi - ndvi``, the built-up index of Zha, Gao & Ni 2003 (range -2..2).

Conventions: reflectance is float (0..1, may be slightly negative after harmonization), NaN where
there is no valid observation; NaN propagates into every index. A zero denominator gives 0 (not
NaN), so a valid pixel stays valid; indices are clipped to their nominal range because a
negative reflectance can push a normalized difference outside [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import numpy as np
import xarray as xr

from tasks.errors import InputError

__all__ = [
    "INDEX_RANGES",
    "NORMALIZED_DIFFERENCES",
    "annual_axis",
    "input_channels",
    "normalized_difference",
    "spectral_index",
]

#: index name -> (band a, band b) of ``(a - b) / (a + b)``; sources in the module docstring.
NORMALIZED_DIFFERENCES = MappingProxyType(
    {
        "ndvi": ("nir", "red"),
        "ndbi": ("swir16", "nir"),
        "mndwi": ("green", "swir16"),
        "ndwi": ("green", "nir"),
    }
)

#: Nominal range of every index (normalized differences: [-1, 1]; bu = ndbi - ndvi: [-2, 2]).
INDEX_RANGES = MappingProxyType(
    {**dict.fromkeys(NORMALIZED_DIFFERENCES, (-1.0, 1.0)), "bu": (-2.0, 2.0)}
)


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a - b) / (a + b)`` as float32, 0 where ``a + b == 0``, NaN where a or b is NaN,
    clipped to [-1, 1]."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    num = a - b
    den = a + b
    # NaN != 0, so NaN inputs reach the division and stay NaN; den == 0 keeps the 0 fill.
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.divide(num, den, out=np.zeros_like(num), where=den != 0)
    return np.clip(out, -1.0, 1.0, out=out)


def _band(refl: np.ndarray, bands: Sequence[str], name: str, axis: int) -> np.ndarray:
    try:
        i = list(bands).index(name)
    except ValueError:
        raise InputError(
            f"band {name!r} is needed for this index but the input has bands {list(bands)}; "
            f"add {name!r} to the composite's bands."
        ) from None
    return np.take(refl, i, axis=axis)


def spectral_index(
    name: str, refl: np.ndarray, bands: Sequence[str], *, band_axis: int = 0
) -> np.ndarray:
    """Index `name` (see module docstring) of `refl`, whose `band_axis` holds `bands` in order.

    Returns float32 with the band axis removed (e.g. ``(band, y, x) -> (y, x)``).
    """
    key = name.lower()
    if key == "bu":
        ndbi = spectral_index("ndbi", refl, bands, band_axis=band_axis)
        ndvi = spectral_index("ndvi", refl, bands, band_axis=band_axis)
        return (ndbi - ndvi).astype(np.float32, copy=False)
    if key not in NORMALIZED_DIFFERENCES:
        raise InputError(f"unknown spectral index {name!r}; known: {sorted(INDEX_RANGES)}.")
    a, b = NORMALIZED_DIFFERENCES[key]
    return normalized_difference(_band(refl, bands, a, band_axis), _band(refl, bands, b, band_axis))


def input_channels(
    refl: np.ndarray,
    bands: Sequence[str],
    indices: Sequence[str],
    *,
    band_axis: int = 0,
) -> np.ndarray:
    """The model input: `refl`'s bands (as given) followed by `indices`, on `band_axis`.

    `refl`: float reflectance, any shape with `bands` along `band_axis`. Returns float32 with
    ``len(bands) + len(indices)`` channels on that axis.
    """
    refl = np.asarray(refl, dtype=np.float32)
    axis = band_axis % refl.ndim
    if refl.shape[axis] != len(bands):
        raise InputError(
            f"the band axis holds {refl.shape[axis]} bands but {len(bands)} band names were given."
        )
    if not indices:
        return refl
    extra = [spectral_index(n, refl, bands, band_axis=axis) for n in indices]
    return np.concatenate([refl, np.stack(extra, axis=axis)], axis=axis)


def annual_axis(annual: xr.DataArray) -> tuple[str, np.ndarray]:
    """``(dim, years)`` of an annual stack: the dim ``year`` or ``period`` and its calendar years.

    Labels may be ints, strings like ``"1985"`` (`tasks.composite.annual_composites`) or
    datetimes; they must increase strictly.
    """
    dims = [d for d in ("year", "period") if d in annual.dims]
    if not dims:
        raise InputError(f"annual composites need a 'year' or 'period' dim; got {annual.dims}.")
    dim = dims[0]
    values = annual[dim].values if dim in annual.coords else None
    if values is None:
        raise InputError(f"the {dim!r} dim needs coordinate labels (calendar years).")
    try:
        if np.issubdtype(values.dtype, np.datetime64):
            years = values.astype("datetime64[Y]").astype(np.int64) + 1970
        else:
            years = np.array([int(str(v)) for v in values], dtype=np.int64)
    except ValueError as err:
        raise InputError(
            f"{dim!r} labels {list(values)[:5]}... are not calendar years; "
            "label them 1985, 1986, ..."
        ) from err
    if np.any(np.diff(years) <= 0):
        raise InputError(f"years must increase strictly, got {years.tolist()}.")
    return dim, years

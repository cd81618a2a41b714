"""Cloud and shadow masking: which pixels of which scenes are clear enough to use.

Input is the loader's stack: an ``xr.DataArray`` with dims ``(time, band, y, x)``, float32
reflectance (scale/offset applied, nodata = NaN) on one UTM grid (metres), plus the raw mask
codes as extra bands — ``scl`` (Sentinel-2 L2A Scene Classification) and/or ``qa_pixel``
(Landsat Collection 2 QA_PIXEL) as float, NaN where a scene has no such asset — and per-time
coords ``id``, ``platform`` (``sentinel-2a``, ``landsat-7``, ...).

Every decoding function keeps the input's dims and stays lazy on dask arrays (pure element-wise
ops; the optional buffer is a `dask.array.map_overlap` with a halo of the buffer radius), so
memory stays bounded by the chunk size, whatever the number of scenes.

Vocabulary used throughout:

- **footprint**: the pixel holds data (inside the swath, not fill / no-data, not an SLC-off gap);
- **clear**: inside the footprint and not flagged (cloud, shadow, cirrus, saturated, [snow]);
- **clear fraction** of a scene: clear pixels / footprint pixels on the grid, so a scene that
  covers half the AOI without clouds has clear fraction 1.0.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from scipy import ndimage
from skimage.morphology import disk

from tasks.errors import InputError
from tasks.retry import retry_transient_only

__all__ = [
    "LANDSAT_QA_BAND",
    "MASK_BANDS",
    "S2CLOUDLESS_BANDS",
    "S2_SCL_BAND",
    "S2_SCL_INVALID",
    "MaskReport",
    "QaPixelBit",
    "RejectedScene",
    "SclClass",
    "buffer_mask",
    "clear_fraction",
    "cloud_masks",
    "grid_resolution",
    "landsat_flag",
    "landsat_footprint",
    "landsat_valid_mask",
    "mask_clouds",
    "mask_stack",
    "s2_footprint",
    "s2_valid_mask",
    "s2cloudless_probability",
    "screen_scenes",
]

log = logging.getLogger(__name__)

S2_SCL_BAND = "scl"
LANDSAT_QA_BAND = "qa_pixel"
#: Bands that carry mask codes, not reflectance; `mask_stack` drops them.
MASK_BANDS: frozenset[str] = frozenset({S2_SCL_BAND, LANDSAT_QA_BAND})


class SclClass(IntEnum):
    """Sentinel-2 L2A Scene Classification (SCL) values.

    Source: ESA, Sentinel-2 Products Specification Document (S2-PDGS-TAS-DI-PSD), Level-2A
    "Scene Classification" table, and the Sen2Cor L2A ATBD (S2PAD-ATBD-0001), same table.
    Class 2 was renamed "topographic casted shadows" from Sen2Cor 2.10 (baseline 04.00).
    """

    NO_DATA = 0
    SATURATED_OR_DEFECTIVE = 1
    DARK_AREA_OR_CAST_SHADOW = 2
    CLOUD_SHADOW = 3
    VEGETATION = 4
    NOT_VEGETATED = 5
    WATER = 6
    UNCLASSIFIED = 7
    CLOUD_MEDIUM_PROBABILITY = 8
    CLOUD_HIGH_PROBABILITY = 9
    THIN_CIRRUS = 10
    SNOW_ICE = 11


#: SCL classes that make a pixel unusable: no data, saturated/defective, cloud shadow, cloud
#: medium and high probability, thin cirrus (classes per `SclClass`). Snow (11) is opt-in.
S2_SCL_INVALID: frozenset[int] = frozenset(
    {
        SclClass.NO_DATA,
        SclClass.SATURATED_OR_DEFECTIVE,
        SclClass.CLOUD_SHADOW,
        SclClass.CLOUD_MEDIUM_PROBABILITY,
        SclClass.CLOUD_HIGH_PROBABILITY,
        SclClass.THIN_CIRRUS,
    }
)


class QaPixelBit(IntEnum):
    """Landsat Collection 2 QA_PIXEL single-bit flags (bit numbers, 0 = least significant).

    Source: USGS, Landsat 8-9 Collection 2 Level-2 Science Product Guide (LSDS-1619), and
    Landsat 4-7 Collection 2 Level-2 Science Product Guide (LSDS-1618), "Pixel Quality
    Assessment Band" tables. Bits 8-9, 10-11, 12-13 and 14-15 hold 2-bit confidences (cloud,
    cloud shadow, snow/ice, cirrus); they are not used here. The cirrus bit (2) is set by OLI
    only (TM/ETM+ have no cirrus band): it is always 0 on Landsat 4-7.
    """

    FILL = 0
    DILATED_CLOUD = 1
    CIRRUS = 2
    CLOUD = 3
    CLOUD_SHADOW = 4
    SNOW = 5
    CLEAR = 6
    WATER = 7


#: Sentinel-2 bands the s2cloudless model reads, in its order (s2cloudless 1.7
#: `utils.MODEL_BANDS`: B01, B02, B04, B05, B08, B8A, B09, B10, B11, B12), as
#: (band code, Earth Search common name). Either name is accepted in the stack.
S2CLOUDLESS_BANDS: tuple[tuple[str, str], ...] = (
    ("B01", "coastal"),
    ("B02", "blue"),
    ("B04", "red"),
    ("B05", "rededge1"),
    ("B08", "nir"),
    ("B8A", "nir08"),
    ("B09", "nir09"),
    ("B10", "cirrus"),
    ("B11", "swir16"),
    ("B12", "swir22"),
)

#: s2cloudless' own default probability threshold (`S2PixelCloudDetector(threshold=0.4)`).
S2CLOUDLESS_THRESHOLD = 0.4

#: Default minimum clear fraction of a scene. A tuning choice, not a published constant: below
#: 10 % clear, the few clear pixels of a scene sit mostly at cloud edges, where masks miss thin
#: cloud and shadow, and they add more contamination than information to a composite.
MIN_CLEAR_FRACTION = 0.1

S2CloudlessMode = Literal["never", "fallback", "always"]


# ---- decoding -------------------------------------------------------------------------------
def s2_footprint(scl: xr.DataArray) -> xr.DataArray:
    """True where the SCL band holds data: finite and not class 0 (no data).

    `scl`: any dims (typically ``(time, y, x)``), SCL class codes as float or int, NaN where the
    scene has no SCL. Returns a boolean array of the same dims.
    """
    return scl.notnull() & (scl != SclClass.NO_DATA)


def s2_valid_mask(
    scl: xr.DataArray,
    *,
    invalid: Collection[int] = S2_SCL_INVALID,
    mask_snow: bool = False,
) -> xr.DataArray:
    """True where a Sentinel-2 pixel is usable according to its SCL class.

    `scl`: any dims, SCL codes (float with NaN, or int). A pixel is usable when its code is
    finite and not in `invalid` (plus 11 snow/ice when `mask_snow`). NaN is never usable.
    """
    codes = set(int(c) for c in invalid)
    if mask_snow:
        codes.add(int(SclClass.SNOW_ICE))
    bad = scl.isin(sorted(codes))
    return s2_footprint(scl) & ~bad


def _qa_bits(qa_pixel: xr.DataArray) -> xr.DataArray:
    # NaN (no QA_PIXEL for this scene or pixel) decodes as fill so it falls outside the footprint.
    fill = 1 << QaPixelBit.FILL
    return qa_pixel.fillna(fill).astype(np.uint16)


def landsat_footprint(qa_pixel: xr.DataArray) -> xr.DataArray:
    """True where QA_PIXEL holds data: finite and the fill bit (0) unset.

    Landsat 7 SLC-off gaps are fill in Collection 2, so they fall outside the footprint.
    """
    return (_qa_bits(qa_pixel) & (1 << QaPixelBit.FILL)) == 0


def landsat_flag(qa_pixel: xr.DataArray, bit: QaPixelBit | int) -> xr.DataArray:
    """True where one QA_PIXEL bit is set (see `QaPixelBit`); NaN decodes as fill only."""
    return (_qa_bits(qa_pixel) & (1 << int(bit))) != 0


def landsat_valid_mask(
    qa_pixel: xr.DataArray,
    *,
    dilated: bool = True,
    cirrus: bool = True,
    snow: bool = False,
) -> xr.DataArray:
    """True where a Landsat pixel is usable according to its Collection 2 QA_PIXEL bits.

    Always unusable: fill (bit 0), cloud (bit 3), cloud shadow (bit 4). Optional: dilated cloud
    (bit 1, USGS' own buffer around clouds), cirrus (bit 2, OLI only), snow (bit 5).
    `qa_pixel`: any dims, QA_PIXEL as float with NaN (treated as fill) or unsigned int.
    """
    bits = [QaPixelBit.FILL, QaPixelBit.CLOUD, QaPixelBit.CLOUD_SHADOW]
    if dilated:
        bits.append(QaPixelBit.DILATED_CLOUD)
    if cirrus:
        bits.append(QaPixelBit.CIRRUS)
    if snow:
        bits.append(QaPixelBit.SNOW)
    flags = sum(1 << int(b) for b in bits)
    return (_qa_bits(qa_pixel) & flags) == 0


# ---- s2cloudless ----------------------------------------------------------------------------
_DETECTORS = threading.local()


def _s2cloudless_detector() -> Any:
    # One detector per thread: lightgbm Boosters are not documented as thread-safe for predict.
    det = getattr(_DETECTORS, "detector", None)
    if det is None:
        from s2cloudless import S2PixelCloudDetector  # heavy import (lightgbm, sentinelhub)

        det = S2PixelCloudDetector(threshold=S2CLOUDLESS_THRESHOLD, all_bands=False)
        _DETECTORS.detector = det
    return det


def _s2cloudless_block(block: np.ndarray) -> np.ndarray:
    """(time, band, y, x) TOA reflectance in model band order -> (time, y, x) probability."""
    t, _, h, w = block.shape
    out = np.full((t, h, w), np.nan, dtype=np.float32)
    if block.size == 0:
        return out
    data = np.moveaxis(block, 1, -1).astype(np.float32)  # (time, y, x, band)
    ok = np.isfinite(data).all(axis=-1)
    if ok.any():  # only pixels with every band: one (1, n, 1, band) "image" for the model
        pixels = data[ok][None, :, None, :]
        out[ok] = _s2cloudless_detector().get_cloud_probability_maps(pixels)[0, :, 0]
    return out


def _s2cloudless_band_names(bands: Sequence[str]) -> list[str]:
    present = set(bands)
    chosen: list[str] = []
    missing: list[str] = []
    for code, common in S2CLOUDLESS_BANDS:
        if common in present:
            chosen.append(common)
        elif code in present:
            chosen.append(code)
        else:
            missing.append(f"{code} ({common})")
    if missing:
        raise InputError(
            f"s2cloudless needs Sentinel-2 bands {', '.join(c for c, _ in S2CLOUDLESS_BANDS)}; "
            f"the stack lacks {', '.join(missing)}. Load these assets (Level-1C has them all; "
            "Level-2A has no B10), or use the SCL band (s2cloudless='never')."
        )
    return chosen


def s2cloudless_probability(stack: xr.DataArray) -> xr.DataArray:
    """Cloud probability (0..1) of each pixel from the s2cloudless LightGBM model.

    `stack`: dims ``(time, band, y, x)`` holding the 10 bands the model reads
    (`S2CLOUDLESS_BANDS`, by code ``B01`` or Earth Search name ``coastal``) as top-of-atmosphere
    reflectance 0..1 (Level-1C: the model was trained on L1C). Returns float32
    ``(time, y, x)``, NaN where any input band is NaN. Lazy: one model call per spatial chunk
    (bands are gathered into one chunk). Raises `InputError` naming missing bands.

    The model's own post-processing (disk averaging, dilation in pixels) is not applied here:
    `cloud_masks` thresholds the probability and buffers in metres instead.
    """
    names = _s2cloudless_band_names([str(b) for b in stack["band"].values])
    sub = stack.sel(band=names).transpose("time", "band", "y", "x")
    arr = sub.data
    if isinstance(arr, da.Array):
        arr = arr.rechunk({1: -1})
        proba = da.map_blocks(
            _s2cloudless_block, arr, drop_axis=1, dtype=np.float32, meta=np.array((), np.float32)
        )
    else:
        proba = _s2cloudless_block(np.asarray(arr))
    template = sub.isel(band=0, drop=True)
    return template.copy(data=proba).rename("cloud_probability")


# ---- buffer ---------------------------------------------------------------------------------
def grid_resolution(stack: xr.DataArray) -> float:
    """Pixel size in CRS units (metres for UTM) from the ``x`` coordinate spacing.

    Raises `InputError` when it cannot be inferred (fewer than two columns).
    """
    if "x" in stack.coords and stack.sizes.get("x", 0) >= 2:
        return float(abs(stack["x"].values[1] - stack["x"].values[0]))
    res = stack.attrs.get("resolution")
    if res is not None:
        return float(np.atleast_1d(res)[0])
    raise InputError(
        "cannot infer the pixel size from the stack (no 'x' spacing or 'resolution' attribute); "
        "pass resolution= in metres."
    )


def _dilate_block(block: np.ndarray, structure: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(block, structure=structure)


def buffer_mask(
    flagged: xr.DataArray, buffer_m: float, *, resolution: float | None = None
) -> xr.DataArray:
    """Grow the True regions of `flagged` by `buffer_m` metres (disk structuring element).

    `flagged`: boolean, dims ``(..., y, x)`` (e.g. ``(time, y, x)``; never dilated across
    time). The radius in pixels is ``ceil(buffer_m / resolution)`` so the buffer is at least
    `buffer_m`; `resolution` (metres per pixel) defaults to the ``x`` spacing. Lazy on dask:
    `map_overlap` with a halo of the radius, so chunk seams give the same result as one array.
    """
    if buffer_m < 0:
        raise InputError(f"buffer_m must be >= 0 metres, got {buffer_m}.")
    if buffer_m == 0:
        return flagged
    res = resolution if resolution is not None else grid_resolution(flagged)
    radius = math.ceil(buffer_m / res - 1e-9)
    if radius == 0:
        return flagged
    # scikit-image's disk is the standard structuring element; scipy does the dilation.
    structure2d = disk(radius).astype(bool)
    structure = structure2d.reshape((1,) * (flagged.ndim - 2) + structure2d.shape)
    if flagged.dims[-2:] != ("y", "x"):
        flagged = flagged.transpose(..., "y", "x")
    data = flagged.data
    if isinstance(data, da.Array):
        depth = {flagged.ndim - 2: radius, flagged.ndim - 1: radius}
        out = data.map_overlap(
            _dilate_block,
            depth=depth,
            boundary="none",
            dtype=bool,
            structure=structure,
            meta=np.array((), bool),
        )
    else:
        out = _dilate_block(np.asarray(data), structure)
    return flagged.copy(data=out)


# ---- per-stack masks ------------------------------------------------------------------------
def _sensor_family(platform: str) -> str:
    p = platform.lower().replace("_", "-").replace(" ", "-")
    if p.startswith("sentinel-2"):
        return "sentinel-2"
    if p.startswith("landsat"):
        return "landsat"
    raise InputError(
        f"unknown platform {platform!r}: cloud masking knows Sentinel-2 (SCL / s2cloudless) and "
        "Landsat (QA_PIXEL); remove the scene or add its platform."
    )


def _families(stack: xr.DataArray) -> np.ndarray:
    if "platform" not in stack.coords:
        raise InputError(
            "the stack has no 'platform' coordinate; cloud masking picks SCL or QA_PIXEL per "
            "scene from it (the loader sets it from the STAC items)."
        )
    plats = np.atleast_1d(stack["platform"].values)
    return np.array([_sensor_family(str(p)) for p in plats])


def _s2_masks(
    s2: xr.DataArray,
    bands: Sequence[str],
    scl_invalid: Collection[int],
    mask_snow: bool,
    s2cloudless: S2CloudlessMode,
    threshold: float,
) -> tuple[xr.DataArray, xr.DataArray]:
    """(footprint, clear) of Sentinel-2 scenes from SCL and/or s2cloudless."""
    if s2cloudless == "never" and S2_SCL_BAND not in bands:
        raise InputError(
            "the stack has Sentinel-2 scenes but no 'scl' band; load the SCL asset, or "
            "pass s2cloudless='always' with the bands it needs."
        )
    if s2cloudless != "always" and S2_SCL_BAND in bands:
        scl = s2.sel(band=S2_SCL_BAND, drop=True)
        fp, clear = s2_footprint(scl), s2_valid_mask(scl, invalid=scl_invalid, mask_snow=mask_snow)
        if s2cloudless == "never":
            return fp, clear
    else:
        fp = clear = xr.zeros_like(s2.isel(band=0, drop=True), dtype=bool)
    proba = s2cloudless_probability(s2)
    pc_fp = proba.notnull()
    pc_clear = pc_fp & (proba <= threshold)
    if s2cloudless == "always":
        return pc_fp, pc_clear
    # "fallback": SCL where it has data, s2cloudless elsewhere.
    return fp | pc_fp, xr.where(fp, clear, pc_clear)


def cloud_masks(
    stack: xr.DataArray,
    *,
    buffer_m: float = 0.0,
    mask_snow: bool = False,
    scl_invalid: Collection[int] = S2_SCL_INVALID,
    landsat_dilated: bool = True,
    landsat_cirrus: bool = True,
    s2cloudless: S2CloudlessMode = "never",
    s2cloudless_threshold: float = S2CLOUDLESS_THRESHOLD,
    resolution: float | None = None,
) -> xr.Dataset:
    """Footprint and clear masks of every scene of a stack, lazily.

    `stack`: dims ``(time, band, y, x)`` with per-time ``platform``; Sentinel-2 scenes are decoded
    from the ``scl`` band, Landsat scenes from ``qa_pixel``. With ``s2cloudless="fallback"``,
    Sentinel-2 pixels without SCL are classified by s2cloudless (probability >
    `s2cloudless_threshold` = cloud); with ``"always"`` SCL is ignored. `buffer_m` grows every
    flagged (non-clear, in-footprint) region by that many metres.

    Returns an ``xr.Dataset`` with boolean ``footprint`` and ``clear``, dims ``(time, y, x)``,
    with the stack's coords (``clear`` implies ``footprint``).
    """
    if s2cloudless not in ("never", "fallback", "always"):
        raise InputError(
            f"s2cloudless must be 'never', 'fallback' or 'always', got {s2cloudless!r}."
        )
    if stack.sizes.get("time", 0) == 0:
        raise InputError("the stack has no scenes; nothing to mask.")
    fam = _families(stack)
    bands = [str(b) for b in stack["band"].values]
    template = stack.isel(band=0, drop=True)
    # Each family is decoded on its own scenes only, then the scenes are put back in order.
    parts: list[tuple[np.ndarray, xr.DataArray, xr.DataArray]] = []
    s2_idx = np.flatnonzero(fam == "sentinel-2")
    if s2_idx.size:
        s2 = stack.isel(time=s2_idx)
        parts.append(
            (
                s2_idx,
                *_s2_masks(s2, bands, scl_invalid, mask_snow, s2cloudless, s2cloudless_threshold),
            )
        )
    ls_idx = np.flatnonzero(fam == "landsat")
    if ls_idx.size:
        if LANDSAT_QA_BAND not in bands:
            raise InputError(
                "the stack has Landsat scenes but no 'qa_pixel' band; load the QA_PIXEL asset."
            )
        qa = stack.isel(time=ls_idx).sel(band=LANDSAT_QA_BAND, drop=True)
        ls_clear = landsat_valid_mask(
            qa, dilated=landsat_dilated, cirrus=landsat_cirrus, snow=mask_snow
        )
        parts.append((ls_idx, landsat_footprint(qa), ls_clear))
    if len(parts) == 1:
        footprint, clear = parts[0][1], parts[0][2]
    else:
        order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
        footprint = xr.concat([p[1] for p in parts], dim="time").isel(time=order)
        clear = xr.concat([p[2] for p in parts], dim="time").isel(time=order)
    footprint = footprint.transpose("time", "y", "x")
    clear = clear.transpose("time", "y", "x")
    if buffer_m > 0:
        flagged = buffer_mask(footprint & ~clear, buffer_m, resolution=resolution)
        clear = clear & ~flagged
    coords = template.coords
    return xr.Dataset(
        {"footprint": footprint.assign_coords(coords), "clear": clear.assign_coords(coords)},
        attrs=dict(stack.attrs),
    )


def clear_fraction(masks: xr.Dataset) -> xr.DataArray:
    """Per-scene clear fraction, dims ``(time,)``: clear pixels / footprint pixels (lazy).

    0.0 for a scene with an empty footprint on this grid.
    """
    n_fp = masks["footprint"].sum(("y", "x"))
    n_clear = masks["clear"].sum(("y", "x"))
    frac = (n_clear / n_fp.where(n_fp > 0)).fillna(0.0)
    return frac.astype(np.float64).rename("clear_fraction")


# ---- screening ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RejectedScene:
    """A scene left out of the stack and why."""

    id: str
    clear_fraction: float
    reason: str


@dataclass(frozen=True)
class MaskReport:
    """What masking kept and rejected: small, JSON-friendly, for logs and Prefect artifacts.

    `clear_fraction` maps every scene id (kept or not) to its clear fraction (0..1).
    """

    clear_fraction: Mapping[str, float]
    rejected: tuple[RejectedScene, ...] = field(default=())
    min_clear_fraction: float = MIN_CLEAR_FRACTION

    @property
    def rejected_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rejected)

    @property
    def kept_ids(self) -> tuple[str, ...]:
        gone = set(self.rejected_ids)
        return tuple(i for i in self.clear_fraction if i not in gone)

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_clear_fraction": self.min_clear_fraction,
            "clear_fraction": dict(self.clear_fraction),
            "rejected": [
                {"id": r.id, "clear_fraction": r.clear_fraction, "reason": r.reason}
                for r in self.rejected
            ],
        }


def _scene_ids(stack: xr.DataArray | xr.Dataset) -> list[str]:
    if "id" in stack.coords:
        return [str(v) for v in np.atleast_1d(stack["id"].values)]
    return [str(v) for v in np.atleast_1d(stack["time"].values)]


def _rejected(fractions: np.ndarray, min_clear_fraction: float) -> np.ndarray:
    # A scene without a single clear pixel is useless even when min_clear_fraction is 0.
    return (fractions < min_clear_fraction) | (fractions <= 0.0)


def screen_scenes(
    fractions: xr.DataArray, *, min_clear_fraction: float = MIN_CLEAR_FRACTION
) -> MaskReport:
    """Decide which scenes to keep from their (computed) clear fractions, dims ``(time,)``.

    A scene is rejected when it has no clear pixel on the grid (whatever `min_clear_fraction`)
    or its clear fraction is below `min_clear_fraction`; each rejection gets a reason and one
    log line. Nothing is raised: a cloudy scene is an expected outcome, not a failure.
    """
    if not 0.0 <= min_clear_fraction <= 1.0:
        raise InputError(f"min_clear_fraction must be within [0, 1], got {min_clear_fraction}.")
    ids = _scene_ids(fractions)
    values = np.atleast_1d(np.asarray(fractions.values, dtype=float))
    rejected: list[RejectedScene] = []
    for scene_id, frac, bad in zip(ids, values, _rejected(values, min_clear_fraction), strict=True):
        if bad:
            reason = (
                "no clear pixel on the grid (fully flagged, or no data inside the grid)"
                if frac == 0.0
                else f"clear fraction {frac:.3f} below min_clear_fraction {min_clear_fraction:.3f}"
            )
            rejected.append(RejectedScene(scene_id, float(frac), reason))
            log.info("rejected scene %s: %s", scene_id, reason)
    return MaskReport(
        clear_fraction=dict(zip(ids, (float(v) for v in values), strict=True)),
        rejected=tuple(rejected),
        min_clear_fraction=min_clear_fraction,
    )


def mask_stack(
    stack: xr.DataArray,
    *,
    min_clear_fraction: float = MIN_CLEAR_FRACTION,
    buffer_m: float = 0.0,
    mask_snow: bool = False,
    scl_invalid: Collection[int] = S2_SCL_INVALID,
    landsat_dilated: bool = True,
    landsat_cirrus: bool = True,
    s2cloudless: S2CloudlessMode = "never",
    s2cloudless_threshold: float = S2CLOUDLESS_THRESHOLD,
    resolution: float | None = None,
) -> tuple[xr.DataArray, MaskReport]:
    """Mask clouds/shadows in a stack and drop scenes that are not clear enough.

    `stack`: dims ``(time, band, y, x)`` as the loader returns it (see the module docstring).
    Returns ``(masked, report)``:

    - `masked`: the reflectance bands only (``scl``/``qa_pixel`` dropped), NaN wherever a pixel
      is not clear; rejected scenes removed; new coords ``clear_fraction`` ``(time,)`` float and
      ``valid`` ``(time, y, x)`` bool (True = clear observation). Lazy (dask).
    - `report`: every scene's clear fraction and the rejected ids with reasons (`MaskReport`).

    Computing the clear fractions reads the mask bands once (a small ``(time,)`` result); the
    masked reflectance itself stays lazy. Parameters as in `cloud_masks` and `screen_scenes`.
    """
    masks = cloud_masks(
        stack,
        buffer_m=buffer_m,
        mask_snow=mask_snow,
        scl_invalid=scl_invalid,
        landsat_dilated=landsat_dilated,
        landsat_cirrus=landsat_cirrus,
        s2cloudless=s2cloudless,
        s2cloudless_threshold=s2cloudless_threshold,
        resolution=resolution,
    )
    fractions = clear_fraction(masks).compute()
    report = screen_scenes(fractions, min_clear_fraction=min_clear_fraction)
    keep = ~_rejected(np.atleast_1d(np.asarray(fractions.values, dtype=float)), min_clear_fraction)
    refl_bands = [b for b in stack["band"].values if str(b) not in MASK_BANDS]
    clear = masks["clear"].isel(time=keep)
    masked = (
        stack.isel(time=keep)
        .sel(band=refl_bands)
        .where(clear)
        .assign_coords(
            clear_fraction=("time", fractions.values[keep]),
            valid=(("time", "y", "x"), clear.data),
        )
    )
    masked.attrs = dict(stack.attrs)
    return masked, report


# ---- Prefect tasks -------------------------------------------------------
# Stacks are lazy dask arrays: hashing them for a cache key would read the data, so these
# tasks do not cache; their results are cheap graphs, the work happens downstream.
@task(
    name="mask-clouds",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_transient_only,
    cache_policy=NO_CACHE,
    persist_result=False,
    tags=["cpu"],
)
def mask_clouds(
    stack: xr.DataArray,
    *,
    min_clear_fraction: float = MIN_CLEAR_FRACTION,
    buffer_m: float = 0.0,
    mask_snow: bool = False,
    s2cloudless: S2CloudlessMode = "never",
) -> tuple[xr.DataArray, MaskReport]:
    """Prefect task around `mask_stack`; logs every rejected scene with its reason."""
    masked, report = mask_stack(
        stack,
        min_clear_fraction=min_clear_fraction,
        buffer_m=buffer_m,
        mask_snow=mask_snow,
        s2cloudless=s2cloudless,
    )
    logger = get_run_logger()
    for r in report.rejected:
        logger.info("rejected scene %s: %s", r.id, r.reason)
    logger.info(
        "cloud mask: kept %d of %d scenes (min_clear_fraction=%.2f)",
        len(report.kept_ids),
        len(report.clear_fraction),
        min_clear_fraction,
    )
    return masked, report

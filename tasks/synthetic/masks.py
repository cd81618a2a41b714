"""The products' own quality layers: Sentinel-2 SCL and Landsat Collection 2 QA_PIXEL.

A product's cloud mask is the output of an imperfect classifier (Sen2Cor, CFMask), not the
truth. It is derived here from the truth quantities plus smooth random errors of a few
percent, at the places real classifiers fail: cloud edges, thin cirrus (undetectable without
the 1.38 um band of MSI/OLI), shadow edges, and bright built-up surfaces taken for cloud
(a known Sen2Cor commission, e.g. Baetens et al. 2019, Remote Sens. 11(4)).

QA_PIXEL bit layout (USGS LSDS-1619 Landsat 8-9 and LSDS-1618 Landsat 4-7 Collection 2 Level-2
Science Product Guides): 0 fill, 1 dilated cloud, 2 cirrus (OLI), 3 cloud, 4 cloud shadow,
5 snow, 6 clear (cloud and dilated cloud unset), 7 water, 8-9 cloud confidence, 10-11 shadow
confidence, 12-13 snow/ice confidence, 14-15 cirrus confidence (OLI); confidences 1 low,
2 medium, 3 high. Real clear-land values: 21824 (OLI) and 5440 (TM/ETM+). On Landsat 4-7 water
the clear bit is unset (USGS Collection 2 known issue, Feb 2021): clear water is 5504 there,
21952 on OLI.

SCL codes (ESA Sentinel-2 L2A Product Specification): 0 no data, 1 saturated/defective,
2 dark features/shadows, 3 cloud shadows, 4 vegetation, 5 not vegetated, 6 water,
7 unclassified, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus, 11 snow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import binary_dilation, gaussian_filter

__all__ = [
    "QA",
    "SCL",
    "Detection",
    "detect",
    "encode_qa_pixel",
    "encode_scl",
    "qa_pixel_bitfields",
]


class QA:
    """QA_PIXEL bit values."""

    FILL = 1 << 0
    DILATED = 1 << 1
    CIRRUS = 1 << 2
    CLOUD = 1 << 3
    SHADOW = 1 << 4
    SNOW = 1 << 5
    CLEAR = 1 << 6
    WATER = 1 << 7
    CLOUD_CONF_SHIFT = 8
    SHADOW_CONF_SHIFT = 10
    SNOW_CONF_SHIFT = 12
    CIRRUS_CONF_SHIFT = 14
    LOW, MEDIUM, HIGH = 1, 2, 3


class SCL:
    """Sentinel-2 scene classification codes."""

    NO_DATA = 0
    SATURATED = 1
    DARK = 2
    CLOUD_SHADOW = 3
    VEGETATION = 4
    NOT_VEGETATED = 5
    WATER = 6
    UNCLASSIFIED = 7
    CLOUD_MEDIUM = 8
    CLOUD_HIGH = 9
    THIN_CIRRUS = 10
    SNOW = 11


@dataclass(frozen=True)
class Detection:
    """What a product's classifier reports per pixel (bool arrays of one shape).

    `cloud`: detected cloud, of which `cloud_core` is the opaque part (high probability) and
    `cloud_fringe` (not cloud) the thin edge a classifier is unsure of; `cirrus`, `shadow`,
    `water`, `vegetation`, `dark`, `unclassified`; `fill`: no data; `snow` (None where it was
    not looked for).
    """

    fill: NDArray[np.bool_]
    cloud: NDArray[np.bool_]
    cloud_core: NDArray[np.bool_]
    cloud_fringe: NDArray[np.bool_]
    cirrus: NDArray[np.bool_]
    shadow: NDArray[np.bool_]
    water: NDArray[np.bool_]
    vegetation: NDArray[np.bool_]
    dark: NDArray[np.bool_]
    unclassified: NDArray[np.bool_]
    snow: NDArray[np.bool_] | None = None


#: Snow test (Sen2Cor's and CFMask's spectral core): NDSI = (green - swir16) / (green + swir16)
#: above this, with NIR and green bright enough to exclude water (Dozier 1989; Zhu & Woodcock
#: 2012 use NDSI > 0.15, NIR > 0.11, green > 0.1 with a thermal test this simulator lacks).
SNOW_NDSI = 0.4
_SNOW_NIR = 0.11
_SNOW_GREEN = 0.1


def _smooth_error(
    rng: np.random.Generator, shape: tuple[int, int], sigma_px: float = 2.0
) -> NDArray[np.float64]:
    field = gaussian_filter(rng.standard_normal(shape), sigma_px)
    return (field - field.mean()) / max(float(field.std()), 1e-12)


def detect(
    *,
    opacity: NDArray[np.float32],
    shadow: NDArray[np.float32],
    cirrus: NDArray[np.float32],
    valid: NDArray[np.bool_],
    blue: NDArray[np.float32],
    green: NDArray[np.float32],
    red: NDArray[np.float32],
    nir: NDArray[np.float32],
    has_cirrus_band: bool,
    urban_commission: bool,
    rng: np.random.Generator,
    swir16: NDArray[np.float32] | None = None,
) -> Detection:
    """Classify one product's pixels from truth pixel means (cloud/shadow opacity 0-1, cirrus
    reflectance) and the noise-free reflectance, with realistic errors.

    Errors: opacity and shadow seen through smooth noise (sigma 0.05 / 0.07, a few % of edge
    pixels flip); without a cirrus band (TM/ETM+) cirrus is seen only where thicker than ~0.012
    reflectance, as cloud (CFMask's thermal test); with `urban_commission`, some bright
    built-up pixels are taken for cloud (Sen2Cor). With `swir16`, snow is detected by its
    NDSI (`SNOW_NDSI`) where no cloud, cirrus or shadow was; it takes no random draw.
    """
    shape = opacity.shape
    seen_opacity = opacity + 0.05 * _smooth_error(rng, shape)
    seen_shadow = shadow + 0.07 * _smooth_error(rng, shape)
    seen_cirrus = cirrus * (1.0 + 0.2 * _smooth_error(rng, shape))
    cloud = seen_opacity > 0.5
    core = seen_opacity > 0.8
    if has_cirrus_band:
        cirrus_flag = (seen_cirrus > 0.01) & ~cloud
    else:
        cloud |= seen_cirrus > 0.012
        cirrus_flag = np.zeros(shape, dtype=bool)
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    if urban_commission:
        bright = (blue > 0.11) & (ndvi < 0.25) & ~cloud
        cloud |= bright & (_smooth_error(rng, shape, 1.0) > 2.0)
    fringe = (seen_opacity > 0.4) & ~cloud
    shadow_flag = (seen_shadow > 0.5) & ~cloud & ~cirrus_flag
    snow = None
    if swir16 is not None:
        ndsi = (green - swir16) / np.maximum(green + swir16, 1e-6)
        snow = (ndsi > SNOW_NDSI) & (nir > _SNOW_NIR) & (green > _SNOW_GREEN)
        snow &= ~cloud & ~cirrus_flag & ~shadow_flag & valid
    water = (nir < 0.05) & (green > nir) & ~cloud & ~cirrus_flag & ~shadow_flag
    if snow is not None:
        water &= ~snow
    clear = ~(cloud | cirrus_flag | shadow_flag | water)
    if snow is not None:
        clear &= ~snow
    return Detection(
        fill=~valid,
        cloud=cloud & valid,
        cloud_core=core & cloud & valid,
        cloud_fringe=fringe & valid,
        cirrus=cirrus_flag & valid,
        shadow=shadow_flag & valid,
        water=water & valid,
        vegetation=clear & (ndvi > 0.4) & valid,
        dark=clear & (ndvi <= 0.4) & (nir < 0.08) & valid,
        unclassified=clear & (_smooth_error(rng, shape, 1.0) > 2.75) & valid,
        snow=snow,
    )


def encode_scl(d: Detection) -> NDArray[np.uint8]:
    """Sentinel-2 SCL codes (uint8) of a detection; later assignments take precedence."""
    scl = np.full(d.fill.shape, SCL.NOT_VEGETATED, dtype=np.uint8)
    scl[d.vegetation] = SCL.VEGETATION
    scl[d.dark] = SCL.DARK
    scl[d.unclassified] = SCL.UNCLASSIFIED
    scl[d.water] = SCL.WATER
    if d.snow is not None:
        scl[d.snow] = SCL.SNOW
    scl[d.shadow] = SCL.CLOUD_SHADOW
    scl[d.cirrus] = SCL.THIN_CIRRUS
    scl[d.cloud] = SCL.CLOUD_MEDIUM
    scl[d.cloud_core] = SCL.CLOUD_HIGH
    scl[d.fill] = SCL.NO_DATA
    return scl


def encode_qa_pixel(d: Detection, *, oli: bool) -> NDArray[np.uint16]:
    """Landsat Collection 2 QA_PIXEL (uint16) of a detection.

    Detected cloud sets bit 3 with high confidence; the unsure fringe only medium confidence.
    The dilated-cloud bit (1) marks fringe pixels next to cloud: CFMask dilates clouds to catch
    their thin edges, here limited to edge pixels with cloud signal so that a mask that honours
    the bit stays within a few % of the truth. Shadow keeps the clear bit, as in real products
    (23888 on OLI). Cirrus (bit 2, confidence 14-15) exists on OLI only. Fill is exactly 1.
    Snow sets bit 5 with high snow confidence and keeps the clear bit (30048 on OLI, a value
    of real Collection 2 products over snow).
    """
    dilated = binary_dilation(d.cloud, structure=np.ones((3, 3), bool)) & d.cloud_fringe
    cloud_conf = np.where(d.cloud, QA.HIGH, np.where(d.cloud_fringe, QA.MEDIUM, QA.LOW))
    shadow_conf = np.where(d.shadow, QA.HIGH, QA.LOW)
    snow = d.snow if d.snow is not None else np.zeros(d.fill.shape, dtype=bool)
    snow_conf = np.where(snow, QA.HIGH, QA.LOW)
    qa = (
        (cloud_conf << QA.CLOUD_CONF_SHIFT)
        | (shadow_conf << QA.SHADOW_CONF_SHIFT)
        | (snow_conf << QA.SNOW_CONF_SHIFT)
        | np.where(snow, QA.SNOW, 0)
        | np.where(d.cloud, QA.CLOUD, 0)
        | np.where(dilated, QA.DILATED, 0)
        | np.where(d.shadow, QA.SHADOW, 0)
        | np.where(d.water, QA.WATER, 0)
    )
    clear = ~(d.cloud | dilated)
    if oli:
        qa |= np.where(
            d.cirrus, QA.CIRRUS | (QA.HIGH << QA.CIRRUS_CONF_SHIFT), QA.LOW << QA.CIRRUS_CONF_SHIFT
        )
    else:
        clear &= ~d.water  # Landsat 4-7 known issue: clear bit unset over water
    qa |= np.where(clear, QA.CLEAR, 0)
    qa = np.where(d.fill, QA.FILL, qa)
    return qa.astype(np.uint16)


# QA_PIXEL one-bit flags: name, offset, description, (unset name, text), (set name, text).
_FLAG_BITS = (
    ("fill", 0, "Image or fill data", ("not_fill", "Image data"), ("fill", "Fill data")),
    (
        "dilated_cloud", 1, "Dilated cloud",
        ("not_dilated", "Cloud is not dilated or no cloud"), ("dilated", "Cloud dilation"),
    ),
    (
        "cirrus", 2, "Cirrus mask",
        ("not_cirrus", "Cirrus confidence is not high"), ("cirrus", "High confidence cirrus"),
    ),
    (
        "cloud", 3, "Cloud mask",
        ("not_cloud", "Cloud confidence is not high"), ("cloud", "High confidence cloud"),
    ),
    (
        "cloud_shadow", 4, "Cloud shadow mask",
        ("not_shadow", "Cloud shadow confidence is not high"),
        ("shadow", "High confidence cloud shadow"),
    ),
    (
        "snow", 5, "Snow/Ice mask",
        ("not_snow", "Snow/Ice confidence is not high"), ("snow", "High confidence snow cover"),
    ),
    (
        "clear", 6, "Clear mask",
        ("not_clear", "Cloud or dilated cloud bits are set"),
        ("clear", "Cloud and dilated cloud bits are not set"),
    ),
    ("water", 7, "Water mask", ("not_water", "Land or cloud"), ("water", "Water")),
)  # fmt: skip
# Two-bit confidences: name, offset, description, subject of the class texts.
_CONFIDENCE_BITS = (
    ("cloud_confidence", 8, "Cloud confidence levels", "cloud"),
    ("cloud_shadow_confidence", 10, "Cloud shadow confidence levels", "cloud shadow"),
    ("snow_confidence", 12, "Snow/Ice confidence levels", "snow/ice"),
    ("cirrus_confidence", 14, "Cirrus confidence levels", "cirrus"),
)


def qa_pixel_bitfields(*, oli: bool) -> list[dict[str, Any]]:
    """``classification:bitfields`` of QA_PIXEL as Earth Search declares it (cirrus fields on
    OLI only)."""
    fields: list[dict[str, Any]] = []
    for name, offset, description, unset, is_set in _FLAG_BITS:
        classes = [
            {"value": 0, "name": unset[0], "description": unset[1]},
            {"value": 1, "name": is_set[0], "description": is_set[1]},
        ]
        fields.append(
            {
                "name": name,
                "description": description,
                "offset": offset,
                "length": 1,
                "classes": classes,
            }
        )
    for name, offset, description, subject in _CONFIDENCE_BITS:
        medium = (
            ("medium", f"Medium confidence {subject}")
            if name == "cloud_confidence"
            else ("reserved", "Reserved - value not used")
        )
        levels = [
            ("not_set", "No confidence level set"),
            ("low", f"Low confidence {subject}"),
            medium,
            ("high", f"High confidence {subject}"),
        ]
        classes = [{"value": v, "name": n, "description": d} for v, (n, d) in enumerate(levels)]
        fields.append(
            {
                "name": name,
                "description": description,
                "offset": offset,
                "length": 2,
                "classes": classes,
            }
        )
    return [f for f in fields if oli or not f["name"].startswith("cirrus")]

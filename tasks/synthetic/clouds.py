"""Clouds, thin cirrus and cloud shadows of one acquisition.

Cloud fields are random fields with a power-law spectrum (cloud liquid water scales as
k^-5/3 in 1-D, Cahalan & Snider 1989, Remote Sens. Environ. 28; 2-D power ~ k^-8/3),
thresholded so the cloudy share of the area matches the acquisition's drawn cloud cover. The
per-scene cover is Beta-distributed with a U shape: most scenes are nearly clear or nearly
overcast, mean cloudiness ~55-67 % as satellite climatologies report (King et al. 2013, IEEE
TGRS 51; Wilson & Jetz 2016, PLoS Biol. 14). Shadows are the cloud opacity field displaced
toward the anti-solar direction by cloud height x tan(solar zenith).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from tasks.aoi import GridSpec
from tasks.synthetic.acquisitions import Acquisition
from tasks.synthetic.config import ArchiveConfig
from tasks.synthetic.geometry import Bilinear
from tasks.synthetic.landscape import rng_for

__all__ = ["Sky", "TruthClass", "build_sky", "truth_classes"]

_SKY_RESOLUTION = 20.0  # m; clouds are smooth at this scale
_SPECTRAL_SLOPE = 8.0 / 3.0
_INNER_SCALE_M = 40.0  # smallest cloud structures resolved (smooths pixel-scale speckle)
_OPACITY_WIDTH = 0.4  # field units from transparent to opaque across a cloud edge
_CIRRUS_MAX = 0.04  # thin cirrus adds at most this much reflectance (VNIR)
_CIRRUS_VISIBLE = 0.01  # cirrus reflectance above which truth calls a pixel cirrus
_MAX_SHADOW_OFFSET_M = 15_000.0  # caps cloud height x tan(zenith) for a low winter sun
_SKY_PAD_M = 200.0  # sky beyond the world grid: room for misregistration


class TruthClass(IntEnum):
    """Codes of the truth cloud mask rasters (uint8)."""

    CLEAR = 0
    CLOUD = 1
    CIRRUS = 2
    SHADOW = 3
    NODATA = 255


def _power_law_field(
    rng: np.random.Generator,
    shape: tuple[int, int],
    outer_scale_px: float,
    stretch: float = 1.0,
    angle: float = 0.0,
) -> NDArray[np.float64]:
    """Random field with power spectrum (k^2 + k0^2)^(-slope/2), unit variance.

    `outer_scale_px` sets k0 (the size of the largest cloud systems); `stretch` > 1 elongates
    features along `angle` (radians), as cirrus streaks."""
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.fftfreq(shape[1])[None, :]
    ca, sa = math.cos(angle), math.sin(angle)
    ku, kv = kx * ca + ky * sa, -kx * sa + ky * ca
    k2 = (ku * stretch) ** 2 + kv**2 + (1.0 / outer_scale_px) ** 2
    amplitude = k2 ** (-_SPECTRAL_SLOPE / 4.0) * np.exp(
        -k2 * (_INNER_SCALE_M / _SKY_RESOLUTION) ** 2
    )
    noise = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    field = np.fft.ifft2(noise * amplitude).real
    return (field - field.mean()) / field.std()


@dataclass(frozen=True)
class Sky:
    """Cloud opacity and cirrus reflectance on a 20 m grid in the main UTM zone, plus the
    shadow displacement (metres, toward the sun; a shadow lies at cloud position minus it)."""

    grid: GridSpec
    opacity: NDArray[np.float32]
    cirrus: NDArray[np.float32]
    toward_sun_m: tuple[float, float]

    def sample(
        self, x: NDArray[np.float64], y: NDArray[np.float64]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """(cloud opacity 0-1, shadow opacity 0-1, cirrus reflectance) at map points of the
        main zone (arrays of the points' shape)."""
        here = self._interpolator(x, y)
        dx, dy = self.toward_sun_m
        there = self._interpolator(x + dx, y + dy)
        return here(self.opacity), there(self.opacity), here(self.cirrus)

    def _interpolator(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> Bilinear:
        xmin, _, _, ymax = self.grid.bounds
        cols = (x - xmin) / self.grid.resolution - 0.5
        rows = (ymax - y) / self.grid.resolution - 0.5
        return Bilinear(rows, cols, self.grid.shape)


def build_sky(config: ArchiveConfig, acquisition: Acquisition, area: GridSpec) -> Sky:
    """The clouds of `acquisition` over `area` (the world grid), deterministic in the seed."""
    rng = rng_for(config, "sky", acquisition.key)
    zenith = math.radians(90.0 - max(acquisition.sun_elevation, 1.0))
    offset = min(acquisition.cloud_height_m * math.tan(zenith), _MAX_SHADOW_OFFSET_M)
    az = math.radians(acquisition.sun_azimuth)
    toward_sun = (offset * math.sin(az), offset * math.cos(az))
    xmin, ymin, xmax, ymax = area.bounds
    pad = _SKY_PAD_M
    bounds = (
        xmin - pad + min(0.0, toward_sun[0]),
        ymin - pad + min(0.0, toward_sun[1]),
        xmax + pad + max(0.0, toward_sun[0]),
        ymax + pad + max(0.0, toward_sun[1]),
    )
    r = _SKY_RESOLUTION
    snapped = (
        math.floor(bounds[0] / r) * r,
        math.floor(bounds[1] / r) * r,
        math.ceil(bounds[2] / r) * r,
        math.ceil(bounds[3] / r) * r,
    )
    grid = GridSpec(area.epsg, r, snapped)
    outer_px = float(rng.uniform(1500.0, 6000.0)) / r
    clouds = _power_law_field(rng, grid.shape, outer_px)
    inside = _window_values(clouds, grid, area)
    threshold = float(np.quantile(inside, 1.0 - acquisition.cloud_cover))
    opacity = np.clip(0.5 + (clouds - threshold) / _OPACITY_WIDTH, 0.0, 1.0)

    cirrus = np.zeros(grid.shape)
    if acquisition.cirrus_cover > 0:
        streaks = _power_law_field(
            rng, grid.shape, 8000.0 / r, stretch=4.0, angle=float(rng.uniform(0, math.pi))
        )
        level = float(
            np.quantile(_window_values(streaks, grid, area), 1.0 - acquisition.cirrus_cover)
        )
        # From the visibility threshold at a streak's edge up to _CIRRUS_MAX within one unit of
        # the field; below the edge a sub-visible haze at half strength.
        cirrus = _CIRRUS_MAX * np.clip(streaks - level + _CIRRUS_VISIBLE / _CIRRUS_MAX, 0.0, 1.0)
        cirrus[streaks < level] *= 0.5
    return Sky(grid, opacity.astype(np.float32), cirrus.astype(np.float32), toward_sun)


def _window_values(
    field: NDArray[np.float64], grid: GridSpec, area: GridSpec
) -> NDArray[np.float64]:
    """Values of `field` (on `grid`) inside the bounds of `area`."""
    r = grid.resolution
    c0 = round((area.bounds[0] - grid.bounds[0]) / r)
    c1 = round((area.bounds[2] - grid.bounds[0]) / r)
    r0 = round((grid.bounds[3] - area.bounds[3]) / r)
    r1 = round((grid.bounds[3] - area.bounds[1]) / r)
    return field[r0:r1, c0:c1]


def truth_classes(
    opacity: NDArray[np.float32],
    shadow: NDArray[np.float32],
    cirrus: NDArray[np.float32],
    valid: NDArray[np.bool_],
) -> NDArray[np.uint8]:
    """Truth cloud mask of pixel means: cloud where opacity > 0.5, else cirrus where cirrus
    reflectance > 0.01, else shadow where shadow opacity > 0.5; 255 outside the data."""
    out = np.full(opacity.shape, TruthClass.CLEAR, dtype=np.uint8)
    out[shadow > 0.5] = TruthClass.SHADOW
    out[cirrus > _CIRRUS_VISIBLE] = TruthClass.CIRRUS
    out[opacity > 0.5] = TruthClass.CLOUD
    out[~valid] = TruthClass.NODATA
    return out

"""Surface spectra and vegetation phenology, integrated over each instrument's bands.

Every surface is a linear mixture of a few endmember spectra (reflectance over wavelength).
The nodes below are coarse hand-digitised approximations (shape and magnitude, not exact
values) of library spectra:

* USGS Spectral Library version 7 (Kokaly et al. 2017, USGS Data Series 1035): "Lawn_Grass",
  "Aspen_Leaf", "Grass_dry", "Asphalt_Tar", "Concrete_WTC01", soils and "Water".
* ECOSTRESS spectral library 1.0 (Meerdink et al. 2019, Remote Sens. Environ. 230): manmade
  materials ("concrete", "terra cotta roofing tile", "asphalt"), soils, non-photosynthetic
  vegetation.

Green vegetation is scaled to canopy level (NIR plateau ~0.45); water to inland lake surface
reflectance as Level-2 products report it. Band values are integrals with a Gaussian relative
spectral response (centre, FWHM) from `tasks.synthetic.bands.RESPONSE`.

TM and ETM+ differ from OLI by more than their bandpasses (calibration, atmospheric correction):
their band values follow the published ETM+ -> OLI relationship of Roy et al. 2016 (see
`_ROY2016_ETM_TO_OLI`), as real Collection 2 products do on average.

Phenology is a double logistic of day of year (Zhang et al. 2003, Remote Sens. Environ. 84;
Beck et al. 2006, Remote Sens. Environ. 100) for the green cover fraction.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from functools import cache

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit

from tasks.synthetic.bands import RESPONSE, reflectance_assets
from tasks.synthetic.config import Platform

__all__ = [
    "BASE_ENDMEMBERS",
    "CROPS",
    "FOREST",
    "GRASS",
    "RICE",
    "RICE_CODE",
    "RICE_FLOOD",
    "Endmember",
    "Phenology",
    "band_table",
    "cloud_band_values",
    "rice_flood",
]


class Endmember(IntEnum):
    """Rows of a band table; order matters (it indexes abundance arrays)."""

    WATER = 0
    GREEN_VEG = 1
    DRY_VEG = 2
    SOIL = 3
    ROOF_CONCRETE = 4
    ASPHALT = 5
    SNOW = 6
    ROOF_TILE = 7
    ROOF_METAL = 8
    ROOF_BITUMEN = 9


#: The endmembers of the demo landscape; the others (snow, other roof materials) enter a
#: surface only where a configuration asks for them.
BASE_ENDMEMBERS = 6


# (wavelength um, reflectance) nodes; linear in between, flat beyond the ends.
_NODES: dict[Endmember, tuple[tuple[float, float], ...]] = {
    Endmember.WATER: (
        (0.40, 0.045), (0.45, 0.050), (0.50, 0.050), (0.55, 0.048), (0.60, 0.035),
        (0.65, 0.025), (0.70, 0.018), (0.75, 0.010), (0.80, 0.008), (0.90, 0.005),
        (1.00, 0.004), (1.30, 0.003), (1.60, 0.003), (2.00, 0.002), (2.50, 0.002),
    ),
    Endmember.GREEN_VEG: (
        (0.40, 0.030), (0.45, 0.032), (0.50, 0.040), (0.55, 0.085), (0.60, 0.055),
        (0.65, 0.035), (0.67, 0.030), (0.69, 0.040), (0.70, 0.070), (0.72, 0.180),
        (0.74, 0.320), (0.76, 0.400), (0.80, 0.440), (0.90, 0.455), (1.00, 0.450),
        (1.10, 0.440), (1.20, 0.400), (1.30, 0.380), (1.40, 0.250), (1.45, 0.180),
        (1.50, 0.220), (1.60, 0.290), (1.70, 0.300), (1.80, 0.250), (1.90, 0.100),
        (1.95, 0.070), (2.00, 0.090), (2.10, 0.140), (2.20, 0.160), (2.30, 0.130),
        (2.40, 0.090), (2.50, 0.070),
    ),
    Endmember.DRY_VEG: (
        (0.40, 0.060), (0.45, 0.075), (0.50, 0.095), (0.55, 0.130), (0.60, 0.165),
        (0.65, 0.195), (0.70, 0.225), (0.75, 0.255), (0.80, 0.280), (0.90, 0.310),
        (1.00, 0.330), (1.10, 0.350), (1.20, 0.360), (1.30, 0.365), (1.40, 0.320),
        (1.45, 0.300), (1.50, 0.330), (1.60, 0.400), (1.70, 0.410), (1.80, 0.400),
        (1.90, 0.270), (1.95, 0.250), (2.00, 0.270), (2.10, 0.320), (2.20, 0.300),
        (2.30, 0.320), (2.40, 0.290), (2.50, 0.260),
    ),
    Endmember.SOIL: (
        (0.40, 0.060), (0.45, 0.075), (0.50, 0.095), (0.55, 0.115), (0.60, 0.140),
        (0.65, 0.160), (0.70, 0.180), (0.75, 0.195), (0.80, 0.210), (0.90, 0.230),
        (1.00, 0.245), (1.20, 0.270), (1.40, 0.260), (1.45, 0.240), (1.60, 0.300),
        (1.80, 0.310), (1.90, 0.250), (1.95, 0.230), (2.00, 0.250), (2.10, 0.280),
        (2.20, 0.270), (2.30, 0.260), (2.50, 0.240),
    ),
    Endmember.ROOF_CONCRETE: (
        (0.40, 0.100), (0.45, 0.120), (0.50, 0.140), (0.55, 0.160), (0.60, 0.190),
        (0.65, 0.210), (0.70, 0.220), (0.80, 0.240), (0.90, 0.250), (1.00, 0.270),
        (1.20, 0.310), (1.40, 0.320), (1.60, 0.370), (1.80, 0.380), (2.00, 0.330),
        (2.20, 0.340), (2.50, 0.300),
    ),
    Endmember.ASPHALT: (
        (0.40, 0.050), (0.50, 0.060), (0.60, 0.070), (0.70, 0.075), (0.80, 0.080),
        (1.00, 0.090), (1.20, 0.100), (1.60, 0.110), (2.00, 0.110), (2.20, 0.105),
        (2.50, 0.100),
    ),
    # Aged snow on the ground (grain growth and impurities lower the visible from the ~0.97 of
    # fresh snow): ice absorption bands at 1.03, 1.25, 1.5 and 2.0 um, dark in the SWIR, the
    # basis of the NDSI (Dozier 1989; USGS splib07 "Melting_snow" shape).
    Endmember.SNOW: (
        (0.40, 0.86), (0.50, 0.86), (0.60, 0.85), (0.70, 0.83), (0.80, 0.79), (0.90, 0.72),
        (1.00, 0.58), (1.03, 0.52), (1.10, 0.56), (1.25, 0.40), (1.30, 0.36), (1.45, 0.06),
        (1.50, 0.03), (1.60, 0.05), (1.70, 0.07), (1.80, 0.08), (1.90, 0.01), (2.00, 0.01),
        (2.20, 0.04), (2.30, 0.03), (2.50, 0.01),
    ),
    # Terra cotta roofing tile (ECOSTRESS manmade): iron-oxide red, dark blue, bright SWIR.
    Endmember.ROOF_TILE: (
        (0.40, 0.060), (0.50, 0.070), (0.55, 0.090), (0.60, 0.200), (0.65, 0.280),
        (0.70, 0.320), (0.80, 0.360), (0.90, 0.380), (1.00, 0.400), (1.20, 0.450),
        (1.60, 0.500), (2.00, 0.480), (2.20, 0.470), (2.50, 0.450),
    ),
    # Weathered galvanised steel sheet (industrial halls): bright and spectrally flat.
    Endmember.ROOF_METAL: (
        (0.40, 0.300), (0.60, 0.320), (0.80, 0.330), (1.00, 0.340), (1.60, 0.330),
        (2.20, 0.300), (2.50, 0.280),
    ),
    # Bitumen / tar-paper flat roof: dark, rising slowly into the SWIR.
    Endmember.ROOF_BITUMEN: (
        (0.40, 0.045), (0.60, 0.055), (0.80, 0.065), (1.00, 0.075), (1.60, 0.095),
        (2.20, 0.100), (2.50, 0.095),
    ),
}  # fmt: skip

# Thick liquid-water cloud top reflectance: bright and flat in the VNIR, lower in the SWIR where
# water droplets absorb (cf. Nakajima & King 1990, J. Atmos. Sci. 47).
_CLOUD_NODES = ((0.40, 0.62), (0.90, 0.60), (1.20, 0.55), (1.60, 0.45), (2.20, 0.30), (2.50, 0.25))

_GRID_UM = np.arange(0.35, 2.60, 0.001)  # 1 nm integration grid


def _spectrum(nodes: tuple[tuple[float, float], ...]) -> NDArray[np.float64]:
    wl, refl = np.asarray(nodes).T
    return np.interp(_GRID_UM, wl, refl)


def _band_value(spectrum: NDArray[np.float64], center_nm: float, fwhm_nm: float) -> float:
    """Reflectance seen through a Gaussian response of the given centre and FWHM (nm)."""
    sigma_um = fwhm_nm / 1000.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    weight = np.exp(-0.5 * ((_GRID_UM - center_nm / 1000.0) / sigma_um) ** 2)
    return float(np.sum(weight * spectrum) / np.sum(weight))


#: Roy et al. 2016 (Remote Sens. Environ. 185:57-70), Table 2, OLS fit ``OLI = a + b * ETM+`` per
#: band over 59 million pixel pairs, (b, a) by asset. The simulator inverts it to make TM/ETM+
#: reflectance from the OLI-band reflectance of the same surface. It is deliberately a copy, not
#: an import of `tasks.harmonize`: the archive is the truth the pipeline is checked against, so a
#: wrong digit in the pipeline's table must show up as a test failure, not cancel out.
_ROY2016_ETM_TO_OLI: dict[str, tuple[float, float]] = {
    "blue": (0.8474, 0.0003),
    "green": (0.8483, 0.0088),
    "red": (0.9047, 0.0061),
    "nir08": (0.8462, 0.0412),
    "swir16": (0.8937, 0.0254),
    "swir22": (0.9071, 0.0172),
}


@cache
def band_table(platform: Platform) -> NDArray[np.float32]:
    """Endmember reflectance per band: shape (len(Endmember), n_bands), band order as
    `reflectance_assets(platform)`, unitless surface reflectance. Read-only (cached).

    OLI and MSI: the endmember spectra integrated over the band responses. TM and ETM+: the OLI
    values through the inverse of Roy et al. 2016's ETM+ -> OLI fit. Surfaces are linear
    mixtures of endmembers with fractions summing to one, so the affine relation holds for
    every mixture too.
    """
    assets = [a.asset for a in reflectance_assets(platform)]
    if platform in ("landsat-5", "landsat-7"):
        oli_assets = [a.asset for a in reflectance_assets("landsat-8")]
        oli = band_table("landsat-8")
        table = np.empty((len(Endmember), len(assets)), dtype=np.float32)
        for j, asset in enumerate(assets):
            slope, intercept = _ROY2016_ETM_TO_OLI[asset]
            table[:, j] = (oli[:, oli_assets.index(asset)] - intercept) / slope
        table = np.clip(table, 0.0, None)  # dark water in the blue: no negative reflectance
        table.flags.writeable = False
        return table
    response = RESPONSE[platform]
    table = np.empty((len(Endmember), len(assets)), dtype=np.float32)
    for member in Endmember:
        spectrum = _spectrum(_NODES[member])
        for j, asset in enumerate(assets):
            table[member, j] = _band_value(spectrum, *response[asset])
    table.flags.writeable = False
    return table


def cloud_band_values(platform: Platform) -> NDArray[np.float32]:
    """Thick-cloud reflectance per band of `platform` (shape (n_bands,))."""
    spectrum = _spectrum(_CLOUD_NODES)
    response = RESPONSE[platform]
    return np.array(
        [_band_value(spectrum, *response[a.asset]) for a in reflectance_assets(platform)],
        dtype=np.float32,
    )


@dataclass(frozen=True)
class Phenology:
    """Green cover fraction over the year as a double logistic, plus harvest for crops.

    `sos`/`eos`: days of year of the green-up and senescence inflections; `rate_up`/`rate_down`
    in 1/day; `f_min`/`f_max`: dormant and peak green cover (0-1); `harvest`: day of year the
    standing residue is cut (None: never, e.g. grass and forest).
    """

    sos: float
    eos: float
    f_min: float
    f_max: float
    rate_up: float = 0.12
    rate_down: float = 0.10
    harvest: float | None = None

    def green(self, doy: float, shift: NDArray[np.float32] | float = 0.0) -> NDArray[np.float32]:
        """Green cover fraction at day of year `doy`; `shift` (days) delays the whole cycle
        per pixel (field-to-field sowing differences)."""
        t = doy - np.asarray(shift, dtype=np.float32)
        up = expit(self.rate_up * (t - self.sos))
        down = expit(-self.rate_down * (t - self.eos))
        return (self.f_min + (self.f_max - self.f_min) * (up + down - 1.0)).astype(np.float32)

    def residue(self, doy: float, shift: NDArray[np.float32] | float = 0.0) -> NDArray[np.float32]:
        """Senescent (dry) cover of a crop: browned canopy from senescence to harvest, then
        stubble ploughed under within about a month. Zero for a plant without `harvest`."""
        if self.harvest is None:
            return np.zeros_like(np.asarray(shift, dtype=np.float32)) + np.float32(0.0)
        t = doy - np.asarray(shift, dtype=np.float32)
        browned = (self.f_max - self.green(doy, shift)) * _step(t, self.eos - 15.0, 6.0)
        standing = browned * (1.0 - _step(t, self.harvest, 2.0))
        stubble = 0.3 * _step(t, self.harvest, 2.0) * (1.0 - _step(t, self.harvest + 30.0, 5.0))
        return np.clip(standing + stubble, 0.0, 1.0).astype(np.float32)


def rice_flood(doy: float, shift: NDArray[np.float32] | float = 0.0) -> NDArray[np.float32]:
    """Share of a paddy under standing water on day of year `doy` (0-1; smooth steps at
    `RICE_FLOOD`, delayed per field by `shift` days as the crop cycle is)."""
    t = doy - np.asarray(shift, dtype=np.float32)
    start, end = RICE_FLOOD
    return (_step(t, start, 3.0) * (1.0 - _step(t, end, 4.0))).astype(np.float32)


def _step(t: NDArray[np.float32], at: float, width: float) -> NDArray[np.float32]:
    """Smooth 0 -> 1 step centred on `at` (days) with a logistic `width` (days)."""
    return expit((t - at) / width).astype(np.float32)


#: Crop calendars of central Germany (winter cereals, maize, spring crops such as sugar beet),
#: after the DWD phenology network's typical phase dates (emergence, heading, harvest).
CROPS: dict[int, Phenology] = {
    1: Phenology(sos=85, eos=170, f_min=0.15, f_max=0.90, harvest=205),  # winter cereal
    2: Phenology(sos=165, eos=255, f_min=0.0, f_max=0.90, harvest=280),  # maize
    3: Phenology(sos=140, eos=262, f_min=0.0, f_max=0.85, harvest=290),  # spring crop / beet
}
#: Crop code of irrigated rice (paddies; Po valley / Ebro delta calendar: fields flooded from
#: early May, transplanted or water-seeded, drained about three weeks before the harvest in
#: late September). Paddies grow rice every year.
RICE_CODE = 4
RICE = Phenology(sos=175, eos=240, f_min=0.0, f_max=0.90, harvest=270)
#: Days of year a paddy holds standing water (inflections of smooth steps).
RICE_FLOOD = (125.0, 245.0)
#: Managed grassland: never bare, browns partly in winter.
GRASS = Phenology(sos=95, eos=285, f_min=0.45, f_max=0.85)
#: Mixed temperate forest: deciduous leaf-out in late April, leaf fall in October; the
#: evergreen share keeps ~35 % green in winter.
FOREST = Phenology(sos=115, eos=290, f_min=0.35, f_max=0.92)

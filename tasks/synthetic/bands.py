"""Spectral bands of the simulated instruments: what is simulated and what the STAC Items declare.

Two tables, kept apart on purpose, as in reality:

* `RESPONSE`: the band centre and full width at half maximum (FWHM, nm) per platform that the
  simulator integrates surface spectra with (Gaussian relative spectral response). These are the
  real, per-instrument values, so the same surface reads slightly differently per sensor.
* `S2_ASSETS` / `LANDSAT_ASSETS`: the rounded nominal values Earth Search v1 writes into
  ``eo:bands`` (copied from its items), the asset keys, titles and resolutions.

Sources of `RESPONSE`:
  Sentinel-2A/2B MSI: ESA, Sentinel-2 MSI spectral response functions (COPE-GSEG-EOPG-TN-15-0007,
    v3), summarised in the Sentinel-2 User Handbook band tables (central wavelength / bandwidth).
  Landsat 8 OLI: Barsi et al. 2014, "The Spectral Response of the Landsat-8 Operational Land
    Imager", Remote Sensing 6(10), band-average centre and FWHM.
  Landsat 9 OLI-2: NASA GSFC, "OLI-2 Relative Spectral Response", version 2, table 1.
  Landsat 5 TM / 7 ETM+: USGS, "What are the band designations for the Landsat satellites?"
    (band edges; centre = mid-point, FWHM = edge distance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tasks.synthetic.config import Platform

__all__ = [
    "INSTRUMENTS",
    "LANDSAT_ASSETS",
    "NOISE_SIGMA",
    "RESPONSE",
    "S2_ASSETS",
    "AssetBand",
    "Instrument",
    "reflectance_assets",
]

Instrument = Literal["msi", "tm", "etm+", "oli"]

#: Instrument of each platform (the STAC ``instruments`` value, TIRS added for Landsat 8/9).
INSTRUMENTS: dict[Platform, Instrument] = {
    "landsat-5": "tm",
    "landsat-7": "etm+",
    "landsat-8": "oli",
    "landsat-9": "oli",
    "sentinel-2a": "msi",
    "sentinel-2b": "msi",
}

#: Per-pixel sensor + retrieval noise of L2 surface reflectance (1 sigma, reflectance units).
#: Orders of magnitude from SNR at typical radiance: MSI SNR ~100-170 (ESA MSI User Handbook),
#: OLI/OLI-2 2-10x the SNR of ETM+ (Morfitt et al. 2015, Remote Sens. 7(2)), TM/ETM+ limited by
#: 8-bit quantisation (Markham & Helder 2012, Remote Sens. Environ. 122).
NOISE_SIGMA: dict[Instrument, float] = {"msi": 0.002, "oli": 0.0015, "etm+": 0.004, "tm": 0.005}


@dataclass(frozen=True)
class AssetBand:
    """One reflectance asset as Earth Search v1 declares it (wavelengths in micrometres)."""

    asset: str
    eo_name: str
    common_name: str
    description: str
    title: str
    center_um: float
    fwhm_um: float
    resolution: int


def _s2(
    asset: str, band: str, common: str, label: str, center: float, fwhm: float, res: int
) -> AssetBand:
    number = band.lstrip("B0") if band != "B8A" else "8A"
    desc = f"{label} (band {number})"
    return AssetBand(asset, asset, common, desc, f"{desc} - {res}m", center, fwhm, res)


#: Sentinel-2 L2A reflectance assets, values as in Earth Search v1 ``sentinel-2-l2a`` items.
S2_ASSETS: tuple[AssetBand, ...] = (
    _s2("blue", "B02", "blue", "Blue", 0.49, 0.098, 10),
    _s2("green", "B03", "green", "Green", 0.56, 0.045, 10),
    _s2("red", "B04", "red", "Red", 0.665, 0.038, 10),
    _s2("rededge1", "B05", "rededge", "Red edge 1", 0.704, 0.019, 20),
    _s2("rededge2", "B06", "rededge", "Red edge 2", 0.74, 0.018, 20),
    _s2("rededge3", "B07", "rededge", "Red edge 3", 0.783, 0.028, 20),
    _s2("nir", "B08", "nir", "NIR 1", 0.842, 0.145, 10),
    _s2("nir08", "B8A", "nir08", "NIR 2", 0.865, 0.033, 20),
    _s2("swir16", "B11", "swir16", "SWIR 1", 1.61, 0.143, 20),
    _s2("swir22", "B12", "swir22", "SWIR 2", 2.19, 0.242, 20),
)

_LANDSAT_TITLES = {
    "blue": ("Blue Band", "Visible blue"),
    "green": ("Green Band", "Visible green"),
    "red": ("Red Band", "Visible red"),
    "nir08": ("Near Infrared Band 0.8", "Near infrared"),
    "swir16": ("Short-wave Infrared Band 1.6", "Short-wave infrared"),
    "swir22": ("Short-wave Infrared Band 2.2", "Short-wave infrared"),
}


def _landsat(
    prefix: str, table: tuple[tuple[str, int, float, float], ...]
) -> tuple[AssetBand, ...]:
    return tuple(
        AssetBand(
            asset=asset,
            eo_name=f"{prefix}_B{number}",
            common_name=asset,
            description=_LANDSAT_TITLES[asset][1],
            title=_LANDSAT_TITLES[asset][0],
            center_um=center,
            fwhm_um=fwhm,
            resolution=30,
        )
        for asset, number, center, fwhm in table
    )


#: Landsat Collection 2 L2 reflectance assets per instrument (Earth Search ``landsat-c2-l2``).
#: OLI values as Earth Search writes them; TM/ETM+ from the USGS band edges, rounded alike.
LANDSAT_ASSETS: dict[Instrument, tuple[AssetBand, ...]] = {
    "oli": _landsat(
        "OLI",
        (
            ("blue", 2, 0.48, 0.06),
            ("green", 3, 0.56, 0.06),
            ("red", 4, 0.65, 0.04),
            ("nir08", 5, 0.87, 0.03),
            ("swir16", 6, 1.61, 0.09),
            ("swir22", 7, 2.2, 0.19),
        ),
    ),
    "etm+": _landsat(
        "ETM",
        (
            ("blue", 1, 0.48, 0.07),
            ("green", 2, 0.56, 0.08),
            ("red", 3, 0.66, 0.06),
            ("nir08", 4, 0.84, 0.13),
            ("swir16", 5, 1.65, 0.2),
            ("swir22", 7, 2.22, 0.26),
        ),
    ),
    "tm": _landsat(
        "TM",
        (
            ("blue", 1, 0.49, 0.07),
            ("green", 2, 0.56, 0.08),
            ("red", 3, 0.66, 0.06),
            ("nir08", 4, 0.83, 0.14),
            ("swir16", 5, 1.65, 0.2),
            ("swir22", 7, 2.22, 0.27),
        ),
    ),
}

_TM = {
    "blue": (485.0, 70.0),
    "green": (560.0, 80.0),
    "red": (660.0, 60.0),
    "nir08": (830.0, 140.0),
    "swir16": (1650.0, 200.0),
    "swir22": (2215.0, 270.0),
}

#: Simulated band centre and FWHM (nm) per platform and asset (sources in the module docstring).
RESPONSE: dict[Platform, dict[str, tuple[float, float]]] = {
    "sentinel-2a": {
        "blue": (492.4, 66.0),
        "green": (559.8, 36.0),
        "red": (664.6, 31.0),
        "rededge1": (704.1, 15.0),
        "rededge2": (740.5, 15.0),
        "rededge3": (782.8, 20.0),
        "nir": (832.8, 106.0),
        "nir08": (864.7, 21.0),
        "swir16": (1613.7, 91.0),
        "swir22": (2202.4, 175.0),
    },
    "sentinel-2b": {
        "blue": (492.1, 66.0),
        "green": (559.0, 36.0),
        "red": (664.9, 31.0),
        "rededge1": (703.8, 16.0),
        "rededge2": (739.1, 15.0),
        "rededge3": (779.7, 20.0),
        "nir": (833.0, 106.0),
        "nir08": (864.0, 22.0),
        "swir16": (1610.4, 94.0),
        "swir22": (2185.7, 185.0),
    },
    "landsat-5": _TM,
    "landsat-7": {
        "blue": (482.5, 65.0),
        "green": (565.0, 80.0),
        "red": (660.0, 60.0),
        "nir08": (837.5, 125.0),
        "swir16": (1650.0, 200.0),
        "swir22": (2220.0, 260.0),
    },
    "landsat-8": {
        "blue": (482.0, 60.1),
        "green": (561.4, 57.3),
        "red": (654.6, 37.5),
        "nir08": (864.7, 28.3),
        "swir16": (1608.9, 84.7),
        "swir22": (2200.7, 186.7),
    },
    "landsat-9": {
        "blue": (481.9, 59.9),
        "green": (561.0, 56.5),
        "red": (654.3, 36.9),
        "nir08": (864.6, 28.8),
        "swir16": (1608.2, 86.2),
        "swir22": (2200.1, 189.5),
    },
}


def reflectance_assets(platform: Platform) -> tuple[AssetBand, ...]:
    """The reflectance assets written for `platform`, in Earth Search's order."""
    instrument = INSTRUMENTS[platform]
    return S2_ASSETS if instrument == "msi" else LANDSAT_ASSETS[instrument]

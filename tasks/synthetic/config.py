"""What the synthetic archive simulates: place, size, years, sensors, thinning, and the seed.

`ArchiveConfig` is frozen and hashable; `config_hash` identifies an archive on disk, so an archive
written with the same configuration is reused instead of rewritten.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "DEMO_CONFIG",
    "GENERATOR_VERSION",
    "LANDSAT_PLATFORMS",
    "SENTINEL2_PLATFORMS",
    "WORLD_START_YEAR",
    "ArchiveConfig",
    "Platform",
    "config_hash",
    "tiny_config",
]

#: Bump whenever a change to the simulator changes what a given configuration writes.
GENERATOR_VERSION = "2"

#: First year the simulated surface exists (Landsat 5 TM's first full year of acquisitions).
WORLD_START_YEAR = 1984

Platform = Literal["landsat-5", "landsat-7", "landsat-8", "landsat-9", "sentinel-2a", "sentinel-2b"]
LANDSAT_PLATFORMS: tuple[Platform, ...] = ("landsat-5", "landsat-7", "landsat-8", "landsat-9")
SENTINEL2_PLATFORMS: tuple[Platform, ...] = ("sentinel-2a", "sentinel-2b")


class ArchiveConfig(BaseModel):
    """Everything that determines a synthetic archive. Same configuration, same bytes.

    Years are inclusive ranges. `months` is an inclusive window of calendar months kept from the
    real acquisition schedule; `max_scenes_per_year` keeps at most that many acquisitions per
    platform and year (a Sentinel-2 acquisition is written once per MGRS tile that holds it).
    Kept scenes keep their real schedule dates.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(default=20240705, description="Seed of every random draw.")
    center_lon: float = Field(default=11.97, ge=-180, le=180, description="AOI centre, degrees E.")
    center_lat: float = Field(
        default=51.35, ge=-80, le=84, description="AOI centre, degrees N (UTM range)."
    )
    size_m: float = Field(default=4000.0, ge=600, le=20_000, description="AOI side length (m).")
    end_year: int = Field(default=2026, ge=WORLD_START_YEAR + 1, description="Last simulated year.")
    landsat_years: tuple[int, int] | None = Field(
        default=(1985, 2026), description="Inclusive years with Landsat scenes; None for none."
    )
    sentinel2_years: tuple[int, int] | None = Field(
        default=(2019, 2026), description="Inclusive years with Sentinel-2 scenes; None for none."
    )
    platforms: tuple[Platform, ...] = Field(
        default=LANDSAT_PLATFORMS + SENTINEL2_PLATFORMS, description="Platforms to simulate."
    )
    months: tuple[int, int] = Field(
        default=(1, 12), description="Inclusive window of months (1-12) of kept acquisitions."
    )
    max_scenes_per_year: int | None = Field(
        default=None, ge=1, description="Most acquisitions kept per platform and year."
    )
    builtup_start: float = Field(
        default=0.04, gt=0, lt=0.5, description="Built-up share of the AOI in the first year."
    )
    builtup_end: float = Field(
        default=0.25, gt=0, lt=0.6, description="Built-up share of the AOI in `end_year`."
    )
    cloud_beta: tuple[float, float] = Field(
        default=(0.45, 0.33),
        description="Beta(a, b) of per-scene cloud cover; a, b < 1 gives the real U shape.",
    )
    shift_sigma_px: float = Field(
        default=0.25, ge=0, le=2, description="Random misregistration, std in native pixels."
    )
    landsat_offset_m: tuple[float, float] = Field(
        default=(6.0, -4.5),
        description="Systematic Landsat-vs-Sentinel-2 offset (dx east, dy north) in metres.",
    )
    calibration_drift: float = Field(
        default=0.0,
        ge=0,
        le=0.2,
        description="Relative std of per-band gain errors: one draw per platform (sensor "
        "calibration) and one per acquisition (date); offsets of a tenth of it in reflectance.",
    )
    haze: float = Field(
        default=0.0,
        ge=0,
        le=0.1,
        description="Mean residual aerosol path reflectance at 450 nm after atmospheric "
        "correction (per acquisition, exponentially distributed), with its adjacency blur.",
    )
    illumination: float = Field(
        default=0.0,
        ge=0,
        le=0.5,
        description="Strength of the BRDF-like dependence of reflectance on the sun zenith "
        "angle: relative gain per unit of (zenith - 45 deg) / 45 deg.",
    )

    snow: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Chance that an acquisition of mid-winter (December-February; half of it "
        "in November and March) has snow on the ground.",
    )
    paddy_share: float = Field(
        default=0.0,
        ge=0,
        le=0.8,
        description="Share of the arable fields that are irrigated rice paddies (flooded from "
        "transplanting to mid-season): cropland, whose flooding is not change.",
    )
    aquaculture_share: float = Field(
        default=0.0,
        ge=0,
        le=0.3,
        description="Share of the AOI's arable land dug into fish ponds by the last year "
        "(cropland -> water, drained in winter), in clusters, from 1990 on.",
    )
    roof_materials: tuple[float, float, float, float] = Field(
        default=(1.0, 0.0, 0.0, 0.0),
        description="Relative shares of roof materials per development parcel: concrete, "
        "clay tile, metal sheet, bitumen.",
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> ArchiveConfig:
        for name in ("landsat_years", "sentinel2_years"):
            years = getattr(self, name)
            if years is None:
                continue
            first, last = years
            if not (WORLD_START_YEAR <= first <= last <= self.end_year):
                raise ValueError(
                    f"{name}={years}: give (first, last) with {WORLD_START_YEAR} <= first <= last "
                    f"<= end_year ({self.end_year})."
                )
        lo, hi = self.months
        if not (1 <= lo <= hi <= 12):
            raise ValueError(
                f"months={self.months}: give (first, last) with 1 <= first <= last <= 12."
            )
        if self.builtup_end <= self.builtup_start:
            raise ValueError("builtup_end must exceed builtup_start: the city grows.")
        if min(self.roof_materials) < 0 or sum(self.roof_materials) <= 0:
            raise ValueError(
                f"roof_materials={self.roof_materials}: give four shares >= 0 with a "
                "positive sum (concrete, clay tile, metal, bitumen)."
            )
        if min(self.cloud_beta) <= 0:
            raise ValueError(f"cloud_beta={self.cloud_beta}: both Beta parameters must be > 0.")
        return self

    @property
    def years(self) -> range:
        """Simulated years of the surface, WORLD_START_YEAR..end_year inclusive."""
        return range(WORLD_START_YEAR, self.end_year + 1)

    def platform_years(self, platform: Platform) -> tuple[int, int] | None:
        """The inclusive year range configured for `platform`, or None when it is not simulated."""
        if platform not in self.platforms:
            return None
        return self.sentinel2_years if platform in SENTINEL2_PLATFORMS else self.landsat_years


def config_hash(config: ArchiveConfig) -> str:
    """Hex digest identifying what `config` writes (configuration + generator version)."""
    payload = f"{GENERATOR_VERSION}\n{config.model_dump_json()}"
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


#: The demo: a 4 x 4 km AOI across the UTM 32/33 boundary, Landsat 1985-2026 and Sentinel-2
#: 2019-2026, growing season only, a few acquisitions per platform and year.
DEMO_CONFIG = ArchiveConfig(months=(4, 10), max_scenes_per_year=3)


def tiny_config(**overrides: object) -> ArchiveConfig:
    """A 1.5 km archive for tests (seconds): Landsat 2012-2013 (Landsat 7 SLC-off, Landsat 8's
    first year) and Sentinel-2 in 2023 (processing baseline >= 04.00), May to September, two
    acquisitions per platform and year. Keyword arguments override any field."""
    fields: dict[str, object] = {
        "size_m": 1500.0,
        "end_year": 2023,
        "landsat_years": (2012, 2013),
        "sentinel2_years": (2023, 2023),
        "months": (5, 9),
        "max_scenes_per_year": 2,
    }
    fields.update(overrides)
    return ArchiveConfig.model_validate(fields)

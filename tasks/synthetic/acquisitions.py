"""The list of acquisitions an archive holds, with every per-scene random draw made up front.

An `Acquisition` is one pass of one satellite; it yields one STAC Item per product it is cut
into (`ItemSpec`): one Landsat scene, or one Sentinel-2 item per MGRS tile holding the AOI.
Draws come from a random stream per acquisition, so thinning or changing the years never
changes the scenes that are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np

from tasks.aoi import GridSpec
from tasks.synthetic.bands import INSTRUMENTS, Instrument, reflectance_assets
from tasks.synthetic.config import ArchiveConfig, Platform
from tasks.synthetic.geometry import (
    SwathFrame,
    landsat_grid,
    mgrs_tiles,
    pixel_centers,
    s2_grids,
    track_frame,
    transform_points,
    transformer,
)
from tasks.synthetic.landscape import aoi_bounds, rng_for
from tasks.synthetic.orbits import (
    SLC_FAILURE,
    TRACKS,
    Track,
    family,
    ground_track_heading,
    overpass_datetime,
    schedule,
    sun_position,
)
from tasks.synthetic.world import main_epsg

__all__ = ["COLLECTIONS", "Acquisition", "ItemSpec", "plan_archive", "radiometry", "snow_extent"]

#: Earth Search v1 collection ids per platform family.
COLLECTIONS = {"sentinel-2": "sentinel-2-l2a", "landsat": "landsat-c2-l2"}
_LANDSAT_ROW = "024"  # WRS-2 row of the demo location
_LANDSAT_PREFIX: dict[Platform, str] = {
    "landsat-5": "LT05",
    "landsat-7": "LE07",
    "landsat-8": "LC08",
    "landsat-9": "LC09",
}
_CLOUD_HEIGHT_M = (800.0, 3000.0)  # tops of boundary-layer and mid-level clouds
_CIRRUS_PROBABILITY = 0.25  # share of scenes with thin cirrus
_CIRRUS_COVER = (0.05, 0.3)


@dataclass(frozen=True)
class ItemSpec:
    """One STAC Item: its id, collection, CRS and grids (finest first; Sentinel-2 10 m and
    20 m, Landsat 30 m), the MGRS tile for Sentinel-2."""

    id: str
    collection: str
    epsg: int
    grids: tuple[GridSpec, ...]
    tile: str | None = None


@dataclass(frozen=True)
class Acquisition:
    """One pass of one satellite and everything drawn for it.

    `shift_m`: misregistration (dx east, dy north, metres) in each item's own CRS axes: image
    content at true map position (x, y) appears at (x + dx, y + dy). `cloud_cover`: the truth
    cloud fraction over the AOI; `cloud_height_m`: cloud-top height that sets the shadow
    offset; `cirrus_cover`: thin-cirrus fraction (0: none); `cloud_brightness`: scale of the
    cloud spectrum; `soil_wetness`: scale of soil reflectance; `slc_phase_lines`: where the
    Landsat 7 SLC-off stripes fall; `swath`: the footprint of the pass. Radiometry after
    atmospheric correction (`radiometry`): `gain` and `offset` per reflectance asset (in
    `reflectance_assets(platform)` order; calibration drift and the BRDF-like sun-zenith
    effect), `haze`: residual aerosol path reflectance at 450 nm. `snow`: the share of open
    land under snow (0: none; `snow_extent`).
    """

    platform: Platform
    track: Track
    datetime: datetime
    sun_azimuth: float
    sun_elevation: float
    shift_m: tuple[float, float]
    cloud_cover: float
    cloud_height_m: float
    cirrus_cover: float
    cloud_brightness: float
    soil_wetness: float
    slc_phase_lines: float
    swath: SwathFrame
    items: tuple[ItemSpec, ...]
    gain: tuple[float, ...] = ()
    offset: tuple[float, ...] = ()
    haze: float = 0.0
    snow: float = 0.0

    @property
    def key(self) -> str:
        """Unique name of the pass, e.g. ``landsat-8_193_20230705``."""
        return f"{self.platform}_{self.track.code}_{self.datetime:%Y%m%d}"

    @property
    def instrument(self) -> Instrument:
        return INSTRUMENTS[self.platform]

    @property
    def collection(self) -> str:
        return COLLECTIONS[self.track.family]

    @property
    def slc_off(self) -> bool:
        """Landsat 7 after the Scan Line Corrector failed."""
        return self.platform == "landsat-7" and self.datetime.date() > SLC_FAILURE


def _candidate_dates(config: ArchiveConfig, platform: Platform) -> list[tuple[date, Track]]:
    years = config.platform_years(platform)
    if years is None:
        return []
    first, last = date(years[0], config.months[0], 1), date(years[1], 12, 31)
    fam = family(platform)
    found = [
        (day, track)
        for track in TRACKS
        if track.family == fam
        for day in schedule(platform, track, first, last)
        if config.months[0] <= day.month <= config.months[1]
    ]
    return sorted(found, key=lambda pair: (pair[0], pair[1].code))


def _thin(
    config: ArchiveConfig, platform: Platform, found: list[tuple[date, Track]]
) -> list[tuple[date, Track]]:
    """At most `max_scenes_per_year` passes per year, chosen at random (seeded per year)."""
    if config.max_scenes_per_year is None:
        return found
    kept: list[tuple[date, Track]] = []
    for year in sorted({day.year for day, _ in found}):
        in_year = [pair for pair in found if pair[0].year == year]
        k = min(config.max_scenes_per_year, len(in_year))
        picks = rng_for(config, "thin", platform, year).choice(len(in_year), size=k, replace=False)
        kept.extend(in_year[i] for i in sorted(picks))
    return kept


def _item_specs(
    config: ArchiveConfig, platform: Platform, track: Track, day: date, swath: SwathFrame, epsg: int
) -> tuple[ItemSpec, ...]:
    """Items of one pass, keeping only those with data over the AOI."""
    aoi = aoi_bounds(config, epsg)
    stamp = f"{day:%Y%m%d}"
    specs: list[ItemSpec] = []
    if track.family == "landsat":
        h = math.radians(swath.heading_deg - 90.0)
        cx, cy = swath.origin
        ox = cx + swath.center_offset_m * math.sin(h)
        oy = cy + swath.center_offset_m * math.cos(h)
        lon, lat = transformer(epsg, 4326).transform(ox, oy)
        grid = landsat_grid(aoi, epsg, lon, lat)
        item_id = f"{_LANDSAT_PREFIX[platform]}_L2SP_{track.code}{_LANDSAT_ROW}_{stamp}_02_T1"
        specs.append(ItemSpec(item_id, COLLECTIONS["landsat"], grid.epsg, (grid,)))
    else:
        letter = platform[-1].upper()
        for tile in mgrs_tiles(config.center_lon, config.center_lat):
            grids = s2_grids(aoi, epsg, tile)
            item_id = f"S2{letter}_{tile.id}_{stamp}_0_L2A"
            specs.append(ItemSpec(item_id, COLLECTIONS["sentinel-2"], tile.epsg, grids, tile.id))
    return tuple(s for s in specs if _covers(swath, s.grids[-1], epsg))


def _covers(swath: SwathFrame, grid: GridSpec, main: int) -> bool:
    """True when the swath reaches a pixel of `grid`. Testing the border pixels suffices: a
    swath (>= 185 km) cannot fit inside the few-km grid without crossing its border."""
    x, y = pixel_centers(grid)
    border = np.zeros(x.shape, dtype=bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    bx, by = transform_points(x[border], y[border], grid.epsg, main)
    return bool(swath.inside(bx, by).any())


def _illumination_weight(center_um: float) -> float:
    """Relative weight of the sun-zenith (BRDF-like) gain of a band: reflectance anisotropy is
    strongest in the visible and the SWIR, where shadowing inside the canopy shows (Roy et al.
    2016, Remote Sens. Environ. 176, c-factor coefficients), weaker in the NIR."""
    return 0.5 if 0.7 < center_um < 1.0 else 1.0


def radiometry(
    config: ArchiveConfig, platform: Platform, key: str, sun_elevation: float
) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """(gain, offset) per reflectance asset and the haze of one acquisition (`key`): the
    platform's calibration error (one draw per platform and band) times the date's, times the
    BRDF-like factor ``1 + illumination * w_band * (zenith - 45) / 45``; offsets of a tenth of
    the drift; haze exponentially distributed with mean `config.haze`. Own random streams, so
    a configuration without these effects draws exactly what it drew before they existed."""
    assets = reflectance_assets(platform)
    drift = config.calibration_drift
    sensor = rng_for(config, "calibration", platform).normal(0.0, drift, (2, len(assets)))
    date_ = rng_for(config, "radiometry", key)
    scene = date_.normal(0.0, drift, (2, len(assets)))
    haze = float(date_.exponential(config.haze)) if config.haze > 0 else 0.0
    zenith = (90.0 - sun_elevation - 45.0) / 45.0
    gain = tuple(
        float(
            (1.0 + sensor[0, i])
            * (1.0 + scene[0, i])
            * (1.0 + config.illumination * _illumination_weight(a.center_um) * zenith)
        )
        for i, a in enumerate(assets)
    )
    offset = tuple(float(0.1 * (sensor[1, i] + scene[1, i])) for i in range(len(assets)))
    return gain, offset, haze


#: Relative chance of snow on the ground by calendar month (mid-winter 1, shoulder months).
_SNOW_SEASON = {12: 1.0, 1: 1.0, 2: 1.0, 11: 0.5, 3: 0.5}


def snow_extent(config: ArchiveConfig, day: date, key: str) -> float:
    """Share of open land under snow on `day` for acquisition `key`: with chance
    ``config.snow`` in December-February (half of it in November and March) a cover of
    30-100 %, else 0. Its own random stream, so a configuration without snow draws exactly
    what it drew before snow existed."""
    chance = config.snow * _SNOW_SEASON.get(day.month, 0.0)
    if chance <= 0:
        return 0.0
    rng = rng_for(config, "snow", key)
    return float(rng.uniform(0.3, 1.0)) if rng.random() < chance else 0.0


def _acquisition(
    config: ArchiveConfig, platform: Platform, track: Track, day: date, epsg: int
) -> Acquisition | None:
    rng = rng_for(config, "acquisition", platform, track.code, day.isoformat())
    moment = overpass_datetime(platform, day, config.center_lon, float(rng.uniform(-60, 60)))
    azimuth, elevation = sun_position(moment, config.center_lon, config.center_lat)
    origin = transformer(4326, epsg).transform(config.center_lon, config.center_lat)
    jitter = (
        float(rng.uniform(-0.25, 0.25)) * config.size_m
        if track.partial
        else float(rng.uniform(-2e3, 2e3))
    )
    swath = track_frame(track, origin, ground_track_heading(platform, config.center_lat), jitter)
    native = 30.0 if track.family == "landsat" else 10.0
    shift = rng.normal(0.0, config.shift_sigma_px * native, 2)
    if track.family == "landsat":
        shift += np.asarray(config.landsat_offset_m)
    cirrus = float(rng.uniform(*_CIRRUS_COVER)) if rng.random() < _CIRRUS_PROBABILITY else 0.0
    items = _item_specs(config, platform, track, day, swath, epsg)
    if not items:
        return None
    key = f"{platform}_{track.code}_{day:%Y%m%d}"
    gain, offset, haze = radiometry(config, platform, key, elevation)
    return Acquisition(
        platform=platform,
        track=track,
        datetime=moment,
        sun_azimuth=azimuth,
        sun_elevation=elevation,
        shift_m=(float(shift[0]), float(shift[1])),
        cloud_cover=float(rng.beta(*config.cloud_beta)),
        cloud_height_m=float(rng.uniform(*_CLOUD_HEIGHT_M)),
        cirrus_cover=cirrus,
        cloud_brightness=float(rng.uniform(0.8, 1.1)),
        soil_wetness=float(rng.uniform(0.8, 1.05)),
        slc_phase_lines=float(rng.uniform(0, 32)),
        swath=swath,
        items=items,
        gain=gain,
        offset=offset,
        haze=haze,
        snow=snow_extent(config, day, key),
    )


def plan_archive(config: ArchiveConfig) -> list[Acquisition]:
    """Every acquisition of the archive of `config`, in time order."""
    epsg = main_epsg(config)
    plan: list[Acquisition] = []
    for platform in config.platforms:
        for day, track in _thin(config, platform, _candidate_dates(config, platform)):
            acquisition = _acquisition(config, platform, track, day, epsg)
            if acquisition is not None:
                plan.append(acquisition)
    return sorted(plan, key=lambda a: (a.datetime, a.platform))

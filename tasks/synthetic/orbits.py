"""When and how the simulated satellites see the AOI: lifetimes, repeat cycles, ground tracks,
overpass times, the sun's position, and Sentinel-2 processing baselines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from tasks.synthetic.config import SENTINEL2_PLATFORMS, Platform

__all__ = [
    "LIFETIMES",
    "SLC_FAILURE",
    "TRACKS",
    "Track",
    "family",
    "ground_track_heading",
    "overpass_datetime",
    "processing_baseline",
    "schedule",
    "sun_position",
]

#: First and last acquisition the simulator makes per platform (None: still operating).
#: Landsat: USGS mission pages (L5 TM imaging ended 2011-11-18; L7 left the 705 km WRS-2 orbit
#: in April 2022, later extended-science data are off the WRS-2 schedule and not simulated;
#: L8 on WRS-2 from 2013-04-11; L9 data from 2021-10-31). Sentinel-2: launch dates (ESA).
LIFETIMES: dict[Platform, tuple[date, date | None]] = {
    "landsat-5": (date(1984, 3, 16), date(2011, 11, 18)),
    "landsat-7": (date(1999, 5, 28), date(2022, 4, 6)),
    "landsat-8": (date(2013, 4, 11), None),
    "landsat-9": (date(2021, 10, 31), None),
    "sentinel-2a": (date(2015, 6, 23), None),
    "sentinel-2b": (date(2017, 3, 7), None),
}

#: Landsat 7 ETM+ Scan Line Corrector failure; later scenes have wedge-shaped gaps (USGS).
SLC_FAILURE = date(2003, 5, 31)

#: Repeat cycles (days): WRS-2 16 days; one Sentinel-2 satellite on one relative orbit 10 days.
_REPEAT = {"landsat": 16, "sentinel-2": 10}

#: Day offsets within a repeat cycle. Landsat 5 and 8 share a phase, Landsat 7 and 9 the other,
#: 8 days apart (USGS: L9 is 8 days out of phase with L8, in L7's former slot); Sentinel-2B flies
#: 180 degrees from 2A, 5 days apart.
_PHASE: dict[Platform, int] = {
    "landsat-5": 0,
    "landsat-8": 0,
    "landsat-7": 8,
    "landsat-9": 8,
    "sentinel-2a": 0,
    "sentinel-2b": 5,
}
#: Anchor of the phases: the day of a Landsat 8 pass over path 193 and a Sentinel-2A pass on
#: relative orbit R022 (the example ids of the project's design notes; consistent, invented).
_ANCHOR = date(2023, 7, 5)

#: Local mean solar time of the overpass at ~51 N (hours), approximate from scene-centre times
#: of products over central Germany (Sentinel-2 ~10:10 UTC, Landsat 8/9 ~10:00 UTC near 12 E);
#: Landsat 5 drifted to earlier crossings late in its life, simplified to one value.
_LOCAL_TIME_H: dict[Platform, float] = {
    "landsat-5": 10.25,
    "landsat-7": 10.55,
    "landsat-8": 10.75,
    "landsat-9": 10.75,
    "sentinel-2a": 11.0,
    "sentinel-2b": 11.0,
}

#: Orbit inclination (deg) and period (min): Landsat WRS-2 98.2 / 98.9; Sentinel-2 98.62 / 100.6.
_ORBIT = {"landsat": (98.2, 98.9), "sentinel-2": (98.62, 100.6)}


@dataclass(frozen=True)
class Track:
    """A Landsat WRS-2 path or a Sentinel-2 relative orbit over the AOI.

    `center_offset_m`: across-track distance of the swath centre line from the AOI centre
    (positive to the right of the descending track, i.e. west is negative); `day_offset`: days
    after the phase anchor; `half_swath_m`: half the swath width (Landsat 185 km, MSI 290 km).
    Path/orbit codes are those of the demo location; elsewhere they are consistent labels.
    """

    family: Literal["landsat", "sentinel-2"]
    code: str
    center_offset_m: float
    day_offset: int
    half_swath_m: float
    partial: bool

    @property
    def repeat_days(self) -> int:
        return _REPEAT[self.family]


#: Two Landsat paths and two Sentinel-2 relative orbits see the demo AOI. Path 194 is imaged
#: 7 days after 193 (adjacent WRS-2 paths are 7 days apart, path numbers grow westward); its
#: swath edge crosses the AOI, as does that of R065 (43 orbits = 3 days after R022).
TRACKS: tuple[Track, ...] = (
    Track("landsat", "193", 12_000.0, 0, 92_500.0, partial=False),
    Track("landsat", "194", -92_500.0, 7, 92_500.0, partial=True),
    Track("sentinel-2", "R022", 60_000.0, 0, 145_000.0, partial=False),
    Track("sentinel-2", "R065", -145_000.0, 3, 145_000.0, partial=True),
)


def family(platform: Platform) -> Literal["landsat", "sentinel-2"]:
    """``sentinel-2`` or ``landsat``."""
    return "sentinel-2" if platform in SENTINEL2_PLATFORMS else "landsat"


def schedule(platform: Platform, track: Track, first: date, last: date) -> list[date]:
    """Real-schedule acquisition dates of `platform` on `track` within [first, last] and the
    platform's lifetime."""
    start, end = LIFETIMES[platform]
    lo, hi = max(first, start), min(last, end or last)
    if lo > hi:
        return []
    origin = _ANCHOR + timedelta(days=_PHASE[platform] + track.day_offset)
    step = track.repeat_days
    k = math.ceil((lo - origin).days / step)
    dates = []
    day = origin + timedelta(days=k * step)
    while day <= hi:
        dates.append(day)
        day += timedelta(days=step)
    return dates


def overpass_datetime(platform: Platform, day: date, lon: float, jitter_s: float) -> datetime:
    """UTC time of the overpass at longitude `lon` (deg E): the platform's local mean solar
    time converted to UTC, plus `jitter_s` seconds."""
    utc_hours = _LOCAL_TIME_H[platform] - lon / 15.0
    moment = datetime.combine(day, time(0, 0), tzinfo=UTC)
    return moment + timedelta(hours=utc_hours, seconds=jitter_s)


def ground_track_heading(platform: Platform, lat: float) -> float:
    """Azimuth (deg clockwise from north) of the descending ground track at latitude `lat`.

    Spherical geometry of a circular orbit: inertial heading from sin(psi) = cos(i)/cos(lat),
    then the Earth's rotation (465 m/s at the equator) subtracted from the eastward speed.
    About 195-196 deg at 51 N: south-south-west, as real scene footprints are tilted.
    """
    inclination, period_min = _ORBIT[family(platform)]
    phi = math.radians(lat)
    speed = 2 * math.pi * 6371.0 / (period_min * 60.0)  # km/s of the sub-satellite point
    ratio = math.cos(math.radians(inclination)) / math.cos(phi)
    v_east = speed * ratio - 7.2921e-5 * 6371.0 * math.cos(phi)
    v_north = -speed * math.sqrt(1.0 - ratio**2)
    return math.degrees(math.atan2(v_east, v_north)) % 360.0


def sun_position(moment: datetime, lon: float, lat: float) -> tuple[float, float]:
    """Solar (azimuth, elevation) in degrees at `moment` (timezone-aware) and lon/lat (deg).

    NOAA Global Monitoring Laboratory, "General Solar Position Calculations" (Spencer 1971
    Fourier series for the declination and equation of time); accurate to a fraction of a
    degree, ample for cloud-shadow geometry. Azimuth clockwise from north. Hand-written (a dozen
    lines) rather than adding a dependency such as pvlib for one function.
    """
    utc = moment.astimezone(UTC)
    hour = utc.hour + utc.minute / 60.0 + utc.second / 3600.0
    gamma = 2 * math.pi / 365.0 * (utc.timetuple().tm_yday - 1 + (hour - 12.0) / 24.0)
    eqtime = 229.18 * (
        0.000075 + 0.001868 * math.cos(gamma) - 0.032077 * math.sin(gamma)
        - 0.014615 * math.cos(2 * gamma) - 0.040849 * math.sin(2 * gamma)
    )  # fmt: skip
    decl = (
        0.006918 - 0.399912 * math.cos(gamma) + 0.070257 * math.sin(gamma)
        - 0.006758 * math.cos(2 * gamma) + 0.000907 * math.sin(2 * gamma)
        - 0.002697 * math.cos(3 * gamma) + 0.00148 * math.sin(3 * gamma)
    )  # fmt: skip
    true_solar_min = hour * 60.0 + eqtime + 4.0 * lon
    hour_angle = math.radians(true_solar_min / 4.0 - 180.0)
    phi = math.radians(lat)
    cos_zenith = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(
        hour_angle
    )
    elevation = 90.0 - math.degrees(math.acos(max(-1.0, min(1.0, cos_zenith))))
    azimuth = math.degrees(
        math.atan2(
            math.sin(hour_angle),
            math.cos(hour_angle) * math.sin(phi) - math.tan(decl) * math.cos(phi),
        )
    )
    return (azimuth + 180.0) % 360.0, elevation


#: Sentinel-2 L2A processing baselines by acquisition date (ESA, "Processing Baseline" history
#: on SentiWiki). Dates before 04.00 are approximate; 04.00 (2022-01-25) is exact: from then on
#: L2A digital numbers carry BOA_ADD_OFFSET = -1000.
_BASELINES: tuple[tuple[date, str], ...] = (
    (date(2015, 6, 23), "02.04"),
    (date(2017, 10, 23), "02.06"),
    (date(2018, 11, 6), "02.07"),
    (date(2019, 5, 6), "02.12"),
    (date(2019, 7, 8), "02.13"),
    (date(2020, 1, 28), "02.14"),
    (date(2021, 6, 30), "03.00"),
    (date(2022, 1, 25), "04.00"),
    (date(2022, 12, 6), "05.08"),
    (date(2023, 6, 27), "05.09"),
    (date(2023, 12, 13), "05.10"),
    (date(2024, 7, 23), "05.11"),
)


def processing_baseline(day: date) -> str:
    """The Sentinel-2 L2A processing baseline ("NN.NN") of an acquisition on `day`."""
    current = _BASELINES[0][1]
    for start, baseline in _BASELINES:
        if day >= start:
            current = baseline
    return current

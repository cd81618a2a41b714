"""Acquisition schedule, lifetimes, sun position and processing baselines."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime

import pytest

from tasks.synthetic.acquisitions import plan_archive
from tasks.synthetic.config import ArchiveConfig
from tasks.synthetic.orbits import (
    LIFETIMES,
    TRACKS,
    ground_track_heading,
    processing_baseline,
    schedule,
    sun_position,
)

PATH_193, PATH_194, R022, R065 = TRACKS


def _year(year: int) -> tuple[date, date]:
    return date(year, 1, 1), date(year, 12, 31)


YEAR = _year(2023)


def test_schedule_landsat_repeats_every_16_days() -> None:
    days = schedule("landsat-8", PATH_193, *YEAR)
    assert {(b - a).days for a, b in itertools.pairwise(days)} == {16}
    assert len(days) in (22, 23)


def test_schedule_landsat_phases_and_adjacent_path() -> None:
    l8 = schedule("landsat-8", PATH_193, *YEAR)
    l9 = schedule("landsat-9", PATH_193, *YEAR)
    assert (l9[0] - l8[0]).days % 16 == 8
    l7 = schedule("landsat-7", PATH_193, *_year(2020))
    l8_2020 = schedule("landsat-8", PATH_193, *_year(2020))
    assert (l7[0] - l8_2020[0]).days % 16 == 8
    west = schedule("landsat-8", PATH_194, *YEAR)
    assert (west[0] - l8[0]).days % 16 == 7


def test_schedule_respects_lifetimes() -> None:
    assert schedule("landsat-5", PATH_193, date(2011, 11, 19), date(2013, 1, 1)) == []
    assert schedule("landsat-8", PATH_193, date(2012, 1, 1), date(2013, 4, 10)) == []
    assert schedule("sentinel-2b", R022, date(2016, 1, 1), date(2017, 3, 6)) == []
    last = schedule("landsat-5", PATH_193, *_year(2011))[-1]
    assert last <= LIFETIMES["landsat-5"][1]  # type: ignore[operator]
    first = schedule("landsat-9", PATH_193, *_year(2021))[0]
    assert first >= LIFETIMES["landsat-9"][0]


def test_schedule_sentinel2_10_days_each_5_days_combined() -> None:
    a = schedule("sentinel-2a", R022, *YEAR)
    b = schedule("sentinel-2b", R022, *YEAR)
    assert {(y - x).days for x, y in itertools.pairwise(a)} == {10}
    both = sorted(a + b)
    assert {(y - x).days for x, y in itertools.pairwise(both)} == {5}


def test_plan_archive_thins_but_keeps_real_dates() -> None:
    config = ArchiveConfig(
        size_m=1000, landsat_years=(2014, 2015), sentinel2_years=None, months=(6, 8),
        max_scenes_per_year=2, end_year=2015,
    )  # fmt: skip
    plan = plan_archive(config)
    assert {a.platform for a in plan} == {"landsat-7", "landsat-8"}
    for acq in plan:
        assert 6 <= acq.datetime.month <= 8
        assert acq.datetime.date() in schedule(acq.platform, acq.track, *_year(acq.datetime.year))
    per_year = {(a.platform, a.datetime.year) for a in plan}
    assert all(sum(1 for a in plan if (a.platform, a.datetime.year) == k) <= 2 for k in per_year)


@pytest.mark.parametrize(
    ("moment", "lon", "lat", "azimuth", "elevation"),
    [
        # Earth Search v1 items S2A_13TDE_20231008_0_L2A (tile centre) and
        # LC08_L2SP_033032_20231008_02_T1 (proj:centroid): view:sun_azimuth / view:sun_elevation.
        (datetime(2023, 10, 8, 18, 2, 55, tzinfo=UTC), -105.53, 40.15, 164.12, 42.62),
        (datetime(2023, 10, 8, 17, 37, 27, tzinfo=UTC), -104.226, 40.3225, 157.60, 41.19),
    ],
)
def test_sun_position_matches_real_items(
    moment: datetime, lon: float, lat: float, azimuth: float, elevation: float
) -> None:
    az, el = sun_position(moment, lon, lat)
    assert az == pytest.approx(azimuth, abs=1.0)
    assert el == pytest.approx(elevation, abs=1.0)


def test_ground_track_heading_is_south_south_west() -> None:
    # A real Landsat 8 footprint at 40 N (LC08_L2SP_033032_20231008) runs ~13 deg west of south.
    assert 192.0 < ground_track_heading("landsat-8", 40.3) < 196.0
    assert 194.0 < ground_track_heading("sentinel-2a", 51.35) < 198.0


def test_processing_baseline_offset_starts_2022_01_25() -> None:
    assert processing_baseline(date(2022, 1, 24)) < "04.00"
    assert processing_baseline(date(2022, 1, 25)) == "04.00"
    assert processing_baseline(date(2020, 6, 1)) == "02.14"
    assert processing_baseline(date(2023, 10, 8)) == "05.09"

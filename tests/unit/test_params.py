"""Flow parameter models: good input passes, bad input fails before any work, naming the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from shapely.geometry import box, mapping

from flows.params import (
    ChangeDetectionParams,
    DateRange,
    UrbanDynamicsParams,
    UrbanFootprintParams,
)

BBOX = "11.955,51.335,11.985,51.365"
BEFORE = {"start": "2018-05-01", "end": "2018-09-30"}
AFTER = {"start": "2023-05-01", "end": "2023-09-30"}


@pytest.mark.parametrize(
    "aoi",
    [
        BBOX,
        [11.955, 51.335, 11.985, 51.365],
        mapping(box(11.955, 51.335, 11.985, 51.365)),
        json.dumps(mapping(box(11.955, 51.335, 11.985, 51.365))),
    ],
)
def test_change_params_accept_every_aoi_form(aoi: object) -> None:
    p = ChangeDetectionParams(aoi=aoi, before=BEFORE, after=AFTER)  # type: ignore[arg-type]
    assert p.aoi["type"] == "Polygon"
    assert p.before.as_tuple() == ("2018-05-01", "2018-09-30")


@pytest.mark.parametrize(
    ("changes", "field", "needle"),
    [
        ({"aoi": "1,2,3"}, "aoi", "4 numbers"),
        (
            {"aoi": '{"type": "Polygon", "coordinates": [[[0,0],[1,1],[1,0],[0,1],[0,0]]]}'},
            "aoi",
            "invalid",
        ),
        ({"aoi": "-10,-10,40,40"}, "aoi", "over the limit"),
        ({"before": {"start": "2018-09-30", "end": "2018-05-01"}}, "before", "swap"),
        ({"before": {"start": "1970-01-01", "end": "1971-01-01"}}, "before", "1984"),
        ({"after": {"start": "2017-01-01", "end": "2017-02-01"}}, "after", "must start after"),
        ({"after": {"start": "2999-01-01", "end": "2999-02-01"}}, "after", "future"),
        ({"collections": ["sentinel-3-olci"]}, "collections", "unknown"),
        ({"threshold": 1.5}, "threshold", "less than 1"),
        ({"max_cloud_cover": 120}, "max_cloud_cover", "less than or equal to 100"),
        ({"model_name": "x"}, "model_name", "Extra inputs"),
    ],
)
def test_change_params_bad_input_names_the_field(changes: dict, field: str, needle: str) -> None:
    base = {"aoi": BBOX, "before": BEFORE, "after": AFTER}
    with pytest.raises(ValidationError) as err:
        ChangeDetectionParams(**{**base, **changes})
    text = str(err.value)
    assert field in text and needle in text, text


def test_footprint_params_need_exactly_one_of_year_and_period() -> None:
    assert UrbanFootprintParams(aoi=BBOX, year=2020).year == 2020
    # the footprint model maps Sentinel-2: a Landsat-only year needs the baseline
    with pytest.raises(ValidationError, match=r"before Sentinel-2.*model='baseline'"):
        UrbanFootprintParams(aoi=BBOX, year=2000)
    assert UrbanFootprintParams(aoi=BBOX, year=2000, model="baseline").year == 2000
    with pytest.raises(ValidationError, match="year, period"):
        UrbanFootprintParams(aoi=BBOX)
    with pytest.raises(ValidationError, match="year, period"):
        UrbanFootprintParams(aoi=BBOX, year=2020, period=AFTER)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="future"):
        UrbanFootprintParams(aoi=BBOX, year=datetime.now(UTC).year + 1)


def test_dynamics_params_default_to_1985_until_now() -> None:
    p = UrbanDynamicsParams(aoi=BBOX)
    assert (p.first_year, p.last_year) == (1985, datetime.now(UTC).year)
    with pytest.raises(ValidationError, match="last_year"):
        UrbanDynamicsParams(aoi=BBOX, first_year=2000, last_year=2001)


def test_date_range_rejects_non_iso() -> None:
    with pytest.raises(ValidationError, match="ISO date"):
        DateRange(start="05/01/2018", end="2018-09-30")  # type: ignore[arg-type]

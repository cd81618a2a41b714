"""AOI parsing, validation and grid choice."""

from __future__ import annotations

import json

import pytest
from shapely.geometry import Polygon, box, mapping

from tasks.aoi import GridSpec, grid_for_aoi, parse_aoi, utm_epsg
from tasks.errors import InputError

BBOX = (11.95, 51.33, 12.01, 51.37)


@pytest.mark.parametrize(
    "aoi",
    [
        BBOX,
        list(BBOX),
        "11.95,51.33,12.01,51.37",
        mapping(box(*BBOX)),
        json.dumps(mapping(box(*BBOX))),
        {"type": "Feature", "properties": {}, "geometry": mapping(box(*BBOX))},
    ],
)
def test_parse_aoi_accepts_bbox_geojson_and_strings(aoi: object) -> None:
    geom = parse_aoi(aoi)  # type: ignore[arg-type]
    assert geom.bounds == pytest.approx(BBOX)


@pytest.mark.parametrize(
    ("aoi", "needle"),
    [
        ((12.0, 51.0, 11.0, 52.0), "west < east"),
        ((1, 2, 3), "4 numbers"),
        ("not a bbox", "neither GeoJSON nor a bbox"),
        (mapping(Polygon([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)])), "invalid"),
        ({"type": "Point", "coordinates": [12, 51]}, "Polygon"),
        ((500000, 5000000, 510000, 5010000), "EPSG:4326"),
        ((-10, -10, 40, 40), "over the limit"),
        ({"type": "Polygon", "coordinates": []}, "empty"),
    ],
)
def test_parse_aoi_rejects_bad_input_naming_the_field(aoi: object, needle: str) -> None:
    with pytest.raises(InputError, match="aoi") as err:
        parse_aoi(aoi)  # type: ignore[arg-type]
    assert needle in str(err.value)


def test_utm_epsg_follows_the_zone_boundary() -> None:
    assert utm_epsg(box(11.9, 51.3, 11.95, 51.4)) == 32632
    assert utm_epsg(box(12.05, 51.3, 12.1, 51.4)) == 32633
    assert utm_epsg(box(-58.5, -34.7, -58.4, -34.6)) == 32721


def test_grid_for_aoi_snaps_outwards_to_whole_pixels() -> None:
    grid = grid_for_aoi(BBOX, 30)
    assert grid.epsg == 32632
    xmin, ymin, xmax, ymax = grid.bounds
    assert all(v % 30 == 0 for v in grid.bounds)
    rows, cols = grid.shape
    assert (rows * 30, cols * 30) == (ymax - ymin, xmax - xmin)
    # ~4.2 km x 4.4 km AOI: the grid covers it and is not absurdly larger
    assert 4000 < xmax - xmin < 4600 and 4300 < ymax - ymin < 4700
    assert grid.transform.c == xmin and grid.transform.f == ymax


def test_gridspec_rejects_empty_bounds() -> None:
    with pytest.raises(InputError, match="bounds"):
        GridSpec(epsg=32632, resolution=10, bounds=(0, 0, 0, 10))


def test_gridspec_to_geojson_round_trips_to_the_aoi() -> None:
    grid = grid_for_aoi(BBOX, 10)
    footprint = parse_aoi(grid.to_geojson())
    assert footprint.contains(box(*BBOX).buffer(-1e-4))
    # the UTM bounding box of a lon/lat box is a little larger (grid convergence ~2.3° here)
    assert footprint.area < box(*BBOX).area * 1.15

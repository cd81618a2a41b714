"""User labels -> model grid: rasters on any CRS and GeoParquet polygons match the truth they
were made from; bad inputs get errors that say what to change.

Labels are made here from the tiny synthetic archive's ground truth (`tiny_truth`): written as a
COG (as is, or reprojected to another CRS) and vectorized to polygons with
`rasterio.features.shapes`. The model grid is `grid_for_aoi` over the truth's extent, as in the
product flows; it is the truth grid plus a margin of whole pixels, so the truth is compared on
the matching window.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import fsspec
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.features
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from models.training.data import BANDS, block_share
from models.training.labels import (
    LabelFile,
    LabelGrid,
    _assemble,
    check_coverage,
    fetch_labels,
    label_periods,
    label_world,
    labels_on_grid,
)
from tasks.aoi import GridSpec, grid_for_aoi, parse_aoi
from tasks.errors import InputError
from tasks.stac_server import StacServer
from tasks.synthetic import Truth
from tests.unit.training.labelfiles import (
    urbanization_year,
    vectorize,
    write_cog,
    write_reprojected_cog,
)

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

FOOTPRINT_YEAR = 2023
BEFORE, AFTER = 2012, 2023
#: Bars: labels made from the truth on its own grid must come back exactly (up to the 3 x 3
#: rule, which both sides apply); a detour through another CRS with nearest-neighbour resampling
#: moves edge pixels of parcels, 2-3 % of the built-up area at 10 m.
IOU_SAME_GRID = 0.999
IOU_OTHER_CRS = 0.97


def window_of(truth_grid: GridSpec, grid: GridSpec, shape_: tuple[int, int]) -> Any:
    """Slices of `grid` that hold `truth_grid`'s extent (`shape_` pixels of `grid`)."""
    r0 = round((grid.bounds[3] - truth_grid.bounds[3]) / grid.resolution)
    c0 = round((truth_grid.bounds[0] - grid.bounds[0]) / grid.resolution)
    return slice(r0, r0 + shape_[0]), slice(c0, c0 + shape_[1])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def aoi(tiny_truth: Truth) -> BaseGeometry:
    return parse_aoi(tiny_truth.grid.to_geojson())


@pytest.fixture(scope="module")
def built(tiny_truth: Truth) -> np.ndarray:
    return tiny_truth.builtup(FOOTPRINT_YEAR)


def _on_grid(path: Path, kind: Any, aoi: BaseGeometry) -> LabelGrid:
    grid = grid_for_aoi(aoi, {"footprint": 10.0}.get(kind, 30.0))
    return labels_on_grid(fetch_labels(path), kind, grid, aoi=aoi)


# ---- labels match the truth --------------------------------------------------------------------
def test_labels_on_grid_raster_footprint_matches_truth(
    tiny_truth: Truth, built: np.ndarray, aoi: BaseGeometry, tmp_path: Path
) -> None:
    path = write_cog(tmp_path / "built.tif", built.astype(np.uint8), tiny_truth.grid)
    lg = _on_grid(path, "footprint", aoi)
    win = window_of(tiny_truth.grid, lg.grid, built.shape)
    assert iou(lg.positive()[win], built) >= IOU_SAME_GRID
    assert lg.labelled[win].all()
    # the margin of the model grid outside the raster is unlabelled, not "not built"
    assert lg.n_labelled == built.size


def test_labels_on_grid_raster_at_30m_follows_the_majority_rule(
    tiny_truth: Truth, built: np.ndarray, aoi: BaseGeometry, tmp_path: Path
) -> None:
    path = write_cog(tmp_path / "built.tif", built.astype(np.uint8), tiny_truth.grid)
    lg = _on_grid(path, "change", aoi)  # a 30 m kind; 1 = positive as for the footprint
    expected = block_share(built) >= 0.5  # the synthetic labels' rule (data.LABEL_SHARE)
    win = window_of(tiny_truth.grid, lg.grid, expected.shape)
    assert iou(lg.positive()[win], expected) >= IOU_SAME_GRID


@pytest.mark.parametrize(
    ("crs", "resolution"),
    [("EPSG:3857", 5.0), ("EPSG:32633", 10.0), ("EPSG:4326", None)],
    ids=["mercator-5m-mode", "next-utm-zone", "lonlat"],
)
def test_labels_on_grid_reprojected_raster_matches_truth(
    crs: str,
    resolution: float | None,
    tiny_truth: Truth,
    built: np.ndarray,
    aoi: BaseGeometry,
    tmp_path: Path,
) -> None:
    path = write_reprojected_cog(
        tmp_path / "warped.tif", built.astype(np.uint8), tiny_truth.grid, crs, resolution
    )
    lg = _on_grid(path, "footprint", aoi)
    win = window_of(tiny_truth.grid, lg.grid, built.shape)
    assert iou(lg.positive()[win], built) >= IOU_OTHER_CRS
    assert lg.labelled[win].mean() > 0.99


@pytest.mark.parametrize("crs", [None, "EPSG:4326"], ids=["utm", "lonlat"])
def test_labels_on_grid_polygons_footprint_match_truth(
    crs: str | None, tiny_truth: Truth, built: np.ndarray, aoi: BaseGeometry, tmp_path: Path
) -> None:
    path = tmp_path / "built.parquet"
    vectorize(built.astype(np.uint8), tiny_truth.grid, crs=crs).to_parquet(path)
    lg = _on_grid(path, "footprint", aoi)
    win = window_of(tiny_truth.grid, lg.grid, built.shape)
    assert iou(lg.positive()[win], built) >= IOU_SAME_GRID
    # exhaustive polygons: the AOI outside them is labelled "not built-up"
    assert lg.labelled[win].all() and not lg.positive()[win][~built].any()


def test_labels_on_grid_change_polygons_match_truth(
    tiny_truth: Truth, aoi: BaseGeometry, tmp_path: Path
) -> None:
    changed = tiny_truth.change(BEFORE, AFTER)
    path = tmp_path / "change.parquet"
    vectorize(changed.astype(np.uint8), tiny_truth.grid).to_parquet(path)
    lg = _on_grid(path, "change", aoi)
    expected = block_share(changed) >= 0.5
    win = window_of(tiny_truth.grid, lg.grid, expected.shape)
    assert expected.sum() > 50  # the test world does change
    assert iou(lg.positive()[win], expected) >= IOU_SAME_GRID


def test_labels_on_grid_dynamics_years_match_truth(
    tiny_truth: Truth, aoi: BaseGeometry, tmp_path: Path
) -> None:
    year = urbanization_year(tiny_truth)
    path = tmp_path / "dynamics.parquet"
    vectorize(year, tiny_truth.grid, column="year").to_parquet(path)
    lg = _on_grid(path, "dynamics", aoi)
    # the synthetic labels' rule: built-up in a year when >= half the 3 x 3 truth pixels are
    built30 = np.stack([block_share(tiny_truth.builtup(y)) >= 0.5 for y in tiny_truth.years])
    built30 = np.maximum.accumulate(built30, axis=0)
    years = np.asarray(tiny_truth.years)
    expected = np.where(built30.any(axis=0), years[np.argmax(built30, axis=0)], 0)
    got = lg.value[window_of(tiny_truth.grid, lg.grid, expected.shape)]
    assert len(np.unique(expected)) > 10  # many years of urbanization to tell apart
    assert (got == expected).mean() >= IOU_SAME_GRID


def test_labels_on_grid_dynamics_raster_of_years(
    tiny_truth: Truth, aoi: BaseGeometry, tmp_path: Path
) -> None:
    year = urbanization_year(tiny_truth)
    path = write_cog(tmp_path / "years.tif", year, tiny_truth.grid, nodata=-1)
    lg = _on_grid(path, "dynamics", aoi)
    win = window_of(tiny_truth.grid, lg.grid, (year.shape[0] // 3, year.shape[1] // 3))
    built_2012 = block_share((year > 0) & (year <= 2012)) >= 0.5
    assert iou((lg.value[win] > 0) & (lg.value[win] <= 2012), built_2012) >= IOU_SAME_GRID


def test_labels_on_grid_raster_nodata_is_unlabelled(
    tiny_truth: Truth, built: np.ndarray, aoi: BaseGeometry, tmp_path: Path
) -> None:
    coded = built.astype(np.uint8)
    coded[:, :60] = 255  # the western 600 m not labelled
    lg = _on_grid(write_cog(tmp_path / "part.tif", coded, tiny_truth.grid), "footprint", aoi)
    win = window_of(tiny_truth.grid, lg.grid, built.shape)
    assert not lg.labelled[win][:, :60].any() and lg.labelled[win][:, 60:].all()
    assert iou(lg.positive()[win][:, 60:], built[:, 60:]) >= IOU_SAME_GRID


def test_labels_on_grid_class_column_makes_sparse_labels(
    tiny_truth: Truth, built: np.ndarray, aoi: BaseGeometry, tmp_path: Path
) -> None:
    g = tiny_truth.grid
    positives = vectorize(built.astype(np.uint8), g)
    positives["class"] = 1
    # one negative square in the south-east corner, 300 m wide, around whatever is built there
    _, ymin, xmax, _ = g.bounds
    square = box(xmax - 300, ymin, xmax, ymin + 300)
    negative = gpd.GeoDataFrame({"class": [0]}, geometry=[square], crs=g.crs)
    labels = pd.concat([negative, positives], ignore_index=True)
    path = tmp_path / "sparse.parquet"
    gpd.GeoDataFrame(labels, geometry="geometry", crs=g.crs).to_parquet(path)
    lg = _on_grid(path, "footprint", aoi)
    win = window_of(g, lg.grid, built.shape)
    labelled, positive = lg.labelled[win], lg.positive()[win]
    corner = np.zeros(built.shape, bool)
    corner[-30:, -30:] = True
    assert np.array_equal(labelled, built | corner)  # the rest is unlabelled
    assert np.array_equal(positive, built)  # positives win where they overlap the negative


# ---- errors that say what to change -------------------------------------------------------------
def test_raster_without_crs_is_refused(
    tiny_truth: Truth, built: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "nocrs.tif"
    g = tiny_truth.grid
    with rasterio.open(
        path, "w", driver="GTiff", width=g.shape[1], height=g.shape[0], count=1,
        dtype="uint8", transform=g.transform,
    ) as dst:  # fmt: skip
        dst.write(built.astype(np.uint8)[None])
    with pytest.raises(InputError, match="no CRS; set it"):
        labels_on_grid(fetch_labels(path), "footprint", g)


def test_raster_of_floats_is_refused(tiny_truth: Truth, built: np.ndarray, tmp_path: Path) -> None:
    path = write_cog(tmp_path / "prob.tif", built.astype(np.float32), tiny_truth.grid, nodata=None)
    with pytest.raises(InputError, match="float32; labels must be integer codes"):
        labels_on_grid(fetch_labels(path), "footprint", tiny_truth.grid)


@pytest.mark.parametrize(
    ("kind", "coded", "message"),
    [
        ("footprint", 2, r"values \[2\]; footprint labels are 1"),
        ("dynamics", 1, r"values \[1\]; dynamics labels are years"),
    ],
)
def test_raster_codes_that_mean_nothing_are_refused(
    kind: Any, coded: int, message: str, tiny_truth: Truth, built: np.ndarray, tmp_path: Path
) -> None:
    path = write_cog(tmp_path / "codes.tif", built.astype(np.uint8) * coded, tiny_truth.grid)
    with pytest.raises(InputError, match=message):
        labels_on_grid(fetch_labels(path), kind, grid_for_aoi(tiny_truth.grid.to_geojson(), 30))


def test_parquet_without_geo_metadata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.parquet"
    pd.DataFrame({"class": [1]}).to_parquet(path)
    lf = fetch_labels(path)
    with pytest.raises(InputError, match=r"not GeoParquet.*GeoDataFrame\.to_parquet"):
        labels_on_grid(lf, "footprint", GridSpec(32632, 10.0, (0.0, 0.0, 100.0, 100.0)))


def test_geoparquet_without_crs_is_refused(
    tiny_truth: Truth, built: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "nocrs.parquet"
    vectorize(built.astype(np.uint8), tiny_truth.grid).set_crs(
        None, allow_override=True
    ).to_parquet(path)
    with pytest.raises(InputError, match=r"no CRS; set it with gdf.set_crs"):
        labels_on_grid(fetch_labels(path), "footprint", tiny_truth.grid)


def test_dynamics_polygons_need_an_integer_year_column(
    tiny_truth: Truth, built: np.ndarray, tmp_path: Path
) -> None:
    gdf = vectorize(built.astype(np.uint8), tiny_truth.grid)
    grid = grid_for_aoi(tiny_truth.grid.to_geojson(), 30)
    gdf.to_parquet(tmp_path / "noyear.parquet")
    with pytest.raises(InputError, match="no 'year' column"):
        labels_on_grid(fetch_labels(tmp_path / "noyear.parquet"), "dynamics", grid)
    gdf["year"] = 2005.5
    gdf.to_parquet(tmp_path / "floatyear.parquet")
    with pytest.raises(InputError, match=r"'year'.*float64; it must hold integers"):
        labels_on_grid(fetch_labels(tmp_path / "floatyear.parquet"), "dynamics", grid)


def test_points_are_refused(tiny_truth: Truth, tmp_path: Path) -> None:
    g = tiny_truth.grid
    pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy([g.bounds[0] + 50], [g.bounds[1] + 50]))
    pts.set_crs(g.crs).to_parquet(tmp_path / "points.parquet")
    with pytest.raises(InputError, match=r"\['Point'\] geometries.*buffer"):
        labels_on_grid(fetch_labels(tmp_path / "points.parquet"), "footprint", g)


def test_labels_outside_the_aoi_are_refused(
    tiny_truth: Truth, built: np.ndarray, tmp_path: Path
) -> None:
    path = write_cog(tmp_path / "built.tif", built.astype(np.uint8), tiny_truth.grid)
    far = parse_aoi([13.0, 52.0, 13.02, 52.02])
    with pytest.raises(InputError, match=r"lie outside the AOI.*give an AOI that overlaps"):
        labels_on_grid(fetch_labels(path), "footprint", grid_for_aoi(far, 10), aoi=far)


def test_unknown_extension_and_missing_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("x")
    with pytest.raises(InputError, match=r"format.*\.csv.*format='raster'/'geoparquet'"):
        fetch_labels(tmp_path / "labels.csv")
    with pytest.raises(InputError, match="is not a file"):
        fetch_labels(tmp_path / "absent.tif")
    assert fetch_labels(tmp_path / "labels.csv", format="raster").format == "raster"


def test_too_few_labelled_pixels_are_refused(
    tiny_truth: Truth, built: np.ndarray, aoi: BaseGeometry, tmp_path: Path
) -> None:
    coded = np.full(built.shape, 255, np.uint8)
    coded[70:80, 70:80] = built[70:80, 70:80]  # a 100 m square in the middle
    path = write_cog(tmp_path / "few.tif", coded, tiny_truth.grid)
    lf = fetch_labels(path)
    lg = _on_grid(path, "footprint", aoi)
    world = _assemble(1_000_000, "footprint", lg, label_periods("footprint", year=2023), None)
    with pytest.raises(InputError, match=r"only 0 labelled pixel\(s\).*validation area"):
        check_coverage(world, "footprint", source=lf.source)


def test_a_single_class_is_refused(tiny_truth: Truth, aoi: BaseGeometry, tmp_path: Path) -> None:
    zeros = np.zeros(tiny_truth.grid.shape, np.uint8)
    lg = _on_grid(write_cog(tmp_path / "zeros.tif", zeros, tiny_truth.grid), "footprint", aoi)
    world = _assemble(1_000_000, "footprint", lg, label_periods("footprint", year=2023), None)
    with pytest.raises(InputError, match="no positive pixel; a model needs both classes"):
        check_coverage(world, "footprint")


@pytest.mark.parametrize(
    ("kind", "years", "message"),
    [
        ("footprint", {}, "year: footprint labels need year"),
        ("change", {"before": 2020}, "after: change labels need before and after"),
        ("change", {"before": 2020, "after": 2010}, r"after \(2010\) must be later"),
        ("footprint", {"year": 2020, "before": 2010}, "before: not used by footprint labels"),
        ("dynamics", {"first_year": 2020, "last_year": 2021}, "last_year.*first_year \\+ 2"),
        ("footprint", {"year": 1970}, "before 1984 there are no Landsat"),
    ],
)
def test_label_periods_name_the_parameter_to_change(
    kind: Any, years: dict[str, int], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        label_periods(kind, **years)


def test_label_periods_are_growing_seasons_for_change_calendar_years_else() -> None:
    assert label_periods("change", before=2012, after=2023) == {
        "2012": ("2012-04-01", "2012-10-31"),
        "2023": ("2023-04-01", "2023-10-31"),
    }
    assert label_periods("footprint", year=2023) == {"2023": ("2023-01-01", "2023-12-31")}
    assert list(label_periods("dynamics", first_year=2012, last_year=2015)) == [
        "2012",
        "2013",
        "2014",
        "2015",
    ]


# ---- the whole label world: composites from the production chain --------------------------------
def test_label_world_footprint_gets_the_production_composite(
    tiny_truth: Truth,
    built: np.ndarray,
    tiny_stac: StacServer,
    tmp_path: Path,
) -> None:
    path = write_cog(tmp_path / "built.tif", built.astype(np.uint8), tiny_truth.grid)
    lw = label_world(
        path,
        "footprint",
        year=FOOTPRINT_YEAR,
        stac_url=tiny_stac.url,
        cache_dir=tmp_path / "cache",
        val_edge="left",
    )
    w = lw.world
    assert isinstance(lw.labels, LabelFile) and lw.labels.sha256 == fetch_labels(path).sha256
    assert w.recent.shape == (len(BANDS), *lw.grid.shape) and w.seed >= 1_000_000
    assert w.built10.shape == w.label_mask10().shape == lw.grid.shape
    # labels and composite on one grid: built-up pixels are brighter in SWIR than the rest
    swir = w.recent[BANDS.index("swir16")]
    ok = w.label_mask10() & np.isfinite(swir)
    assert np.median(swir[ok & w.built10]) > np.median(swir[ok & ~w.built10])
    assert lw.counts["val"] >= 100 and lw.counts["positive"] > 0
    assert lw.periods == {"2023": ("2023-01-01", "2023-12-31")} and lw.scene_ids


def test_fetch_labels_copies_a_url_once_and_hashes_it(
    tiny_truth: Truth, built: np.ndarray, tmp_path: Path
) -> None:
    path = write_cog(tmp_path / "built.tif", built.astype(np.uint8), tiny_truth.grid)
    data = path.read_bytes()
    fs = fsspec.filesystem("memory")
    fs.pipe("/labels-test/built.tif", data)
    try:
        lf = fetch_labels("memory://labels-test/built.tif", cache_dir=tmp_path / "cache")
        assert lf.sha256 == hashlib.sha256(data).hexdigest() and lf.format == "raster"
        assert lf.local.read_bytes() == data and lf.local.parent == tmp_path / "cache" / "labels"
        assert lf.source == "memory://labels-test/built.tif" and lf.name == "built.tif"
        with pytest.raises(InputError, match="does not exist; check the URL"):
            fetch_labels("memory://labels-test/absent.tif", cache_dir=tmp_path / "cache")
    finally:
        fs.rm("/labels-test", recursive=True)

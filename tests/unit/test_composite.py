"""Tests of tasks.composite: median/medoid on hand-built stacks with NaNs, counts, empty periods,
period parsing, bounded chunks and laziness."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tasks.composite import (
    annual_composites,
    composite,
    composite_pair,
    medoid,
    nanmedian,
    parse_periods,
)
from tasks.errors import InputError

BANDS = ("blue", "red", "nir")


def make_stack(
    dates: Sequence[str],
    *,
    shape: tuple[int, int] = (12, 10),
    cloud_fraction: float = 0.3,
    seed: int = 0,
    chunks: tuple[int, int] = (5, 5),
) -> xr.DataArray:
    """Masked (time, band, y, x) reflectance with whole-observation NaN gaps (clouds)."""
    rng = np.random.default_rng(seed)
    t, (ny, nx) = len(dates), shape
    data = rng.uniform(0.01, 0.5, (t, len(BANDS), ny, nx)).astype(np.float32)
    cloudy = rng.random((t, 1, ny, nx)) < cloud_fraction
    data = np.where(cloudy, np.nan, data)
    return xr.DataArray(
        da.from_array(data, chunks=(1, -1, *chunks)),
        dims=("time", "band", "y", "x"),
        coords={
            "time": pd.DatetimeIndex(list(dates)).values.astype("datetime64[ns]"),
            "band": list(BANDS),
            "y": 5_000_000.0 - 30.0 * (np.arange(ny) + 0.5),
            "x": 400_000.0 + 30.0 * (np.arange(nx) + 0.5),
            "id": ("time", [f"s{i}" for i in range(t)]),
        },
        attrs={"crs": "epsg:32633"},
    )


def _np_nanmedian(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(x, axis=0)


# ---- reducers ----------------------------------------------------------------------------------
def test_nanmedian_matches_numpy_with_even_odd_and_empty_counts() -> None:
    x = np.array(
        [
            [[1.0], [5.0], [np.nan], [np.nan]],  # pixel 0: 2 valid -> mean of middle two
            [[3.0], [2.0], [9.0], [np.nan]],  # pixel 1: 3 valid -> 3
            [[np.nan]] * 4,  # pixel 2: none
        ],
        np.float32,
    )  # (pixel, time, band)
    med, n = nanmedian(x)
    np.testing.assert_array_equal(n, [2, 3, 0])
    np.testing.assert_array_equal(med[:2, 0], [3.0, 3.0])
    assert np.isnan(med[2, 0])
    rng = np.random.default_rng(5)
    y = rng.random((50, 17, 4)).astype(np.float32)
    y[rng.random((50, 17)) < 0.4] = np.nan
    med, n = nanmedian(y)
    ref = _np_nanmedian(np.moveaxis(y, 1, 0))
    np.testing.assert_allclose(med, ref, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(n, np.isfinite(y).all(-1).sum(-1))


def test_nanmedian_uses_only_observations_valid_in_every_band() -> None:
    x = np.array([[[0.1, 0.5], [0.2, np.nan], [0.3, 0.7]]], np.float32)  # (1 px, 3 t, 2 bands)
    med, n = nanmedian(x)
    assert n.tolist() == [2]
    np.testing.assert_allclose(med[0], [0.2, 0.6])  # t=1 dropped from both bands


def test_medoid_picks_the_central_observation() -> None:
    x = np.array(
        [
            [[0.0, 0.0], [1.0, 1.0], [1.1, 0.9], [5.0, 5.0], [np.nan, 1.0]],
            [[np.nan, np.nan]] * 5,
        ],
        np.float32,
    )
    out, n = medoid(x)
    assert n.tolist() == [4, 0]
    np.testing.assert_array_equal(out[0], [1.0, 1.0])  # sum of distances: 1.0 beats 1.1/0.9
    assert np.isnan(out[1]).all()
    # Brute force on random data: the chosen observation minimises the summed distance.
    rng = np.random.default_rng(2)
    y = rng.random((30, 9, 3)).astype(np.float32)
    y[rng.random((30, 9)) < 0.3] = np.nan
    got, _ = medoid(y)
    for p in range(30):
        obs = y[p][np.isfinite(y[p]).all(-1)]
        if len(obs) == 0:
            assert np.isnan(got[p]).all()
            continue
        cost = np.sqrt(((obs[:, None] - obs[None]) ** 2).sum(-1)).sum(1)
        np.testing.assert_array_equal(got[p], obs[np.argmin(cost)])


# ---- composites --------------------------------------------------------------------------------
def test_composite_yearly_median_and_count() -> None:
    dates = ["2019-05-01", "2020-01-10", "2020-03-01", "2020-08-20", "2020-12-31T23:00"]
    stack = make_stack(dates)
    ds = composite(stack, period="year")
    assert ds["period"].values.tolist() == ["2019", "2020"]
    assert ds["reflectance"].dims == ("period", "band", "y", "x")
    assert ds["count"].dims == ("period", "y", "x") and ds["count"].dtype == np.int16
    raw = stack.values
    np.testing.assert_allclose(ds["reflectance"].sel(period="2020").values, _np_nanmedian(raw[1:]))
    np.testing.assert_array_equal(
        ds["count"].sel(period="2020").values, np.isfinite(raw[1:, 0]).sum(0)
    )
    # A single-scene period is that scene where clear, NaN with count 0 elsewhere.
    np.testing.assert_array_equal(ds["reflectance"].sel(period="2019").values, raw[0])
    assert set(np.unique(ds["count"].sel(period="2019").values)) == {0, 1}
    assert ds["end"].values[0] == np.datetime64("2020-01-01", "ns")
    assert ds.attrs["crs"] == "epsg:32633"


def test_composite_medoid_of_stack() -> None:
    stack = make_stack(["2021-01-01", "2021-02-01", "2021-03-01", "2021-04-01"], seed=4)
    ds = composite(stack, period="year", method="medoid")
    raw = np.moveaxis(stack.values, (0, 1), (2, 3))  # (y, x, time, band)
    expected, _ = medoid(raw)
    np.testing.assert_array_equal(
        ds["reflectance"].isel(period=0).values, np.moveaxis(expected, -1, 0)
    )


def test_annual_composites_empty_year_is_nan_with_count_zero() -> None:
    stack = make_stack(["2001-06-01", "2003-06-01"])
    ds = annual_composites(stack, years=range(2000, 2005))
    assert ds["period"].values.tolist() == ["2000", "2001", "2002", "2003", "2004"]
    counts = ds["count"].sum(("y", "x")).values
    assert counts[0] == counts[2] == counts[4] == 0 and counts[1] > 0 and counts[3] > 0
    assert ds["reflectance"].sel(period="2002").isnull().all()


def test_composite_pair_before_after() -> None:
    stack = make_stack(["2020-03-01", "2020-04-01", "2022-05-01", "2022-06-01", "2022-07-01"])
    ds = composite_pair(
        stack, before=("2020-01-01", "2020-12-31"), after=("2022-01-01", "2022-12-31")
    )
    assert ds["period"].values.tolist() == ["before", "after"]
    np.testing.assert_allclose(ds["reflectance"][1].values, _np_nanmedian(stack.values[2:]))
    with pytest.raises(InputError, match="overlap"):
        composite_pair(
            stack, before=("2020-01-01", "2022-02-01"), after=("2022-01-01", "2022-12-31")
        )


def test_composite_one_scene_stack() -> None:
    stack = make_stack(["2020-06-01"])
    ds = composite(stack, period="month")
    assert ds.sizes["period"] == 1
    np.testing.assert_array_equal(ds["reflectance"][0].values, stack.values[0])


def test_composite_empty_stack_and_mask_bands_are_input_errors() -> None:
    stack = make_stack(["2020-06-01"])
    with pytest.raises(InputError, match="no scenes"):
        composite(stack.isel(time=slice(0, 0)))
    with_scl = xr.concat([stack, stack.isel(band=[0]).assign_coords(band=["scl"])], dim="band")
    with pytest.raises(InputError, match="mask it first"):
        composite(with_scl)
    with pytest.raises(InputError, match="method"):
        composite(stack, method="mean")  # type: ignore[arg-type]


def test_composite_is_lazy_and_chunks_are_bounded() -> None:
    reads = []
    lock = threading.Lock()

    def block(t: int) -> np.ndarray:
        with lock:
            reads.append(t)
        return np.full((1, 3, 64, 64), 0.1 + t / 100, np.float32)

    t = 40
    data = da.concatenate(
        [da.from_delayed(dask.delayed(block)(i), (1, 3, 64, 64), np.float32) for i in range(t)]
    )
    stack = xr.DataArray(
        data,
        dims=("time", "band", "y", "x"),
        coords={
            "time": pd.date_range("2020-01-01", periods=t, freq="5D").values,
            "band": list(BANDS),
            "y": np.arange(64) * -30.0,
            "x": np.arange(64) * 30.0,
        },
    )
    budget_mib = 0.25
    ds = composite(stack, period="year", max_chunk_mib=budget_mib)
    assert reads == []  # nothing read while building the graph
    chunks = ds["reflectance"].chunks
    assert chunks is not None
    ychunk, xchunk = chunks[2][0], chunks[3][0]
    assert t * 3 * ychunk * xchunk * 4 <= budget_mib * 2**20
    assert len(chunks[2]) > 1  # the budget forced several spatial chunks
    out = ds.compute()
    assert sorted(set(reads)) == list(range(t))
    np.testing.assert_allclose(out["reflectance"].values, 0.1 + 19.5 / 100, rtol=1e-6)
    assert (out["count"].values == t).all()


# ---- period parsing ----------------------------------------------------------------------------
def test_parse_periods_calendar_kinds() -> None:
    times = pd.DatetimeIndex(["2019-12-15", "2020-04-02"]).values
    seasons = parse_periods("season", times)
    assert [p.label for p in seasons] == ["2020-DJF", "2020-MAM"]
    assert seasons[0].start == pd.Timestamp("2019-12-01") and seasons[0].end == pd.Timestamp(
        "2020-03-01"
    )
    months = parse_periods("month", times)
    assert [p.label for p in months][:2] == ["2019-12", "2020-01"] and len(months) == 5
    assert [p.label for p in parse_periods("year", times)] == ["2019", "2020"]


def test_parse_periods_explicit_ranges_are_inclusive() -> None:
    (p,) = parse_periods([("2020-01-01", "2020-03-31")], [])
    assert p.label == "2020-01-01/2020-03-31"
    assert p.end == pd.Timestamp("2020-04-01")
    (q,) = parse_periods({"spring": ("2020-03-01T00:00", "2020-05-31T12:00")}, [])
    assert q.label == "spring" and q.end == pd.Timestamp("2020-05-31T12:00")


@pytest.mark.parametrize(
    ("period", "match"),
    [
        ("week", "period must be"),
        ([("2020-05-01", "2020-01-01")], "before start"),
        ([("2020-13-01", "2020-12-31")], "not a date"),
        ([("2020-01-01",)], r"\(start, end\)"),
        ([], "no ranges"),
        ({"a": ("2020-01-01", "2020-02-01"), "b": "2020"}, r"\(start, end\) pair"),
    ],
)
def test_parse_periods_errors(period: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        parse_periods(period, pd.DatetimeIndex(["2020-01-01"]).values)  # type: ignore[arg-type]

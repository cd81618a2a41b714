"""Classical baselines on hand-built composites: CVA flags the changed block, the NDBI rule flags
built-up spectra, the breakpoint finds the year of urbanization."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from models.baselines import (
    breakpoint_year,
    builtup_rule,
    change_vector_analysis,
    mean_shift_breakpoint,
    slow_feature_analysis,
)
from tasks.errors import InputError
from tests.unit.models.factories import (
    CONCRETE,
    SOIL,
    VEGETATION,
    WATER,
    make_annual,
    make_composite,
)


def _scene(
    cover: np.ndarray, surfaces: dict[int, tuple[float, ...]], noise: float = 0.005, seed: int = 0
) -> np.ndarray:
    """(band, y, x) reflectance: surface `surfaces[k]` where `cover == k`, plus noise."""
    out = np.zeros((6, *cover.shape), dtype=np.float32)
    for k, spectrum in surfaces.items():
        out[:, cover == k] = np.asarray(spectrum, dtype=np.float32)[:, None]
    rng = np.random.default_rng(seed)
    return out + np.asarray(rng.normal(0.0, noise, size=out.shape), dtype=np.float32)


def test_cva_flags_the_changed_block_only() -> None:
    cover = np.zeros((40, 40), dtype=int)
    before = make_composite(40, 40, data=_scene(cover, {0: VEGETATION}, seed=1))
    cover[10:20, 25:35] = 1
    after = make_composite(40, 40, data=_scene(cover, {0: VEGETATION, 1: CONCRETE}, seed=2))
    before[:, 0, 0] = np.nan
    ds = change_vector_analysis(before, after)
    truth = cover == 1
    truth[0, 0] = False
    np.testing.assert_array_equal(ds["change"].values, truth)
    assert not ds["valid"].values[0, 0] and np.isnan(ds["score"].values[0, 0])
    score = ds["score"].values
    assert np.nanmin(score[truth]) > 0.5 > np.nanmax(score[~truth])
    assert 0.0 < ds.attrs["threshold"] < float(ds["magnitude"].values[truth].min())
    np.testing.assert_array_equal(ds["x"].values, before["x"].values)


def _drifted_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A mixed landscape, the same one seen with another gain and offset per band (another
    sensor, another atmosphere), and a block that turned from vegetation into concrete."""
    rng = np.random.default_rng(seed)
    cover = rng.integers(0, 4, size=(8, 8)).repeat(6, 0).repeat(6, 1)  # 48 x 48, 6 px parcels
    cover[6:18, 30:42] = 0
    surfaces = {0: VEGETATION, 1: SOIL, 2: WATER, 3: CONCRETE}
    before = _scene(cover, surfaces, seed=seed + 1)
    changed = np.zeros(cover.shape, bool)
    changed[6:18, 30:42] = True
    after_cover = np.where(changed, 3, cover)
    gain = np.array([1.3, 1.25, 1.2, 0.8, 0.85, 0.9], dtype=np.float32)[:, None, None]
    after = _scene(after_cover, surfaces, seed=seed + 2)
    return before, after * gain + np.float32(0.02), after, changed


def test_slow_feature_analysis_sees_change_not_a_radiometric_drift() -> None:
    before, after, undrifted, changed = _drifted_pair()
    b, a = make_composite(48, 48, data=before), make_composite(48, 48, data=after)
    a[:, 0, 0] = np.nan
    same = make_composite(48, 48, data=undrifted)
    same[:, 0, 0] = np.nan
    ds = slow_feature_analysis(b, a)
    stat = ds["statistic"].values
    assert not ds["valid"].values[0, 0] and np.isnan(stat[0, 0])
    changed[0, 0] = False
    stable = ~changed & ds["valid"].values
    assert changed.sum() > 30
    # every changed pixel above (almost) every stable one ...
    assert np.nanmin(stat[changed]) > np.quantile(stat[stable], 0.99)
    # the drift is absorbed: the same statistic as without it (CVA's magnitude is not)
    np.testing.assert_allclose(stat, slow_feature_analysis(b, same)["statistic"].values, rtol=1e-3)
    cva_drift = change_vector_analysis(b, a)["magnitude"].values[stable]
    cva_same = change_vector_analysis(b, same)["magnitude"].values[stable]
    assert np.median(cva_drift) > 3 * np.median(cva_same)
    assert ds.attrs["iterations"] >= 2 and len(ds.attrs["eigenvalues"]) == 6
    w = ds["weight"].values
    assert np.nanmedian(w[stable]) > 10 * np.nanmax(w[changed])  # changed pixels left out


def test_slow_feature_analysis_refuses_too_few_valid_pixels() -> None:
    before, after, _, _ = _drifted_pair()
    b = make_composite(48, 48, data=before)
    b[:, :, 1:] = np.nan
    b[:, 10:, 0] = np.nan  # 10 valid pixels for 6 bands
    with pytest.raises(InputError, match="more than 12 pixels"):
        slow_feature_analysis(b, make_composite(48, 48, data=after))
    with pytest.raises(InputError, match="max_iter"):
        slow_feature_analysis(b, b, max_iter=0)


def test_cva_is_lazy_on_dask_and_matches_numpy() -> None:
    cover = np.zeros((32, 32), dtype=int)
    before = make_composite(32, 32, data=_scene(cover, {0: VEGETATION}, seed=1))
    cover[:8, :8] = 1
    after = make_composite(32, 32, data=_scene(cover, {0: VEGETATION, 1: WATER}, seed=2))
    eager = change_vector_analysis(before, after)
    lazy = change_vector_analysis(before.chunk({"y": 16, "x": 16}), after.chunk({"y": 16, "x": 16}))
    assert isinstance(lazy["magnitude"].data, da.Array)
    np.testing.assert_allclose(lazy["score"].values, eager["score"].values, rtol=1e-6)
    assert lazy.attrs["threshold"] == pytest.approx(eager.attrs["threshold"])


def test_cva_rejects_grids_that_differ() -> None:
    before = make_composite(8, 8)
    after = make_composite(8, 8).assign_coords(x=before["x"] + 10)
    with pytest.raises(InputError, match="different grids"):
        change_vector_analysis(before, after)


def test_builtup_rule_flags_built_spectra_not_vegetation_or_water() -> None:
    cover = np.zeros((12, 12), dtype=int)
    cover[:, 4:8] = 1
    cover[:, 8:] = 2
    comp = make_composite(12, 12, data=_scene(cover, {0: VEGETATION, 1: CONCRETE, 2: WATER}))
    ds = builtup_rule(comp)
    np.testing.assert_array_equal(ds["built"].values, cover == 1)
    assert ds["bu"].values[:, 4:8].min() > 0 > ds["bu"].values[:, :4].max()


def test_builtup_rule_confuses_bare_soil_as_documented() -> None:
    comp = make_composite(4, 4, data=_scene(np.zeros((4, 4), dtype=int), {0: SOIL}, noise=0))
    assert builtup_rule(comp)["built"].values.all()


def _trajectories(years: list[int], urban_year: int, nan_years: tuple[int, ...] = ()) -> np.ndarray:
    """(year, band, y=1, x=3): pixel 0 urbanizes in `urban_year`, 1 stays vegetated, 2 built."""
    data = np.empty((len(years), 6, 1, 3), dtype=np.float32)
    rng = np.random.default_rng(0)
    for i, y in enumerate(years):
        data[i, :, 0, 0] = CONCRETE if y >= urban_year else VEGETATION
        data[i, :, 0, 1] = VEGETATION
        data[i, :, 0, 2] = CONCRETE
        if y in nan_years:
            data[i, :, 0, 0] = np.nan
    return data + rng.normal(0, 0.01, data.shape).astype(np.float32)


def test_breakpoint_finds_the_year_and_ignores_stable_pixels() -> None:
    years = list(range(1985, 2011))
    annual = make_annual(years, 1, 3, data=_trajectories(years, 1998, nan_years=(1990, 2003)))
    ds = breakpoint_year(annual)
    assert ds["year"].values[0, 0] == 1998
    assert np.isnan(ds["year"].values[0, 1])  # always vegetated
    assert np.isnan(ds["year"].values[0, 2])  # built before the first year
    assert ds["step"].values[0, 0] > 1.0 and ds["valid"].values.all()


def test_breakpoint_after_a_gap_is_the_first_observed_year() -> None:
    years = list(range(2000, 2012))
    annual = make_annual(years, 1, 3, data=_trajectories(years, 2005, nan_years=(2004, 2005)))
    assert breakpoint_year(annual)["year"].values[0, 0] == 2006


def test_breakpoint_on_dask_matches_numpy() -> None:
    years = list(range(1990, 2000))
    annual = make_annual(years, 1, 3, data=_trajectories(years, 1994))
    lazy = breakpoint_year(annual.chunk({"x": 1}))
    assert isinstance(lazy["year"].data, da.Array)
    np.testing.assert_array_equal(lazy["year"].values, breakpoint_year(annual)["year"].values)


def test_mean_shift_breakpoint_needs_min_obs_each_side() -> None:
    z = np.array([[-1.0, 0.2, 0.2, 0.2, 0.2]])  # the rise is after the first year
    index, step = mean_shift_breakpoint(z, min_obs=1, min_step=1.0)
    assert index[0] == 1 and step[0] == pytest.approx(1.2)
    # with 2 years required before it, the best split (k=2) only rises by 0.6
    index, step = mean_shift_breakpoint(z, min_obs=2, min_step=1.0)
    assert index[0] == -1 and step[0] == pytest.approx(0.6)

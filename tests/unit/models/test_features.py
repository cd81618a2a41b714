"""Spectral indices and model input channels."""

from __future__ import annotations

import numpy as np
import pytest

from models.features import annual_axis, input_channels, normalized_difference, spectral_index
from tasks.errors import InputError
from tests.unit.models.factories import BANDS, CONCRETE, VEGETATION, WATER, make_annual


def _pixel(values: tuple[float, ...]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)[:, None, None]


def test_indices_separate_vegetation_concrete_and_water() -> None:
    veg, con, wat = _pixel(VEGETATION), _pixel(CONCRETE), _pixel(WATER)
    assert spectral_index("ndvi", veg, BANDS) > 0.8
    assert spectral_index("ndbi", veg, BANDS) < 0 < spectral_index("ndbi", con, BANDS)
    assert spectral_index("mndwi", wat, BANDS) > 0 > spectral_index("mndwi", con, BANDS)
    bu = spectral_index("bu", con, BANDS)
    assert bu == pytest.approx(
        spectral_index("ndbi", con, BANDS) - spectral_index("ndvi", con, BANDS)
    )


def test_normalized_difference_zero_denominator_nan_and_clipping() -> None:
    a = np.array([0.0, np.nan, 0.2, 0.05], dtype=np.float32)
    b = np.array([0.0, 0.1, -0.19, -0.1], dtype=np.float32)
    out = normalized_difference(a, b)
    assert out[0] == 0.0  # 0/0 -> 0: a valid dark pixel stays valid
    assert np.isnan(out[1])
    assert out[2] == 1.0 and out[3] == -1.0  # negative reflectance pushes past +-1: clipped
    assert out.dtype == np.float32


def test_input_channels_appends_indices_in_order() -> None:
    refl = np.random.default_rng(0).uniform(0.01, 0.4, (2, 6, 3, 4)).astype(np.float32)
    x = input_channels(refl, BANDS, ("ndbi", "ndvi"), band_axis=1)
    assert x.shape == (2, 8, 3, 4)
    np.testing.assert_array_equal(x[:, :6], refl)
    np.testing.assert_allclose(x[:, 6], spectral_index("ndbi", refl, BANDS, band_axis=1))
    np.testing.assert_allclose(x[:, 7], spectral_index("ndvi", refl, BANDS, band_axis=1))


def test_index_needing_an_absent_band_names_it() -> None:
    with pytest.raises(InputError, match="swir16"):
        spectral_index("ndbi", np.zeros((2, 1, 1)), ("red", "nir"))
    with pytest.raises(InputError, match="unknown spectral index"):
        spectral_index("evi", np.zeros((6, 1, 1)), BANDS)


def test_annual_axis_reads_period_labels_and_rejects_unordered_years() -> None:
    dim, years = annual_axis(make_annual([1985, 1986, 1990], 2, 2))
    assert dim == "period" and years.tolist() == [1985, 1986, 1990]
    with pytest.raises(InputError, match="increase"):
        annual_axis(make_annual([1990, 1985], 2, 2, dim="year"))

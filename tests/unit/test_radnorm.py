"""Relative radiometric normalisation: the gain and offset between two dates recovered on the
pixels that did not change, left alone where they cannot be fitted, and what it does for CVA."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import xarray as xr

from models.baselines import change_vector_analysis
from models.training.metrics import binary_scores
from tasks.radnorm import Normalization, relative_normalization

BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]
GAIN = np.array([0.85, 0.9, 1.1, 1.2, 0.95, 1.05])  # another calibration
OFFSET = np.array([0.04, 0.03, 0.02, 0.01, 0.005, 0.0])  # residual haze: bluer
DELTA = np.array([0.02, 0.02, 0.03, -0.08, 0.04, 0.03])  # a loss of vegetation


def _scene(rng: np.random.Generator, shape: tuple[int, int] = (120, 120)) -> np.ndarray:
    """(band, y, x) reflectance of four covers in blocks of 8 px, with texture."""
    covers = np.array(
        [
            [0.03, 0.06, 0.04, 0.35, 0.18, 0.08],  # vegetation
            [0.12, 0.14, 0.16, 0.22, 0.28, 0.24],  # soil
            [0.15, 0.16, 0.17, 0.2, 0.22, 0.2],  # concrete
            [0.05, 0.06, 0.04, 0.02, 0.01, 0.01],  # water
        ]
    )
    blocks = rng.integers(0, 4, (shape[0] // 8 + 1, shape[1] // 8 + 1))
    cls = np.kron(blocks, np.ones((8, 8), int))[: shape[0], : shape[1]]
    img = covers[cls].transpose(2, 0, 1) * rng.uniform(0.85, 1.15, shape)
    return img.astype(np.float32)


def _da(values: np.ndarray) -> xr.DataArray:
    return xr.DataArray(values.astype(np.float32), dims=("band", "y", "x"), coords={"band": BANDS})


@pytest.fixture()
def drifted() -> tuple[xr.DataArray, xr.DataArray, np.ndarray]:
    """A before scene; an after scene through another gain and offset, with a quarter of the
    blocks changed (less vegetation) and a little noise on both."""
    rng = np.random.default_rng(3)
    before = _scene(rng)
    after = before.copy()
    changed = np.kron(rng.random((16, 16)) < 0.25, np.ones((8, 8), bool))[:120, :120]
    after[:, changed] += DELTA[:, None]
    after = after * GAIN[:, None, None] + OFFSET[:, None, None]
    noise = rng.normal(0, 0.003, (2, *before.shape))
    return _da(before + noise[0]), _da(after + noise[1]), changed


def test_gain_and_offset_are_recovered_on_the_unchanged_pixels(drifted) -> None:  # type: ignore[no-untyped-def]
    before, after, changed = drifted
    norm = relative_normalization(before, after)
    assert norm.applied and norm.stable_pixels >= 0.15 * before[0].size
    # after = gain * before + offset on unchanged pixels: the fit inverts it
    np.testing.assert_allclose(norm.gain, 1 / GAIN, rtol=0.03)
    np.testing.assert_allclose(norm.offset, -OFFSET / GAIN, atol=0.006)
    fixed = norm.apply(after)
    residual = np.abs(fixed.values - before.values)[:, ~changed]
    assert (
        np.median(residual) < 0.005 < np.median(np.abs(after.values - before.values)[:, ~changed])
    )
    attrs = norm.attrs()
    assert attrs["normalization_bands"] == ",".join(BANDS)
    assert attrs["radiometric_normalization"].startswith("ISFA")


def test_normalization_turns_a_drift_cva_reads_as_change_back_into_no_change(drifted) -> None:  # type: ignore[no-untyped-def]
    before, after, changed = drifted
    raw = change_vector_analysis(before, after)
    fixed = change_vector_analysis(before, relative_normalization(before, after).apply(after))
    f1_raw = binary_scores(raw["score"].values >= 0.5, changed)["f1"]
    f1_fixed = binary_scores(fixed["score"].values >= 0.5, changed)["f1"]
    assert f1_fixed > 0.98 and f1_raw < 0.8


def test_too_few_valid_pixels_leave_the_target_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    before, after = _da(_scene(rng, (20, 20))), _da(_scene(rng, (20, 20)))
    after[:, :, 5:] = np.nan  # 100 valid pixels: 20 invariant, fewer than a fit needs
    with caplog.at_level(logging.WARNING, logger="tasks.radnorm"):
        norm = relative_normalization(before, after)
    assert not norm.applied and norm.gain == (1.0,) * 6 and "too few" in norm.reason
    assert "not applied" in caplog.text
    assert norm.attrs()["radiometric_normalization"].startswith("none (")
    np.testing.assert_array_equal(norm.apply(after).values, after.values)


def test_a_band_without_spread_gets_its_offset_only() -> None:
    """Uniform vegetation plus noise: the invariant pixels hold noise, no gain to fit."""
    rng = np.random.default_rng(1)
    flat = np.broadcast_to(
        np.array([0.03, 0.06, 0.04, 0.35, 0.18, 0.08])[:, None, None], (6, 60, 60)
    )
    before = _da(flat + rng.normal(0, 0.004, flat.shape))
    after = _da(flat + 0.01 + rng.normal(0, 0.004, flat.shape))
    norm = relative_normalization(before, after)
    assert norm.gain == (1.0,) * 6
    np.testing.assert_allclose(norm.offset, -0.01, atol=0.002)


def test_apply_keeps_the_target_band_order_and_attrs() -> None:
    norm = Normalization(("red", "nir"), (2.0, 0.5), (0.1, 0.0), 500, (True, True))
    target = xr.DataArray(
        np.ones((2, 2, 2), np.float32), dims=("band", "y", "x"), coords={"band": ["red", "nir"]}
    ).assign_attrs(source="x")
    out = norm.apply(target)
    assert out.dtype == np.float32 and out.attrs == {"source": "x"}
    np.testing.assert_allclose(out.sel(band="red").values, 2.1)
    np.testing.assert_allclose(out.sel(band="nir").values, 0.5)

"""Expected calibration error and temperature scaling on synthetic predictors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit

from models.calibration import calibration_bins, expected_calibration_error, fit_temperature
from tasks.errors import InputError


def _calibrated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """p ~ U(0, 1) and labels ~ Bernoulli(p): calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, n)
    return p, rng.uniform(0, 1, n) < p


def test_ece_of_a_calibrated_predictor_is_near_zero() -> None:
    p, y = _calibrated(200_000)
    assert expected_calibration_error(p, y) < 0.01


def test_ece_of_an_overconfident_predictor_is_large() -> None:
    p, y = _calibrated(200_000)
    sharpened = expit(4 * logit(np.clip(p, 1e-6, 1 - 1e-6)))  # same ranking, more extreme
    assert expected_calibration_error(sharpened, y) > 0.1
    # a constant 0.99 on coin flips: accuracy 0.5 at confidence 0.99
    coin = np.random.default_rng(1).uniform(0, 1, 10_000) < 0.5
    assert expected_calibration_error(np.full(10_000, 0.99), coin) == pytest.approx(0.49, abs=0.02)


def test_ece_ignores_nan_and_masked_pixels() -> None:
    p, y = _calibrated(50_000)
    p_nan = p.copy()
    p_nan[::2] = np.nan
    mask = np.ones_like(p, dtype=bool)
    mask[::2] = False
    assert expected_calibration_error(p_nan, y) == pytest.approx(
        expected_calibration_error(p, y, mask=mask)
    )


def test_calibration_bins_count_every_pixel_once() -> None:
    p, y = _calibrated(1000)
    conf, _, count = calibration_bins(p, y, n_bins=10)
    assert count.sum() == 1000
    assert np.all(count[:4] == 0)  # top-label confidence is >= 0.5
    filled = count > 0
    assert np.all((conf[filled] >= 0.5) & (conf[filled] <= 1.0))


def test_fit_temperature_recovers_the_sharpening_factor() -> None:
    p, y = _calibrated(100_000)
    logits = 3.0 * logit(np.clip(p, 1e-6, 1 - 1e-6))  # over-confident by a factor 3
    t = fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.05)
    assert expected_calibration_error(expit(logits / t), y) < 0.01


def test_ece_rejects_logits_and_shape_mismatch() -> None:
    with pytest.raises(InputError, match="sigmoid"):
        expected_calibration_error(np.array([2.0, -1.0]), np.array([1, 0]))
    with pytest.raises(InputError, match="same shape"):
        expected_calibration_error(np.zeros(3), np.zeros(4))

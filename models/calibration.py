"""Calibration of binary probabilities: expected calibration error and temperature scaling.

The pipeline's per-pixel confidence is the *calibrated probability* of the predicted class,
``max(p, 1 - p)`` with ``p = sigmoid(logit / T)`` and the temperature ``T`` of the weights spec
(temperature scaling, Guo, Pleiss, Sun & Weinberger 2017, "On Calibration of Modern Neural
Networks", ICML, arXiv:1706.04599). `fit_temperature` fits ``T`` on held-out logits;
`expected_calibration_error` measures how far confidence is from accuracy.

Arrays are numpy, any shape; probabilities of the positive class in [0, 1]; labels 0/1 or bool.
NaN probabilities (no valid observation) are ignored.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from tasks.errors import InputError

__all__ = ["DEFAULT_BINS", "calibration_bins", "expected_calibration_error", "fit_temperature"]

#: Number of equal-width confidence bins; 15 as in Guo et al. 2017 (Section 2).
DEFAULT_BINS = 15


def _flat(
    prob: np.ndarray, label: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(prob, dtype=np.float64)
    y = np.asarray(label)
    if p.shape != y.shape:
        raise InputError(f"prob {p.shape} and label {y.shape} must have the same shape.")
    keep = np.isfinite(p)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    p, y = p[keep], y[keep].astype(bool)
    if np.any((p < 0) | (p > 1)):
        raise InputError("probabilities must lie in [0, 1]; pass sigmoid(logits), not logits.")
    return p, y


def calibration_bins(
    prob: np.ndarray,
    label: np.ndarray,
    *,
    n_bins: int = DEFAULT_BINS,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability-diagram data over equal-width confidence bins of [0, 1].

    Confidence is the top-label probability ``max(p, 1 - p)`` and a prediction is correct when
    ``(p >= 0.5) == label``. Returns ``(mean confidence, accuracy, count)`` per bin, each of
    length `n_bins` (NaN mean/accuracy in empty bins). `mask` (bool, same shape) selects pixels.
    """
    if n_bins < 1:
        raise InputError(f"n_bins must be >= 1, got {n_bins}.")
    p, y = _flat(prob, label, mask)
    conf = np.maximum(p, 1 - p)
    correct = (p >= 0.5) == y
    # bin i holds (i/n, (i+1)/n]; confidence 0 (impossible for top-label) would fall in bin 0
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sum_conf / count, sum_acc / count, count


def expected_calibration_error(
    prob: np.ndarray,
    label: np.ndarray,
    *,
    n_bins: int = DEFAULT_BINS,
    mask: np.ndarray | None = None,
) -> float:
    """ECE = sum_b (n_b / n) |accuracy_b - confidence_b| over equal-width bins (Guo et al. 2017,
    eq. 3; Naeini et al. 2015). 0 = perfectly calibrated; NaN when no pixel is selected."""
    conf, acc, count = calibration_bins(prob, label, n_bins=n_bins, mask=mask)
    n = count.sum()
    if n == 0:
        return float("nan")
    filled = count > 0
    return float(np.sum(count[filled] * np.abs(acc[filled] - conf[filled])) / n)


def fit_temperature(
    logits: np.ndarray,
    label: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    bounds: tuple[float, float] = (0.05, 20.0),
) -> float:
    """Temperature ``T`` minimising the binary cross-entropy of ``sigmoid(logits / T)``.

    One scalar, fitted on held-out data (never the training set), as in Guo et al. 2017; it
    changes confidence but never the predicted class. Bounded 1-D search over ``log T``.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(label)
    if z.shape != y.shape:
        raise InputError(f"logits {z.shape} and label {y.shape} must have the same shape.")
    keep = np.isfinite(z) if mask is None else np.isfinite(z) & np.asarray(mask, dtype=bool)
    z, t = z[keep], y[keep].astype(np.float64)
    if z.size == 0:
        raise InputError("no finite logits to fit a temperature on.")

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - t * s))  # BCE with logits, stable

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    return float(np.exp(res.x))

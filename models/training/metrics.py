"""Segmentation and timing metrics on numpy arrays; labels and predictions are bool.

Every function takes an optional `mask` (bool, same shape) of the pixels to score.
"""

from __future__ import annotations

import numpy as np

__all__ = ["binary_scores", "year_agreement"]


def binary_scores(
    pred: np.ndarray, label: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, float]:
    """Precision, recall, F1 and IoU of the positive class (NaN where undefined)."""
    p = np.asarray(pred, dtype=bool)
    y = np.asarray(label, dtype=bool)
    if mask is not None:
        p, y = p[mask], y[mask]
    tp = float(np.sum(p & y))
    fp = float(np.sum(p & ~y))
    fn = float(np.sum(~p & y))

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "n": float(p.size),
    }


def year_agreement(
    pred_year: np.ndarray, true_year: np.ndarray, *, tolerance: int = 1
) -> dict[str, float]:
    """Over pixels with a true year (finite): share whose predicted year is within
    ±`tolerance` years (a missing prediction counts as wrong), and the mean absolute error of
    those with a prediction."""
    t = np.asarray(true_year, dtype=np.float64)
    p = np.asarray(pred_year, dtype=np.float64)
    sel = np.isfinite(t)
    if not sel.any():
        return {"within": float("nan"), "mae": float("nan"), "n": 0.0}
    t, p = t[sel], p[sel]
    err = np.abs(p - t)
    within = np.where(np.isfinite(err), err <= tolerance, False)
    found = np.isfinite(err)
    return {
        "within": float(within.mean()),
        "mae": float(err[found].mean()) if found.any() else float("nan"),
        "n": float(sel.sum()),
    }

"""What the user sees of a run: quicklook images and Prefect artifacts (tables, links, images).

Quicklooks are small PNGs (at most `QUICKLOOK_PX` on a side: artifacts live in Prefect's database)
embedded as ``data:`` URIs, which the Prefect UI renders in markdown artifacts.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["QUICKLOOK_PX", "data_uri", "overlay", "rgb_quicklook", "table_rows"]

#: Longest side of a quicklook (pixels).
QUICKLOOK_PX = 256
#: Overlay colours (RGB): change red, built-up orange.
CHANGE_RGB = (230, 30, 30)


def _stretch(band: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (np.nan_to_num(band, nan=lo) - lo) / max(hi - lo, 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def rgb_quicklook(refl: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """True-colour uint8 image (y, x, 3) from reflectance (band, y, x): red/green/blue stretched
    between their 2nd and 98th percentiles (one stretch for all three, so colours stay true)."""
    idx = [list(bands).index(b) for b in ("red", "green", "blue")]
    rgb = refl[idx]
    finite = rgb[np.isfinite(rgb)]
    lo, hi = np.percentile(finite, (2, 98)) if finite.size else (0.0, 0.3)
    return np.stack([_stretch(b, float(lo), float(hi)) for b in rgb], axis=-1)


def overlay(
    image: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int] = CHANGE_RGB, alpha: float = 0.6
) -> np.ndarray:
    """`image` (y, x, 3) uint8 with `mask` (y, x) painted in `rgb` at opacity `alpha`."""
    out = image.astype(np.float32)
    m = np.asarray(mask, dtype=bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(rgb, dtype=np.float32)
    return out.astype(np.uint8)


def data_uri(image: np.ndarray, *, max_px: int = QUICKLOOK_PX) -> str:
    """PNG ``data:`` URI of a uint8 (y, x, 3) image, downsized to at most `max_px` a side."""
    img = Image.fromarray(image)
    img.thumbnail((max_px, max_px), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def table_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows for `create_table_artifact`: plain JSON values, floats rounded to 3 decimals."""
    rows = []
    for rec in records:
        row = {}
        for k, v in rec.items():
            if isinstance(v, float | np.floating):
                v = round(float(v), 3)
            elif isinstance(v, np.integer):
                v = int(v)
            row[str(k)] = v
        rows.append(row)
    return rows

"""Quicklooks and artifact rows."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from tasks.report import data_uri, overlay, rgb_quicklook, table_rows

BANDS = ("blue", "green", "red", "nir")


def test_rgb_quicklook_is_true_colour_and_handles_nan() -> None:
    refl = np.zeros((4, 20, 30), dtype=np.float32)
    refl[2, :, :15] = 0.3  # red left half
    refl[1, :, 15:] = 0.3  # green right half
    refl[0, 0, 0] = np.nan
    img = rgb_quicklook(refl, BANDS)
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8
    assert img[5, 2, 0] > 200 and img[5, 2, 1] < 50  # red where red is bright
    assert img[5, 25, 1] > 200 and img[5, 25, 0] < 50


def test_overlay_paints_only_the_mask() -> None:
    img = np.full((4, 4, 3), 100, dtype=np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    out = overlay(img, mask, (255, 0, 0), alpha=1.0)
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[1, 1]) == (100, 100, 100)


def test_data_uri_is_a_small_png() -> None:
    uri = data_uri(np.zeros((1000, 500, 3), dtype=np.uint8), max_px=128)
    assert uri.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert max(img.size) == 128 and img.size == (64, 128)


def test_table_rows_are_plain_json() -> None:
    rows = table_rows([{"class": "changed", "area_m2": np.float32(1234.5678), "n": np.int64(3)}])
    assert rows == [{"class": "changed", "area_m2": 1234.568, "n": 3}]
    assert type(rows[0]["n"]) is int

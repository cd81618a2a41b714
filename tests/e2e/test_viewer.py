"""The static viewer opens in headless Chromium (network features off) and draws the layers.

Skips cleanly where Debian's `chromium` is not installed (`.ci/run` installs it).
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.errors import InputError
from tasks.report import data_uri
from tasks.viewer import ViewerLayer, write_viewer

pytestmark = pytest.mark.e2e

BOUNDS = (11.955, 51.335, 11.985, 51.365)
# No sandbox (root in containers), no GPU, and every background network feature off: the
# machine has no network and Chromium would otherwise retry lookups at every start.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--window-size=800,600",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium is not installed (Debian package `chromium`)")


def _png(color: tuple[int, int, int]) -> bytes:
    img = np.zeros((64, 64, 3), np.uint8)
    img[:] = color
    uri = data_uri(img)
    return base64.b64decode(uri.split(",", 1)[1])


def _square(west: float, south: float, size: float) -> dict:
    ring = [
        [west, south],
        [west + size, south],
        [west + size, south + size],
        [west, south + size],
        [west, south],
    ]
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"area_m2": 123.0, "period": "2023"},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        ],
    }


@pytest.fixture()
def viewer(tmp_path: Path) -> Path:
    layers = [
        ViewerLayer(
            "change 2018-2023",
            BOUNDS,
            image_png=_png((0, 120, 255)),
            geojson=_square(11.965, 51.345, 0.01),
            color="#ff0000",
        ),
    ]
    return write_viewer(layers, tmp_path / "products", title="demo </script> products")


def test_viewer_renders_in_headless_chromium(viewer: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    profile = tmp_path / "profile"
    dom = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            viewer.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "leaflet-container" in dom  # Leaflet (shipped, offline) ran
    assert 'class="leaflet-image-layer' in dom  # the quicklook overlay
    assert "<path" in dom  # the polygon layer
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=3000",
            f"--screenshot={shot}",
            viewer.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")).reshape(-1, 3)
    blue = ((pixels[:, 2] > 200) & (pixels[:, 0] < 80)).mean()
    # the red polygon fill (opacity 0.35) over the blue quicklook reads as purple
    red = ((pixels[:, 0] > 70) & (pixels[:, 1] < 120) & (pixels[:, 2] > 120)).mean()
    assert blue > 0.05, "the quicklook is not on the screenshot"
    assert red > 0.001, "the change polygons are not on the screenshot"


def test_viewer_escapes_the_title_and_refuses_bad_bounds(viewer: Path, tmp_path: Path) -> None:
    text = viewer.read_text()
    assert "demo &lt;/script&gt; products" in text
    assert (viewer.parent / "viewer" / "leaflet.js").stat().st_size > 100_000
    with pytest.raises(InputError, match="bounds"):
        write_viewer([ViewerLayer("x", (500000, 5e6, 510000, 5.01e6))], tmp_path / "bad")

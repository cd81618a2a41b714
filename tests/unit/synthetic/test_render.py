"""Rendering: misregistration is really in the pixels, clouds cast shadows away from the sun."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from skimage.filters import window
from skimage.registration import phase_cross_correlation

from tasks.synthetic.acquisitions import Acquisition, plan_archive
from tasks.synthetic.bands import reflectance_assets
from tasks.synthetic.clouds import TruthClass
from tasks.synthetic.config import ArchiveConfig, tiny_config
from tasks.synthetic.render import render_acquisition
from tasks.synthetic.world import World, build_world


@pytest.fixture(scope="module")
def config() -> ArchiveConfig:
    return tiny_config()


@pytest.fixture(scope="module")
def world(config: ArchiveConfig) -> World:
    return build_world(config)


@pytest.fixture(scope="module")
def plan(config: ArchiveConfig) -> list[Acquisition]:
    return plan_archive(config)


def _clear_full(acq: Acquisition) -> Acquisition:
    """The same pass without clouds and with a swath covering everything."""
    swath = dataclasses.replace(acq.swath, half_swath_m=1e7)
    return dataclasses.replace(acq, cloud_cover=0.0, cirrus_cover=0.0, swath=swath)


def _measured_shift(moved: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Content displacement (rows, cols) of `moved` relative to `reference`, in pixels."""
    taper = window("hann", moved.shape)
    shift, _, _ = phase_cross_correlation(
        (reference - reference.mean()) * taper,
        (moved - moved.mean()) * taper,
        upsample_factor=50,
        normalization=None,
    )
    return -np.asarray(shift)


@pytest.mark.parametrize("family", ["landsat", "sentinel-2"])
def test_render_acquisition_misregistration_is_in_the_pixels(
    config: ArchiveConfig, world: World, plan: list[Acquisition], family: str
) -> None:
    acq = _clear_full(next(a for a in plan if a.track.family == family and not a.slc_off))
    moved = render_acquisition(config, world, acq)[0]
    reference = render_acquisition(config, world, acq, shifted=False)[0]
    asset = "nir08"
    image, grid = moved.band(asset)
    expected = np.array([-acq.shift_m[1], acq.shift_m[0]]) / grid.resolution  # (drow, dcol)
    assert np.abs(expected).max() > 0.05
    measured = _measured_shift(image, reference.band(asset)[0])
    np.testing.assert_allclose(measured, expected, atol=0.08)


def test_render_acquisition_shadows_lie_away_from_the_sun(
    config: ArchiveConfig, world: World, plan: list[Acquisition]
) -> None:
    acq = next(a for a in plan if a.track.family == "sentinel-2")
    acq = dataclasses.replace(_clear_full(acq), cloud_cover=0.15)
    item = render_acquisition(config, world, acq)[0]
    mask = item.truth_mask
    index = np.indices(mask.shape)
    rows, cols = index[0], index[1]
    cloud, shadow = mask == TruthClass.CLOUD, mask == TruthClass.SHADOW
    assert cloud.any() and shadow.any()
    # Vector from cloud centroid to shadow centroid, in map axes (east, north).
    east = cols[shadow].mean() - cols[cloud].mean()
    north = -(rows[shadow].mean() - rows[cloud].mean())
    sun = np.radians(acq.sun_azimuth)
    toward_sun = np.array([np.sin(sun), np.cos(sun)])
    assert np.dot([east, north], toward_sun) < 0


def test_render_acquisition_is_deterministic(
    config: ArchiveConfig, world: World, plan: list[Acquisition]
) -> None:
    first = render_acquisition(config, world, plan[0])[0]
    second = render_acquisition(config, world, plan[0])[0]
    np.testing.assert_array_equal(first.band("red")[0], second.band("red")[0])
    np.testing.assert_array_equal(first.quality, second.quality)


def test_render_acquisition_applies_calibration_haze_and_adjacency(
    config: ArchiveConfig, world: World, plan: list[Acquisition]
) -> None:
    """Another gain per band scales the pixels; residual haze brightens blue more than SWIR
    and, through the adjacency effect, blurs the image (less contrast between neighbours)."""
    acq = _clear_full(next(a for a in plan if a.track.family == "landsat" and not a.slc_off))
    assert set(acq.gain) == {1.0} and set(acq.offset) == {0.0} and acq.haze == 0.0
    plain = render_acquisition(config, world, acq)[0]
    n = len(acq.gain)
    gains = tuple(1.0 + 0.05 * i for i in range(n))
    scaled = render_acquisition(config, world, dataclasses.replace(acq, gain=gains))[0]
    order = [a.asset for a in reflectance_assets(acq.platform)]
    for asset in ("blue", "swir22"):
        index = order.index(asset)
        np.testing.assert_allclose(
            scaled.band(asset)[0], plain.band(asset)[0] * gains[index], rtol=1e-5
        )
    hazy = render_acquisition(config, world, dataclasses.replace(acq, haze=0.04))[0]
    lift = {a: float(np.nanmean(hazy.band(a)[0] - plain.band(a)[0])) for a in ("blue", "swir22")}
    assert 0.03 < lift["blue"] < 0.05 and 0.0 <= lift["swir22"] < 0.01

    def contrast(image: np.ndarray) -> float:
        return float(np.nanmean(np.abs(np.diff(image, axis=1))))

    assert contrast(hazy.band("red")[0]) < 0.97 * contrast(plain.band("red")[0])


def test_radiometry_draws_nothing_without_the_effects_and_a_stream_of_its_own() -> None:
    """A configuration without drift, haze or BRDF-like effects renders as before they
    existed; with them, the other draws of each acquisition (shift, clouds) are unchanged."""
    base = tiny_config()
    drifted = tiny_config(calibration_drift=0.05, haze=0.02, illumination=0.1)
    plain, other = plan_archive(base), plan_archive(drifted)
    assert all(set(a.gain) == {1.0} and a.haze == 0.0 for a in plain)
    assert [(a.key, a.shift_m, a.cloud_cover) for a in plain] == [
        (a.key, a.shift_m, a.cloud_cover) for a in other
    ]
    gains = np.array([a.gain for a in other if a.platform == other[0].platform])
    assert gains.min() > 0.8 and gains.max() < 1.25 and gains.std() > 0.01
    assert any(a.haze > 0 for a in other)

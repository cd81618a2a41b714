"""Tests of tasks.coregister: known sub-pixel shifts (synthetic texture, the real Sentinel-2 pair,
Landsat-like 30 m against 10 m, the synthetic archive), masking, flagging, lazy application.

Known shifts are made with a Fourier shift (`scipy.ndimage.fourier_shift`) of a larger periodic
canvas, cropped away from its edges: exact for band-limited content, no interpolation error in
the truth. Sign convention (module docstring): ``moving(r, c) = reference(r - dy, c - dx)``,
which is what ``fourier_shift(img, (dy, dx))`` produces.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from pyproj import Transformer
from rasterio.windows import Window
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from tasks.aoi import GridSpec
from tasks.cloudmask import mask_stack
from tasks.coregister import (
    SHIFT_VARIABLES,
    ReferenceImage,
    apply_shifts,
    coregister_stack,
    estimate_shift,
    estimate_shifts,
    native_resolution,
    select_reference,
)
from tasks.errors import InputError
from tasks.load import load
from tasks.refs import SceneRef
from tasks.synthetic import Truth, archive_items, create_archive, open_truth, tiny_config
from tests.conftest import realdata_path

PAIR = ("GFZ+arosics", "tests", "data", "testcase_inter1_S2A_S2A")
REF_JP2 = "ref_S2A_20160608T153121_T33UUU_sub.jp2"
TGT_JP2 = "tgt_S2A_20160529T153631_T33UUU_sub.jp2"
#: Origin of the target's raster in reference pixels (both on the same 10 m grid of T33UUU):
#: rows (5862000 - 5866490) / 10, columns (335440 - 330000) / 10, from the files' geotransforms.
TGT_OFFSET = (-449, 544)
#: Reference pixel of a 256 px crop over farmland, cloud-free in both images.
CLEAR_CROP = (1200, 1144)
#: Reference pixel of a 256 px crop under the target's thick cloud.
CLOUDY_CROP = (300, 1844)
MARGIN = 24  # crop margin that keeps the Fourier shift's wrap-around out of the test images


# ---- factories -------------------------------------------------------------------------------
def texture(shape: tuple[int, int], seed: int, *, slope: float = 1.0) -> np.ndarray:
    """Land-like texture: power-law spectrum (amplitude ∝ 1/f^slope) plus a few field edges."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(shape)) ** slope
    img = np.fft.ifft2(np.fft.fft2(rng.normal(size=shape)) * amp).real
    img = 0.25 + 0.05 * img / img.std()
    fields = ndimage.zoom(
        rng.uniform(0.0, 0.1, (shape[0] // 24 + 1, shape[1] // 24 + 1)), 24, order=0
    )
    return (img + fields[: shape[0], : shape[1]]).astype(np.float64)


def shifted(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """`img`'s content displaced by (dy, dx) rows/cols (periodic)."""
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(img), (dy, dx))).real


def random_shifts(n: int, seed: int) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    return [(float(a), float(b)) for a, b in rng.uniform(-2.0, 2.0, (n, 2))]


def rmse(errors: list[tuple[float, float]]) -> float:
    e = np.asarray(errors, dtype=float)
    return float(np.sqrt(np.mean(np.sum(e**2, axis=1))))


def make_stack(
    images: list[np.ndarray],
    *,
    platforms: list[str] | None = None,
    resolution: float = 10.0,
    bands: tuple[str, ...] = ("nir",),
    chunks: int | None = None,
) -> xr.DataArray:
    """A (time, band, y, x) float32 stack on a north-up UTM 33N grid; every band = the image."""
    n = len(images)
    h, w = images[0].shape
    data = np.stack([np.stack([img] * len(bands)) for img in images]).astype(np.float32)
    x0, y0 = 500_000.0, 5_800_000.0
    stack = xr.DataArray(
        data,
        dims=("time", "band", "y", "x"),
        coords={
            "time": pd.date_range("2024-05-01", periods=n, freq="10D"),
            "band": list(bands),
            "y": y0 - resolution * (np.arange(h) + 0.5),
            "x": x0 + resolution * (np.arange(w) + 0.5),
            "id": ("time", [f"scene-{i}" for i in range(n)]),
            "platform": ("time", platforms or ["sentinel-2a"] * n),
        },
        attrs={"crs": "EPSG:32633"},
    )
    if chunks is not None:
        stack = stack.chunk({"time": 1, "band": 1, "y": chunks, "x": chunks})
    return stack


def interior(a: np.ndarray, margin: int = 6) -> np.ndarray:
    return a[margin:-margin, margin:-margin]


# ---- known shifts ----------------------------------------------------------------------------
def test_estimate_shift_known_subpixel_shifts_on_texture() -> None:
    canvas = texture((256 + 2 * MARGIN, 256 + 2 * MARGIN), seed=1)
    ref = canvas[MARGIN:-MARGIN, MARGIN:-MARGIN]
    errors = []
    for dy, dx in random_shifts(5, seed=2):
        est = estimate_shift(ref, shifted(canvas, dy, dx)[MARGIN:-MARGIN, MARGIN:-MARGIN])
        assert not est.flagged, est
        assert est.status == "ok"
        assert est.peak_ratio > 3.0
        errors.append((est.dy - dy, est.dx - dx))
    assert rmse(errors) <= 0.02


def test_estimate_shift_masked_cloud_does_not_bias_where_unmasked_does() -> None:
    """A cloud masked (NaN) at the same place in the reference and the scene (a persistent
    cloud; a shared swath edge behaves the same). Unmasked, the NaNs must be filled (0 here):
    the filled region's edge sits at zero shift in both images and pulls scikit-image's plain
    phase correlation towards (0, 0). With the masks, our estimate stays on the truth."""
    size = 256
    canvas = texture((size + 2 * MARGIN, size + 2 * MARGIN), seed=3)
    ref = canvas[MARGIN:-MARGIN, MARGIN:-MARGIN]
    blob = ndimage.gaussian_filter(np.random.default_rng(4).normal(size=(size, size)), 25)
    cloud = blob > np.quantile(blob, 0.6)  # 40 % of the scene
    truths = [(-0.99, -1.02), (0.05, 0.91), (1.3, -0.4)]
    unmasked_errors, masked_errors = [], []
    for dy, dx in truths:
        moving = shifted(canvas, dy, dx)[MARGIN:-MARGIN, MARGIN:-MARGIN]
        plain = -phase_cross_correlation(
            np.where(cloud, 0.0, ref), np.where(cloud, 0.0, moving), upsample_factor=100
        )[0]
        unmasked_errors.append((plain[0] - dy, plain[1] - dx))
        est = estimate_shift(np.where(cloud, np.nan, ref), np.where(cloud, np.nan, moving))
        assert not est.flagged, est
        masked_errors.append((est.dy - dy, est.dx - dx))
    assert rmse(unmasked_errors) > 0.3  # the cloud biases an unmasked estimate ...
    assert rmse(masked_errors) <= 0.05  # ... and masking removes the bias


def _pair_reader(size: int) -> Callable[..., np.ndarray]:
    """``read(which, row, col, margin)``: a (size + 2 margin)² crop of the reference (``"ref"``) or
    the target (``"tgt"``) around reference pixel (row, col), float64 DN."""
    folder = realdata_path(*PAIR)
    if "JP2OpenJPEG" not in rasterio.drivers.raster_driver_extensions().values():
        pytest.skip("GDAL has no JP2OpenJPEG driver: cannot read the Sentinel-2 test pair")

    def read(which: str, row: int, col: int, margin: int = 0) -> np.ndarray:
        name, (dr, dc) = (REF_JP2, (0, 0)) if which == "ref" else (TGT_JP2, TGT_OFFSET)
        win = Window(col - dc - margin, row - dr - margin, size + 2 * margin, size + 2 * margin)
        with rasterio.open(folder / name) as src:
            return src.read(1, window=win).astype(np.float64)

    return read


def test_estimate_shift_real_sentinel2_known_shifts() -> None:
    """The real reference image shifted by 8 known sub-pixel amounts: RMSE <= 0.1 px."""
    canvas = _pair_reader(256)("ref", *CLEAR_CROP, MARGIN)
    assert np.all(canvas > 0), "the crop must be inside the image (DN 0 = no data)"
    ref = canvas[MARGIN:-MARGIN, MARGIN:-MARGIN]
    errors = []
    for dy, dx in random_shifts(8, seed=5):
        est = estimate_shift(ref, shifted(canvas, dy, dx)[MARGIN:-MARGIN, MARGIN:-MARGIN])
        assert not est.flagged, est
        errors.append((est.dy - dy, est.dx - dx))
    assert rmse(errors) <= 0.1


def test_estimate_shift_real_pair_offset_improves_the_match_and_cloud_is_flagged() -> None:
    """The real target against the reference: the estimated offset, applied, makes the images
    agree better and better than any 0.3 px nudge of it; a crop under the target's thick cloud
    is flagged, not trusted."""
    read = _pair_reader(256)
    ref, tgt = read("ref", *CLEAR_CROP), read("tgt", *CLEAR_CROP)
    est = estimate_shift(ref, tgt)
    assert not est.flagged, est
    assert 0.5 < est.magnitude_px < 5.0  # the pair is off by ~2 px
    assert est.spread_px < 0.2

    def match(dy: float, dx: float) -> float:
        corrected = ndimage.shift(tgt, (-dy, -dx), order=3, mode="nearest")
        return float(np.corrcoef(interior(ref).ravel(), interior(corrected).ravel())[0, 1])

    best = match(est.dy, est.dx)
    assert best > match(0.0, 0.0) + 0.05
    for ny, nx in [(0.3, 0), (-0.3, 0), (0, 0.3), (0, -0.3)]:
        assert match(est.dy + ny, est.dx + nx) < best

    cloudy = estimate_shift(read("ref", *CLOUDY_CROP), read("tgt", *CLOUDY_CROP))
    assert cloudy.flagged
    assert cloudy.status in ("too-few-windows", "windows-disagree")


# ---- cross-sensor ----------------------------------------------------------------------------
def landsat_like(canvas: np.ndarray, dy: float, dx: float, seed: int) -> np.ndarray:
    """What a 30 m sensor shows on a 10 m grid: shifted, blurred by its PSF (Gaussian, FWHM 0.8
    pixel), integrated over 3 x 3 px, noisy, and put back on the 10 m grid with nearest
    neighbour (the loader's default resampling): 3 x 3 blocks."""
    moved = ndimage.gaussian_filter(shifted(canvas, dy, dx), 0.8 * 3 / 2.355)
    h, w = canvas.shape
    coarse = moved.reshape(h // 3, 3, w // 3, 3).mean(axis=(1, 3))
    coarse += np.random.default_rng(seed).normal(0, 0.002, coarse.shape)
    return np.repeat(np.repeat(coarse, 3, axis=0), 3, axis=1)


def test_estimate_shifts_landsat_30m_against_sentinel2_10m() -> None:
    size = 192  # multiple of 3
    canvas = texture((size + 2 * 30, size + 2 * 30), seed=6)
    ref = canvas[30:-30, 30:-30]
    truths = random_shifts(3, seed=7)
    movings = [
        landsat_like(canvas, dy, dx, seed=i)[30:-30, 30:-30] for i, (dy, dx) in enumerate(truths)
    ]
    stack = make_stack([ref, *movings], platforms=["sentinel-2a"] + ["landsat-8"] * len(truths))
    shifts = estimate_shifts(stack, reference=0)
    est = np.stack([shifts["coreg_shift_y_px"].values, shifts["coreg_shift_x_px"].values], 1)[1:]
    assert not shifts["coreg_flagged"].values.any()
    errors = [(e[0] - t[0], e[1] - t[1]) for e, t in zip(est, truths, strict=True)]
    assert rmse(errors) <= 0.1
    # The same pair correlated over the full 10 m band (no band limit) does worse: the blur and
    # the 30 m sampling bias it.
    unlimited = [estimate_shift(ref, m, resolution_ratio=1.0) for m in movings]
    errors_unlimited = [(u.dy - t[0], u.dx - t[1]) for u, t in zip(unlimited, truths, strict=True)]
    assert rmse(errors) < 0.5 * rmse(errors_unlimited)


def test_native_resolution_per_sensor_and_band() -> None:
    assert native_resolution("sentinel-2a", "nir") == 10.0
    assert native_resolution("sentinel-2b", "swir16") == 20.0
    assert native_resolution("landsat-8", "nir") == 30.0
    assert native_resolution("landsat-5", "red") == 30.0
    with pytest.raises(InputError, match="neither Sentinel-2 nor Landsat"):
        native_resolution("spot-6", "nir")
    with pytest.raises(InputError, match="rededge1"):
        native_resolution("landsat-8", "rededge1")


# ---- flagging --------------------------------------------------------------------------------
def test_estimate_shift_flags_noise_mostly_cloud_and_empty_scenes() -> None:
    ref = texture((256, 256), seed=8)
    rng = np.random.default_rng(9)
    noise = estimate_shift(ref, rng.normal(0.25, 0.05, ref.shape))
    assert noise.flagged and noise.status in ("too-few-windows", "windows-disagree")
    assert math.isnan(noise.dy) or noise.status == "windows-disagree"

    mostly_cloud = shifted(ref, 0.3, 0.2)
    mostly_cloud[:, 30:] = np.nan  # 88 % cloud: no window has enough valid pixels
    est = estimate_shift(ref, mostly_cloud)
    assert est.flagged and est.status == "too-few-windows"

    empty = estimate_shift(ref, np.full(ref.shape, np.nan))
    assert empty.flagged and empty.status == "no-valid-pixels"
    assert math.isnan(empty.dy) and math.isnan(empty.dx)

    # A genuine match of the same size is not flagged (the flags are not always on).
    assert not estimate_shift(ref, shifted(ref, 0.3, 0.2)).flagged


def test_estimate_shifts_flags_all_nan_scene_and_keeps_it_unshifted() -> None:
    canvas = texture((192 + 2 * MARGIN, 192 + 2 * MARGIN), seed=10)
    ref = canvas[MARGIN:-MARGIN, MARGIN:-MARGIN]
    good = shifted(canvas, 0.6, -0.4)[MARGIN:-MARGIN, MARGIN:-MARGIN]
    stack = make_stack([ref, np.full(ref.shape, np.nan), good])
    out = coregister_stack(stack)
    status = list(out["coreg_status"].values)
    assert status == ["reference", "no-valid-pixels", "ok"]
    assert list(out["coreg_flagged"].values) == [False, True, False]
    assert np.isnan(out.isel(time=1).values).all()  # left as it was
    assert out["coreg_shift_y_px"].values[2] == pytest.approx(0.6, abs=0.05)


def test_select_reference_errors_say_what_to_change() -> None:
    img = texture((96, 96), seed=11)
    empty = make_stack([np.full((96, 96), np.nan)] * 2)
    with pytest.raises(InputError, match="no scene has a valid pixel"):
        select_reference(empty)
    with pytest.raises(InputError, match="no scene has a valid pixel"):
        estimate_shifts(empty)
    with pytest.raises(InputError, match="median reference is empty"):
        select_reference(empty, method="median")
    stack = make_stack([img, np.full((96, 96), np.nan)])
    with pytest.raises(InputError, match="has no valid pixel"):
        select_reference(stack, method="scene-1")
    with pytest.raises(InputError, match="band 'swir16' is not in the stack"):
        select_reference(stack, band="swir16")
    with pytest.raises(InputError, match="neither 'clearest', 'median'"):
        select_reference(stack, method="nope")
    with pytest.raises(InputError, match="outside the stack"):
        select_reference(stack, method=5)


def test_select_reference_prefers_clear_then_sharp() -> None:
    img = texture((96, 96), seed=12)
    cloudy = img.copy()
    cloudy[:40] = np.nan
    stack = make_stack([cloudy, img, img], platforms=["sentinel-2a", "landsat-8", "sentinel-2b"])
    ref = select_reference(stack)
    assert (ref.label, ref.index, ref.native_resolution) == ("scene-2", 2, 10.0)
    median = select_reference(stack, method="median")
    assert median.label == "median" and median.index is None
    assert np.allclose(median.image, img)  # median of the two Sentinel-2 scenes (NaN skipped)


@pytest.mark.parametrize(
    ("s2_clear_rows", "expected"),
    [
        ((91, 87), "scene-1"),  # Sentinel-2 95 % and 91 % clear: the clearer Sentinel-2 one
        ((84, 80), "scene-0"),  # 87 % / 83 % clear: beyond the margin, the clear Landsat scene
    ],
)
def test_select_reference_takes_the_sharper_sensor_within_the_margin(
    s2_clear_rows: tuple[int, int], expected: str
) -> None:
    # the reference's own misregistration goes to every scene matched to it: a fully clear
    # Landsat scene loses to a Sentinel-2 one at least 1 - SHARPER_MARGIN as clear
    img = texture((96, 96), seed=12)
    s2 = []
    for rows in s2_clear_rows:
        part = img.copy()
        part[rows:] = np.nan
        s2.append(part)
    stack = make_stack([img, *s2], platforms=["landsat-9", "sentinel-2a", "sentinel-2b"])
    assert select_reference(stack).label == expected


# ---- one scene, application ------------------------------------------------------------------
def test_coregister_stack_single_scene_unchanged() -> None:
    img = texture((64, 64), seed=13)
    stack = make_stack([img])
    out = coregister_stack(stack)
    np.testing.assert_array_equal(out.values, stack.values)
    assert out["coreg_status"].values.tolist() == ["single-scene"]
    assert not out["coreg_flagged"].values[0]
    assert out["coreg_shift_x_px"].values[0] == 0.0 and out["coreg_shift_y_m"].values[0] == 0.0


def test_estimate_shifts_against_a_kept_reference_image() -> None:
    # a reference kept from another stack: every scene is matched against it, a lone one too
    canvas = texture((192 + 2 * MARGIN, 192 + 2 * MARGIN), seed=15)
    ref = canvas[MARGIN:-MARGIN, MARGIN:-MARGIN]
    moved = shifted(canvas, 0.8, -0.5)[MARGIN:-MARGIN, MARGIN:-MARGIN]
    kept = ReferenceImage(ref, "an-old-scene", None, 10.0)
    out = estimate_shifts(make_stack([moved]), reference=kept)
    assert out["coreg_status"].values.tolist() == ["ok"]
    assert out.attrs["coreg_reference"] == "an-old-scene"
    assert out["coreg_shift_y_px"].values[0] == pytest.approx(0.8, abs=0.05)
    assert out["coreg_shift_x_px"].values[0] == pytest.approx(-0.5, abs=0.05)
    # the scene it was cut from, when present, is the reference itself
    both = estimate_shifts(
        make_stack([moved, ref]), reference=ReferenceImage(ref, "scene-1", None, 10.0)
    )
    assert both["coreg_status"].values.tolist() == ["ok", "reference"]
    with pytest.raises(InputError, match="on the stack's grid"):
        estimate_shifts(make_stack([moved[:96]]), reference=kept)


def test_apply_shifts_is_lazy_and_reproduces_the_reference() -> None:
    size = 192
    canvas = texture((size + 2 * MARGIN, size + 2 * MARGIN), seed=14, slope=1.3)
    ref = canvas[MARGIN:-MARGIN, MARGIN:-MARGIN]
    truths = [(0.7, -1.4), (-1.2, 0.45)]
    movings = [shifted(canvas, dy, dx)[MARGIN:-MARGIN, MARGIN:-MARGIN] for dy, dx in truths]
    movings[1][50:90, 100:150] = np.nan  # a masked cloud
    stack = make_stack([ref, *movings], bands=("nir", "red"), chunks=64)
    # A mask band of class codes must be moved by nearest neighbour, never interpolated.
    codes = np.where(np.arange(size)[None, :] % 7 < 3, 4.0, 8.0) * np.ones((size, 1))
    scl = (
        xr.full_like(stack.isel(band=[0]), np.nan)
        .copy(
            data=da.from_array(
                np.broadcast_to(codes, (3, 1, size, size)).astype(np.float32), chunks=(1, 1, 64, 64)
            )
        )
        .assign_coords(band=["scl"])
    )
    stack = xr.concat([stack, scl], dim="band")

    shifts = estimate_shifts(stack)
    computed = 0

    def counting(block: np.ndarray) -> np.ndarray:
        nonlocal computed
        computed += block.size > 0  # dask also calls it on empty arrays to infer metadata
        return block

    watched = stack.copy(data=stack.data.map_blocks(counting, dtype=np.float32))
    out = apply_shifts(watched, shifts)
    assert isinstance(out.data, da.Array)
    assert computed == 0, "apply_shifts must not read the data"
    for name in SHIFT_VARIABLES:
        assert out[name].dims == ("time",)

    # Sign and units: content displaced by +0.7 rows (south) and -1.4 cols (west) on a north-up
    # 10 m grid -> shift_y_m = -7 m (south), shift_x_m = -14 m.
    assert shifts["coreg_shift_y_px"].values[1] == pytest.approx(0.7, abs=0.05)
    assert shifts["coreg_shift_x_px"].values[1] == pytest.approx(-1.4, abs=0.05)
    assert shifts["coreg_shift_y_m"].values[1] == pytest.approx(-7.0, abs=0.5)
    assert shifts["coreg_shift_x_m"].values[1] == pytest.approx(-14.0, abs=0.5)

    values = out.values
    assert computed > 0
    for i in (1, 2):
        dy, dx = shifts["coreg_shift_y_px"].values[i], shifts["coreg_shift_x_px"].values[i]
        corrected = values[i, 0]
        ok = np.isfinite(corrected)
        # Chunked and lazy = the same resampling done eagerly on the whole image.
        eager = ndimage.shift(np.nan_to_num(movings[i - 1]), (-dy, -dx), order=3, mode="nearest")
        far = ndimage.binary_dilation(~np.isfinite(movings[i - 1]), iterations=12)
        inner = ok & ~far
        inner[:8] = inner[-8:] = False
        inner[:, :8] = inner[:, -8:] = False
        np.testing.assert_allclose(corrected[inner], eager[inner], atol=1e-5)
        # And it undoes the shift: the residual is the interpolator's, far below the offset's.
        ok &= np.isfinite(movings[i - 1])
        ok[:4] = ok[-4:] = False
        ok[:, :4] = ok[:, -4:] = False
        before = np.sqrt(np.mean((movings[i - 1][ok] - ref[ok]) ** 2))
        after = np.sqrt(np.mean((corrected[ok] - ref[ok]) ** 2))
        assert after < 0.2 * before, (i, before, after)
    # NaN-aware: the cloud stays NaN (moved back with the content), valid data is not eaten.
    assert np.isnan(values[2, 0, 52:86, 102:146]).all()
    assert np.isfinite(values[2, 0, 110:180, 20:90]).all()
    # Pixels that would come from outside the grid are NaN, not extrapolated.
    assert np.isnan(values[2, 0, :1]).all()
    # Class codes stay codes.
    assert set(np.unique(values[1:, 2][np.isfinite(values[1:, 2])])) <= {4.0, 8.0}
    np.testing.assert_array_equal(values[0], stack.values[0])  # the reference is untouched


# ---- the synthetic archive -------------------------------------------------------------------
def _truth_px(truth: Truth, scene_id: str, grid: GridSpec) -> tuple[float, float]:
    """The archive's recorded shift of `scene_id` as (rows, cols) of the stack grid.

    The archive records (dx_m, dy_m) in the item's own CRS (content at true (x, y) appears at
    (x + dx_m, y + dy_m)); scenes of the neighbouring UTM zone are carried into the grid's CRS.
    """
    scene = truth.scenes[scene_id]
    west, south, east, north = grid.bounds
    cx, cy = (west + east) / 2, (south + north) / 2
    dx, dy = scene.shift.dx_m, scene.shift.dy_m
    if scene.epsg != grid.epsg:
        x, y = Transformer.from_crs(grid.epsg, scene.epsg, always_xy=True).transform(cx, cy)
        back = Transformer.from_crs(scene.epsg, grid.epsg, always_xy=True)
        x2, y2 = back.transform(x + dx, y + dy)
        dx, dy = x2 - cx, y2 - cy
    return -dy / grid.resolution, dx / grid.resolution


_scene = SceneRef.from_item


def test_estimate_shifts_synthetic_archive_rmse(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every unflagged scene of a synthetic archive (Sentinel-2 and Landsat, clouds, SLC-off,
    scenes of the neighbouring UTM zone) against the clearest one: RMSE <= 0.1 px of the known
    shifts, relative to the reference's own shift."""
    root = tmp_path_factory.mktemp("coreg-archive") / "archive"
    # 3 km: ~300 x 300 px at 10 m. Landsat 7/8 and Sentinel-2 in the same years, cloud cover
    # drawn from Beta(0.6, 2.5) (mean ~20 %, fewer overcast scenes than the real U shape) so that
    # both families keep enough usable scenes for an RMSE.
    config = tiny_config(
        size_m=3000.0,
        landsat_years=(2022, 2023),
        sentinel2_years=(2022, 2023),
        months=(5, 9),
        max_scenes_per_year=3,
        cloud_beta=(0.6, 2.5),
    )
    create_archive(root, config, workers=1)
    truth = open_truth(root)
    scenes = [_scene(item) for item in archive_items(root)]
    # Bilinear: nearest neighbour (the loader's default) moves 30 m Landsat pixels and
    # reprojected scenes by up to half a 10 m pixel, a displacement the truth does not record.
    stack = load(scenes, truth.grid, bands=["red", "nir"], resampling="bilinear")
    masked, _ = mask_stack(stack, min_clear_fraction=0.0)
    shifts = estimate_shifts(masked)

    ids = [str(i) for i in masked["id"].values]
    ref_id = shifts.attrs["coreg_reference"]
    ref_truth = np.array(_truth_px(truth, ref_id, truth.grid))
    errors: dict[str, list[tuple[float, float]]] = {"landsat": [], "sentinel-2": []}
    for i, sid in enumerate(ids):
        if sid == ref_id or shifts["coreg_flagged"].values[i]:
            continue
        expected = np.array(_truth_px(truth, sid, truth.grid)) - ref_truth
        got = (shifts["coreg_shift_y_px"].values[i], shifts["coreg_shift_x_px"].values[i])
        family = "sentinel-2" if sid.startswith("S2") else "landsat"
        errors[family].append((got[0] - expected[0], got[1] - expected[1]))
    # Cross-sensor: Landsat (30 m) against a Sentinel-2 reference on the 10 m grid. Errors are
    # judged in each scene's native pixels, the unit the archive records misregistration in
    # (measured, seed 20240705: Sentinel-2 ~0.01 px; Landsat ~0.035 native px = ~0.1 grid px).
    native_px = {
        "landsat": 30.0 / truth.grid.resolution,
        "sentinel-2": 10.0 / truth.grid.resolution,
    }
    for family, errs in errors.items():
        assert len(errs) >= 3, (family, shifts["coreg_status"].values)
        assert rmse(errs) / native_px[family] <= 0.1, (family, rmse(errs), errs)
    # Flagged scenes are flagged for a reason: each has its status.
    flagged_status = shifts["coreg_status"].values[shifts["coreg_flagged"].values]
    assert all(s not in ("ok", "reference") for s in flagged_status)

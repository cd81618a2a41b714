"""Inference engine: tiles and blending weights, tiled == full-frame for a small receptive field,
no seams, NaN handling, CPU determinism, bounded memory on a large lazy input, input checks,
dynamics outputs, MC dropout, the Prefect task bodies, and import isolation from training code."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
import xarray as xr

from models.dynamics import cumulative_probability
from models.errors import BandMismatchError
from models.features import input_channels
from models.registry import build_model, save_weights
from models.spec import WeightsSpec
from models.unet import UNet
from tasks.errors import InputError
from tasks.infer import (
    Window,
    blend_weights,
    map_footprint,
    predict_change,
    predict_dynamics,
    predict_footprint,
    resolve_device,
    tile_windows,
    urbanization_year,
)
from tasks.settings import Settings
from tests.unit.models.factories import (
    SmallConv,
    SmallSiamese,
    grid_coords,
    make_annual,
    make_composite,
    make_spec,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _normalized(spec: WeightsSpec, raw: np.ndarray, band_axis: int) -> np.ndarray:
    """The engine's input transform, written out for a full-frame reference."""
    x = input_channels(raw, spec.bands, spec.indices, band_axis=band_axis)
    shape = [1] * x.ndim
    shape[band_axis] = -1
    x = (x - np.reshape(spec.mean, shape)) / np.reshape(spec.std, shape)
    observed = np.isfinite(raw).all(axis=band_axis, keepdims=True)
    return np.where(observed & np.isfinite(x), x, 0).astype(np.float32)


def _full_frame_footprint(
    model: torch.nn.Module, spec: WeightsSpec, comp: xr.DataArray
) -> np.ndarray:
    x = torch.from_numpy(_normalized(spec, comp.values[None], 1))
    with torch.no_grad():
        return torch.sigmoid(model.eval()(x))[0, 0].numpy()


# ---- tiles and weights -----------------------------------------------------------------------
@pytest.mark.parametrize(("h", "w"), [(100, 100), (37, 250), (20, 20), (129, 64)])
def test_tile_windows_cover_the_grid_with_equal_tiles(h: int, w: int) -> None:
    windows = tile_windows(h, w, tile=64, overlap=16)
    covered = np.zeros((h, w), dtype=int)
    for win in windows:
        assert (win.height, win.width) == (min(64, h), min(64, w))
        assert win.y0 + win.height <= h and win.x0 + win.width <= w
        covered[win.rows, win.cols] += 1
    assert covered.min() >= 1


@pytest.mark.parametrize(("n", "tile", "overlap"), [(112, 64, 16), (100, 64, 16), (90, 40, 8)])
def test_blend_weights_are_a_partition_of_unity(n: int, tile: int, overlap: int) -> None:
    total = np.zeros((n, n))
    for win in tile_windows(n, n, tile=tile, overlap=overlap):
        total[win.rows, win.cols] += blend_weights(win, n, n, overlap=overlap)
    if (n - tile) % (tile - overlap) == 0:  # regular grid: ramps sum to exactly 1
        np.testing.assert_allclose(total, 1.0, atol=1e-6)
    assert total.min() > 0.5  # shifted last tile: still positive everywhere (then normalized)


def test_blend_weights_taper_only_sides_that_touch_another_tile() -> None:
    weights = blend_weights(Window(0, 48, 64, 64), 64, 200, overlap=16)
    assert weights[:, 20:44].min() == 1.0  # interior and grid edges (top, bottom) untouched
    assert weights[:, :4].max() == 0.0 and weights[:, -4:].max() == 0.0  # outer quarters dropped
    assert 0 < weights[0, 8] < 1


@pytest.mark.parametrize(("tile", "overlap"), [(0, 0), (32, 16), (32, -1)])
def test_bad_tiling_parameters_are_refused(tile: int, overlap: int) -> None:
    with pytest.raises(InputError, match=r"tile|overlap"):
        tile_windows(100, 100, tile=tile, overlap=overlap)


# ---- tiled vs full frame ---------------------------------------------------------------------
def test_tiled_footprint_equals_one_full_frame_pass() -> None:
    spec = make_spec("footprint", "small")
    model = SmallConv(len(spec.input_channels))
    comp = make_composite(70, 90, seed=3)
    ds = predict_footprint(model, spec, comp, tile=32, overlap=12, batch_size=3, device="cpu")
    np.testing.assert_allclose(
        ds["probability"].values, _full_frame_footprint(model, spec, comp), atol=2e-6
    )
    np.testing.assert_array_equal(ds["x"].values, comp["x"].values)
    np.testing.assert_array_equal(ds["y"].values, comp["y"].values)
    assert ds.attrs["crs"] == "EPSG:32633" and ds.attrs["model"] == spec.name


def test_tiling_without_overlap_shows_the_seams_the_blending_removes() -> None:
    spec = make_spec("footprint", "small")
    model = SmallConv(len(spec.input_channels))
    comp = make_composite(64, 64, seed=3)
    reference = _full_frame_footprint(model, spec, comp)
    seams = predict_footprint(model, spec, comp, tile=32, overlap=0, device="cpu")
    diff = np.abs(seams["probability"].values - reference)
    assert diff[30:34].max() > 1e-3  # rows next to the tile edge at y = 32 are wrong
    assert diff[:28, :28].max() < 1e-6  # away from it they are not


def test_tiled_change_equals_one_full_frame_pass() -> None:
    spec = make_spec("change", "small")
    model = SmallSiamese(len(spec.input_channels))
    before, after = make_composite(50, 61, seed=1), make_composite(50, 61, seed=2)
    ds = predict_change(model, spec, before, after, tile=24, overlap=8, device="cpu")
    xb = torch.from_numpy(_normalized(spec, before.values[None], 1))
    xa = torch.from_numpy(_normalized(spec, after.values[None], 1))
    with torch.no_grad():
        reference = torch.sigmoid(model(xb, xa))[0, 0].numpy()
    np.testing.assert_allclose(ds["probability"].values, reference, atol=2e-6)
    np.testing.assert_allclose(
        ds["confidence"].values, np.maximum(reference, 1 - reference), atol=2e-6
    )


# ---- NaN, validity, checks -------------------------------------------------------------------
def test_nan_inputs_give_nan_outputs_and_are_filled_with_the_mean() -> None:
    spec = make_spec("change", "small")
    model = SmallSiamese(len(spec.input_channels))
    before, after = make_composite(40, 40, seed=1), make_composite(40, 40, seed=2)
    before[:, 5:10, 5:10] = np.nan
    after[2, 30, 30] = np.nan  # one band missing: the observation is invalid
    ds = predict_change(model, spec, before, after, tile=16, overlap=4, device="cpu")
    invalid = np.zeros((40, 40), dtype=bool)
    invalid[5:10, 5:10] = True
    invalid[30, 30] = True
    np.testing.assert_array_equal(ds["valid"].values, ~invalid)
    assert np.isnan(ds["probability"].values[invalid]).all()
    assert np.isfinite(ds["probability"].values[~invalid]).all()
    # neighbours of the gap see the gap as the normalization mean (0), exactly as a reference
    xb = torch.from_numpy(_normalized(spec, before.values[None], 1))
    xa = torch.from_numpy(_normalized(spec, after.values[None], 1))
    with torch.no_grad():
        reference = torch.sigmoid(model(xb, xa))[0, 0].numpy()
    np.testing.assert_allclose(ds["probability"].values[~invalid], reference[~invalid], atol=2e-6)


def test_wrong_band_order_is_refused_and_select_bands_fixes_it() -> None:
    spec = make_spec("footprint", "small")
    model = SmallConv(len(spec.input_channels))
    comp = make_composite(16, 16)
    shuffled = comp.isel(band=[5, 4, 3, 2, 1, 0])
    with pytest.raises(BandMismatchError, match="expects bands"):
        predict_footprint(model, spec, shuffled, device="cpu")
    fixed = predict_footprint(model, spec, shuffled, device="cpu", select_bands=True)
    plain = predict_footprint(model, spec, comp, device="cpu")
    np.testing.assert_array_equal(fixed["probability"].values, plain["probability"].values)
    with pytest.raises(BandMismatchError, match="missing"):
        predict_footprint(model, spec, comp.isel(band=[0, 1, 2]), device="cpu", select_bands=True)


def test_wrong_task_and_grid_mismatch_are_refused() -> None:
    spec = make_spec("footprint", "small")
    comp = make_composite(16, 16)
    with pytest.raises(InputError, match="task 'footprint', not 'change'"):
        predict_change(SmallSiamese(9), spec, comp, comp, device="cpu")
    change_spec = make_spec("change", "small")
    with pytest.raises(InputError, match="different grids"):
        predict_change(
            SmallSiamese(9), change_spec, comp, comp.assign_coords(x=comp["x"] + 10.0), device="cpu"
        )


def test_a_composite_dataset_is_accepted() -> None:
    spec = make_spec("footprint", "small")
    model = SmallConv(len(spec.input_channels))
    comp = make_composite(20, 20)
    ds = xr.Dataset({"reflectance": comp, "count": (("y", "x"), np.ones((20, 20), np.int16))})
    out = predict_footprint(model, spec, ds, device="cpu")
    ref = predict_footprint(model, spec, comp, device="cpu")
    np.testing.assert_array_equal(out["probability"].values, ref["probability"].values)


# ---- determinism, MC dropout, precision ------------------------------------------------------
def test_cpu_inference_is_byte_identical_across_runs() -> None:
    torch.manual_seed(0)
    spec = make_spec("footprint", "unet", base_width=4, depth=2)
    model = build_model(spec).train()
    comp = make_composite(48, 40, seed=5)
    kwargs = {"tile": 32, "overlap": 8, "batch_size": 2, "device": "cpu"}
    first = predict_footprint(model, spec, comp, **kwargs)  # type: ignore[arg-type]
    second = predict_footprint(model, spec, comp, **kwargs)  # type: ignore[arg-type]
    assert first["probability"].values.tobytes() == second["probability"].values.tobytes()
    mc1 = predict_footprint(model, spec, comp, mc_passes=3, **kwargs)  # type: ignore[arg-type]
    mc2 = predict_footprint(model, spec, comp, mc_passes=3, **kwargs)  # type: ignore[arg-type]
    assert mc1["probability"].values.tobytes() == mc2["probability"].values.tobytes()
    assert mc1["uncertainty"].values.tobytes() == mc2["uncertainty"].values.tobytes()
    assert np.nanmax(mc1["uncertainty"].values) > 0  # dropout was on
    assert model.training  # the engine restored the caller's (training) mode ...
    evaluated = predict_footprint(model.eval(), spec, comp, **kwargs)  # type: ignore[arg-type]
    # ... and ran in eval mode whatever the caller's mode
    assert evaluated["probability"].values.tobytes() == first["probability"].values.tobytes()
    assert not torch.are_deterministic_algorithms_enabled()  # and the global flag


def test_mc_dropout_needs_dropout_layers() -> None:
    spec = make_spec("footprint", "small")
    with pytest.raises(InputError, match="no dropout"):
        predict_footprint(SmallConv(9), spec, make_composite(8, 8), mc_passes=2, device="cpu")


def test_bfloat16_autocast_on_cpu_stays_close_to_float32() -> None:
    torch.manual_seed(0)
    spec = make_spec("footprint", "unet", base_width=4, depth=2)
    model = build_model(spec)
    comp = make_composite(32, 32, seed=1)
    fp32 = predict_footprint(model, spec, comp, tile=32, overlap=0, device="cpu")
    bf16 = predict_footprint(
        model, spec, comp, tile=32, overlap=0, device="cpu", mixed_precision=True
    )
    np.testing.assert_allclose(bf16["probability"].values, fp32["probability"].values, atol=0.05)


# ---- memory ----------------------------------------------------------------------------------
def test_memory_stays_bounded_on_a_large_lazy_input() -> None:
    """A 2 x 24-band 1024 x 1024 dask input (192 MiB) never gets materialised.

    tracemalloc sees numpy (not torch) allocations: the input tiles, the accumulators, the
    outputs. The bound is the output arrays (and their accumulators) plus a fixed allowance for
    a batch of tiles and its temporaries — independent of the input's size.
    """
    bands = tuple(f"b{i:02d}" for i in range(24))
    spec = make_spec("change", "small", bands=bands, indices=())
    model = SmallSiamese(len(bands), kernel=1)
    n = 1024

    def lazy(value: float) -> xr.DataArray:
        data = da.full((len(bands), n, n), value, chunks=(len(bands), 256, 256), dtype=np.float32)
        return xr.DataArray(
            data, dims=("band", "y", "x"), coords={"band": list(bands), **grid_coords(n, n)}
        )

    before, after = lazy(0.1), lazy(0.3)
    kwargs = {"tile": 128, "overlap": 16, "batch_size": 4, "device": "cpu"}
    # warm-up: the first call imports torch modules, whose allocations tracemalloc would count
    small = {"x": slice(0, 32), "y": slice(0, 32)}
    predict_change(model, spec, before.isel(small), after.isel(small), **kwargs)  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        ds = predict_change(model, spec, before, after, **kwargs)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out_bytes = ds.nbytes  # probability + confidence (float32) + valid (bool)
    accumulators = n * n * (4 + 4)  # weighted sum + weight sum, float32
    batch_bytes = 4 * 2 * len(bands) * 128 * 128 * 4  # tiles x dates x bands x px x float32
    bound = out_bytes + accumulators + 4 * batch_bytes
    input_bytes = before.nbytes + after.nbytes
    assert bound < input_bytes / 2  # the test can tell materialising the input from not
    assert peak < bound, f"peak {peak / 2**20:.0f} MiB > bound {bound / 2**20:.0f} MiB"
    assert ds["valid"].values.all()


# ---- dynamics --------------------------------------------------------------------------------
def test_dynamics_probability_is_monotonic_and_gives_the_year() -> None:
    torch.manual_seed(0)
    spec = make_spec("dynamics", "pixel_gru", hidden=8)
    model = build_model(spec)
    years = list(range(1990, 2002))
    annual = make_annual(years, 20, 18, seed=4)
    annual[3] = np.nan  # a year without any observation
    annual[:, :, 0, 0] = np.nan  # a pixel never observed
    ds = predict_dynamics(model, spec, annual, tile=8, batch_size=3, device="cpu")
    prob = ds["probability"].values
    assert prob.shape == (12, 20, 18) and ds["year"].values.tolist() == years
    assert np.all(np.diff(prob[:, 1:, 1:], axis=0) >= 0)
    np.testing.assert_array_equal(prob[3], prob[2])  # carried over the missing year
    assert not ds["valid"].values[0, 0] and np.isnan(prob[:, 0, 0]).all()
    median = predict_dynamics(model, spec, annual, tile=8, device="cpu", year_rule="median")
    year = median["urbanization_year"].values
    assert np.isnan(year[0, 0])
    for iy, ix in [(5, 5), (10, 3), (19, 17)]:
        built = np.flatnonzero(prob[:, iy, ix] >= 0.5)
        expected = years[built[0]] if built.size else np.nan
        np.testing.assert_equal(year[iy, ix], expected)
    np.testing.assert_array_equal(
        ds["urbanization_year"].values, urbanization_year(prob, np.asarray(years))
    )
    with pytest.raises(InputError, match="year_rule 'mode'"):
        predict_dynamics(model, spec, annual, device="cpu", year_rule="mode")  # type: ignore[arg-type]


def test_urbanization_year_rules() -> None:
    years = np.arange(2000, 2010)
    # the year distribution (increments of P, the rest "never") of four pixels
    mass = np.zeros((10, 4))
    mass[[1, 3, 5, 6, 7], 0] = [0.2, 0.2, 0.15, 0.15, 0.15]  # median 2005, best window 2006
    mass[[0, 4], 1] = [0.9, 0.1]  # built in the first year (its mass holds "before" too)
    mass[8, 2] = 0.4  # P < 0.5 by the last year: not urbanized
    mass[:, 3] = np.nan  # never observed
    prob = np.cumsum(mass, axis=0)[:, None, :]  # (year, y=1, x=4)
    window = urbanization_year(prob, years)[0]
    median = urbanization_year(prob, years, rule="median")[0]
    np.testing.assert_array_equal(window, [2006, 2000, np.nan, np.nan])
    np.testing.assert_array_equal(median, [2005, 2000, np.nan, np.nan])
    # the window year is within ±1 of the true year with probability 0.45 (2005-2007), the
    # median one with 0.30 (2004-2006): the window rule is the Bayes decision for that metric
    in_window = [mass[max(0, int(y - 2000) - 1) : int(y - 2000) + 2, 0].sum() for y in (2006, 2005)]
    np.testing.assert_allclose(in_window, [0.45, 0.30])
    with pytest.raises(InputError, match="not one of"):
        urbanization_year(prob, years, rule="mean")  # type: ignore[arg-type]


def test_dynamics_tiles_equal_a_full_frame_pass() -> None:
    torch.manual_seed(0)
    spec = make_spec("dynamics", "pixel_gru", hidden=8)
    model = build_model(spec).eval()
    annual = make_annual(list(range(2000, 2006)), 9, 11, seed=2)
    annual[2, :, :4] = np.nan
    ds = predict_dynamics(model, spec, annual, tile=4, batch_size=2, device="cpu")
    raw = annual.values[None]  # (1, T, C, y, x)
    x = torch.from_numpy(_normalized(spec, raw, 2))
    missing = torch.from_numpy(~np.isfinite(raw).all(axis=2))
    with torch.no_grad():
        reference = cumulative_probability(model(x, missing))[0].numpy()
    np.testing.assert_allclose(ds["probability"].values, reference, atol=1e-6)


def test_dynamics_with_spatial_context_blends_tiles_into_a_full_frame_pass() -> None:
    # a bidirectional GRU whose embedding reads the 3x3 neighbourhood: the default overlap
    # (4 x context) makes tiled inference equal one full-frame pass, without seams
    torch.manual_seed(0)
    spec = make_spec("dynamics", "pixel_gru", hidden=8, bidirectional=True, context=1)
    model = build_model(spec).eval()
    annual = make_annual(list(range(2000, 2006)), 23, 21, seed=3)
    annual[2, :, :6] = np.nan
    ds = predict_dynamics(model, spec, annual, tile=12, batch_size=3, device="cpu")
    assert ds.attrs["overlap"] == 4
    raw = annual.values[None]
    x = torch.from_numpy(_normalized(spec, raw, 2))
    missing = torch.from_numpy(~np.isfinite(raw).all(axis=2))
    with torch.no_grad():
        reference = cumulative_probability(model(x, missing))[0].numpy()
    np.testing.assert_allclose(ds["probability"].values, reference, atol=1e-5)
    # without the overlap the tile borders see padding instead of their neighbours
    seams = predict_dynamics(model, spec, annual, tile=12, overlap=0, device="cpu")
    assert np.abs(seams["probability"].values - reference).max() > 1e-4


# ---- device, tasks, imports ------------------------------------------------------------------
def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr("tasks.infer.get_settings", lambda: Settings(device="cpu"))
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(InputError, match="'auto', 'cpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(InputError, match="EO_DEVICE"):
            resolve_device("cuda")


def test_map_footprint_task_loads_checked_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = UNet(9, base_width=4, depth=2)
    spec = save_weights(
        model, make_spec("footprint", "unet", name="fp-test", **model.config), tmp_path
    )
    comp = make_composite(24, 24)
    ds = map_footprint.fn(
        comp, model="fp-test", weights_dir=tmp_path, tile=16, overlap=4, device="cpu"
    )
    assert ds.attrs["weights_sha256"] == spec.sha256
    direct = predict_footprint(model, spec, comp, tile=16, overlap=4, device="cpu")
    np.testing.assert_array_equal(ds["probability"].values, direct["probability"].values)


def test_importing_inference_never_imports_training_code() -> None:
    code = (
        "import sys, tasks.infer, models.registry\n"
        "bad = sorted(m for m in sys.modules if m.startswith('models.training'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_mixed_precision_matches_cpu() -> None:
    torch.manual_seed(0)
    spec = make_spec("change", "fc_siam_diff", base_width=8, depth=3)
    model = build_model(spec)
    before, after = make_composite(300, 280, seed=1), make_composite(300, 280, seed=2)
    cpu = predict_change(model, spec, before, after, tile=128, overlap=16, device="cpu")
    gpu = predict_change(model, spec, before, after, tile=128, overlap=16, device="cuda")
    np.testing.assert_allclose(gpu["probability"].values, cpu["probability"].values, atol=0.03)
    assert np.array_equal(gpu["valid"].values, cpu["valid"].values)

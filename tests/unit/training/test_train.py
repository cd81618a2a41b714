"""Tiny training runs on the tiny archive: the loss falls, the spec is complete and loads."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from models.registry import file_sha256, load_model
from models.training.data import BANDS, WorldData
from models.training.loop import evaluate_loss, fit
from models.training.recipes import (
    MODEL_NAMES,
    RADIOMETRIC_JITTER,
    Kind,
    build_problem,
    default_settings,
    radiometric_augmentation,
    train_model,
)
from tasks.infer import predict_footprint
from tests.unit.training.conftest import TINY_PAIRS

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")


def _tiny_settings(kind: Kind, **extra: object):  # type: ignore[no-untyped-def]
    small = {"change": 16, "footprint": 32, "dynamics": 256}[kind]
    return default_settings(
        kind,
        epochs=extra.pop("epochs", 4),
        steps=6,
        patch=small,
        device="cpu",
        change_pairs=TINY_PAIRS,
        **extra,
    )


@pytest.mark.parametrize("kind", ["change", "footprint", "dynamics"])
def test_fit_lowers_the_loss_on_training_batches(kind: Kind, tiny_world: WorldData) -> None:
    # the GRU sees 12 years (10 of them empty) per pixel: it needs a larger step to move
    settings = _tiny_settings(
        kind, epochs=8 if kind == "dynamics" else 5, lr=5e-3 if kind != "dynamics" else 2e-2
    )
    problem = build_problem([tiny_world], settings)
    model = problem.build_model()
    fixed = list(problem.train_batches(np.random.default_rng(123)))
    before = evaluate_loss(model, fixed, problem.loss, torch.device("cpu"))
    result = fit(
        model,
        train_batches=problem.train_batches,
        val_batches=lambda: iter(fixed),  # early stopping on the same batches: must go down
        loss_fn=problem.loss,
        config=settings.fit_config(),
    )
    after = evaluate_loss(model, fixed, problem.loss, torch.device("cpu"))
    assert after < 0.9 * before, (kind, before, after, result.history)


@pytest.mark.parametrize("random_pairs", [False, True])
def test_validation_area_is_never_sampled_for_training(
    tiny_world: WorldData, random_pairs: bool
) -> None:
    # the pixel-number markers below stand in for the inputs: no radiometric jitter
    settings = _tiny_settings(
        "change", change_years=((2012, 2013), (2020, 2023)), radiometric_jitter=None
    )
    if not random_pairs:
        settings = dataclasses.replace(settings, change_years=None)
    problem = build_problem([tiny_world], settings)
    assert bool(problem.stacks) == random_pairs  # type: ignore[attr-defined]
    shape = problem.samples[0].label.shape
    val = problem.samples[0].split.mask(shape, "val")
    assert all(np.array_equal(s.split.mask(shape, "val"), val) for s in problem.samples)
    # feed pixel numbers through the sampler to see where training patches come from
    marker = np.arange(val.size, dtype=np.float32).reshape(shape)
    for smp in problem.samples:
        smp.inputs = (marker[None], marker[None])
    for i, (x, observed) in enumerate(problem.stacks):  # type: ignore[attr-defined]
        marked = np.broadcast_to(marker, (x.shape[0], 1, *shape)).copy()
        problem.stacks[i] = (marked, observed)  # type: ignore[attr-defined]
    seen = np.zeros(val.size, dtype=bool)
    for batch in problem.train_batches(np.random.default_rng(0)):
        seen[batch.inputs[0].numpy().astype(np.int64).ravel()] = True
    seen2d = seen.reshape(shape)
    assert seen2d.sum() > 0.3 * (~val).sum() and not (seen2d & val).any()


def test_random_change_pairs_come_from_the_ranges_and_observed_years(
    tiny_world: WorldData,
) -> None:
    # the tiny world simulates 2012-2023 but observes 2012, 2013 (Landsat) and 2023 only
    settings = _tiny_settings("change", change_years=((2010, 2014), (2016, 2023)))
    problem = build_problem([tiny_world], settings)
    years = tiny_world.years
    pairs = {(years[a], years[b]) for a, b in problem.pair_index[0]}  # type: ignore[attr-defined]
    assert pairs == {(2012, 2023), (2013, 2023)}
    batch = next(iter(problem.train_batches(np.random.default_rng(0))))
    assert batch.mask.any() and batch.target[batch.mask].float().mean() > 0


def test_train_model_writes_a_complete_spec_that_loads(
    tiny_world: WorldData, tmp_path: Path
) -> None:
    out = train_model([tiny_world], _tiny_settings("footprint", epochs=2), out_dir=tmp_path)
    spec = out.spec
    assert spec.name == MODEL_NAMES["footprint"]
    assert spec.sha256 == file_sha256(out.weights_path)
    assert spec.training_data.world_seeds == (tiny_world.seed,)
    assert spec.bands == BANDS and len(spec.mean) == len(spec.input_channels)
    assert {"val_f1", "val_iou", "val_ece", "train_seconds"} <= set(spec.metrics)
    assert spec.temperature > 0 and spec.temperature != 1.0
    model, loaded = load_model(spec.name, extra_dir=tmp_path)
    assert (loaded.name, loaded.sha256, loaded.temperature) == (
        spec.name,
        spec.sha256,
        spec.temperature,
    )
    comp = xr.DataArray(tiny_world.recent, dims=("band", "y", "x"), coords={"band": list(BANDS)})
    ds = predict_footprint(model, loaded, comp, device="cpu")
    assert np.isfinite(ds["probability"].values).mean() > 0.9


def test_inference_path_never_imports_training_code() -> None:
    code = (
        "import sys, tasks.infer, models.registry; "
        "bad = [m for m in sys.modules if m.startswith('models.training')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])


def test_radiometric_augmentation_is_a_gain_and_offset_per_band() -> None:
    rng = np.random.default_rng(0)
    before = rng.uniform(0.05, 0.4, (6, 8, 8)).astype(np.float32)
    after = before.copy()
    b2, a2 = radiometric_augmentation(before, after, (0.15, 0.02, 0.03), np.random.default_rng(1))
    # per band: b2 = g b + o and a2 = g r b + o with one g, o, r per band
    for k in range(6):
        g, o = np.polyfit(before[k].ravel(), b2[k].ravel(), 1)
        assert np.allclose(b2[k], g * before[k] + o, atol=1e-5) and 0.5 < g < 2.0
        gr, o2 = np.polyfit(before[k].ravel(), a2[k].ravel(), 1)
        assert abs(o2 - o) < 1e-4 and 0.8 < gr / g < 1.25
    same = radiometric_augmentation(before, after, (0.0, 0.0, 0.0), np.random.default_rng(1))
    np.testing.assert_array_equal(same[0], before)


@pytest.mark.parametrize("kind", ["change", "footprint", "dynamics"])
def test_radiometric_jitter_spreads_the_training_inputs(kind: Kind, tiny_world: WorldData) -> None:
    """With the jitter, patch means of a channel vary more from patch to patch than the
    landscape alone makes them vary; shapes and finiteness are those of the plain batches."""

    def channel_means(settings) -> tuple[np.ndarray, tuple[int, ...]]:  # type: ignore[no-untyped-def]
        problem = build_problem([tiny_world], settings)
        means, shape = [], ()
        for _ in range(6):
            for batch in problem.train_batches(np.random.default_rng(len(means))):
                x = batch.inputs[0].numpy()
                assert np.isfinite(x).all()
                shape = x.shape
                # per patch (sequence) and channel: the mean over its pixels (and years)
                per = np.moveaxis(x, 2 if kind == "dynamics" else 1, 1)
                means.append(per.reshape(*per.shape[:2], -1).mean(axis=2))
        return np.concatenate(means), shape

    jittered, shape_j = channel_means(_tiny_settings(kind, radiometric_jitter=RADIOMETRIC_JITTER))
    plain, shape_p = channel_means(_tiny_settings(kind))
    assert shape_j == shape_p
    ratio = jittered.std(axis=0) / plain.std(axis=0)  # per channel
    assert ratio[: len(BANDS)].mean() > 1.15, ratio  # the bands; indices cancel some gain

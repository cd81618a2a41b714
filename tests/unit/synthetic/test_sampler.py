"""The configuration sampler: deterministic per seed, every draw in its documented range, and
the training range of seeds kept out of evaluation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flows.evaluate import check_unseen
from flows.train import TrainParams
from tasks.errors import InputError
from tasks.synthetic import DEMO_CONFIG
from tasks.synthetic.sampler import EVAL_SEED_MIN, sample_config


def test_sample_config_is_deterministic_and_differs_between_seeds() -> None:
    assert sample_config(1001) == sample_config(1001)
    assert sample_config(1001) != sample_config(1002)
    assert sample_config(1001).seed == 1001


def test_sample_config_draws_within_the_documented_ranges() -> None:
    configs = [sample_config(s) for s in range(EVAL_SEED_MIN, EVAL_SEED_MIN + 200)]
    for c in configs:
        assert 35.0 <= c.center_lat <= 60.0 and -5.0 <= c.center_lon <= 30.0
        assert 0.1 <= c.shift_sigma_px <= 0.6
        assert all(abs(v) <= 10.0 for v in c.landsat_offset_m)
        assert 0.02 <= c.builtup_start <= 0.08 and 0.15 <= c.builtup_end <= 0.40
        assert 0.0 <= c.calibration_drift <= 0.06 and 0.0 <= c.haze <= 0.03
        assert 0.0 <= c.illumination <= 0.15
        assert c.size_m == DEMO_CONFIG.size_m and c.end_year == DEMO_CONFIG.end_year
    # every season, revisit and cloud regime is drawn
    assert {c.months for c in configs} == {(4, 10), (5, 9), (3, 6), (8, 11), (1, 4)}
    assert {c.max_scenes_per_year for c in configs} == {1, 2, 3, 5}
    assert {c.cloud_beta for c in configs} == {(0.35, 0.6), (0.45, 0.33), (0.6, 0.3)}


def test_sample_config_draws_landscapes_snow_by_latitude() -> None:
    configs = [sample_config(s) for s in range(EVAL_SEED_MIN, EVAL_SEED_MIN + 200)]
    for c in configs:
        assert 0.0 <= c.snow <= 1.0
        assert c.snow <= max(0.0, (c.center_lat - 38.0) / 20.0) + 1e-9  # none in the south
        assert c.paddy_share == 0.0 or 0.15 <= c.paddy_share <= 0.5
        assert c.aquaculture_share == 0.0 or 0.03 <= c.aquaculture_share <= 0.15
        assert abs(sum(c.roof_materials) - 1.0) < 0.01 and min(c.roof_materials) >= 0.0
    north = [c.snow for c in configs if c.center_lat > 55.0]
    assert min(north) > 0.3
    # each landscape in some worlds and not in others (odds 0.3)
    for share in ([c.paddy_share for c in configs], [c.aquaculture_share for c in configs]):
        assert 0.15 < sum(v > 0 for v in share) / len(configs) < 0.45


def test_sampled_worlds_of_the_training_range_are_refused_for_evaluation() -> None:
    with pytest.raises(InputError, match="training range"):
        check_unseen([EVAL_SEED_MIN, 7], world="sampled", weights_dir=None)
    check_unseen([EVAL_SEED_MIN, EVAL_SEED_MIN + 1], world="sampled", weights_dir=None)
    with pytest.raises(InputError, match="negative"):
        sample_config(-1)


def test_sampled_worlds_of_the_evaluation_range_are_refused_for_training() -> None:
    with pytest.raises(ValidationError, match="evaluation range"):
        TrainParams(kind="change", world="sampled", world_seeds=[3, EVAL_SEED_MIN])
    assert TrainParams(kind="change", world="sampled", world_seeds=[3]).world == "sampled"

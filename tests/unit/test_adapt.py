"""Domain score and run-time adaptation (`tasks.adapt`) on hand-made inputs and a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.changenet import FCSiamDiff
from models.unet import UNet
from tasks.adapt import (
    DOMAIN_ADAPT_SCORE,
    DOMAIN_WARN_SCORE,
    MIN_SEEDS,
    DomainScore,
    change_seeds,
    domain_score,
    fine_tune_change,
    fine_tune_footprint,
    footprint_seeds,
    should_adapt,
)
from tasks.errors import InputError
from tests.unit.models.factories import make_spec

SPEC = make_spec("change", "fc_siam_diff")  # 6 bands + 3 indices = 9 channels


def _inputs(shape: tuple[int, int] = (40, 40), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (2, 9, *shape)).astype(np.float32)
    return x, np.ones((2, *shape), bool)


def test_domain_score_is_near_zero_on_training_like_inputs() -> None:
    x, observed = _inputs()
    score = domain_score(SPEC, x, observed)
    assert score.value < 0.05 and not score.out_of_domain


def test_domain_score_names_the_channel_that_is_off() -> None:
    x, observed = _inputs()
    x[:, 0] += 2.0  # blue two training standard deviations off
    x[:, 1] *= np.e  # green e times wider
    observed[0, :5] = False
    x[0, :, :5] = 100.0  # not observed: must not count
    score = domain_score(SPEC, x, observed)
    assert score.worst_channel == "blue" and score.worst_distance == pytest.approx(2.0, abs=0.05)
    # rms over 9 channels of (2, 1, 0, ...): sqrt(5 / 9)
    assert score.value == pytest.approx(np.sqrt(5 / 9), abs=0.03)
    assert score.out_of_domain == (score.value > DOMAIN_WARN_SCORE)
    assert "blue" in score.describe()


def test_domain_score_refuses_bad_shapes_and_no_observation() -> None:
    x, observed = _inputs()
    with pytest.raises(InputError, match=r"\(S, 9, y, x\)"):
        domain_score(SPEC, x[:, :5], observed)
    with pytest.raises(InputError, match="no observed pixel"):
        domain_score(SPEC, x, np.zeros_like(observed))


def test_should_adapt_follows_the_mode() -> None:
    near, far = DomainScore(0.1, "red", 0.2), DomainScore(1.5, "swir16", 2.6)
    warned = DomainScore((DOMAIN_WARN_SCORE + DOMAIN_ADAPT_SCORE) / 2, "nir", 0.8)
    assert not should_adapt("auto", near) and should_adapt("auto", far)
    assert warned.out_of_domain and not should_adapt("auto", warned)  # a warning, no more
    assert should_adapt("always", near) and not should_adapt("never", far)
    with pytest.raises(InputError, match="adapt"):
        should_adapt("sometimes", far)  # type: ignore[arg-type]


def _detectors(agree: bool) -> tuple[np.ndarray, np.ndarray]:
    """ISFA-like statistic and model probability on 100 x 100 px: 10 % strongly changed."""
    rng = np.random.default_rng(1)
    stat = rng.chisquare(6, (100, 100))
    prob = np.full((100, 100), 0.01)
    stat[:10] += 100.0  # the strongest changes: the first 10 rows
    prob[:10] = 0.9 if agree else 0.01
    return stat, prob


def test_change_seeds_where_the_detectors_agree() -> None:
    stat, prob = _detectors(agree=True)
    stat[50, 50] = np.nan
    labels = change_seeds(stat, prob)
    assert labels[50, 50] == -1
    assert (labels[:10] != 0).all() and (labels[:10] == 1).mean() > 0.65  # top 7 % of ISFA
    assert (labels[10:] != 1).all() and (labels[10:] == 0).mean() > 0.6
    assert labels.dtype == np.int8


def test_change_seeds_are_refused_where_the_model_rules_out_isfa_changes() -> None:
    stat, prob = _detectors(agree=False)
    with pytest.raises(InputError, match="strongest changes"):
        change_seeds(stat, prob)


def _tiny_pair() -> tuple[np.ndarray, np.ndarray]:
    """Normalized input of a pair with a changed 12 x 12 block, and its seeds."""
    x, _ = _inputs((32, 32), seed=2)
    x[1] = x[0] + np.random.default_rng(3).normal(0, 0.1, x[0].shape)  # unchanged: same
    x[1, :, 4:16, 4:16] += 3.0  # the block changed
    labels = np.zeros((32, 32), np.int8)
    labels[4:16, 4:16] = 1
    labels[20:, 20:] = -1  # unlabelled
    return x, labels


def test_fine_tune_change_learns_the_seeds_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    net = FCSiamDiff(in_channels=9, base_width=4, depth=2, out_channels=1).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, labels = _tiny_pair()
    tuned = fine_tune_change(net, x, labels, steps=60, batch_size=4, lr=5e-3)
    again = fine_tune_change(net, x, labels, steps=60, batch_size=4, lr=5e-3)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        p = torch.sigmoid(tuned(xt[None, 0], xt[None, 1]))[0, 0].numpy()
        q = torch.sigmoid(again(xt[None, 0], xt[None, 1]))[0, 0].numpy()
    np.testing.assert_array_equal(p, q)  # deterministic on CPU
    seeded = labels >= 0
    assert ((p >= 0.5) == (labels == 1))[seeded].mean() > 0.95
    assert not tuned.training
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])  # the shipped model is not touched


def test_fine_tune_change_needs_seeds_of_both_classes() -> None:
    net = FCSiamDiff(in_channels=9, base_width=4, depth=2, out_channels=1)
    x, labels = _tiny_pair()
    labels[labels == 1] = 0
    labels[0, : MIN_SEEDS - 1] = 1
    with pytest.raises(InputError, match=f"at least {MIN_SEEDS} seeds"):
        fine_tune_change(net, x, labels, steps=1)
    with pytest.raises(InputError, match=r"\(2, C, y, x\)"):
        fine_tune_change(net, x[0], labels, steps=1)


def test_footprint_seeds_follow_ranks_where_the_rule_agrees() -> None:
    rng = np.random.default_rng(4)
    prob = rng.random((30, 30)) * 1e-3  # out of domain: every probability near 0, order kept
    rule = rng.random((30, 30)) < 0.5
    prob[0, 0] = np.nan
    rule[0, 0] = True
    seeds = footprint_seeds(prob, rule)
    ok = np.isfinite(prob)
    hi, lo = np.quantile(prob[ok], [0.9, 0.6])
    assert seeds[0, 0] == -1  # no value, never a seed
    np.testing.assert_array_equal(seeds == 1, ok & (prob >= hi) & rule)
    np.testing.assert_array_equal(seeds == 0, ok & (prob <= lo) & ~rule)
    # ranks, not values: the same order at another scale gives the same seeds
    np.testing.assert_array_equal(footprint_seeds(prob * 900, rule), seeds)
    with pytest.raises(InputError, match="differ in shape"):
        footprint_seeds(prob, rule[:10])


def test_fine_tune_footprint_learns_the_seeds_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    net = UNet(in_channels=9, base_width=4, depth=2, out_channels=1).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, labels = _tiny_pair()
    x = x[1]  # one composite: the bright block is "built-up"
    tuned = fine_tune_footprint(net, x, labels, steps=60, batch_size=4, lr=5e-3)
    with torch.no_grad():
        p = torch.sigmoid(tuned(torch.from_numpy(x)[None]))[0, 0].numpy()
    seeded = labels >= 0
    assert ((p >= 0.5) == (labels == 1))[seeded].mean() > 0.95
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
    with pytest.raises(InputError, match=r"\(C, y, x\)"):
        fine_tune_footprint(net, x[None], labels, steps=1)
    labels[labels == 1] = 0
    with pytest.raises(InputError, match="0 built-up"):
        fine_tune_footprint(net, x, labels, steps=1)

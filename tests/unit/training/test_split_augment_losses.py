"""Pure pieces of the training code: the spatial split, augmentation, losses, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.dynamics import categorical_to_hazard_logits, cumulative_probability
from models.training.augment import dihedral, random_dihedral
from models.training.data import block_share
from models.training.losses import positive_weight, survival_bce, weighted_bce_dice, year_nll
from models.training.metrics import binary_scores, year_agreement
from models.training.split import sample_windows, split_by_area
from tasks.errors import InputError


@pytest.mark.parametrize("seed", range(8))
def test_split_by_area_parts_are_disjoint_and_separated(seed: int) -> None:
    split = split_by_area(60, 80, val_fraction=0.25, buffer=3, seed=seed)
    train = split.mask((60, 80), "train")
    val = split.mask((60, 80), "val")
    assert not (train & val).any()
    assert 0.2 < val.mean() < 0.3 and train.mean() > 0.6
    # no training pixel within `buffer` pixels of a validation pixel (Chebyshev distance)
    ys, xs = np.nonzero(val)
    ty, tx = np.nonzero(train)
    gap_y = np.abs(ty[:, None] - ys[None, :])
    gap_x = np.abs(tx[:, None] - xs[None, :])
    assert np.maximum(gap_y, gap_x).min() > 3
    rng = np.random.default_rng(seed)
    for box in sample_windows(split.train, (60, 80), 16, 20, rng):
        assert train[box].all() and train[box].shape == (16, 16)


def test_split_by_area_edges_vary_with_seed_and_bad_input_is_refused() -> None:
    assert len({split_by_area(40, 40, seed=s).edge for s in range(20)}) == 4
    with pytest.raises(InputError, match="val_fraction"):
        split_by_area(40, 40, val_fraction=1.5)
    with pytest.raises(InputError, match="larger world"):
        split_by_area(4, 4, val_fraction=0.5, buffer=3)


def test_dihedral_gives_eight_distinct_symmetries_and_keeps_pairs_aligned() -> None:
    a = np.arange(12.0).reshape(1, 3, 4)
    outs = {dihedral(a, k).tobytes() + bytes(dihedral(a, k).shape) for k in range(8)}
    assert len(outs) == 8
    img = np.random.default_rng(0).random((2, 5, 5))
    label = img[0] > 0.5
    x, y = random_dihedral((img, label), np.random.default_rng(3))
    assert np.array_equal(x[0] > 0.5, y)


def test_positive_weight_softens_imbalance_and_is_capped() -> None:
    assert positive_weight(0.5) == pytest.approx(1.0)
    assert positive_weight(0.1) == pytest.approx(3.0)
    assert positive_weight(1e-6) == 10.0
    assert positive_weight(torch.tensor([1, 0, 0, 0, 0])) == pytest.approx(2.0)


def test_weighted_bce_dice_ignores_masked_pixels_and_prefers_right_answers() -> None:
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    good = torch.tensor([[5.0, -5.0, 5.0, 99.0]])
    bad = -good
    assert weighted_bce_dice(good, target, mask) < 0.1 < weighted_bce_dice(bad, target, mask)
    other = good.clone()
    other[0, 3] = -99.0  # only a masked pixel changes
    assert weighted_bce_dice(other, target, mask) == pytest.approx(
        float(weighted_bce_dice(good, target, mask))
    )


def test_survival_bce_equals_bce_of_cumulative_probability() -> None:
    z = torch.randn(2, 5, 3, 4)
    z[0, 2] = float("-inf")  # a missing year
    built = torch.rand(2, 5, 3, 4) > 0.5
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    p = cumulative_probability(z).clamp(1e-7, 1 - 1e-7)
    ref = -(built * p.log() + (~built) * (1 - p).log()).mean()
    assert float(survival_bce(z, built, mask)) == pytest.approx(float(ref), rel=1e-3)


def test_year_nll_is_the_log_likelihood_of_the_first_built_year() -> None:
    scores = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))  # 4 years + never
    log_p = torch.log_softmax(scores, dim=1)
    hazard = categorical_to_hazard_logits(scores, dim=1)[:, :, None, None]  # (3, 4, 1, 1)
    built = torch.zeros(3, 4, 1, 1, dtype=torch.bool)
    built[0, 2:] = True  # built in year 2
    built[1, :] = True  # built from the first year
    mask = torch.ones(3, 1, 1, dtype=torch.bool)  # pixel 2: never built -> outcome 4
    expected = -(log_p[0, 2] + log_p[1, 0] + log_p[2, 4]) / 3
    assert float(year_nll(hazard, built, mask)) == pytest.approx(float(expected), rel=1e-5)
    mask[0] = False
    assert float(year_nll(hazard, built, mask)) == pytest.approx(
        float(-(log_p[1, 0] + log_p[2, 4]) / 2), rel=1e-5
    )
    # a year the causal model gives no mass (missing: -inf hazard) is left out, not infinite
    hazard[0, 2] = float("-inf")
    assert torch.isfinite(year_nll(hazard, built, torch.ones(3, 1, 1, dtype=torch.bool)))


def test_binary_scores_and_year_agreement_by_hand() -> None:
    pred = np.array([1, 1, 0, 0, 1], bool)
    label = np.array([1, 0, 1, 0, 1], bool)
    s = binary_scores(pred, label)
    assert (s["precision"], s["recall"]) == pytest.approx((2 / 3, 2 / 3))
    assert s["f1"] == pytest.approx(2 / 3) and s["iou"] == pytest.approx(0.5)
    a = year_agreement(np.array([2000, 2003, np.nan, 1990]), np.array([2001, 2000, 1999, np.nan]))
    assert a["within"] == pytest.approx(1 / 3) and a["mae"] == pytest.approx(2.0) and a["n"] == 3


def test_block_share_is_the_mean_of_3x3_blocks() -> None:
    fine = np.zeros((7, 6), bool)
    fine[0:3, 0:3] = True
    fine[3, 3] = True
    out = block_share(fine)
    assert out.shape == (2, 2)
    assert out[0, 0] == 1.0 and out[1, 1] == pytest.approx(1 / 9) and out[0, 1] == 0.0

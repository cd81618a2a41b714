"""Architectures: output shapes, gradients on every parameter, odd sizes, the hazard model's
monotonicity and missing-year handling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.changenet import FCSiamDiff
from models.dynamics import (
    PixelGRU,
    categorical_to_hazard_logits,
    cumulative_probability,
    year_log_probabilities,
)
from models.unet import UNet


def _assert_all_params_learn(model: nn.Module, loss: torch.Tensor) -> None:
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


def _loss(out: torch.Tensor, seed: int = 1) -> torch.Tensor:
    target = torch.rand(out.shape, generator=torch.Generator().manual_seed(seed))
    return nn.functional.binary_cross_entropy_with_logits(out, target)


def test_fc_siam_diff_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    model = FCSiamDiff(5, base_width=4, depth=3).train()
    before, after = torch.randn(2, 5, 24, 24), torch.randn(2, 5, 24, 24)
    out = model(before, after)
    assert out.shape == (2, 1, 24, 24)
    _assert_all_params_learn(model, _loss(out))


def test_fc_siam_diff_identical_dates_differ_from_changed_dates() -> None:
    torch.manual_seed(0)
    model = FCSiamDiff(3, base_width=4, depth=2).eval()
    x = torch.randn(1, 3, 16, 16)
    same = model(x, x)
    changed = model(x, x + 1.0)
    assert not torch.allclose(same, changed)


def test_unet_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    model = UNet(9, base_width=4, depth=3).train()
    out = model(torch.randn(2, 9, 32, 32))
    assert out.shape == (2, 1, 32, 32)
    _assert_all_params_learn(model, _loss(out))


@pytest.mark.parametrize("size", [(17, 23), (33, 40)])
def test_cnns_accept_sizes_not_divisible_by_the_pooling(size: tuple[int, int]) -> None:
    h, w = size
    x = torch.randn(1, 4, h, w)
    assert UNet(4, base_width=4, depth=3).eval()(x).shape == (1, 1, h, w)
    assert FCSiamDiff(4, base_width=4, depth=3).eval()(x, x).shape == (1, 1, h, w)


def test_pixel_gru_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    model = PixelGRU(9, hidden=8, num_layers=2).train()
    x = torch.randn(2, 6, 9, 4, 5)
    missing = torch.zeros(2, 6, 4, 5, dtype=torch.bool)
    missing[:, 2] = True
    logits = model(x, missing)
    assert logits.shape == (2, 6, 4, 5)
    prob = cumulative_probability(logits)
    target = torch.rand(prob.shape, generator=torch.Generator().manual_seed(1))
    _assert_all_params_learn(model, nn.functional.binary_cross_entropy(prob, target))


def test_pixel_gru_probability_is_monotonic_and_carried_over_missing_years() -> None:
    torch.manual_seed(0)
    model = PixelGRU(3, hidden=8).eval()
    x = torch.randn(1, 8, 3, 2, 2)
    missing = torch.zeros(1, 8, 2, 2, dtype=torch.bool)
    missing[:, 3:5] = True
    with torch.no_grad():
        logits = model(x, missing)
        prob = cumulative_probability(logits)
    assert torch.all(torch.isneginf(logits[:, 3:5]))
    assert torch.all(prob[:, 1:] >= prob[:, :-1])
    assert torch.equal(prob[:, 3], prob[:, 2]) and torch.equal(prob[:, 4], prob[:, 2])


def _assert_missing_values_ignored(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Year 1 of an input of `shape` (B, T, C, y, x), flagged missing, may hold anything."""
    x = torch.randn(*shape)
    missing = torch.zeros(shape[:2] + shape[3:], dtype=torch.bool)
    missing[:, 1] = True
    garbage = x.clone()
    garbage[:, 1] = 1e3
    with torch.no_grad():
        assert torch.equal(model(x, missing), model(garbage, missing))
        # ... but the same values, observed, do change the result
        assert not torch.equal(model(x, None), model(garbage, None))


def test_pixel_gru_ignores_the_values_of_missing_years() -> None:
    torch.manual_seed(0)
    _assert_missing_values_ignored(PixelGRU(3, hidden=8).eval(), (1, 5, 3, 2, 2))


def test_bidirectional_pixel_gru_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    model = PixelGRU(9, hidden=8, num_layers=2, bidirectional=True).train()
    x = torch.randn(2, 6, 9, 4, 5)
    missing = torch.zeros(2, 6, 4, 5, dtype=torch.bool)
    missing[:, 2] = True
    logits = model(x, missing)
    assert logits.shape == (2, 6, 4, 5) and torch.isfinite(logits).all()
    log_p = year_log_probabilities(logits)  # (2, 7, 4, 5): 6 years + never
    target = torch.randint(0, 7, (2, 4, 5), generator=torch.Generator().manual_seed(1))
    _assert_all_params_learn(model, nn.functional.nll_loss(log_p, target))


def test_bidirectional_pixel_gru_uses_later_years_and_stays_monotonic() -> None:
    torch.manual_seed(0)
    model = PixelGRU(3, hidden=8, bidirectional=True).eval()
    x = torch.randn(1, 8, 3, 2, 2)
    later = x.clone()
    later[:, 6:] += 2.0  # only the last two years differ
    with torch.no_grad():
        prob, prob_later = cumulative_probability(model(x)), cumulative_probability(model(later))
    assert torch.all(prob[:, 1:] >= prob[:, :-1]) and torch.all(prob <= 1)
    # the first year's probability depends on what comes after it (a causal model's cannot)
    assert not torch.allclose(prob[:, 0], prob_later[:, 0])


def test_bidirectional_pixel_gru_ignores_missing_values_and_chunks_alike() -> None:
    torch.manual_seed(0)
    model = PixelGRU(3, hidden=8, bidirectional=True).eval()
    _assert_missing_values_ignored(model, (1, 5, 3, 2, 3))
    # without gradients, long pixel batches run in chunks: the same numbers
    big = torch.randn(1, 4, 3, 1, 20000)
    with torch.no_grad():
        chunked = model(big)
    with torch.enable_grad():
        whole = model(big).detach()
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_pixel_gru_with_spatial_context_reads_neighbours_and_scores_window_centres() -> None:
    torch.manual_seed(0)
    model = PixelGRU(3, hidden=8, bidirectional=True, context=1).eval()
    x = torch.randn(1, 5, 3, 6, 7)
    missing = torch.rand(1, 5, 6, 7, generator=torch.Generator().manual_seed(3)) < 0.3
    changed = x.clone()
    changed[..., 2, 3] += 3.0  # one pixel: its 3x3 neighbours see it, pixels farther do not
    with torch.no_grad():
        full, full_changed = model(x), model(changed)
        moved = (full - full_changed).abs().amax(dim=(0, 1)) > 0
        # unpadded 3x3 windows give the logits of their centre pixel
        windows = torch.stack(
            [x[0, ..., r - 1 : r + 2, c - 1 : c + 2] for r, c in [(1, 1), (4, 5)]]
        )
        masks = torch.stack(
            [missing[0, :, r - 1 : r + 2, c - 1 : c + 2] for r, c in [(1, 1), (4, 5)]]
        )
        centres = model(windows, masks, pad=False)
        reference = model(x, missing)
    expected = torch.zeros(6, 7, dtype=torch.bool)
    expected[1:4, 2:5] = True
    assert torch.equal(moved, expected)
    assert centres.shape == (2, 5, 1, 1)
    torch.testing.assert_close(centres[0, :, 0, 0], reference[0, :, 1, 1])
    torch.testing.assert_close(centres[1, :, 0, 0], reference[0, :, 4, 5])


def test_categorical_and_hazard_logits_are_inverse() -> None:
    scores = torch.randn(3, 7, generator=torch.Generator().manual_seed(2)) * 3
    p = torch.softmax(scores, dim=-1)  # 6 years + never
    z = categorical_to_hazard_logits(scores)
    assert z.shape == (3, 6)
    torch.testing.assert_close(cumulative_probability(z, dim=-1), p[:, :-1].cumsum(-1))
    torch.testing.assert_close(year_log_probabilities(z, dim=-1).exp(), p, rtol=1e-4, atol=1e-6)
    # along another dim, as the model lays it out: (B, T, y, x)
    grid = scores.T[None, :, :, None]  # (1, 7, 3, 1)
    torch.testing.assert_close(categorical_to_hazard_logits(grid, dim=1), z.T[None, :, :, None])


def test_cumulative_probability_matches_the_product_formula() -> None:
    z = torch.tensor([[-2.0, 0.5, float("-inf"), 1.0]])
    h = torch.sigmoid(z)
    expected = 1 - torch.cumprod(1 - h, dim=1)
    assert torch.allclose(cumulative_probability(z), expected, atol=1e-6)
    # a higher temperature softens the hazards
    assert cumulative_probability(z, temperature=2.0)[0, -1] < expected[0, -1]


@pytest.mark.parametrize(
    "model",
    [
        FCSiamDiff(3, base_width=4, depth=2),
        UNet(3, base_width=4, depth=2),
        PixelGRU(3, hidden=4),
        PixelGRU(3, hidden=4, num_layers=2, bidirectional=True),
        PixelGRU(3, hidden=4, bidirectional=True, context=1),
    ],
)
def test_config_rebuilds_the_same_architecture(model: nn.Module) -> None:
    config = dict(model.config)  # type: ignore[arg-type]
    clone = type(model)(config.pop("in_channels"), **config)
    assert [p.shape for p in clone.parameters()] == [p.shape for p in model.parameters()]
    assert any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())

"""Architectures: output shapes, gradients on every parameter, odd sizes, the hazard model's
monotonicity and missing-year handling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.changenet import FCSiamDiff
from models.dynamics import PixelGRU, cumulative_probability
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


def test_pixel_gru_ignores_the_values_of_missing_years() -> None:
    torch.manual_seed(0)
    model = PixelGRU(3, hidden=8).eval()
    x = torch.randn(1, 5, 3, 2, 2)
    missing = torch.zeros(1, 5, 2, 2, dtype=torch.bool)
    missing[:, 1] = True
    garbage = x.clone()
    garbage[:, 1] = 1e3
    with torch.no_grad():
        assert torch.equal(model(x, missing), model(garbage, missing))
        # ... but the same values, observed, do change the result
        assert not torch.equal(model(x, None), model(garbage, None))


def test_cumulative_probability_matches_the_product_formula() -> None:
    z = torch.tensor([[-2.0, 0.5, float("-inf"), 1.0]])
    h = torch.sigmoid(z)
    expected = 1 - torch.cumprod(1 - h, dim=1)
    assert torch.allclose(cumulative_probability(z), expected, atol=1e-6)
    # a higher temperature softens the hazards
    assert cumulative_probability(z, temperature=2.0)[0, -1] < expected[0, -1]


@pytest.mark.parametrize(
    "model",
    [FCSiamDiff(3, base_width=4, depth=2), UNet(3, base_width=4, depth=2), PixelGRU(3, hidden=4)],
)
def test_config_rebuilds_the_same_architecture(model: nn.Module) -> None:
    config = dict(model.config)  # type: ignore[arg-type]
    clone = type(model)(config.pop("in_channels"), **config)
    assert [p.shape for p in clone.parameters()] == [p.shape for p in model.parameters()]
    assert any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())

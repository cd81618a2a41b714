"""FC-Siam-diff: fully convolutional Siamese network for bi-temporal change detection.

Daudt, Le Saux & Boulch 2018, "Fully Convolutional Siamese Networks for Change Detection",
ICIP, arXiv:1810.08462 (reference code: github.com/rcdaudt/fully_convolutional_change_detection).

Both dates go through one shared encoder; each decoder stage upsamples, then concatenates the
absolute difference ``|f_before - f_after|`` of the encoder features of its scale (the
"Siam-diff" skip connection). As in the reference code the decoder starts from the pooled
deepest features of the *second* (after) image.

Input: two tensors ``(batch, in_channels, y, x)`` (normalized model channels, NaN already
filled). Output: ``(batch, 1, y, x)`` change logits (``sigmoid`` = probability of change).
Any spatial size works (odd sizes are padded back in the decoder).

Differences from the paper, all for a small CPU-trainable default: 2 convolutions per stage
(paper: 2, 2, 3, 3), `base_width` 16 doubling per stage (as the paper), configurable `depth`,
one logit instead of a 2-class log-softmax.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.blocks import ConvBlock, match_size

__all__ = ["FCSiamDiff"]


class FCSiamDiff(nn.Module):
    """FC-Siam-diff with `depth` stages of widths ``base_width * 2**i``.

    `dropout`: channel dropout after every decoder stage and the deepest encoder stage (p=0.2 in
    the reference code); keep it > 0 for MC-dropout confidence.
    """

    task = "change"

    def __init__(
        self,
        in_channels: int,
        *,
        base_width: int = 16,
        depth: int = 4,
        dropout: float = 0.2,
        out_channels: int = 1,
    ):
        super().__init__()
        if in_channels < 1 or base_width < 1 or depth < 1 or out_channels < 1:
            raise ValueError("in_channels, base_width, depth and out_channels must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self._config: dict[str, Any] = {
            "in_channels": in_channels,
            "base_width": base_width,
            "depth": depth,
            "dropout": dropout,
            "out_channels": out_channels,
        }
        widths = [base_width * 2**i for i in range(depth)]
        self.encoder = nn.ModuleList()
        c = in_channels
        for i, w in enumerate(widths):
            self.encoder.append(ConvBlock(c, w, dropout=dropout if i == depth - 1 else 0.0))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for w in reversed(widths):
            # 3x3 transposed conv, stride 2 (reference code: ConvTranspose2d(k=3, s=2, p=1, op=1))
            self.up.append(nn.ConvTranspose2d(c, w, 3, stride=2, padding=1, output_padding=1))
            self.decoder.append(ConvBlock(2 * w, w, dropout=dropout))
            c = w
        self.head = nn.Conv2d(c, out_channels, 1)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (what a `WeightsSpec` stores as ``kwargs``)."""
        return dict(self._config)

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        return skips, x

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Change logits ``(B, out_channels, y, x)`` of `before` vs `after` ``(B, C, y, x)``."""
        if before.shape != after.shape:
            raise ValueError(f"before {tuple(before.shape)} and after {tuple(after.shape)} differ")
        skips1, _ = self._encode(before)
        skips2, x = self._encode(after)
        for up, block, s1, s2 in zip(
            self.up, self.decoder, reversed(skips1), reversed(skips2), strict=True
        ):
            x = match_size(up(x), s2)
            x = block(torch.cat([x, torch.abs(s1 - s2)], dim=1))
        out: torch.Tensor = self.head(x)
        return out

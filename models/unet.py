"""U-Net for the built-up footprint.

Ronneberger, Fischer & Brox 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI, arXiv:1505.04597.

Encoder of `depth` 2x2 max-pool steps with two 3x3 convolutions per level, a bottleneck, and a
decoder of 2x2 up-convolutions whose output is concatenated with the encoder features of the same
scale. Differences from the paper: padded convolutions (output size = input size, so tiles
blend), BatchNorm (Ioffe & Szegedy 2015), channel dropout in the bottleneck and decoder (for MC
dropout), `base_width` 16 instead of 64 so it trains on a CPU.

Input ``(batch, in_channels, y, x)`` normalized model channels; output ``(batch, 1, y, x)``
built-up logits (``sigmoid`` = probability of built-up). Any spatial size works.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.blocks import ConvBlock, match_size

__all__ = ["UNet"]


class UNet(nn.Module):
    """U-Net with levels of widths ``base_width * 2**i``, ``i = 0..depth`` (last = bottleneck)."""

    task = "footprint"

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
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList()
        c = in_channels
        for w in widths[:-1]:
            self.encoder.append(ConvBlock(c, w))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(c, widths[-1], dropout=dropout)
        c = widths[-1]
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(c, w, 2, stride=2))  # the paper's 2x2 up-conv
            self.decoder.append(ConvBlock(2 * w, w, dropout=dropout))
            c = w
        self.head = nn.Conv2d(c, out_channels, 1)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (what a `WeightsSpec` stores as ``kwargs``)."""
        return dict(self._config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Built-up logits ``(B, out_channels, y, x)`` of `x` ``(B, C, y, x)``."""
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.up, self.decoder, reversed(skips), strict=True):
            x = block(torch.cat([match_size(up(x), skip), skip], dim=1))
        out: torch.Tensor = self.head(x)
        return out

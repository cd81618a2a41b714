"""Building blocks shared by the convolutional networks (`models.changenet`, `models.unet`).

Tensors are ``(batch, channel, y, x)`` float. Convolutions that feed a BatchNorm have no bias
(the norm's shift replaces it; a bias there would get an exactly zero gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBlock", "match_size"]


class ConvBlock(nn.Sequential):
    """`n_convs` x (3x3 conv, BatchNorm, ReLU), then optional 2-D dropout (MC-dropout ready).

    Spatial size is kept (padding 1). `dropout` is the probability of zeroing a whole channel
    (`nn.Dropout2d`, Tompson et al. 2015), used by Daudt et al. 2018 after their convolutions.
    """

    def __init__(self, in_ch: int, out_ch: int, *, n_convs: int = 2, dropout: float = 0.0):
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers += [
                nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


def match_size(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Crop or replicate-pad `x` (B, C, h, w) to the spatial size of `ref`.

    After a 2x2 max-pool of an odd size the upsampled map is one pixel short; Daudt et al.'s
    reference code pads it the same way (ReplicationPad2d), so any input size works.
    """
    dh = ref.shape[-2] - x.shape[-2]
    dw = ref.shape[-1] - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    if dh < 0 or dw < 0:
        x = x[..., : ref.shape[-2], : ref.shape[-1]]
        dh, dw = max(dh, 0), max(dw, 0)
    if dh or dw:
        x = F.pad(x, (0, dw, 0, dh), mode="replicate")
    return x

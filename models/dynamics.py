"""Per-pixel recurrent network over annual composites: when did a pixel become built-up?

Every pixel's sequence of annual composites (1985 -> now) runs through a GRU (Cho et al. 2014,
arXiv:1406.1078) that outputs, for each year ``t``, the logit of a discrete-time *hazard*
``h_t = P(built in year t | not built before t)``. The probability of being built-up by year t is

    P(built by t) = 1 - prod_{s <= t} (1 - h_s)

(a discrete-time survival model, e.g. Singer & Willett 1993, J. Educ. Stat. 18:155). It is
monotonic non-decreasing in t by construction: urbanization is treated as irreversible, so the
year of urbanization — the first year with ``P >= 0.5`` — is well defined. Demolition back to
non-built land is not modelled.

Missing years (no valid observation: the whole composite is NaN) are handled explicitly:

- the input of that year is filled with 0 (the normalized mean) and a "missing" flag channel
  is appended, so the network sees that the year carries no information;
- the recurrent state is *carried*: ``state_t = state_{t-1}`` where the year is missing;
- the hazard of a missing year is 0 (its logit -inf), so ``P(built by t)`` is carried too. A
  pixel that was built during a gap gets its jump at the first observed year after it.

Shapes: input ``x`` ``(batch, year, channel, y, x)`` normalized model channels (NaN filled),
``missing`` ``(batch, year, y, x)`` bool; output hazard logits ``(batch, year, y, x)``. There is
no spatial context (every pixel is independent), so tiles need no overlap.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PixelGRU", "cumulative_probability"]


class PixelGRU(nn.Module):
    """Embedding (linear + ReLU) -> `num_layers` stacked GRU cells -> linear hazard head.

    `dropout` (on the embedding and on each layer's output, every time step) keeps MC dropout
    possible; it is the plain per-step dropout of Zaremba et al. 2014 (arXiv:1409.2329).
    """

    task = "dynamics"

    def __init__(
        self,
        in_channels: int,
        *,
        hidden: int = 32,
        num_layers: int = 1,
        dropout: float = 0.2,
    ):
        super().__init__()
        if in_channels < 1 or hidden < 1 or num_layers < 1:
            raise ValueError("in_channels, hidden and num_layers must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self._config: dict[str, Any] = {
            "in_channels": in_channels,
            "hidden": hidden,
            "num_layers": num_layers,
            "dropout": dropout,
        }
        # + 1: the "missing" flag channel
        self.embed = nn.Sequential(nn.Linear(in_channels + 1, hidden), nn.ReLU())
        self.cells = nn.ModuleList(nn.GRUCell(hidden, hidden) for _ in range(num_layers))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, 1)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (what a `WeightsSpec` stores as ``kwargs``)."""
        return dict(self._config)

    def forward(self, x: torch.Tensor, missing: torch.Tensor | None = None) -> torch.Tensor:
        """Hazard logits ``(B, T, y, x)`` of `x` ``(B, T, C, y, x)``; -inf where `missing`."""
        if x.ndim != 5:
            raise ValueError(f"x must be (batch, year, channel, y, x), got shape {tuple(x.shape)}")
        b, t, c, h, w = x.shape
        if missing is None:
            missing = torch.zeros((b, t, h, w), dtype=torch.bool, device=x.device)
        if missing.shape != (b, t, h, w):
            raise ValueError(f"missing must be {(b, t, h, w)}, got {tuple(missing.shape)}")
        # (B, T, C, y, x) -> (B*y*x, T, C): one sequence per pixel
        seq = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, c)
        miss = missing.permute(0, 2, 3, 1).reshape(b * h * w, t)
        seq = seq.masked_fill(miss[..., None], 0.0)
        z = self.drop(self.embed(torch.cat([seq, miss[..., None].to(seq.dtype)], dim=-1)))
        states: list[torch.Tensor | None] = [None] * len(self.cells)
        outs = []
        for step in range(t):
            inp = z[:, step]
            keep = miss[:, step, None]
            for i, cell in enumerate(self.cells):
                prev = states[i]
                new = cell(inp, prev)
                if prev is not None:
                    new = torch.where(keep, prev, new)  # carry the state over a missing year
                else:
                    new = new.masked_fill(keep, 0.0)  # the initial state is zeros
                states[i] = new
                inp = self.drop(new)
            outs.append(self.head(inp)[:, 0])
        logits = torch.stack(outs, dim=1).masked_fill(miss, float("-inf"))
        return logits.reshape(b, h, w, t).permute(0, 3, 1, 2)


def cumulative_probability(
    hazard_logits: torch.Tensor, *, temperature: float = 1.0, dim: int = 1
) -> torch.Tensor:
    """``P(built by t) = 1 - prod_{s<=t} sigmoid(-z_s / T)`` along `dim`, in float32.

    Computed in log space (``log(1 - sigmoid(z)) = -softplus(z)``) so long sequences of small
    hazards do not underflow; -inf logits (missing years) contribute nothing. `temperature`
    (> 0) is the calibration temperature of the weights spec (1 = uncalibrated).
    """
    z = hazard_logits.float() / temperature
    log_survival = torch.cumsum(-F.softplus(z), dim=dim)
    return -torch.expm1(log_survival)

"""Per-pixel recurrent network over annual composites: when did a pixel become built-up?

Every pixel's sequence of annual composites (1985 -> now) runs through a GRU (Cho et al. 2014,
arXiv:1406.1078) that outputs, for each year ``t``, the logit of a discrete-time *hazard*
``h_t = P(built in year t | not built before t)``. The probability of being built-up by year t is

    P(built by t) = 1 - prod_{s <= t} (1 - h_s)

(a discrete-time survival model, e.g. Singer & Willett 1993, J. Educ. Stat. 18:155). It is
monotonic non-decreasing in t by construction: urbanization is treated as irreversible, so the
year of urbanization — the first year with ``P >= 0.5`` — is well defined. Demolition back to
non-built land is not modelled.

Two variants share that output contract (hazard logits ``(B, T, y, x)``, so `tasks.infer` and
`cumulative_probability` serve both):

- ``bidirectional=False`` (*causal*): a stack of GRU cells reads the years forward. Missing
  years (no valid observation: the whole composite is NaN) carry the recurrent state
  (``state_t = state_{t-1}``) and get hazard 0 (logit -inf), so ``P(built by t)`` is carried
  too: a pixel built during a gap gets its jump at the first observed year after it.
- ``bidirectional=True``: the product is made after the fact over the whole series, so every
  year may use the later ones too (a construction site followed by years of roofs dates the
  change better than the years before it alone). A bidirectional GRU (Schuster & Paliwal 1997,
  IEEE Trans. Signal Process. 45:2673) reads the sequence both ways and scores every year
  ``a_t`` plus one "never (within the series)" outcome ``a_never``; a softmax over these
  ``T + 1`` outcomes is the distribution of the *year of urbanization*, and P(built by t) is
  its cumulative sum — monotone by construction. A missing year is an input of zeros with
  its flag set: the network may still place the urbanization in it (it knows from the
  neighbouring years that the change happened in the gap). The categorical distribution is
  returned as the equivalent hazard logits (see `categorical_to_hazard_logits`), exactly:
  ``h_t = p_t / (p_t + ... + p_{T-1} + p_never)``.

In both, the input of a missing year is filled with 0 (the normalized mean) and a flag channel
is appended, so the network sees that the year carries no information.

Spatial context (``context=k`` > 0): each year's input embedding is a ``(2k + 1)``-pixel
convolution instead of a per-pixel linear map, so a pixel's sequence also reads its
neighbours; the recurrence stays per pixel. A 30 m pixel is a blurred mixture (the sensor's
point spread function and residual misregistration reach into the neighbours), and a
parcel that is partly inside it is visible next to it: the neighbourhood helps to date mixed
pixels. Tiles then need ``4k`` pixels of overlap (`tasks.infer.predict_dynamics` takes that
by default); with ``context=0`` every pixel is independent and tiles need none.

Shapes: input ``x`` ``(batch, year, channel, y, x)`` normalized model channels (NaN filled),
``missing`` ``(batch, year, y, x)`` bool; output hazard logits ``(batch, year, y, x)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PixelGRU",
    "categorical_to_hazard_logits",
    "cumulative_probability",
    "year_log_probabilities",
]

#: Pixel sequences run through the recurrence at once when no gradient is needed: keeps the
#: (pixels, years, 2 x hidden) activations of an inference tile to a few hundred MiB.
_INFER_CHUNK = 16384


class PixelGRU(nn.Module):
    """Embedding (linear, or a ``2 * context + 1`` convolution, + ReLU) -> `num_layers` GRU
    layers -> hazard logits per year.

    `bidirectional` picks the variant (module docstring): ``False``, stacked GRU cells read
    forward with the state carried over missing years and a linear hazard head; ``True``, a
    bidirectional ``nn.GRU`` with a linear score per year and one for "never", turned into
    hazard logits. `dropout` (on the embedding and on each layer's output, every time step)
    keeps MC dropout possible; it is the plain per-step dropout of Zaremba et al. 2014
    (arXiv:1409.2329). `context`: the neighbourhood radius (pixels) of the input embedding.
    """

    task = "dynamics"

    def __init__(
        self,
        in_channels: int,
        *,
        hidden: int = 32,
        num_layers: int = 1,
        dropout: float = 0.2,
        bidirectional: bool = False,
        context: int = 0,
    ):
        super().__init__()
        if in_channels < 1 or hidden < 1 or num_layers < 1:
            raise ValueError("in_channels, hidden and num_layers must be >= 1")
        if context < 0:
            raise ValueError(f"context must be >= 0 pixels, got {context}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self._config: dict[str, Any] = {
            "in_channels": in_channels,
            "hidden": hidden,
            "num_layers": num_layers,
            "dropout": dropout,
            "bidirectional": bidirectional,
            "context": context,
        }
        self.context = context
        # + 1: the "missing" flag channel (per pixel), or the "observed" flag (with context:
        # the zero padding of the convolution beyond the tile then reads as "not observed")
        self.embed: nn.Sequential
        if context:
            k = 2 * context + 1
            self.embed = nn.Sequential(
                nn.Conv2d(in_channels + 1, hidden, k, padding=context), nn.ReLU()
            )
        else:
            self.embed = nn.Sequential(nn.Linear(in_channels + 1, hidden), nn.ReLU())
        self.drop = nn.Dropout(dropout)
        self.cells = nn.ModuleList()
        self.rnn: nn.GRU | None = None
        self.never: nn.Linear | None = None
        if bidirectional:
            self.rnn = nn.GRU(
                hidden,
                hidden,
                num_layers=num_layers,
                batch_first=True,
                dropout=dropout if num_layers > 1 else 0.0,
                bidirectional=True,
            )
            self.head = nn.Linear(2 * hidden, 1)
            # "never": from the final states of both directions (each has read every year)
            self.never = nn.Linear(2 * hidden, 1)
        else:
            self.cells.extend(nn.GRUCell(hidden, hidden) for _ in range(num_layers))
            self.head = nn.Linear(hidden, 1)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (what a `WeightsSpec` stores as ``kwargs``)."""
        return dict(self._config)

    def forward(
        self, x: torch.Tensor, missing: torch.Tensor | None = None, *, pad: bool = True
    ) -> torch.Tensor:
        """Hazard logits ``(B, T, y, x)`` of `x` ``(B, T, C, y, x)``.

        Causal variant: -inf where `missing`. Bidirectional: finite (the softmax leaves some
        mass to every outcome). Without gradients (inference), tiles run one at a time and
        their pixels in chunks of `_INFER_CHUNK`, which bounds the activations' memory.

        `pad=False` (spatial context only): no padding, so the output covers the ``(y - 2k,
        x - 2k)`` interior whose ``k = context`` neighbourhood lies inside `x` — a batch of
        ``(2k + 1)``-pixel windows gives the logits of their centre pixels (training on
        pixels drawn one by one, with their neighbours).
        """
        if x.ndim != 5:
            raise ValueError(f"x must be (batch, year, channel, y, x), got shape {tuple(x.shape)}")
        b, t, c, h, w = x.shape
        if missing is None:
            missing = torch.zeros((b, t, h, w), dtype=torch.bool, device=x.device)
        if missing.shape != (b, t, h, w):
            raise ValueError(f"missing must be {(b, t, h, w)}, got {tuple(missing.shape)}")
        inference = not torch.is_grad_enabled()
        if inference and b > 1:
            return torch.cat(
                [self.forward(x[i : i + 1], missing[i : i + 1], pad=pad) for i in range(b)]
            )
        x = x.masked_fill(missing[:, :, None], 0.0)
        if self.context:
            # (B*T, C + 1, y, x) per-year images -> embedded (B*y*x, T, hidden)
            img = torch.cat([x, (~missing)[:, :, None].to(x.dtype)], dim=2)
            img = img.reshape(b * t, c + 1, h, w)
            if pad:
                z = self.embed(img)
            else:
                k = self.context
                conv = self.embed[0]
                assert isinstance(conv, nn.Conv2d)
                z = F.relu(F.conv2d(img, conv.weight, conv.bias))  # the embedding, unpadded
                h, w = h - 2 * k, w - 2 * k
                missing = missing[:, :, k : k + h, k : k + w]
            z = z.reshape(b, t, -1, h, w).permute(0, 3, 4, 1, 2).reshape(b * h * w, t, -1)
        miss = missing.permute(0, 2, 3, 1).reshape(b * h * w, t)  # one sequence per pixel
        if not self.context:
            # (B, T, C, y, x) -> (B*y*x, T, C + 1); embedded chunk by chunk below
            seq = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, c)
            z = torch.cat([seq, miss[..., None].to(seq.dtype)], dim=-1)
        chunk = _INFER_CHUNK if inference else z.shape[0]
        parts = [
            self._sequences(zc, mc, embedded=bool(self.context))
            for zc, mc in zip(z.split(chunk), miss.split(chunk), strict=True)
        ]
        logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        return logits.reshape(b, h, w, t).permute(0, 3, 1, 2)

    def _sequences(self, z: torch.Tensor, miss: torch.Tensor, *, embedded: bool) -> torch.Tensor:
        """(N, T) hazard logits of N pixel sequences (embedded, or raw inputs + flag)."""
        z = self.drop(z if embedded else self.embed(z))
        if self.rnn is None:
            return self._causal(z, miss)
        return categorical_to_hazard_logits(self._scores(z))

    def _causal(self, z: torch.Tensor, miss: torch.Tensor) -> torch.Tensor:
        """(N, T) hazard logits of the forward-only variant from embedded `z` (N, T, hidden);
        -inf in missing years."""
        states: list[torch.Tensor | None] = [None] * len(self.cells)
        outs = []
        for step in range(z.shape[1]):
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
        return torch.stack(outs, dim=1).masked_fill(miss, float("-inf"))

    def _scores(self, z: torch.Tensor) -> torch.Tensor:
        """(N, T + 1) unnormalized log-probabilities of the bidirectional variant from embedded
        `z` (N, T, hidden): the urbanization happened in year 0 (or before), 1, ..., T - 1, or
        never."""
        assert self.rnn is not None and self.never is not None
        out, last = self.rnn(z)  # (N, T, 2H), (2 * layers, N, H)
        final = torch.cat([last[-2], last[-1]], dim=-1)  # forward and backward directions
        per_year = self.head(self.drop(out))[..., 0]
        return torch.cat([per_year, self.never(self.drop(final))], dim=-1).float()


def categorical_to_hazard_logits(scores: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    """Hazard logits of a categorical distribution over ``T`` years + "never".

    `scores` holds ``T + 1`` unnormalized log-probabilities along `dim` (the last is "never");
    returns the ``T`` logits ``z_t = a_t - logsumexp(a_{t+1}, ..., a_{T-1}, a_never)``, for
    which ``sigmoid(z_t) = p_t / (p_t + ... + p_never)`` is the discrete-time hazard, so that
    `cumulative_probability` of the result is the cumulative sum of the softmax (exactly,
    up to rounding).
    """
    a = scores.float().movedim(dim, -1)
    # reverse cumulative log-sum-exp: tail[t] = logsumexp(a[t:]); the tail after year t
    tail = torch.logcumsumexp(a.flip(-1), dim=-1).flip(-1)
    z = a[..., :-1] - tail[..., 1:]
    return z.movedim(-1, dim)


def year_log_probabilities(hazard_logits: torch.Tensor, *, dim: int = 1) -> torch.Tensor:
    """Log-probabilities of the year of urbanization (``T`` years, then "never") along `dim`,
    from hazard logits: ``log p_t = log h_t + sum_{s<t} log(1 - h_s)``, ``log p_never =
    sum_s log(1 - h_s)``. The inverse of `categorical_to_hazard_logits`; -inf logits (missing
    years of the causal variant) give -inf."""
    z = hazard_logits.float().movedim(dim, -1)
    log_surv = torch.cumsum(-F.softplus(z), dim=-1)  # log prod_{s<=t} (1 - h_s)
    before = torch.cat([torch.zeros_like(log_surv[..., :1]), log_surv[..., :-1]], dim=-1)
    log_p = F.logsigmoid(z) + before
    return torch.cat([log_p, log_surv[..., -1:]], dim=-1).movedim(-1, dim).contiguous()


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

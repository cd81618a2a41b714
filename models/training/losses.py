"""Losses with class-imbalance handling, all masked to the pixels that carry a label.

- `weighted_bce_dice`: binary cross-entropy with a positive-class weight plus the soft Dice
  loss (Milletari et al. 2016, "V-Net", arXiv:1606.04797). Built-up and changed pixels are a
  minority (5-30 %); Dice is insensitive to the class ratio, the weighted BCE keeps per-pixel
  gradients well behaved (the combination is common practice, e.g. Isensee et al. 2021,
  "nnU-Net", Nat. Methods 18:203).
- `survival_bce`: cross-entropy of P(built by year t) = 1 - prod (1 - h_s) (the output of
  `models.dynamics.cumulative_probability`) against the built-up label of every year: the
  discrete-time survival likelihood (Singer & Willett 1993) written per year, so one loss
  trains both when and whether a pixel urbanizes.
- `year_nll`: negative log-likelihood of the observed year of urbanization (or "never") under
  the categorical distribution the hazards define (`models.dynamics.year_log_probabilities`):
  the full-information likelihood of a discrete-time event model (Singer & Willett 1993) for
  exactly observed event times. It rewards putting the mass on the right year, not only on the
  right side of it, which is what the year-of-urbanization product is judged on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.dynamics import year_log_probabilities

__all__ = ["positive_weight", "survival_bce", "weighted_bce_dice", "year_nll"]


def positive_weight(labels: torch.Tensor | float, *, cap: float = 10.0) -> float:
    """``sqrt(negatives / positives)`` clipped to [1, `cap`]: the square root softens the
    inverse class frequency, which over-predicts the minority class when used in full.
    `labels`: 0/1 tensor, or the positive share as a float."""
    share = float(labels.float().mean()) if isinstance(labels, torch.Tensor) else float(labels)
    if share <= 0.0:
        return cap
    return float(min(max((max(1.0 - share, 0.0) / share) ** 0.5, 1.0), cap))


def weighted_bce_dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    pos_weight: float = 1.0,
    dice_weight: float = 1.0,
    eps: float = 1.0,
) -> torch.Tensor:
    """Masked ``BCE(pos_weight) + dice_weight * (1 - soft Dice)``; all tensors (B, 1, y, x)
    or any one shape; `mask` bool (True = labelled). `eps` smooths the Dice ratio."""
    logits = logits.float()
    m = mask.float()
    n = m.sum().clamp_min(1.0)
    w = torch.tensor(pos_weight, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none", pos_weight=w)
    bce = (bce * m).sum() / n
    if dice_weight == 0:
        return bce
    p = torch.sigmoid(logits) * m
    t = target.float() * m
    dice = (2 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)
    return bce + dice_weight * (1.0 - dice)


def survival_bce(
    hazard_logits: torch.Tensor,
    built: torch.Tensor,
    mask: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked BCE of ``P(built by t)`` against `built` (B, T, y, x); `mask` (B, y, x) selects
    the pixels; `weight` (B, y, x) optional per-pixel weights. -inf hazard logits (missing
    years) are allowed. Computed in log space: log(1 - P) = sum -softplus(z)."""
    log_surv = torch.cumsum(-F.softplus(hazard_logits.float()), dim=1)
    # log P = log(1 - exp(log_surv)); clamp keeps the gradient finite where P ~ 0
    log_p = torch.log(-torch.expm1(log_surv.clamp(max=-1e-7)))
    y = built.float()
    nll = -(y * log_p + (1 - y) * log_surv).mean(dim=1)  # (B, y, x)
    m = mask.float() if weight is None else mask.float() * weight
    return (nll * m).sum() / m.sum().clamp_min(1.0)


def year_nll(hazard_logits: torch.Tensor, built: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of ``-log p(year of urbanization)`` over pixels; `hazard_logits` and the
    non-decreasing `built` (B, T, y, x), `mask` (B, y, x). The observed outcome is the first
    year with ``built`` (index 0 when built from the start), or "never" when not built by the
    last year. A pixel whose outcome has probability 0 by construction (the causal model puts
    no mass on a missing year) is left out instead of giving an infinite loss."""
    log_p = year_log_probabilities(hazard_logits, dim=1)  # (B, T + 1, y, x)
    b = built.bool()
    never = torch.full_like(b[:, 0], b.shape[1], dtype=torch.long)
    outcome = torch.where(b.any(dim=1), b.long().argmax(dim=1), never)
    nll = -log_p.gather(1, outcome[:, None])[:, 0]
    m = mask.bool() & torch.isfinite(nll)
    return torch.where(m, nll, torch.zeros_like(nll)).sum() / m.sum().clamp_min(1)

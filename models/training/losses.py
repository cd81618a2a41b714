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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["positive_weight", "survival_bce", "weighted_bce_dice"]


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

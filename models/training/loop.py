"""The training loop: AdamW, early stopping on the validation loss, best weights kept.

Task-agnostic: a caller gives a function that yields training batches for an epoch, one that
yields validation batches, and a loss. A `Batch` is ``(inputs, target, mask, weight,
options)``: the model is called as ``model(*inputs, **options)``. Device ``auto`` picks CUDA
when present; on CUDA the forward pass runs under ``torch.autocast`` with bfloat16
(Micikevicius et al. 2018 for mixed precision; bf16 needs no loss scaling), on CPU in float32.
Seeds are fixed (`seed_everything`) so a run on CPU is repeatable.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.errors import InputError
from tasks.infer import resolve_device

__all__ = [
    "Batch",
    "FitConfig",
    "FitResult",
    "autocast_for",
    "evaluate_loss",
    "fit",
    "seed_everything",
]

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Model inputs, target, mask of labelled pixels, optional per-pixel weight (tensors), and
    keyword options of the model call (``model(*inputs, **options)``, e.g. ``pad=False``)."""

    inputs: tuple[torch.Tensor, ...]
    target: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device) -> Batch:
        return Batch(
            tuple(t.to(device, non_blocking=True) for t in self.inputs),
            self.target.to(device),
            self.mask.to(device),
            None if self.weight is None else self.weight.to(device),
            self.options,
        )

    def run(self, model: nn.Module) -> torch.Tensor:
        """The model's output on this batch."""
        out: torch.Tensor = model(*self.inputs, **self.options)
        return out


LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]


@dataclass(frozen=True)
class FitConfig:
    """Optimisation settings. `patience`: epochs without a validation-loss improvement of at
    least `min_delta` before stopping. AdamW (Loshchilov & Hutter 2019) with cosine decay."""

    epochs: int = 30
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 6
    min_delta: float = 1e-4
    device: str = "auto"
    seed: int = 0
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise InputError(f"epochs must be >= 1, got {self.epochs}.")
        if self.lr <= 0:
            raise InputError(f"lr must be > 0, got {self.lr}.")
        if self.patience < 1:
            raise InputError(f"patience must be >= 1, got {self.patience}.")


@dataclass
class FitResult:
    """History (one dict per epoch: epoch, train_loss, val_loss, seconds), the validation loss
    before training, the best epoch and its validation loss, whether early stopping ended
    the run, and the device used."""

    history: list[dict[str, float]] = field(default_factory=list)
    initial_val_loss: float = float("nan")
    best_epoch: int = 0
    best_val_loss: float = float("inf")
    stopped_early: bool = False
    device: str = "cpu"
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's legacy global and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA (float16 where bf16 is unsupported); nothing on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def evaluate_loss(
    model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn, device: torch.device
) -> float:
    """Mean loss over `batches` (weighted by labelled pixels) in eval mode, no gradients."""
    model.eval()
    total, weight = 0.0, 0.0
    with torch.inference_mode(), autocast_for(device):
        for b in batches:
            b = b.to(device)
            n = float(b.mask.sum())
            if n == 0:
                continue
            total += float(loss_fn(b.run(model), b)) * n
            weight += n
    return total / weight if weight else float("nan")


def fit(
    model: nn.Module,
    *,
    train_batches: Callable[[np.random.Generator], Iterable[Batch]],
    val_batches: Callable[[], Iterable[Batch]],
    loss_fn: LossFn,
    config: FitConfig = FitConfig(),
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
) -> FitResult:
    """Train `model` in place; on return it holds the weights of the best validation epoch.

    `train_batches(rng)` yields one epoch of batches (sampled/augmented with `rng`, seeded from
    `config.seed` and the epoch). Logs one line per epoch to `logger`.
    """
    logger = logger or log
    seed_everything(config.seed)
    device = resolve_device(config.device)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    result = FitResult(device=str(device))
    best_state = copy.deepcopy(model.state_dict())
    bad_epochs = 0
    t_start = time.perf_counter()
    result.initial_val_loss = evaluate_loss(model, val_batches(), loss_fn, device)
    logger.info("before training: val loss %.4f", result.initial_val_loss)
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        rng = np.random.default_rng([config.seed, epoch])
        total, n_batches = 0.0, 0
        for b in train_batches(rng):
            b = b.to(device)
            if not bool(b.mask.any()):
                continue
            opt.zero_grad(set_to_none=True)
            with autocast_for(device):
                out = b.run(model)
            loss = loss_fn(out.float(), b)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            n_batches += 1
        sched.step()
        if n_batches == 0:
            raise InputError("no training batch had a labelled pixel; check the data and split.")
        train_loss = total / n_batches
        val_loss = evaluate_loss(model, val_batches(), loss_fn, device)
        seconds = time.perf_counter() - t0
        result.history.append(
            {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "seconds": seconds}
        )
        logger.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f (%.1f s)",
            epoch,
            config.epochs,
            train_loss,
            val_loss,
            seconds,
        )
        if val_loss < result.best_val_loss - config.min_delta:
            result.best_val_loss, result.best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= config.patience:
                result.stopped_early = True
                logger.info("early stop: no val improvement for %d epochs", bad_epochs)
                break
        if config.max_seconds is not None and time.perf_counter() - t_start > config.max_seconds:
            logger.info("time budget of %.0f s reached", config.max_seconds)
            break
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - t_start
    return result

"""Inputs unlike the training worlds: a domain score for every product, and run-time
adaptation of the change and footprint models where the score is high.

**Domain score.** The model input channels (bands + indices) are normalized with the weights
spec's mean/std, which are the statistics of the training pixels: on training data every
channel has mean 0 and standard deviation 1. For the pixels a product maps, channel ``c`` has
mean ``m_c`` and standard deviation ``s_c`` (observed pixels of every input composite); its
distance is ``sqrt(m_c² + ln(s_c)²)`` and the score is the root mean square over the channels.
It is a moment-matching distance: 0 where the inputs look like the training worlds on average,
1 where a channel sits one training standard deviation off (or its spread is e times wider or
narrower). It cannot see a shift in the joint distribution that leaves every channel's
moments in place; it is a warning light, not a guarantee. Measured (README, "Where the models
hold"): change inputs 0.09-0.13 and footprint inputs 0.22 on unseen demo-configuration world
101, 0.76-1.13 (change) on worlds of other configurations and radiometry
(`tasks.synthetic.sampler`), change inputs 1.61 on the real Nanjing Landsat 5 pair.

Above `DOMAIN_WARN_SCORE` a product is out of domain (a warning, and the Item says so).

**Adaptation (change).** Where the score exceeds `DOMAIN_ADAPT_SCORE` (``adapt="auto"``) or
always (``adapt="always"``), the shipped change model is fine-tuned on the AOI itself before it
maps it: a hybrid of the unsupervised and the supervised detector. Seeds are the pixels where
both agree enough: *changed* where iterative slow feature analysis
(`models.baselines.slow_feature_analysis`, invariant to a gain and offset between the dates)
ranks a pixel in its top `SEED_CHANGE_QUANTILE` and the shipped model does not rule change out
(P > `SEED_CHANGE_MIN_P`); *unchanged* where ISFA ranks it below `SEED_STABLE_QUANTILE`, or where
the model is sure of no change (P < `SEED_STABLE_MAX_P`) and ISFA ranks it below
`SEED_STABLE_MODEL_QUANTILE`. Where the two agree on less than `SEED_MIN_AGREEMENT` of ISFA's
strongest changes, the seeds are not trusted and the model is used as shipped (logged): on
the synthetic worlds, whose land-cover "change" ISFA does not see, they agree on 13-24 %, and
adapting there would cut change F1 from 0.88 to 0.50 (world 101, measured with
``adapt="always"`` and no such guard). The guard alone is not enough: on sampled world 1001's
1991 -> 2025 pair the detectors agreed on more than half, and the forced adaptation cut F1
from 0.905 to 0.303. Adaptation is for inputs far from the training data
(`DOMAIN_ADAPT_SCORE`), where the shipped model is already the weaker detector.

The model (a copy) is trained for `ADAPT_STEPS` steps on random patches with a class-weighted
BCE on the seeds only, D4 augmentation, then maps the AOI with temperature 1. The seed rule was
chosen on the one real labelled pair the project holds (Nanjing): the numbers measured on it
are not an unbiased estimate (README). On a tile, the seeds are a statistic of that tile, as
Otsu's threshold is for the CVA baseline.

**Adaptation (footprint).** The same hybrid for the footprint U-Net, with the NDBI rule
(`models.baselines.builtup_rule`) as the unsupervised side: seeds are *built-up* where the
model ranks a pixel in its top `FOOTPRINT_SEED_BUILT_QUANTILE` and the rule says built-up,
*not built-up* where the model ranks it below `FOOTPRINT_SEED_OPEN_QUANTILE` and the rule
agrees (`footprint_seeds`). Ranks, because out of domain the model's probabilities collapse
while their order survives: on the real leaf-off Landsat 7 scene of North Carolina
(`models.training.realdata`) the shipped model's median P on developed land is 0.001 but its
AUC against the labels 0.89 (the rule's NDBI - NDVI: 0.78); adapted, IoU 0.049 -> 0.40 (rule
0.21). Forced on an unseen synthetic world where the model already works (sampled world
1001, domain score 0.49) it costs little (IoU 0.672 -> 0.655; README), but `auto` keeps it
to inputs above `DOMAIN_ADAPT_SCORE` as for change.

Training code (`models.training`) is not imported here: this is a dozen lines of optimizer
steps on one AOI, not the synthetic-world training pipeline.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.spec import WeightsSpec
from tasks.errors import InputError

__all__ = [
    "ADAPT_STEPS",
    "DOMAIN_ADAPT_SCORE",
    "DOMAIN_WARN_SCORE",
    "AdaptMode",
    "DomainScore",
    "change_seeds",
    "domain_score",
    "fine_tune_change",
    "fine_tune_footprint",
    "footprint_seeds",
    "should_adapt",
]

log = logging.getLogger(__name__)

AdaptMode = Literal["auto", "always", "never"]

#: Above this domain score a product is out of domain: it logs a warning and its Item says so.
DOMAIN_WARN_SCORE = 0.5
#: Above this one ``adapt="auto"`` adapts the change model. Unseen synthetic worlds score up to
#: 0.58 (sampled world 1001, a cloudy late-season archive) and there adaptation does harm
#: (forced on its 1991 -> 2025 pair: F1 0.905 -> 0.303); the real Nanjing pair scores 1.61.
#: Set to 1.0 after seeing world 1001 (it had been 0.5); worlds 1002 and 1003 checked it.
DOMAIN_ADAPT_SCORE = 1.0

#: Seed rule (module docstring); chosen on the Nanjing pair (README).
SEED_CHANGE_QUANTILE = 0.93
SEED_CHANGE_MIN_P = 0.05
SEED_STABLE_QUANTILE = 0.60
SEED_STABLE_MODEL_QUANTILE = 0.85
SEED_STABLE_MAX_P = 0.02
#: Least share of ISFA's strongest changes the shipped model must not rule out (module
#: docstring): 0.73 on the Nanjing pair, 0.13-0.24 on synthetic world 101.
SEED_MIN_AGREEMENT = 0.5
#: Fewest seeds of each class for an adaptation (fewer: the model is used as shipped).
MIN_SEEDS = 50

#: Fine-tuning: steps of `ADAPT_BATCH` patches of `ADAPT_PATCH` px, Adam at `ADAPT_LR`.
ADAPT_STEPS = 300
ADAPT_BATCH = 16
ADAPT_PATCH = 64
ADAPT_LR = 1e-3

#: Footprint seeds (`footprint_seeds`): the model's top tenth where the NDBI rule agrees, its
#: lower 60 % where the rule agrees. Chosen before any footprint adaptation was scored; not
#: changed after its first run on the real North Carolina scene.
FOOTPRINT_SEED_BUILT_QUANTILE = 0.90
FOOTPRINT_SEED_OPEN_QUANTILE = 0.60


@dataclass(frozen=True)
class DomainScore:
    """How far a product's inputs are from the training distribution (module docstring)."""

    value: float
    worst_channel: str
    worst_distance: float

    @property
    def out_of_domain(self) -> bool:
        return self.value > DOMAIN_WARN_SCORE

    def describe(self) -> str:
        return (
            f"domain score {self.value:.2f} (channel {self.worst_channel} "
            f"{self.worst_distance:.2f} training standard deviations off)"
        )


def domain_score(spec: WeightsSpec, x: np.ndarray, observed: np.ndarray) -> DomainScore:
    """Domain score of the model input `x` ``(S, C, y, x)`` (normalized with `spec`, as
    `tasks.infer.model_inputs` makes it) over its `observed` ``(S, y, x)`` pixels."""
    names = [*spec.bands, *spec.indices]
    if x.ndim != 4 or x.shape[1] != len(names) or observed.shape != (x.shape[0], *x.shape[2:]):
        raise InputError(
            f"x must be (S, {len(names)}, y, x) with observed (S, y, x); got {x.shape} and "
            f"{observed.shape}."
        )
    if not observed.any():
        raise InputError("no observed pixel: a domain score needs at least one.")
    values = np.moveaxis(x, 1, 0)[:, observed]  # (C, observed pixels of every source)
    mean = values.mean(axis=1, dtype=np.float64)
    std = np.maximum(values.std(axis=1, dtype=np.float64), 1e-6)
    dist = np.sqrt(mean**2 + np.log(std) ** 2)
    worst = int(np.argmax(dist))
    return DomainScore(
        value=float(np.sqrt(np.mean(dist**2))),
        worst_channel=names[worst],
        worst_distance=float(dist[worst]),
    )


def should_adapt(mode: AdaptMode, score: DomainScore) -> bool:
    """Whether `mode` adapts the change model for inputs of `score`."""
    if mode not in ("auto", "always", "never"):
        raise InputError(f"adapt: {mode!r} is not one of 'auto', 'always', 'never'.")
    return mode == "always" or (mode == "auto" and score.value > DOMAIN_ADAPT_SCORE)


def change_seeds(statistic: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """Pseudo-labels ``(y, x)`` int8 for adaptation: 1 changed, 0 unchanged, -1 not a seed.

    `statistic`: the ISFA change statistic (higher = more change), `probability`: the shipped
    model's P(change); both ``(y, x)``, NaN where not valid (never a seed). Rule: module
    docstring. Raises `InputError` where the two detectors agree on less than
    `SEED_MIN_AGREEMENT` of ISFA's strongest changes (the seeds are not to be trusted)."""
    if statistic.shape != probability.shape:
        raise InputError(
            f"statistic {statistic.shape} and probability {probability.shape} differ in shape."
        )
    ok = np.isfinite(statistic) & np.isfinite(probability)
    labels = np.full(statistic.shape, -1, dtype=np.int8)
    if not ok.any():
        return labels
    t = statistic[ok]
    hi, lo, mid = np.quantile(
        t, [SEED_CHANGE_QUANTILE, SEED_STABLE_QUANTILE, SEED_STABLE_MODEL_QUANTILE]
    )
    with np.errstate(invalid="ignore"):
        stable = (statistic < lo) | ((probability < SEED_STABLE_MAX_P) & (statistic < mid))
        changed = (statistic > hi) & (probability > SEED_CHANGE_MIN_P)
    top = ok & (statistic > hi)
    agreement = float((changed & ok).sum() / max(int(top.sum()), 1))
    if agreement < SEED_MIN_AGREEMENT:
        raise InputError(
            f"the shipped model rules out {1 - agreement:.0%} of the strongest changes slow "
            f"feature analysis finds (at most {1 - SEED_MIN_AGREEMENT:.0%} allowed): no "
            "trustworthy seeds to adapt on"
        )
    labels[ok & stable] = 0
    labels[ok & changed] = 1
    return labels


def _patch_size(height: int, width: int) -> int:
    """The largest multiple of 8 up to `ADAPT_PATCH` that fits the grid (the U-shaped models
    halve the resolution three times)."""
    return min(ADAPT_PATCH, (min(height, width) // 8) * 8)


def fine_tune_change(
    model: nn.Module,
    x: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int = ADAPT_STEPS,
    batch_size: int = ADAPT_BATCH,
    lr: float = ADAPT_LR,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """A copy of the change `model` fine-tuned on one AOI.

    `x`: ``(2, C, y, x)`` normalized input (before, after; `tasks.infer.model_inputs`),
    `labels`: ``(y, x)`` int8 from `change_seeds`. Returns the tuned copy in eval mode; `model`
    is left untouched. Deterministic for a given `seed` on CPU.
    """
    if x.ndim != 4 or x.shape[0] != 2 or labels.shape != x.shape[2:]:
        raise InputError(
            f"x must be (2, C, y, x) and labels (y, x); got {x.shape}, {labels.shape}."
        )
    return _fine_tune(
        model,
        x,
        labels,
        lambda net, xb: net(xb[:, 0].contiguous(), xb[:, 1].contiguous())[:, :1],
        "change",
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
    )


def footprint_seeds(probability: np.ndarray, rule: np.ndarray) -> np.ndarray:
    """Pseudo-labels ``(y, x)`` int8 for adapting the footprint model: 1 built-up, 0 not, -1
    not a seed.

    `probability`: the shipped model's P(built-up) (NaN where not valid, never a seed);
    `rule`: the NDBI rule's decision (`models.baselines.builtup_rule`'s ``built``), bool.
    *Built-up* where the model ranks a pixel in its top `FOOTPRINT_SEED_BUILT_QUANTILE` and
    the rule agrees; *not built-up* where it ranks it below `FOOTPRINT_SEED_OPEN_QUANTILE` and
    the rule agrees. Ranks, not probabilities: out of domain the model's probabilities shift
    as a whole (a real leaf-off Landsat 7 scene: median 0.001 on developed land) while their
    order still holds (AUC 0.89 against the labels, the rule's NDBI - NDVI 0.78)."""
    if probability.shape != rule.shape:
        raise InputError(f"probability {probability.shape} and rule {rule.shape} differ in shape.")
    ok = np.isfinite(probability)
    labels = np.full(probability.shape, -1, dtype=np.int8)
    if not ok.any():
        return labels
    hi, lo = np.quantile(
        probability[ok], [FOOTPRINT_SEED_BUILT_QUANTILE, FOOTPRINT_SEED_OPEN_QUANTILE]
    )
    with np.errstate(invalid="ignore"):
        labels[ok & (probability <= lo) & ~rule] = 0
        labels[ok & (probability >= hi) & rule] = 1
    return labels


def fine_tune_footprint(
    model: nn.Module,
    x: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int = ADAPT_STEPS,
    batch_size: int = ADAPT_BATCH,
    lr: float = ADAPT_LR,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """A copy of the footprint `model` fine-tuned on one AOI: `x` ``(C, y, x)`` normalized
    input, `labels` from `footprint_seeds`; otherwise as `fine_tune_change`."""
    if x.ndim != 3 or labels.shape != x.shape[1:]:
        raise InputError(f"x must be (C, y, x) and labels (y, x); got {x.shape}, {labels.shape}.")
    return _fine_tune(
        model,
        x,
        labels,
        lambda net, xb: net(xb)[:, :1],
        "footprint",
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
    )


def _fine_tune(
    model: nn.Module,
    x: np.ndarray,
    labels: np.ndarray,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    kind: str,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device | str,
) -> nn.Module:
    """`steps` Adam steps of a class-weighted BCE on the seeds of random patches of `x`
    (``(..., y, x)``), D4 augmented; `forward(net, batch) -> logits (B, 1, p, p)`."""
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    positive = "changed" if kind == "change" else "built-up"
    if min(n_pos, n_neg) < MIN_SEEDS:
        raise InputError(
            f"adaptation needs at least {MIN_SEEDS} seeds of each class; it has {n_pos} "
            f"{positive} and {n_neg} other. Use adapt='never' on this AOI."
        )
    height, width = labels.shape
    patch = _patch_size(height, width)
    if patch < 8:
        raise InputError(f"the grid ({height} x {width} px) is too small to adapt on.")
    dev = torch.device(device)
    tuned = copy.deepcopy(model).to(dev)
    tuned.train()
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
    yt = torch.from_numpy(labels.astype(np.float32)).to(dev)
    # positives weighted by the square root of the class ratio (a softened inverse frequency)
    pos_weight = float(np.sqrt(n_neg / n_pos))
    opt = torch.optim.Adam(tuned.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            ys = rng.integers(0, height - patch + 1, batch_size)
            xs = rng.integers(0, width - patch + 1, batch_size)
            xb = torch.stack(
                [xt[..., y : y + patch, c : c + patch] for y, c in zip(ys, xs, strict=True)]
            )
            yb = torch.stack(
                [yt[y : y + patch, c : c + patch] for y, c in zip(ys, xs, strict=True)]
            )[:, None]
            k = int(rng.integers(4))
            xb, yb = xb.rot90(k, (-2, -1)), yb.rot90(k, (-2, -1))
            if rng.random() < 0.5:
                xb, yb = xb.flip(-1), yb.flip(-1)
            seeds = yb >= 0
            if not seeds.any():
                continue
            logits = forward(tuned, xb.contiguous())
            weight = torch.where(yb > 0.5, pos_weight, 1.0)
            loss = F.binary_cross_entropy_with_logits(
                logits[seeds], yb[seeds], weight=weight[seeds]
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    tuned.eval()
    log.debug("adapted %s model: %d steps on %d + %d seeds", kind, steps, n_pos, n_neg)
    return tuned

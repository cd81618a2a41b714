"""Training recipes of the three shipped models: data -> patches -> `fit` -> calibration -> spec.

- ``change``: FC-Siam-diff on two annual 30 m composites (years a < b); label: the majority
  land cover of the 3x3 truth pixels differs. Training patches come from the fixed
  `CHANGE_PAIRS` and from random pairs (before year 1985-2015, after year 2016-2026), drawn in
  proportion to the pixels observed on both dates; validation uses the fixed pairs;
- ``footprint``: U-Net on the 10 m Sentinel-2 composite of the last year; label: built-up truth;
- ``dynamics``: PixelGRU on every annual 30 m composite; label: built-up share >= 0.5, per year.
  The shipped recipe: the bidirectional variant (a distribution over the year of urbanization)
  with a 3x3 spatial context, loss `survival_bce` + `year_nll`, trained on square patches.

Each world is split by area (`models.training.split`); the validation band of every world
drives early stopping, the temperature fit (`models.calibration.fit_temperature`, Guo et al.
2017) and the metrics recorded in the spec. Input normalisation (per-channel mean/std) is
computed on the training areas only. Channels: `BANDS` then `INDICES`, exactly as
`tasks.infer` builds them (`models.features.input_channels`, NaN -> 0 after normalisation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn

from models.calibration import expected_calibration_error, fit_temperature
from models.changenet import FCSiamDiff
from models.dynamics import PixelGRU, cumulative_probability
from models.features import input_channels
from models.registry import save_weights
from models.spec import TrainingData, WeightsSpec
from models.training.augment import dihedral, random_dihedral
from models.training.data import BANDS, WorldData
from models.training.loop import Batch, FitConfig, FitResult, autocast_for, fit
from models.training.losses import positive_weight, survival_bce, weighted_bce_dice, year_nll
from models.training.metrics import binary_scores, year_agreement
from models.training.split import AreaSplit, Box, sample_windows, split_by_area
from models.unet import UNet
from tasks.errors import InputError
from tasks.infer import urbanization_year

__all__ = [
    "CHANGE_PAIRS",
    "INDICES",
    "MODEL_NAMES",
    "RADIOMETRIC_JITTER",
    "Kind",
    "Problem",
    "TrainOutcome",
    "TrainSettings",
    "build_problem",
    "default_settings",
    "first_built_year",
    "normalize",
    "radiometric_augmentation",
    "train_model",
]

log = logging.getLogger(__name__)

Kind = Literal["change", "footprint", "dynamics"]

#: Spectral indices appended to the bands (built-up, vegetation, water: `models.features`).
INDICES: tuple[str, ...] = ("ndvi", "ndbi", "mndwi")

#: Registry names of the shipped weights.
MODEL_NAMES: dict[str, str] = {
    "change": "change-fcsiamdiff-30m",
    "footprint": "footprint-unet-s2-10m",
    "dynamics": "dynamics-pixelgru-30m",
}

#: (before, after) years of the change training pairs: a Landsat-only year against a recent
#: year, gaps of 8 to 38 years.
CHANGE_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (a, b) for a in (1988, 1994, 2000, 2006, 2012) for b in (2020, 2024)
)

#: Year ranges (first, last; inclusive) from which random change training pairs are drawn:
#: the before year from the Landsat-only era, the after year recent — the model's intended use
#: (model card). Every world year in range serves, so a patch sees one of ~340 pairs per world
#: instead of the 10 fixed `CHANGE_PAIRS` (which stay the validation pairs).
CHANGE_BEFORE_YEARS: tuple[int, int] = (1985, 2015)
CHANGE_AFTER_YEARS: tuple[int, int] = (2016, 2026)


#: Radiometric augmentation (std of a per-band gain common to both dates, of a per-band offset
#: common to both, and of a per-band gain of the after date / of each year alone): a real pair
#: differs from the synthetic sensor by another calibration and atmosphere (the common part;
#: the Nanjing TM pair's bands lie 0.3-2.6 training std off) and its dates by what
#: `tasks.radnorm` leaves after matching them (the relative part, a few %). Not in the shipped
#: recipes (`default_settings`): trained with it on sampled worlds 1-8, every model scored
#: lower on the unseen worlds, the demo world and Nanjing than the shipped ones (README,
#: "Where the models hold"); pass ``radiometric_jitter=RADIOMETRIC_JITTER`` to try it.
RADIOMETRIC_JITTER: tuple[float, float, float] = (0.15, 0.02, 0.03)


def _radiometric_draw(
    shape: tuple[int, ...], jitter: tuple[float, float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(common gain, common offset, relative gain) of `radiometric_augmentation`, each of
    `shape` (the band axis and singleton axes where they broadcast)."""
    gain_sd, offset_sd, rel_sd = jitter
    gain = np.exp(rng.normal(0.0, gain_sd, shape)).astype(np.float32)
    offset = rng.normal(0.0, offset_sd, shape).astype(np.float32)
    rel = np.exp(rng.normal(0.0, rel_sd, shape)).astype(np.float32)
    return gain, offset, rel


def radiometric_augmentation(
    before: np.ndarray,
    after: np.ndarray,
    jitter: tuple[float, float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """`before`, `after` ``(band, ...)`` reflectance seen through another sensor and
    atmosphere: ``x * g + o`` on both, with ``g = exp(N(0, gain std))`` and ``o = N(0, offset
    std)`` per band, the after date's gain times ``exp(N(0, relative std))`` more."""
    gain, offset, rel = _radiometric_draw(
        (before.shape[0],) + (1,) * (before.ndim - 1), jitter, rng
    )
    return before * gain + offset, after * (gain * rel) + offset


@dataclass(frozen=True)
class TrainSettings:
    """What to train and how. `patch`: side of training patches (pixels); `steps`: batches
    per epoch; `model_kwargs`: constructor arguments of the architecture. Change only:
    `change_pairs` (validation pairs, and training pairs) and `change_years` ((first, last)
    before years, (first, last) after years: training patches also come from random pairs of
    those ranges; None: the fixed pairs only). Dynamics only:
    `urbanizing_boost` (how much more often pixels that urbanize within the period are drawn)
    `year_dropout` (share of observed years hidden per sample, robustness to gaps) and
    `year_nll_weight` (weight of `year_nll`, the likelihood of the year of urbanization, added
    to the per-year `survival_bce`). `radiometric_jitter` (gain std, offset std, relative gain
    std; None: off): change, `radiometric_augmentation` of each training pair; footprint, a
    gain and offset per band of each patch; dynamics (with spatial context), a gain and offset
    per band of each pixel sequence and a relative gain per year on top."""

    kind: Kind
    epochs: int = 30
    batch_size: int = 16
    patch: int = 32
    steps: int = 20
    lr: float = 2e-3
    patience: int = 6
    seed: int = 0
    device: str = "auto"
    val_fraction: float = 0.25
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    max_seconds: float | None = None
    change_pairs: tuple[tuple[int, int], ...] = CHANGE_PAIRS
    change_years: tuple[tuple[int, int], tuple[int, int]] | None = None
    urbanizing_boost: float = 4.0
    year_dropout: float = 0.1
    year_nll_weight: float = 0.0
    radiometric_jitter: tuple[float, float, float] | None = None

    def fit_config(self) -> FitConfig:
        return FitConfig(
            epochs=self.epochs,
            lr=self.lr,
            patience=self.patience,
            device=self.device,
            seed=self.seed,
            max_seconds=self.max_seconds,
        )


def default_settings(kind: Kind, **overrides: Any) -> TrainSettings:
    """The settings the shipped weights were trained with (minutes on 2 CPU cores)."""
    base: dict[str, dict[str, Any]] = {
        "change": {
            "patch": 32,
            "batch_size": 16,
            "steps": 32,
            "epochs": 120,
            "patience": 15,
            "change_years": (CHANGE_BEFORE_YEARS, CHANGE_AFTER_YEARS),
            "model_kwargs": {"base_width": 16, "depth": 3, "dropout": 0.1},
        },
        "footprint": {
            "patch": 64,
            "batch_size": 8,
            "steps": 24,
            "model_kwargs": {"base_width": 16, "depth": 3, "dropout": 0.1},
        },
        "dynamics": {
            "patch": 1024,  # pixels per batch, each drawn with its neighbourhood
            "batch_size": 1,
            "steps": 20,
            "lr": 3e-3,
            "epochs": 36,
            "patience": 8,
            "urbanizing_boost": 8.0,
            "year_dropout": 0.05,
            "year_nll_weight": 1.0,
            "model_kwargs": {
                "hidden": 64,
                "num_layers": 2,
                "dropout": 0.1,
                "bidirectional": True,
                "context": 1,
            },
        },
    }
    if kind not in base:
        raise InputError(f"kind must be one of {sorted(base)}, got {kind!r}.")
    return TrainSettings(kind=kind, **{**base[kind], **overrides})


# ---- inputs ----------------------------------------------------------------------------------
def _channels(refl: np.ndarray, band_axis: int) -> np.ndarray:
    return input_channels(refl, BANDS, INDICES, band_axis=band_axis)


def channel_stats(arrays: Sequence[np.ndarray], band_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float64) over the finite values of `arrays` (each with the
    model channels on `band_axis`); std floored at 1e-6."""
    n_ch = arrays[0].shape[band_axis]
    s = np.zeros(n_ch)
    s2 = np.zeros(n_ch)
    n = np.zeros(n_ch)
    for a in arrays:
        m = np.moveaxis(a, band_axis, 0).reshape(n_ch, -1).astype(np.float64)
        ok = np.isfinite(m)
        s += np.where(ok, m, 0).sum(1)
        s2 += np.where(ok, m * m, 0).sum(1)
        n += ok.sum(1)
    if np.any(n == 0):
        raise InputError("a model channel has no finite training value; check the composites.")
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    return mean, np.maximum(std, 1e-6)


def normalize(
    channels: np.ndarray, mean: np.ndarray, std: np.ndarray, band_axis: int
) -> tuple[np.ndarray, np.ndarray]:
    """``((x - mean) / std`` with non-observed values 0, observed)``; an observation (pixel,
    date) is observed when every channel is finite, as in `tasks.infer`."""
    shape = [1] * channels.ndim
    shape[band_axis] = -1
    x = (channels - mean.reshape(shape).astype(np.float32)) / std.reshape(shape).astype(np.float32)
    observed = np.isfinite(channels).all(axis=band_axis)
    x = np.where(np.expand_dims(observed, band_axis) & np.isfinite(x), x, np.float32(0))
    return x.astype(np.float32), observed


def first_built_year(built: np.ndarray, years: Sequence[int]) -> np.ndarray:
    """(y, x) float32: first year of a (year, y, x) bool stack that is True; NaN when never."""
    yrs = np.asarray(years, dtype=np.float32)
    any_b = built.any(axis=0)
    return np.where(any_b, yrs[np.argmax(built, axis=0)], np.float32(np.nan)).astype(np.float32)


# ---- per-kind problems -----------------------------------------------------------------------
@dataclass
class _Sample:
    """One full-size training image: inputs (each (C, y, x) or (T, C, y, x)), label, mask."""

    inputs: tuple[np.ndarray, ...]
    label: np.ndarray
    mask: np.ndarray
    split: AreaSplit
    extra: dict[str, np.ndarray] = field(default_factory=dict)


class Problem:
    """Data, batches, loss, prediction and metrics of one kind of model (`build_problem`)."""

    kind: Kind
    band_axis: int

    def __init__(self, worlds: Sequence[WorldData], settings: TrainSettings) -> None:
        self.worlds = list(worlds)
        self.settings = settings
        self.splits = {
            w.seed: split_by_area(
                *self._grid_shape(w), val_fraction=settings.val_fraction, seed=w.seed
            )
            for w in self.worlds
        }
        raw = self._raw()  # list of (world seed, model channels tuple, label, label mask)
        train_arrays = [
            _crop(ch, self.splits[seed].train) for seed, chans, _, _ in raw for ch in chans
        ]
        self.mean, self.std = channel_stats(train_arrays, self.band_axis)
        self.samples: list[_Sample] = []
        for seed, chans, label, mask in raw:
            normed = [normalize(c, self.mean, self.std, self.band_axis) for c in chans]
            self.samples.append(self._sample(seed, normed, label, mask))
        train_labels = np.concatenate(
            [
                _crop(s.label, s.split.train)[..., _crop(s.mask, s.split.train)].ravel()
                for s in self.samples
            ]
        )
        self.pos_share = float(train_labels.mean()) if train_labels.size else 0.0

    # hooks
    def _grid_shape(self, w: WorldData) -> tuple[int, int]:
        raise NotImplementedError

    def _raw(self) -> list[tuple[int, tuple[np.ndarray, ...], np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def _sample(
        self,
        seed: int,
        normed: list[tuple[np.ndarray, np.ndarray]],
        label: np.ndarray,
        mask: np.ndarray,
    ) -> _Sample:
        x = tuple(n[0] for n in normed)
        valid = mask.copy()
        for _, obs in normed:
            valid &= obs
        return _Sample(x, label, valid, self.splits[seed])

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def loss(self, out: torch.Tensor, b: Batch) -> torch.Tensor:
        return weighted_bce_dice(
            out, b.target, b.mask, pos_weight=positive_weight(self.pos_share), dice_weight=1.0
        )

    # batches for 2-D models
    def train_batches(self, rng: np.random.Generator) -> Iterator[Batch]:
        s = self.settings
        for _ in range(s.steps):
            parts: list[tuple[np.ndarray, ...]] = []
            for i in rng.integers(len(self.samples), size=s.batch_size):
                smp = self.samples[int(i)]
                (win,) = sample_windows(smp.split.train, smp.label.shape, s.patch, 1, rng)
                arrays = (*(_crop(x, win) for x in smp.inputs), _crop(smp.label, win))
                arrays = (*arrays, _crop(smp.mask, win))
                parts.append(random_dihedral(arrays, rng))
            yield self._stack(parts)

    def val_batches(self) -> Iterator[Batch]:
        for smp in self.samples:
            win = smp.split.val
            yield self._stack(
                [
                    (
                        *(_crop(x, win) for x in smp.inputs),
                        _crop(smp.label, win),
                        _crop(smp.mask, win),
                    )
                ]
            )

    def _stack(self, parts: list[tuple[np.ndarray, ...]]) -> Batch:
        n_in = len(parts[0]) - 2
        inputs = tuple(torch.from_numpy(np.stack([p[i] for p in parts])) for i in range(n_in))
        label = torch.from_numpy(np.stack([p[-2] for p in parts])[:, None].astype(np.float32))
        mask = torch.from_numpy(np.stack([p[-1] for p in parts])[:, None])
        return Batch(inputs, label, mask)

    # evaluation on the validation areas
    def val_logits(self, model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        """Flattened (logits, labels) of every labelled validation pixel."""
        device = next(model.parameters()).device
        zs, ys = [], []
        model.eval()
        with torch.inference_mode(), autocast_for(device):
            for b in self.val_batches():
                b = b.to(device)
                z = b.run(model).float()
                m = b.mask.bool()
                zs.append(z[m].cpu().numpy())
                ys.append(b.target[m].cpu().numpy())
        return np.concatenate(zs), np.concatenate(ys).astype(bool)

    def calibrate_and_score(self, model: nn.Module) -> tuple[float, dict[str, float]]:
        z, y = self.val_logits(model)
        t = fit_temperature(z, y)
        p_raw = 1 / (1 + np.exp(-z))
        p = 1 / (1 + np.exp(-z / t))
        scores = binary_scores(p >= 0.5, y)
        metrics = {f"val_{k}": v for k, v in scores.items() if k != "n"}
        metrics["val_ece_uncalibrated"] = expected_calibration_error(p_raw, y)
        metrics["val_ece"] = expected_calibration_error(p, y)
        metrics["val_pixels"] = float(y.size)
        return t, metrics


def _crop(a: np.ndarray, box: Box) -> np.ndarray:
    return a[(..., *box)]


class _ChangeProblem(Problem):
    kind: Kind = "change"
    band_axis = 0

    def _grid_shape(self, w: WorldData) -> tuple[int, int]:
        return (w.annual.shape[-2], w.annual.shape[-1])

    def _raw(self) -> list[tuple[int, tuple[np.ndarray, ...], np.ndarray, np.ndarray]]:
        out: list[tuple[int, tuple[np.ndarray, ...], np.ndarray, np.ndarray]] = []
        for w in self.worlds:
            for a, b in self.settings.change_pairs:
                if a not in w.years or b not in w.years:
                    continue
                before = _channels(w.annual[w.year_index(a)], 0)
                after = _channels(w.annual[w.year_index(b)], 0)
                label = w.change_label(a, b)
                out.append((w.seed, (before, after), label, w.label_mask30()))
        if not out:
            raise InputError(
                f"no world covers the change pairs {self.settings.change_pairs}; "
                "choose years the worlds simulate."
            )
        return out

    def __init__(self, worlds: Sequence[WorldData], settings: TrainSettings) -> None:
        super().__init__(worlds, settings)
        # Random training pairs: every world's annual stack, normalised once ((T, C, y, x)
        # float32 + observed (T, y, x)), its candidate (before, after) year indices — the fixed
        # pairs it covers plus every pair of the `change_years` ranges — and their sampling
        # probabilities: proportional to the training pixels observed on both dates, so that
        # cloud-emptied years (no label can be scored there) are not drawn.
        self.stacks: list[tuple[np.ndarray, np.ndarray]] = []
        self.pair_index: list[np.ndarray] = []
        self.pair_p: list[np.ndarray] = []
        if settings.change_years is None:
            return
        (b0, b1), (a0, a1) = settings.change_years
        for w in self.worlds:
            pairs = {(a, b) for a, b in settings.change_pairs if a in w.years and b in w.years}
            pairs |= {(a, b) for a in w.years for b in w.years if b0 <= a <= b1 and a0 <= b <= a1}
            idx = np.array(
                sorted((w.year_index(a), w.year_index(b)) for a, b in pairs if a < b),
                dtype=np.int64,
            ).reshape(-1, 2)
            if settings.radiometric_jitter is None:
                x, observed = normalize(_channels(w.annual, 1), self.mean, self.std, 1)
            else:  # raw reflectance: the channels are made per patch, after the jitter
                x = np.asarray(w.annual, dtype=np.float32)
                observed = np.isfinite(x).all(axis=1)
            train = self.splits[w.seed].mask(observed.shape, "train") & w.label_mask30()
            counts = np.array(
                [np.count_nonzero(observed[i] & observed[j] & train) for i, j in idx], dtype=float
            )
            self.stacks.append((x, observed))
            self.pair_index.append(idx[counts > 0])
            self.pair_p.append(counts[counts > 0] / max(counts.sum(), 1.0))

    def train_batches(self, rng: np.random.Generator) -> Iterator[Batch]:
        """Patches of the fixed pairs, or (with `change_years`) of a random world and a random
        pair of its candidate years, with D4 augmentation; labels and masks as `_raw`."""
        usable = [i for i, idx in enumerate(self.pair_index) if len(idx)]
        if not usable:
            yield from super().train_batches(rng)
            return
        s = self.settings
        for _ in range(s.steps):
            parts: list[tuple[np.ndarray, ...]] = []
            for wi in rng.choice(usable, size=s.batch_size):
                w, (x, observed) = self.worlds[wi], self.stacks[wi]
                ia, ib = self.pair_index[wi][rng.choice(len(self.pair_p[wi]), p=self.pair_p[wi])]
                (win,) = sample_windows(self.splits[w.seed].train, x.shape[-2:], s.patch, 1, rng)
                label = w.landcover30[ia][win] != w.landcover30[ib][win]
                mask = w.label_mask30()[win] & observed[ia][win] & observed[ib][win]
                xa, xb = _crop(x[ia], win), _crop(x[ib], win)
                if s.radiometric_jitter is not None:
                    xa, xb = radiometric_augmentation(xa, xb, s.radiometric_jitter, rng)
                    xa = normalize(_channels(xa, 0), self.mean, self.std, 0)[0]
                    xb = normalize(_channels(xb, 0), self.mean, self.std, 0)[0]
                arrays = (xa, xb, label, mask)
                parts.append(random_dihedral(arrays, rng))
            yield self._stack(parts)

    def build_model(self) -> nn.Module:
        return FCSiamDiff(len(BANDS) + len(INDICES), **self.settings.model_kwargs)


class _FootprintProblem(Problem):
    kind: Kind = "footprint"
    band_axis = 0

    def _grid_shape(self, w: WorldData) -> tuple[int, int]:
        return (w.recent.shape[-2], w.recent.shape[-1])

    def _raw(self) -> list[tuple[int, tuple[np.ndarray, ...], np.ndarray, np.ndarray]]:
        return [
            (w.seed, (_channels(w.recent, 0),), w.built10, w.label_mask10()) for w in self.worlds
        ]

    def __init__(self, worlds: Sequence[WorldData], settings: TrainSettings) -> None:
        super().__init__(worlds, settings)
        # raw reflectance (one sample per world): with the jitter, channels are made per patch
        self.raw = [np.asarray(w.recent, dtype=np.float32) for w in self.worlds]

    def train_batches(self, rng: np.random.Generator) -> Iterator[Batch]:
        """As `Problem.train_batches`; with `radiometric_jitter`, each patch through a gain
        and offset per band of its own (another sensor and atmosphere)."""
        s = self.settings
        if s.radiometric_jitter is None:
            yield from super().train_batches(rng)
            return
        for _ in range(s.steps):
            parts: list[tuple[np.ndarray, ...]] = []
            for i in rng.integers(len(self.samples), size=s.batch_size):
                smp = self.samples[int(i)]
                (win,) = sample_windows(smp.split.train, smp.label.shape, s.patch, 1, rng)
                raw = _crop(self.raw[int(i)], win)
                gain, offset, _ = _radiometric_draw((raw.shape[0], 1, 1), s.radiometric_jitter, rng)
                x = normalize(_channels(raw * gain + offset, 0), self.mean, self.std, 0)[0]
                arrays = (x, _crop(smp.label, win), _crop(smp.mask, win))
                parts.append(random_dihedral(arrays, rng))
            yield self._stack(parts)

    def build_model(self) -> nn.Module:
        return UNet(len(BANDS) + len(INDICES), **self.settings.model_kwargs)


class _DynamicsProblem(Problem):
    """Pixel sequences, `patch` pixels per batch drawn one by one; pixels that urbanize within
    the period are drawn ``urbanizing_boost`` times as often. Per-pixel model: a batch is
    ``x (1, T, C, 1, n)``, ``missing (1, T, 1, n)``. With spatial context ``k`` (``context``
    in `model_kwargs`): ``x (n, T, C, 2k + 1, 2k + 1)``, each pixel with its neighbourhood
    (beyond the grid: not observed, as the engine's padding), D4-augmented, and the model
    called with ``pad=False`` (it scores the centre pixels); validation then runs on the whole
    validation areas, padded as in inference."""

    kind: Kind = "dynamics"
    band_axis = 1

    def _grid_shape(self, w: WorldData) -> tuple[int, int]:
        return (w.annual.shape[-2], w.annual.shape[-1])

    def _raw(self) -> list[tuple[int, tuple[np.ndarray, ...], np.ndarray, np.ndarray]]:
        if len({w.years for w in self.worlds}) != 1:
            raise InputError("dynamics worlds must cover the same years.")
        return [
            (w.seed, (_channels(w.annual, 1),), w.built_label(), w.label_mask30())
            for w in self.worlds
        ]

    def _sample(
        self,
        seed: int,
        normed: list[tuple[np.ndarray, np.ndarray]],
        label: np.ndarray,
        mask: np.ndarray,
    ) -> _Sample:
        x, observed = normed[0]
        valid = mask & observed.any(axis=0)
        urbanizing = label[-1] & ~label[0]
        return _Sample(
            (x,), label, valid, self.splits[seed], {"observed": observed, "urb": urbanizing}
        )

    def __init__(self, worlds: Sequence[WorldData], settings: TrainSettings) -> None:
        super().__init__(worlds, settings)
        # training pixel pools: (sample index, flat pixel index) with sampling weights
        pools, weights = [], []
        for i, s in enumerate(self.samples):
            m = s.split.mask(s.mask.shape, "train") & s.mask
            flat = np.flatnonzero(m)
            pools.append(np.stack([np.full(flat.size, i), flat], axis=1))
            boost = self.settings.urbanizing_boost
            weights.append(np.where(s.extra["urb"].ravel()[flat], boost, 1.0))
        self.pool = np.concatenate(pools)
        w = np.concatenate(weights)
        self.pool_p = w / w.sum()
        # spatial context k: inputs padded by k pixels of "not observed" (zeros), as the
        # engine's zero padding beyond a tile
        k = self.context
        self._padded = [
            (
                np.pad(s.inputs[0], ((0, 0), (0, 0), (k, k), (k, k))),
                np.pad(s.extra["observed"], ((0, 0), (k, k), (k, k))),
            )
            for s in (self.samples if k else [])
        ]
        # with the jitter: raw reflectance (one sample per world), NaN-padded like `_padded`
        self._raw_padded = [
            np.pad(
                np.asarray(w.annual, dtype=np.float32),
                ((0, 0), (0, 0), (k, k), (k, k)),
                constant_values=np.nan,
            )
            for w in (self.worlds if k and settings.radiometric_jitter is not None else [])
        ]
        self.pos_share = float(np.mean([s.label[:, s.mask].mean() for s in self.samples]))

    def build_model(self) -> nn.Module:
        return PixelGRU(len(BANDS) + len(INDICES), **self.settings.model_kwargs)

    def loss(self, out: torch.Tensor, b: Batch) -> torch.Tensor:
        loss = survival_bce(out, b.target, b.mask)
        if self.settings.year_nll_weight:
            loss = loss + self.settings.year_nll_weight * year_nll(out, b.target, b.mask)
        return loss

    @property
    def context(self) -> int:
        """Spatial context (pixels) of the model's input embedding."""
        return int(self.settings.model_kwargs.get("context", 0))

    def _hide_years(self, observed: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """`observed` with `year_dropout` of its pixel-years hidden (training only)."""
        if rng is None or self.settings.year_dropout <= 0:
            return observed
        return observed & (rng.random(observed.shape) >= self.settings.year_dropout)

    def _windows(self, picks: np.ndarray, rng: np.random.Generator | None) -> Batch:
        """The ``(2k + 1)``-pixel windows around `picks` (sample index, flat pixel index)."""
        k = self.context
        jitter = self.settings.radiometric_jitter if rng is not None else None
        xs, obs, lab = [], [], []
        for i, flat in picks:
            s = self.samples[int(i)]
            r, c = divmod(int(flat), s.mask.shape[1])  # (r, c) is (r + k, c + k) when padded
            if jitter:
                x_pad = self._raw_padded[int(i)]
            else:
                x_pad, obs_pad = self._padded[int(i)]
                obs.append(obs_pad[:, r : r + 2 * k + 1, c : c + 2 * k + 1])
            xs.append(x_pad[:, :, r : r + 2 * k + 1, c : c + 2 * k + 1])
            lab.append(s.label[:, r, c])
        if jitter and rng is not None:
            # raw (n, T, B, w, w): a gain and offset per pixel sequence and band, and a gain
            # per year on top (each annual composite its own calibration and atmosphere)
            raw = np.stack(xs)
            n, t, b = raw.shape[:3]
            gain, offset, _ = _radiometric_draw((n, 1, b, 1, 1), jitter, rng)
            _, _, rel = _radiometric_draw((n, t, b, 1, 1), jitter, rng)
            x, observed = normalize(
                _channels(raw * (gain * rel) + offset, 2), self.mean, self.std, 2
            )
        else:
            x, observed = np.stack(xs), np.stack(obs)  # (n, T, C, w, w), (n, T, w, w)
        if rng is not None:
            # hide whole pixel-years (a cloud over the neighbourhood); one D4 symmetry
            hide = rng.random(observed.shape[:2]) < self.settings.year_dropout
            observed = observed & ~hide[:, :, None, None]
            x = np.where(observed[:, :, None], x, np.float32(0))
            k8 = int(rng.integers(8))
            x, observed = dihedral(x, k8), dihedral(observed, k8)
        labelled = np.asarray(observed[:, :, k, k].any(axis=1))  # the centre seen once at least
        return Batch(
            (torch.from_numpy(x.astype(np.float32)), torch.from_numpy(~observed)),
            torch.from_numpy(np.stack(lab)[:, :, None, None]),
            torch.from_numpy(labelled[:, None, None]),
            options={"pad": False},
        )

    def _image_batch(
        self, parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    ) -> Batch:
        x, observed, built, mask = (np.stack([p[j] for p in parts]) for j in range(4))
        return Batch(
            (torch.from_numpy(x.astype(np.float32)), torch.from_numpy(~observed)),
            torch.from_numpy(built),
            torch.from_numpy(mask),
        )

    def _gather(self, picks: np.ndarray, rng: np.random.Generator | None) -> Batch:
        xs, obs, lab = [], [], []
        for i, flat in picks:
            s = self.samples[int(i)]
            r, c = divmod(int(flat), s.mask.shape[1])
            xs.append(s.inputs[0][:, :, r, c])
            obs.append(s.extra["observed"][:, r, c])
            lab.append(s.label[:, r, c])
        x = np.stack(xs, axis=-1)[:, :, None, :]  # (T, C, 1, n)
        observed = self._hide_years(np.stack(obs, axis=-1)[:, None, :], rng)  # (T, 1, n)
        x = np.where(observed[:, None], x, np.float32(0))
        built = np.stack(lab, axis=-1)[:, None, :]  # (T, 1, n)
        mask = np.asarray(observed.any(axis=0))  # (1, n)
        return Batch(
            (torch.from_numpy(x[None].astype(np.float32)), torch.from_numpy(~observed[None])),
            torch.from_numpy(built[None]),
            torch.from_numpy(mask[None]),
        )

    def train_batches(self, rng: np.random.Generator) -> Iterator[Batch]:
        n = self.settings.patch
        for _ in range(self.settings.steps):
            picks = self.pool[rng.choice(len(self.pool), size=n, p=self.pool_p)]
            yield self._windows(picks, rng) if self.context else self._gather(picks, rng)

    def _val_picks(self) -> np.ndarray:
        picks = []
        for i, s in enumerate(self.samples):
            flat = np.flatnonzero(s.split.mask(s.mask.shape, "val") & s.mask)
            picks.append(np.stack([np.full(flat.size, i), flat], axis=1))
        return np.concatenate(picks)

    def val_batches(self) -> Iterator[Batch]:
        if self.context:
            for s in self.samples:
                win = s.split.val
                yield self._image_batch(
                    [
                        (
                            s.inputs[0][(..., *win)],
                            s.extra["observed"][(..., *win)],
                            s.label[(..., *win)],
                            s.mask[win],
                        )
                    ]
                )
            return
        picks = self._val_picks()
        for j in range(0, len(picks), 4096):
            yield self._gather(picks[j : j + 4096], None)

    def calibrate_and_score(self, model: nn.Module) -> tuple[float, dict[str, float]]:
        device = next(model.parameters()).device
        zs, ys = [], []
        model.eval()
        with torch.inference_mode(), autocast_for(device):
            for b in self.val_batches():
                b = b.to(device)
                m = b.mask.bool()  # (B, y, x) -> the (T, n) logits and labels of its pixels
                zs.append(b.run(model).float().transpose(0, 1)[:, m].cpu())
                ys.append(b.target.transpose(0, 1)[:, m].cpu())
        z_all = torch.cat(zs, dim=1)
        y_all = torch.cat(ys, dim=1).float()

        def nll(log_t: float) -> float:
            p = cumulative_probability(z_all[None], temperature=float(np.exp(log_t)))[0]
            p = p.clamp(1e-6, 1 - 1e-6)
            return float(-(y_all * p.log() + (1 - y_all) * (1 - p).log()).mean())

        # Temperature scaling of the hazard logits (Guo et al. 2017), fitted on the
        # validation pixels' cumulative probabilities: bounded search over log T.
        res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        t = float(np.exp(res.x))
        p_raw = cumulative_probability(z_all[None])[0].numpy()
        p = cumulative_probability(z_all[None], temperature=t)[0].numpy()
        y = y_all.numpy().astype(bool)
        years = self.worlds[0].years
        true_year = first_built_year(y, years)
        urbanizing = np.asarray(y[-1] & ~y[0])
        # the year as the inference engine gives it (its default rule), and by the median rule
        agree, by_median = (
            year_agreement(
                urbanization_year(p, years, rule=rule)[urbanizing],
                true_year[urbanizing],
            )
            for rule in ("window", "median")
        )
        scores = binary_scores(p >= 0.5, y)
        metrics = {
            "val_year_within_1": agree["within"],
            "val_year_mae": agree["mae"],
            "val_year_within_1_median_rule": by_median["within"],
            "val_year_mae_median_rule": by_median["mae"],
            "val_urbanizing_pixels": agree["n"],
            "val_built_f1": scores["f1"],
            "val_built_iou": scores["iou"],
            "val_ece_uncalibrated": expected_calibration_error(p_raw, y),
            "val_ece": expected_calibration_error(p, y),
        }
        return t, metrics


_PROBLEMS: dict[str, type[Problem]] = {
    "change": _ChangeProblem,
    "footprint": _FootprintProblem,
    "dynamics": _DynamicsProblem,
}


def build_problem(worlds: Sequence[WorldData], settings: TrainSettings) -> Problem:
    """The data (normalised, split by area), batches, loss and calibration of
    ``settings.kind`` on `worlds`; `train_model` uses it, tests may too."""
    return _PROBLEMS[settings.kind](worlds, settings)


_CLASSES = {
    "change": ("no-change", "change"),
    "footprint": ("not-built", "built"),
    "dynamics": ("not-built", "built"),
}
_ARCH = {"change": "fc_siam_diff", "footprint": "unet", "dynamics": "pixel_gru"}
_DESCRIPTION = {
    "change": "Land-cover conversion between two annual 30 m composites (Landsat/Sentinel-2, "
    "harmonized): a change of class among water, forest, cropland, grassland, bare and "
    "built-up; crop type, rotation and phenology stay within a class and never count.",
    "footprint": "Built-up footprint from a 10 m Sentinel-2 annual composite.",
    "dynamics": "Year of urbanization from 30 m annual composites (1985 on): per-pixel GRU "
    "hazard model, P(built by year) non-decreasing.",
}


def _jitter_note(settings: TrainSettings) -> str:
    if settings.radiometric_jitter is None:
        return ""
    g, o, r = settings.radiometric_jitter
    unit = {"change": "pair", "footprint": "patch", "dynamics": "pixel sequence"}[settings.kind]
    relative = {"change": "after-date gain", "dynamics": "per-year gain"}.get(settings.kind)
    note = f"; radiometric jitter per {unit} and band: gain exp(N(0, {g:g})), offset N(0, {o:g})"
    return note + (f", {relative} exp(N(0, {r:g}))" if relative and r else "")


def _sampling_note(settings: TrainSettings) -> str:
    if settings.kind == "dynamics":
        note = (
            f"batches of {settings.patch} pixel sequences, urbanizing pixels drawn "
            f"{settings.urbanizing_boost:g}x as often, {settings.year_dropout:.0%} of observed "
            "years hidden per sample"
        )
        if settings.year_nll_weight:
            note += f", loss survival BCE + {settings.year_nll_weight:g} x year NLL"
        return note + _jitter_note(settings)
    pairs = ""
    if settings.kind == "change":
        pairs = f", validation year pairs {list(settings.change_pairs)}"
        if settings.change_years is not None:
            (b0, b1), (a0, a1) = settings.change_years
            pairs += (
                f"; training pairs: those and random (before {b0}-{b1}, after {a0}-{a1}) "
                "pairs, drawn in proportion to the pixels observed on both dates"
            )
    return (
        f"batches of {settings.batch_size} patches of {settings.patch} px{pairs}, "
        f"D4 flips/rotations{_jitter_note(settings)}"
    )


def _prior_bias(model: nn.Module, problem: Problem) -> None:
    """Start the output at the class prior: bias = logit(positive share) (the prior
    initialisation of Lin et al. 2017, "Focal Loss", Section 4.1), so early epochs do not
    spend themselves unlearning a 50 % guess. Dynamics: a per-year hazard of 1/(2 T)."""
    head = getattr(model, "head", None)
    bias = getattr(head, "bias", None)
    if not isinstance(bias, torch.Tensor):
        return
    if problem.kind == "dynamics":
        h = 1.0 / (2 * len(problem.worlds[0].years))
    else:
        h = min(max(problem.pos_share, 1e-3), 1 - 1e-3)
    with torch.no_grad():
        bias.fill_(float(np.log(h / (1 - h))))


@dataclass
class TrainOutcome:
    """What a training run produced: the saved spec, its file and the fit history."""

    spec: WeightsSpec
    weights_path: Path
    fit: FitResult
    seconds: float


def train_model(
    worlds: Sequence[WorldData],
    settings: TrainSettings,
    *,
    out_dir: Path,
    name: str | None = None,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    world: str = "demo",
) -> TrainOutcome:
    """Train one model of ``settings.kind`` on `worlds`, calibrate it on their validation
    areas, and write ``<name>.pt`` + ``<name>.json`` to `out_dir` (`save_weights`). `world`:
    the configuration the worlds' seeds apply to, recorded in the spec."""
    logger = logger or log
    if not worlds:
        raise InputError("worlds: give at least one training world.")
    t0 = time.perf_counter()
    problem = build_problem(worlds, settings)
    torch.manual_seed(settings.seed)
    model = problem.build_model()
    _prior_bias(model, problem)
    logger.info(
        "%s: %d parameters, %d training images, positive share %.3f",
        settings.kind,
        sum(p.numel() for p in model.parameters()),
        len(problem.samples),
        problem.pos_share,
    )
    result = fit(
        model,
        train_batches=problem.train_batches,
        val_batches=problem.val_batches,
        loss_fn=problem.loss,
        config=settings.fit_config(),
        logger=logger,
    )
    temperature, metrics = problem.calibrate_and_score(model)
    seconds = time.perf_counter() - t0
    metrics.update(
        {
            "best_epoch": float(result.best_epoch),
            "best_val_loss": result.best_val_loss,
            "train_seconds": round(seconds, 1),
        }
    )
    logger.info("%s: temperature %.3f, validation %s", settings.kind, temperature, metrics)
    model = model.cpu()
    years: tuple[int, ...]
    if settings.kind == "change":
        used = {y for p in settings.change_pairs for y in p}
        if settings.change_years is not None:
            (b0, b1), (a0, a1) = settings.change_years
            used |= {y for w in worlds for y in w.years if b0 <= y <= b1 or a0 <= y <= a1}
        years = tuple(sorted(used))
    elif settings.kind == "footprint":
        years = tuple(sorted({w.footprint_year for w in worlds}))
    else:
        years = worlds[0].years
    spec = WeightsSpec(
        name=name or MODEL_NAMES[settings.kind],
        task=settings.kind,
        architecture=_ARCH[settings.kind],
        kwargs=model.config,  # type: ignore[arg-type]
        bands=BANDS,
        indices=INDICES,
        mean=tuple(float(v) for v in problem.mean),
        std=tuple(float(v) for v in problem.std),
        classes=_CLASSES[settings.kind],
        temperature=temperature,
        training_data=TrainingData(
            source="synthetic",
            world_seeds=tuple(w.seed for w in worlds),
            world=world,
            years=years,
            notes=(
                f"validation: a {settings.val_fraction:.0%} band along one edge of every world "
                f"(edge by seed; 2 px buffer); {_sampling_note(settings)}; "
                f"{settings.epochs} epochs max x {settings.steps} steps, "
                f"lr {settings.lr}, patience {settings.patience}, seed {settings.seed}, "
                f"device {result.device}; temperature fitted on the validation areas"
            ),
        ),
        metrics={k: float(v) for k, v in metrics.items()},
        description=_DESCRIPTION[settings.kind],
    )
    saved = save_weights(model, spec, out_dir)
    return TrainOutcome(saved, Path(out_dir) / str(saved.weights_file), result, seconds)

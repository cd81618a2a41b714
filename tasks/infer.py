"""Inference: tiled, batched, overlap-blended torch inference of the three product models.

| function            | model task   | input (``xr.DataArray``, float reflectance, NaN = no data) |
|---------------------|--------------|-------------------------------------------------------------|
| `predict_change`    | ``change``   | two composites ``(band, y, x)``: before, after              |
| `predict_footprint` | ``footprint``| one composite ``(band, y, x)``                              |
| `predict_dynamics`  | ``dynamics`` | annual composites ``(year|period, band, y, x)``             |

A composite ``xr.Dataset`` (`tasks.composite`) is accepted too: its ``reflectance`` is used.
The band coordinate must be exactly the spec's bands in order (`models.registry.check_inputs`);
pass ``select_bands=True`` to let the engine select them by name.

**Tiling and blending.** The (y, x) grid is cut into ``tile`` x ``tile`` windows that overlap by
``overlap`` pixels; the last window of a row/column is shifted to end at the edge, so every tile
has one size and a batch is one tensor. Each tile's probabilities are weighted by a separable
window that is 1 in the interior and, on every side that touches another tile, falls off over
the overlap: zero on the outer quarter (the pixels a padded convolution gets wrong), a
``sin²`` ramp over the middle half, 1 on the inner quarter. On a regular grid the ramps of two
neighbours sum to exactly 1 (sin² + cos²); the accumulated weights are divided out anyway, so
shifted edge tiles blend too. A model whose receptive field reaches at most ``overlap // 4``
pixels gives the same result as one full-frame pass; larger ones blend without seams.

**Memory.** Tiles are read batch by batch from the input (numpy, dask or a lazily indexed
backend array): one ``dask.compute`` per batch reads the chunks under that batch's windows, and
on CUDA the next batch is read while the current one runs (``prefetch``; at most two batches
of tiles in memory).
Besides that only the output arrays are held: a weighted-sum and a weight accumulator of the
output's size, and the valid mask. A lazy dask graph is computed once per batch window: persist
or write expensive inputs (composites) before inference.

**Device.** ``device`` ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``;
default from `tasks.settings.get_settings().device` (``EO_DEVICE``). Model inference on CUDA runs
inside `gpu_slot` (one task per GPU at a time; see there). On CUDA the forward pass
runs under ``torch.autocast`` (bfloat16 where supported, else float16) unless
``mixed_precision=False``. On CPU it runs in float32 with
``torch.use_deterministic_algorithms(True)`` and a fixed seed: two runs give identical bytes.

**NaN and validity.** A pixel/date observation is valid when every input band is finite. Input
channels are normalized with the spec's mean/std and invalid observations are set to 0 (= the
channel mean). ``valid`` (y, x) is: both dates valid (change), the composite valid (footprint),
at least one year valid (dynamics); ``probability`` and ``confidence`` are NaN elsewhere.

**Confidence** is the *calibrated probability* of the predicted class, ``max(p, 1 - p)`` with
``p = sigmoid(logit / T)`` and the temperature ``T`` of the weights spec (temperature scaling,
Guo et al. 2017; `models.calibration.fit_temperature` fits it, and
`models.calibration.expected_calibration_error` measures it). With ``mc_passes=N > 0`` the
engine also runs N Monte-Carlo dropout passes (Gal & Ghahramani 2016, ICML): ``probability``
is then their mean and ``uncertainty`` their standard deviation.

Nothing here imports training code (``models.training``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

import dask
import dask.array as dsa
import numpy as np
import torch
import xarray as xr
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.exceptions import MissingContextError
from torch import nn

from models.dynamics import cumulative_probability
from models.features import annual_axis, input_channels
from models.registry import check_inputs, load_model
from models.spec import Task, WeightsSpec
from tasks.errors import InputError
from tasks.settings import get_settings

__all__ = [
    "CONFIDENCE_METHOD",
    "GPU_CONCURRENCY_LIMIT",
    "URBAN_THRESHOLD",
    "Window",
    "blend_weights",
    "detect_change",
    "gpu_slot",
    "map_footprint",
    "map_urban_dynamics",
    "model_inputs",
    "predict_change",
    "predict_dynamics",
    "predict_footprint",
    "resolve_device",
    "tile_windows",
    "urbanization_year",
]

log = logging.getLogger(__name__)

#: How ``confidence`` is made (see the module docstring); recorded in every output's attrs.
CONFIDENCE_METHOD = "calibrated-probability (temperature scaling)"

#: Probability at which a pixel counts as built-up for the year of urbanization.
URBAN_THRESHOLD = 0.5

#: How `urbanization_year` reads a year off the per-year probabilities (see there).
YearRule = Literal["window", "median"]


def urbanization_year(
    probability: np.ndarray,
    years: Sequence[int] | np.ndarray,
    *,
    threshold: float = URBAN_THRESHOLD,
    rule: YearRule = "window",
) -> np.ndarray:
    """Year of urbanization (y, x) float32 from P(built-up by year t) ``(year, y, x)``.

    A pixel is urbanized when P(built-up by the last year) >= `threshold`, else NaN (NaN
    probabilities too). Its year: the increments ``P[t] - P[t - 1]`` (``P[0]`` for the first
    year, which also holds "built before") are the model's distribution of the year of
    urbanization, non-negative because P is monotone, and `rule` takes a point estimate of it:

    - ``"window"``: the centre of the most probable 3-year window, i.e. the year that maximizes
      P(true year within ±1) -- the Bayes decision for the ±1-year agreement we report. It
      helps where the year is uncertain (a change inside years without observation: the mass is
      spread over the gap). Ties: the earliest. A pixel built-up in the first year gets it.
    - ``"median"``: the first year with P >= `threshold` (the median for 0.5): it minimizes the
      expected absolute error and agrees with thresholding each year's P, but lands late in
      long gaps. Measured on the validation and test worlds: models/weights/README.md.
    """
    _check_year_rule(rule)
    prob = np.asarray(probability, dtype=np.float64)
    labels = np.asarray(years)
    with np.errstate(invalid="ignore"):
        urbanized = prob[-1] >= threshold  # NaN compares False
        if rule == "median":
            at = np.argmax(prob >= threshold, axis=0)
        else:
            mass = np.diff(prob, axis=0, prepend=0.0)
            window = mass.copy()
            window[1:] += mass[:-1]
            window[:-1] += mass[1:]
            at = np.argmax(np.nan_to_num(window, nan=-1.0), axis=0)
            # built already in the first year: that year, as under "median" (its mass holds
            # "before" too, so the window one year later would hold as much)
            at = np.where(prob[0] >= threshold, 0, at)
    return np.where(urbanized, labels[at].astype(np.float32), np.float32(np.nan))


def _check_year_rule(rule: str) -> None:
    if rule not in get_args(YearRule):
        raise InputError(f"year_rule {rule!r} is not one of {list(get_args(YearRule))}.")


# ---- tiles and blending weights --------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """A tile: rows ``y0 : y0 + height``, columns ``x0 : x0 + width`` of the grid."""

    y0: int
    x0: int
    height: int
    width: int

    @property
    def rows(self) -> slice:
        return slice(self.y0, self.y0 + self.height)

    @property
    def cols(self) -> slice:
        return slice(self.x0, self.x0 + self.width)


def _check_tiling(tile: int, overlap: int, batch_size: int) -> None:
    if tile < 1:
        raise InputError(f"tile must be >= 1 pixel, got {tile}.")
    if overlap < 0 or 2 * overlap >= tile:
        raise InputError(
            f"overlap must be >= 0 and less than half the tile ({tile}), got {overlap}."
        )
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}.")


def _axis_starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile + 1, tile - overlap))
    if starts[-1] + tile < n:
        starts.append(n - tile)  # last tile shifted to end at the edge
    return starts


def tile_windows(height: int, width: int, *, tile: int, overlap: int) -> list[Window]:
    """Row-major tiles of ``min(tile, height) x min(tile, width)`` covering the grid."""
    _check_tiling(tile, overlap, 1)
    th, tw = min(tile, height), min(tile, width)
    return [
        Window(y, x, th, tw)
        for y in _axis_starts(height, tile, overlap)
        for x in _axis_starts(width, tile, overlap)
    ]


@lru_cache(maxsize=64)
def _ramp(overlap: int) -> np.ndarray:
    """Rising edge over `overlap` pixels: 0 (outer quarter), sin² (middle half), 1."""
    margin = overlap // 4
    r = overlap - 2 * margin
    up = np.ones(overlap, dtype=np.float64)
    up[:margin] = 0.0
    up[margin : margin + r] = np.sin(np.pi / 2 * (np.arange(r) + 0.5) / r) ** 2
    return up


def _axis_weights(start: int, size: int, n: int, overlap: int) -> np.ndarray:
    w = np.ones(size, dtype=np.float64)
    if overlap > 0:
        if start > 0:
            w[:overlap] *= _ramp(overlap)
        if start + size < n:
            w[size - overlap :] *= _ramp(overlap)[::-1]
    return w


def blend_weights(window: Window, height: int, width: int, *, overlap: int) -> np.ndarray:
    """Blending weights ``(window.height, window.width)`` float32 of one tile of the grid.

    Sides on the grid's edge are not tapered (nothing else covers those pixels).
    """
    wy = _axis_weights(window.y0, window.height, height, overlap)
    wx = _axis_weights(window.x0, window.width, width, overlap)
    return np.outer(wy, wx).astype(np.float32)


# ---- device, precision, determinism ----------------------------------------------------------
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device for `device` (None: ``EO_DEVICE``; ``auto``: CUDA when present)."""
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = (device or get_settings().device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(
                f"device {name!r} asked for but torch sees no CUDA device (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda}); "
                "set EO_DEVICE=auto or cpu."
            )
        return torch.device(name)
    raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")


#: The Prefect global concurrency limit that model inference on CUDA takes a slot of.
GPU_CONCURRENCY_LIMIT = "gpu"

_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def _device_lock(device: torch.device) -> threading.Lock:
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(str(device), threading.Lock())


@contextlib.contextmanager
def gpu_slot(device: torch.device, *, limit: str = GPU_CONCURRENCY_LIMIT) -> Iterator[None]:
    """Hold `device` for the block when it is a CUDA device; on CPU, nothing happens.

    Two guards, so that one GPU never runs two models at once (out-of-memory, thrashing):

    - a lock per device in this process: tile tasks that Prefect's default task runner runs in
      threads of one process take turns;
    - one slot of the Prefect global concurrency limit `limit` (``"gpu"``), held across
      processes and machines (Dask workers, several flow runs): create it once per Prefect
      server with ``prefect gcl create gpu --limit 1`` (the limit = the number of GPUs the
      workers share; with several GPUs give each Dask worker one, ``CUDA_VISIBLE_DEVICES``).

    When the limit does not exist, Prefect 3.8.8 does not create it (the server's
    ``create_if_missing`` is deprecated and ignored): with ``strict=False``, used here, it logs
    "Concurrency limits ['gpu'] do not exist - skipping acquisition." and the block runs guarded
    by the process lock only; ``strict=True`` would fail every CUDA task instead.
    """
    if device.type != "cuda":
        yield
        return
    with _device_lock(device), concurrency(limit, occupy=1, strict=False):
        yield


def _autocast(
    device: torch.device, mixed_precision: bool | None
) -> contextlib.AbstractContextManager[None]:
    if mixed_precision is None:
        mixed_precision = device.type == "cuda"
    if not mixed_precision:
        return contextlib.nullcontext()
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def _deterministic(device: torch.device, seed: int) -> Iterator[None]:
    """Fixed seed (for MC dropout) and, on CPU, deterministic algorithms; restored after."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@contextlib.contextmanager
def _inference_mode(model: nn.Module, mc_dropout: bool) -> Iterator[None]:
    """Eval mode (BatchNorm uses running statistics), dropout on for MC; restored after."""
    was = {m: m.training for m in model.modules()}
    model.eval()
    if mc_dropout:
        drops = [m for m in model.modules() if isinstance(m, _DROPOUT)]
        if not drops:
            raise InputError(f"{type(model).__name__} has no dropout layer: use mc_passes=0.")
        for d in drops:
            d.train()
    try:
        with torch.inference_mode():
            yield
    finally:
        for m, training in was.items():
            m.train(training)


# ---- inputs ----------------------------------------------------------------------------------
def _reflectance(x: xr.DataArray | xr.Dataset, name: str) -> xr.DataArray:
    if isinstance(x, xr.Dataset):
        if "reflectance" not in x:
            raise InputError(f"{name} is a Dataset without a 'reflectance' variable.")
        return x["reflectance"]
    if not isinstance(x, xr.DataArray):
        raise InputError(f"{name} must be an xarray DataArray or Dataset, got {type(x).__name__}.")
    return x


def _bands_of(da: xr.DataArray, name: str) -> list[str]:
    if "band" not in da.coords:
        raise InputError(f"{name} needs a 'band' coordinate naming its bands.")
    return [str(b) for b in da["band"].values]


def _prepare(
    da: xr.DataArray, spec: WeightsSpec, lead: tuple[str, ...], name: str, select_bands: bool
) -> xr.DataArray:
    dims = (*lead, "band", "y", "x")
    if set(da.dims) != set(dims):
        raise InputError(f"{name} must have dims {dims}; it has {da.dims}.")
    da = da.transpose(*dims)
    if select_bands:
        lacking = [b for b in spec.bands if b not in _bands_of(da, name)]
        if not lacking:
            da = da.sel(band=list(spec.bands))
    check_inputs(spec, _bands_of(da, name))
    return da


def _check_task(spec: WeightsSpec, task_name: Task) -> None:
    if spec.task != task_name:
        raise InputError(
            f"weights {spec.name!r} are for task {spec.task!r}, not {task_name!r}; "
            f"pick a {task_name} model."
        )


def _same_grid(a: xr.DataArray, b: xr.DataArray) -> None:
    if (a.sizes["y"], a.sizes["x"]) != (b.sizes["y"], b.sizes["x"]):
        raise InputError(
            f"before {a.sizes['y']}x{a.sizes['x']} and after {b.sizes['y']}x{b.sizes['x']} "
            "differ in size; composite both on one GridSpec."
        )
    for c in ("y", "x"):
        if c in a.coords and c in b.coords and not np.array_equal(a[c].values, b[c].values):
            raise InputError(f"before and after are on different grids ({c} coordinates differ).")


def _grid_coords(da: xr.DataArray) -> dict[str, Any]:
    """Coordinates on the (y, x) grid only (x, y, spatial_ref, ...)."""
    return {str(k): v.variable for k, v in da.coords.items() if set(v.dims) <= {"y", "x"}}


def _read_windows(sources: Sequence[xr.DataArray], windows: Sequence[Window]) -> np.ndarray:
    """``(len(windows), S, band, h, w)`` float32: the windows of every source, stacked on S.

    Each source has dims ``(..., band, y, x)`` with at most one leading dim. One
    ``dask.compute`` for all pieces, so chunks shared by neighbouring windows are read once.
    """
    pieces = []
    for w in windows:
        for src in sources:
            sub = src.isel(y=w.rows, x=w.cols)
            data = sub.data
            pieces.append(data if isinstance(data, dsa.Array) else sub.values)
    values = dask.compute(*pieces)
    out = []
    for i in range(len(windows)):
        parts = values[i * len(sources) : (i + 1) * len(sources)]
        out.append(np.concatenate([p.reshape(-1, *p.shape[-3:]) for p in parts], axis=0))
    return np.stack(out).astype(np.float32, copy=False)


@dataclass
class _Batch:
    windows: list[Window]
    x: np.ndarray  # (B, S, C, h, w) float32, normalized, invalid observations = 0
    observed: np.ndarray  # (B, S, h, w) bool, every band finite
    valid: np.ndarray  # (B, h, w) bool, the output is defined


def _make_batch(
    sources: Sequence[xr.DataArray],
    windows: list[Window],
    spec: WeightsSpec,
    valid_rule: Callable[[np.ndarray], np.ndarray],
) -> _Batch:
    raw = _read_windows(sources, windows)
    observed = np.isfinite(raw).all(axis=2)
    x = input_channels(raw, spec.bands, spec.indices, band_axis=2)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    x -= mean  # in place: `raw` (which `x` may be) is not needed any more
    x /= std
    np.copyto(x, np.float32(0), where=~(observed[:, :, None] & np.isfinite(x)))
    return _Batch(windows, x, observed, valid_rule(observed))


def model_inputs(
    spec: WeightsSpec, *sources: xr.DataArray | xr.Dataset, select_bands: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The whole grid of `sources` as the model sees it, in memory: ``x`` (S, C, y, x) float32,
    channels normalized with the spec's mean/std and 0 where not observed, and ``observed``
    (S, y, x) bool. Each source is ``(band, y, x)`` on one grid (run-time adaptation and the
    domain score read it; inference itself streams tiles)."""
    prepared = [
        _prepare(_reflectance(s, f"source {i}"), spec, (), f"source {i}", select_bands)
        for i, s in enumerate(sources)
    ]
    for other in prepared[1:]:
        _same_grid(prepared[0], other)
    height, width = prepared[0].sizes["y"], prepared[0].sizes["x"]
    batch = _make_batch(prepared, [Window(0, 0, height, width)], spec, _valid_all)
    return batch.x[0], batch.observed[0]


def _valid_all(observed: np.ndarray) -> np.ndarray:
    """Every date observed (change: both composites)."""
    return np.asarray(observed.all(axis=1))


def _valid_first(observed: np.ndarray) -> np.ndarray:
    """The single composite observed (footprint)."""
    return np.asarray(observed[:, 0])


def _valid_any(observed: np.ndarray) -> np.ndarray:
    """At least one year observed (dynamics)."""
    return np.asarray(observed.any(axis=1))


# ---- the engine ------------------------------------------------------------------------------
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x (B, S, C, h, w), missing (B, S, h, w) bool) -> probability (B, K, h, w)"""


def _batches(
    groups: Sequence[list[Window]], prepare: Callable[[list[Window]], _Batch], *, prefetch: bool
) -> Iterator[_Batch]:
    """Prepared batches in order; with `prefetch`, the next one is read in a background thread
    while the caller runs the current one (two batches in memory at most).

    Off by default on CPU: there the forward pass needs every core, and a reader thread next to
    torch's OpenMP threads slowed the whole run down (oversubscription, measured on 2 cores).
    """
    if not prefetch:
        for ws in groups:
            yield prepare(ws)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer-read") as pool:
        pending: Future[_Batch] | None = pool.submit(prepare, groups[0]) if groups else None
        for i in range(len(groups)):
            assert pending is not None
            batch = pending.result()
            pending = pool.submit(prepare, groups[i + 1]) if i + 1 < len(groups) else None
            yield batch


def _run(
    model: nn.Module,
    spec: WeightsSpec,
    sources: Sequence[xr.DataArray],
    *,
    forward: Forward,
    n_out: int,
    valid_rule: Callable[[np.ndarray], np.ndarray],
    tile: int,
    overlap: int,
    batch_size: int,
    device: str | torch.device | None,
    mc_passes: int,
    seed: int,
    mixed_precision: bool | None,
    prefetch: bool | None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Tiled inference; returns ``(probability (K, H, W), std or None, valid (H, W))``."""
    _check_tiling(tile, overlap, batch_size)
    if mc_passes < 0:
        raise InputError(f"mc_passes must be >= 0, got {mc_passes}.")
    dev = resolve_device(device)
    height, width = sources[0].sizes["y"], sources[0].sizes["x"]
    windows = tile_windows(height, width, tile=tile, overlap=overlap)
    batches = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    acc = np.zeros((n_out, height, width), dtype=np.float32)
    acc_sq = np.zeros_like(acc) if mc_passes else None
    wsum = np.zeros((height, width), dtype=np.float32)
    valid = np.zeros((height, width), dtype=bool)
    model.to(dev)
    log.debug("infer %s: %d tiles in %d batches on %s", spec.name, len(windows), len(batches), dev)

    def prepare(ws: list[Window]) -> _Batch:
        return _make_batch(sources, ws, spec, valid_rule)

    if prefetch is None:
        prefetch = dev.type == "cuda"
    with (
        _deterministic(dev, seed),
        _inference_mode(model, mc_dropout=mc_passes > 0),
        _autocast(dev, mixed_precision),
    ):
        for batch in _batches(batches, prepare, prefetch=prefetch):
            keep = np.flatnonzero(batch.valid.reshape(len(batch.windows), -1).any(axis=1))
            if keep.size == 0:
                continue  # no valid pixel in these tiles: nothing to predict
            everything = keep.size == len(batch.windows)
            xt = torch.from_numpy(batch.x if everything else batch.x[keep]).to(dev)
            mt = torch.from_numpy(~(batch.observed if everything else batch.observed[keep])).to(dev)
            if mc_passes:
                runs = torch.stack([forward(xt, mt).float() for _ in range(mc_passes)])
                prob = runs.mean(0).cpu().numpy()
                sq = runs.pow(2).mean(0).cpu().numpy()
            else:
                prob = forward(xt, mt).float().cpu().numpy()
            for j, b in enumerate(keep):
                w = batch.windows[b]
                weight = blend_weights(w, height, width, overlap=overlap)
                acc[:, w.rows, w.cols] += prob[j] * weight
                if acc_sq is not None:
                    acc_sq[:, w.rows, w.cols] += sq[j] * weight
                wsum[w.rows, w.cols] += weight
                valid[w.rows, w.cols] = batch.valid[b]
    covered = wsum > 0
    valid &= covered
    np.divide(acc, wsum, out=acc, where=covered)
    acc[:, ~valid] = np.nan
    std = None
    if acc_sq is not None:
        np.divide(acc_sq, wsum, out=acc_sq, where=covered)
        # Var = E[p²] - E[p]², blended the same way as the mean; clipped against rounding
        std = np.sqrt(np.clip(acc_sq - acc**2, 0.0, None, out=acc_sq), out=acc_sq)
    return acc, std, valid


def _attrs(spec: WeightsSpec, template: xr.DataArray, **extra: object) -> dict[str, object]:
    return {
        **template.attrs,
        "model": spec.name,
        "model_task": spec.task,
        "weights_sha256": spec.sha256 or "unsaved",
        "model_software_version": spec.software_version,
        "classes": list(spec.classes),
        "confidence_method": CONFIDENCE_METHOD,
        "temperature": spec.temperature,
        **extra,
    }


def _to_dataset(
    prob: np.ndarray,
    std: np.ndarray | None,
    valid: np.ndarray,
    dims: tuple[str, ...],
    coords: Mapping[str, Any],
    attrs: dict[str, Any],
) -> xr.Dataset:
    conf = np.maximum(prob, 1.0 - prob)  # NaN stays NaN
    data = {
        "probability": (dims, prob, {"long_name": "calibrated probability of the positive class"}),
        "confidence": (dims, conf, {"long_name": "probability of the predicted class"}),
        "valid": (("y", "x"), valid, {"long_name": "input observed: output defined"}),
    }
    if std is not None:
        data["uncertainty"] = (
            dims,
            np.where(np.isnan(prob), np.float32(np.nan), std),
            {"long_name": "standard deviation of the probability over MC-dropout passes"},
        )
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _binary(model: nn.Module, spec: WeightsSpec, n_inputs: int) -> Forward:
    t = spec.temperature

    def forward(x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        logits = model(*(x[:, i].contiguous() for i in range(n_inputs)))
        return torch.sigmoid(logits.float()[:, :1] / t)

    return forward


def predict_change(
    model: nn.Module,
    spec: WeightsSpec,
    before: xr.DataArray | xr.Dataset,
    after: xr.DataArray | xr.Dataset,
    *,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    mc_passes: int = 0,
    seed: int = 0,
    mixed_precision: bool | None = None,
    select_bands: bool = False,
    prefetch: bool | None = None,
) -> xr.Dataset:
    """Change probability between two composites ``(band, y, x)`` on one grid.

    `model`: ``model(before, after) -> logits (B, 1, y, x)`` (e.g. `models.changenet.FCSiamDiff`),
    `spec` its weights spec (task ``change``). Returns an ``xr.Dataset`` on the input's ``y``/``x``
    coords: ``probability`` (float32, P(change)), ``confidence``, ``valid``, and ``uncertainty``
    with `mc_passes`; NaN where either date has no valid observation. See the module docstring.
    """
    _check_task(spec, "change")
    b = _prepare(_reflectance(before, "before"), spec, (), "before", select_bands)
    a = _prepare(_reflectance(after, "after"), spec, (), "after", select_bands)
    _same_grid(b, a)
    prob, std, valid = _run(
        model,
        spec,
        [b, a],
        forward=_binary(model, spec, 2),
        n_out=1,
        valid_rule=_valid_all,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        mc_passes=mc_passes,
        seed=seed,
        mixed_precision=mixed_precision,
        prefetch=prefetch,
    )
    return _to_dataset(
        prob[0],
        None if std is None else std[0],
        valid,
        ("y", "x"),
        _grid_coords(b),
        _attrs(spec, b, tile=tile, overlap=overlap, mc_passes=mc_passes),
    )


def predict_footprint(
    model: nn.Module,
    spec: WeightsSpec,
    composite: xr.DataArray | xr.Dataset,
    *,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    mc_passes: int = 0,
    seed: int = 0,
    mixed_precision: bool | None = None,
    select_bands: bool = False,
    prefetch: bool | None = None,
) -> xr.Dataset:
    """Built-up probability of one composite ``(band, y, x)``.

    `model`: ``model(x) -> logits (B, 1, y, x)`` (e.g. `models.unet.UNet`), `spec` its weights
    spec (task ``footprint``). Returns ``probability`` (P(built-up)), ``confidence``, ``valid``
    (and ``uncertainty`` with `mc_passes`) on the input's grid. See the module docstring.
    """
    _check_task(spec, "footprint")
    da = _prepare(_reflectance(composite, "composite"), spec, (), "composite", select_bands)
    prob, std, valid = _run(
        model,
        spec,
        [da],
        forward=_binary(model, spec, 1),
        n_out=1,
        valid_rule=_valid_first,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        mc_passes=mc_passes,
        seed=seed,
        mixed_precision=mixed_precision,
        prefetch=prefetch,
    )
    return _to_dataset(
        prob[0],
        None if std is None else std[0],
        valid,
        ("y", "x"),
        _grid_coords(da),
        _attrs(spec, da, tile=tile, overlap=overlap, mc_passes=mc_passes),
    )


def predict_dynamics(
    model: nn.Module,
    spec: WeightsSpec,
    annual: xr.DataArray | xr.Dataset,
    *,
    tile: int = 128,
    overlap: int | None = None,
    batch_size: int = 8,
    threshold: float = URBAN_THRESHOLD,
    device: str | torch.device | None = None,
    mc_passes: int = 0,
    seed: int = 0,
    mixed_precision: bool | None = None,
    select_bands: bool = False,
    prefetch: bool | None = None,
    year_rule: YearRule = "window",
) -> xr.Dataset:
    """Built-up probability per year and year of urbanization from annual composites.

    `annual`: ``(year|period, band, y, x)``, labels calendar years (`tasks.composite.
    annual_composites` labels ``"1985"``, ...); years without observation are NaN. `model`:
    ``model(x (B, T, C, y, x), missing (B, T, y, x)) -> hazard logits (B, T, y, x)`` (e.g.
    `models.dynamics.PixelGRU`), `spec` its weights spec (task ``dynamics``).

    Returns ``probability`` and ``confidence`` ``(year, y, x)`` — P(built-up by that year),
    non-decreasing in time — ``urbanization_year`` (y, x) float32 (`urbanization_year` with
    `year_rule`: by default the centre of the most probable 3-year window of the year
    distribution; ``"median"``: the first year with ``probability >= threshold``; the first
    year itself when already built then; NaN when P(built by the last year) < `threshold`), and
    ``valid`` (at least one observed year).

    `overlap` defaults to 4 x the model's spatial context (``context`` in the spec's kwargs:
    pixels around each pixel that its input embedding reads; 0 for a per-pixel model, which
    needs no overlap), the margin at which blended tiles equal one full-frame pass.
    """
    _check_task(spec, "dynamics")
    if overlap is None:
        overlap = 4 * int(spec.kwargs.get("context", 0))
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold must be in (0, 1), got {threshold}.")
    _check_year_rule(year_rule)  # before the inference, not after it
    da = _reflectance(annual, "annual")
    dim, years = annual_axis(da)
    da = _prepare(da, spec, (dim,), "annual", select_bands)
    t = spec.temperature

    def forward(x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        return cumulative_probability(model(x, missing), temperature=t)

    prob, std, valid = _run(
        model,
        spec,
        [da],
        forward=forward,
        n_out=len(years),
        valid_rule=_valid_any,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        mc_passes=mc_passes,
        seed=seed,
        mixed_precision=mixed_precision,
        prefetch=prefetch,
    )
    year = urbanization_year(prob, years, threshold=threshold, rule=year_rule)
    ds = _to_dataset(
        prob,
        std,
        valid,
        ("year", "y", "x"),
        {**_grid_coords(da), "year": years},
        _attrs(
            spec,
            da,
            tile=tile,
            overlap=overlap,
            mc_passes=mc_passes,
            urban_threshold=threshold,
            year_rule=year_rule,
        ),
    )
    long_name = {
        "window": f"centre of the most probable 3-year window (P(built-up) >= {threshold} by "
        "the last year)",
        "median": f"first year with P(built-up) >= {threshold}",
    }[year_rule]
    ds["urbanization_year"] = (("y", "x"), year, {"long_name": long_name, "units": "year"})
    return ds


def _task_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger inside a run; this module's logger when called as ``.fn()``."""
    try:
        return get_run_logger()
    except MissingContextError:
        return log


# ---- Prefect tasks ---------------------------------------------------------------------------
# Inputs are composites (arrays): hashing them for a cache key would read them, so no caching.
# The "inference" tag lets a deployment cap concurrent GPU work with a tag concurrency limit.
@task(name="detect-change", cache_policy=NO_CACHE, persist_result=False, tags=["inference"])
def detect_change(
    before: xr.DataArray | xr.Dataset,
    after: xr.DataArray | xr.Dataset,
    *,
    model: str,
    weights_dir: Path | None = None,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 8,
    mc_passes: int = 0,
    device: str | None = None,
) -> xr.Dataset:
    """Prefect task: load weights `model` (sha256 checked) and run `predict_change`."""
    dev = resolve_device(device)
    with gpu_slot(dev):
        net, spec = load_model(model, device=dev, extra_dir=weights_dir)
        ds = predict_change(
            net,
            spec,
            before,
            after,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            mc_passes=mc_passes,
            device=device,
        )
    _task_logger().info(
        "change %s (sha256 %s): %d valid px", spec.name, spec.sha256, int(ds["valid"].sum())
    )
    return ds


@task(name="map-footprint", cache_policy=NO_CACHE, persist_result=False, tags=["inference"])
def map_footprint(
    composite: xr.DataArray | xr.Dataset,
    *,
    model: str,
    weights_dir: Path | None = None,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 8,
    mc_passes: int = 0,
    device: str | None = None,
) -> xr.Dataset:
    """Prefect task: load weights `model` (sha256 checked) and run `predict_footprint`."""
    dev = resolve_device(device)
    with gpu_slot(dev):
        net, spec = load_model(model, device=dev, extra_dir=weights_dir)
        ds = predict_footprint(
            net,
            spec,
            composite,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            mc_passes=mc_passes,
            device=device,
        )
    _task_logger().info(
        "footprint %s (sha256 %s): %d valid px", spec.name, spec.sha256, int(ds["valid"].sum())
    )
    return ds


@task(name="map-urban-dynamics", cache_policy=NO_CACHE, persist_result=False, tags=["inference"])
def map_urban_dynamics(
    annual: xr.DataArray | xr.Dataset,
    *,
    model: str,
    weights_dir: Path | None = None,
    tile: int = 128,
    batch_size: int = 8,
    threshold: float = URBAN_THRESHOLD,
    mc_passes: int = 0,
    device: str | None = None,
) -> xr.Dataset:
    """Prefect task: load weights `model` (sha256 checked) and run `predict_dynamics`."""
    dev = resolve_device(device)
    with gpu_slot(dev):
        net, spec = load_model(model, device=dev, extra_dir=weights_dir)
        ds = predict_dynamics(
            net,
            spec,
            annual,
            tile=tile,
            batch_size=batch_size,
            threshold=threshold,
            mc_passes=mc_passes,
            device=device,
        )
    _task_logger().info(
        "dynamics %s (sha256 %s): %d years, %d valid px",
        spec.name,
        spec.sha256,
        ds.sizes["year"],
        int(ds["valid"].sum()),
    )
    return ds

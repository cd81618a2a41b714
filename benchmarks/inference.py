"""Benchmark of the inference engine against a bare forward pass of the same model.

For each product model (random-init weights with the shipped architecture — the constructor
kwargs of the shipped spec: speed does not depend on training) one synthetic scene of
``--size`` x ``--size`` pixels is run two ways:

- engine: ``tasks.infer.predict_*`` on an in-memory ``xr.DataArray`` — input channels and
          spectral indices, normalization, NaN fill, tiles of ``--tile`` px overlapping by
          ``--overlap`` px (dynamics: 128 px, overlapping by the engine's default, 4 x the
          model's spatial context), batches of ``--batch``, blending,
          valid mask, confidence, output assembly; deterministic mode on CPU, autocast on CUDA;
- bare:   the model alone on the same pixels, already normalized and cut into non-overlapping
          tiles of the same size, stacked in batches already on the device (float32 on CPU,
          the same autocast as the engine on CUDA) — the floor any engine pays.

Throughput is megapixels of the scene per second, best of ``--repeat`` runs (bare and engine
alternate, so a change in machine load hits both). ``engine/bare`` is the throughput ratio
(1.0 = no overhead). The overlap alone makes the engine compute ``overlap work`` times more
pixels than the scene has (the count of tiles is ``ceil((n - overlap) / (tile - overlap))`` per
axis); ``per px`` = engine/bare x overlap work is the engine's speed per pixel it computes,
relative to the bare model (1.0 = no overhead besides the overlap).

    .venv/bin/python benchmarks/inference.py [--size 1024] [--years 20] [--repeat 3] [--cuda-only]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

import numpy as np
import torch
import xarray as xr

from models.dynamics import cumulative_probability
from models.features import input_channels
from models.registry import build_model, resolve
from models.spec import TrainingData, WeightsSpec
from models.training.recipes import MODEL_NAMES
from tasks.infer import predict_change, predict_dynamics, predict_footprint, tile_windows

BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")
INDICES = ("ndvi", "ndbi", "mndwi")


def make_spec(task: str, architecture: str) -> WeightsSpec:
    n = len(BANDS) + len(INDICES)
    return WeightsSpec(
        name=f"bench-{task}",
        task=task,  # type: ignore[arg-type]
        architecture=architecture,
        bands=BANDS,
        indices=INDICES,
        mean=(0.15,) * len(BANDS) + (0.0,) * len(INDICES),
        std=(0.1,) * len(BANDS) + (0.5,) * len(INDICES),
        classes=("negative", "positive"),
        training_data=TrainingData(source="none"),
        kwargs={**resolve(MODEL_NAMES[task])[0].kwargs, "in_channels": n},
    )


def scene(lead: tuple[int, ...], size: int, seed: int) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    data = rng.uniform(0.02, 0.4, (*lead, len(BANDS), size, size)).astype(np.float32)
    dims = (*(["year"] if lead else []), "band", "y", "x")
    coords: dict[str, object] = {"band": list(BANDS)}
    if lead:
        coords["year"] = list(range(2000, 2000 + lead[0]))
    return xr.DataArray(data, dims=dims, coords=coords)


def normalized(spec: WeightsSpec, raw: np.ndarray, band_axis: int) -> np.ndarray:
    x = input_channels(raw, spec.bands, spec.indices, band_axis=band_axis)
    shape = [1] * x.ndim
    shape[band_axis] = -1
    return ((x - np.reshape(spec.mean, shape)) / np.reshape(spec.std, shape)).astype(np.float32)


def tiles(x: np.ndarray, tile: int) -> np.ndarray:
    """(..., H, W) -> (n_tiles, ..., tile, tile), non-overlapping (H, W multiples of tile)."""
    h, w = x.shape[-2:]
    return np.stack(
        [x[..., i : i + tile, j : j + tile] for i in range(0, h, tile) for j in range(0, w, tile)]
    )


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def best_of_interleaved(
    a: Callable[[], object], b: Callable[[], object], repeat: int, device: torch.device
) -> tuple[float, float]:
    """Best times of `a` and `b`, run alternately after one warm-up each (cuDNN autotuning,
    lazy imports, allocator), so a machine whose load changes affects both alike."""
    a()
    b()
    ta, tb = float("inf"), float("inf")
    for _ in range(repeat):
        ta = min(ta, _timed(a, device))
        tb = min(tb, _timed(b, device))
    return ta, tb


def autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The engine's default precision: autocast on CUDA, float32 on CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def bare_runner(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, ...]],
    call: Call,
    device: torch.device,
) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode(), autocast(device):
            for inputs in batches:
                call(model, *inputs)

    return run


Call = Callable[..., torch.Tensor]
"""(model, *inputs of one batch) -> output"""


def setup(
    task: str,
    model: torch.nn.Module,
    spec: WeightsSpec,
    args: argparse.Namespace,
    device: torch.device,
    extra: float,
) -> tuple[Callable[[], object], np.ndarray, Call, float]:
    """(engine run, bare tiles (n, inputs, ..., tile, tile), bare call, overlap work)."""
    size, tile, overlap, bs = args.size, args.tile, args.overlap, args.batch
    if task == "change":
        before, after = scene((), size, 1), scene((), size, 2)

        def run_change() -> object:
            return predict_change(
                model, spec, before, after, tile=tile, overlap=overlap, batch_size=bs, device=device
            )

        x = np.stack([normalized(spec, before.values, 0), normalized(spec, after.values, 0)])
        return run_change, tiles(x, tile), lambda m, b, a: m(b, a), extra
    if task == "footprint":
        comp = scene((), size, 1)

        def run_footprint() -> object:
            return predict_footprint(
                model, spec, comp, tile=tile, overlap=overlap, batch_size=bs, device=device
            )

        t = tiles(normalized(spec, comp.values, 0), tile)[:, None]
        return run_footprint, t, lambda m, x: m(x), extra
    annual = scene((args.years,), size, 1)

    def run_dynamics() -> object:
        return predict_dynamics(model, spec, annual, tile=128, batch_size=bs, device=device)

    def call(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return cumulative_probability(m(x, None))

    t = tiles(normalized(spec, annual.values, 1), 128)[:, None]
    halo = 4 * int(spec.kwargs.get("context", 0))  # predict_dynamics' default overlap
    n = len(tile_windows(size, size, tile=128, overlap=halo))
    return run_dynamics, t, call, n * 128 * 128 / (size * size)


def bench(args: argparse.Namespace, device: torch.device) -> None:
    size, tile, overlap, bs = args.size, args.tile, args.overlap, args.batch
    if size % tile or size % 128:
        raise SystemExit("--size must be a multiple of --tile and of 128")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n== {device} ({name}), torch threads {torch.get_num_threads()}")
    print(
        f"{'model':<22}{'engine Mpx/s':>13}{'bare Mpx/s':>12}{'engine/bare':>13}"
        f"{'overlap work':>14}{'per px':>8}"
    )
    mpx = size * size / 1e6
    n_tiles = len(tile_windows(size, size, tile=tile, overlap=overlap))
    extra = n_tiles * tile * tile / (size * size)

    cases: list[tuple[str, str, str]] = [
        ("change", "fc_siam_diff", "FC-Siam-diff"),
        ("footprint", "unet", "U-Net"),
        ("dynamics", "pixel_gru", f"PixelGRU ({args.years} y)"),  # as shipped: see the spec
    ]
    for task, arch, label in cases:
        torch.manual_seed(0)
        spec = make_spec(task, arch)
        model = build_model(spec).to(device).eval()
        run_engine, t, call, work = setup(task, model, spec, args, device, extra)
        # one contiguous tensor per model input (before, after) and batch, already on the device
        batches = [
            tuple(
                torch.from_numpy(np.ascontiguousarray(t[i : i + bs, k])).to(device)
                for k in range(t.shape[1])
            )
            for i in range(0, len(t), bs)
        ]
        t_bare, t_engine = best_of_interleaved(
            bare_runner(model, batches, call, device), run_engine, args.repeat, device
        )
        print(
            f"{label:<22}{mpx / t_engine:>13.3f}{mpx / t_bare:>12.3f}"
            f"{t_bare / t_engine:>13.2f}{work:>14.2f}{work * t_bare / t_engine:>8.2f}"
        )
        del batches
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="rows = cols of the scene")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--years", type=int, default=20, help="annual composites (dynamics)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cuda-only", action="store_true", help="skip the CPU run")
    args = ap.parse_args()
    print(
        f"scene {args.size} x {args.size} px, {len(BANDS)} bands + {len(INDICES)} indices; "
        f"tile {args.tile}, overlap {args.overlap}, batch {args.batch}"
    )
    if not args.cuda_only:
        bench(args, torch.device("cpu"))
    if torch.cuda.is_available():
        bench(args, torch.device("cuda"))
    else:
        print("\n(no CUDA device: CPU only)")


if __name__ == "__main__":
    main()

"""Benchmark of the co-registration stage: `estimate_shift` vs arosics (COREG, global shift).

Data: the arosics test pair (Sentinel-2A, 10 m, one band, tile T33UUU; the target has a cloudy
area), read from ``../shared/realdata/GFZ+arosics/tests/data/testcase_inter1_S2A_S2A`` beside
the repository (or ``--data``). Two measurements:

- known shifts: a cloud-free ``--crop`` px crop of the reference image is shifted by
  ``--n-shifts`` random sub-pixel amounts in [-2, 2] px (Fourier shift, exact for a band-limited
  image) and each shifted copy is matched against the unshifted crop. Error = estimate - truth.
- the real pair: the target against the reference over their whole overlap (no ground truth:
  the two estimates are compared with each other).

Contestants, timed on in-memory arrays (file reading excluded on both sides):

- ours:    ``tasks.coregister.estimate_shift`` with its defaults (128 px windows, 50 % overlap,
           up to 49 windows, masked + band-limited phase correlation, robust combination); also
           "ours-1win": one 256 px window, the same amount of data arosics looks at;
- arosics: ``arosics.COREG(ref, tgt, ws=(256, 256)).calculate_spatial_shifts()`` (one window,
           iterative phase correlation, arosics 1.12). arosics needs GDAL's Python bindings and
           numpy<2, so it runs in its own venv (`benchmarks/setup_coreg_peer.sh` builds
           ``.venv-arosics``) as a subprocess; imports happen before the clock starts.

Shifts are printed in our convention (displacement of the target's content in rows/cols:
``target(r, c) = reference(r - dy, c - dx)``); arosics' ``x_shift_px``/``y_shift_px`` are the
correction, minus ours. Without arosics the benchmark says so and prints our figures only.

    .venv/bin/python benchmarks/coregister.py [--n-shifts 8] [--crop 512] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window, from_bounds
from scipy import ndimage

from tasks.coregister import MIN_WINDOWS, estimate_shift

REPO_ROOT = Path(__file__).resolve().parents[1]
PAIR_DIR = (
    REPO_ROOT
    / ".."
    / "shared"
    / "realdata"
    / "GFZ+arosics"
    / "tests"
    / "data"
    / "testcase_inter1_S2A_S2A"
)
AROSICS_PYTHON = REPO_ROOT / ".venv-arosics" / "bin" / "python"
REF_NAME = "ref_S2A_20160608T153121_T33UUU_sub.jp2"
TGT_NAME = "tgt_S2A_20160529T153631_T33UUU_sub.jp2"
#: Top-left (row, col) of the known-shift crop in the overlap grid: farmland, cloud-free in both.
CROP_ORIGIN = (1200, 600)
#: Margin around the crop so that the Fourier shift's wrap-around stays outside it.
MARGIN = 32

# Runs inside the arosics venv: reads a job list (JSON), prints one JSON result per job.
AROSICS_RUNNER = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
from arosics import COREG
from geoarray import GeoArray
jobs = json.load(open(sys.argv[1]))
out = []
for job in jobs:
    ref = GeoArray(job["ref"]); tgt = GeoArray(job["tgt"])
    ref.to_mem(); tgt.to_mem()
    seconds = float("inf")
    for _ in range(job["repeat"]):  # best of `repeat`
        t0 = time.perf_counter()
        cr = COREG(ref, tgt, ws=(256, 256), nodata=tuple(job["nodata"]), q=True, ignore_errors=True)
        cr.calculate_spatial_shifts()
        seconds = min(seconds, time.perf_counter() - t0)
    ok = cr.success and cr.x_shift_px is not None
    out.append({
        "x_shift_px": float(cr.x_shift_px) if ok else None,
        "y_shift_px": float(cr.y_shift_px) if ok else None,
        "seconds": seconds,
        "success": bool(ok),
        "win_pos_xy": [float(v) for v in cr.win_pos_XY] if ok else None,
    })
print(json.dumps(out))
"""


@dataclass
class Result:
    dy: float
    dx: float
    seconds: float
    window_xy: tuple[float, float] | None = None  # arosics' matching window centre (map x, y)


def read_overlap(data_dir: Path) -> tuple[np.ndarray, np.ndarray, rasterio.Affine]:
    """Both images on their common overlap (same 10 m grid), float64, NaN where DN == 0."""
    with rasterio.open(data_dir / REF_NAME) as ref, rasterio.open(data_dir / TGT_NAME) as tgt:
        left = max(ref.bounds.left, tgt.bounds.left)
        bottom = max(ref.bounds.bottom, tgt.bounds.bottom)
        right = min(ref.bounds.right, tgt.bounds.right)
        top = min(ref.bounds.top, tgt.bounds.top)
        ref_win = from_bounds(left, bottom, right, top, ref.transform).round_offsets()
        tgt_win = from_bounds(left, bottom, right, top, tgt.transform).round_offsets()
        shape = (round(ref_win.height), round(ref_win.width))
        ref_win = Window(ref_win.col_off, ref_win.row_off, shape[1], shape[0])
        tgt_win = Window(tgt_win.col_off, tgt_win.row_off, shape[1], shape[0])
        a = ref.read(1, window=ref_win).astype(np.float64)
        b = tgt.read(1, window=tgt_win).astype(np.float64)
        transform = ref.window_transform(ref_win)
    a[a == 0] = np.nan  # DN 0 = no data in Sentinel-2 products (ESA PSD)
    b[b == 0] = np.nan
    return a, b, transform


def fourier_shift(img: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """`img` with its content displaced by `shift` (rows, cols), periodic boundary."""
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(img), shift)).real


def write_tif(path: Path, img: np.ndarray, transform: rasterio.Affine, nodata: float) -> None:
    profile = {
        "driver": "GTiff",
        "height": img.shape[0],
        "width": img.shape[1],
        "count": 1,
        "dtype": "float32",
        "crs": "EPSG:32633",
        "transform": transform,
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.where(np.isfinite(img), img, nodata).astype(np.float32), 1)


def run_ours(
    ref: np.ndarray,
    tgt: np.ndarray,
    *,
    window: int | None = None,
    min_windows: int = MIN_WINDOWS,
    repeat: int = 1,
) -> Result:
    """Our estimate and its best time of `repeat` runs."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        est = estimate_shift(ref, tgt, window=window, min_windows=min_windows)
        best = min(best, time.perf_counter() - t0)
    return Result(est.dy, est.dx, best)


def run_arosics(jobs: list[dict[str, object]], workdir: Path) -> list[Result | None] | str:
    """arosics results per job, or the reason it could not run."""
    if not AROSICS_PYTHON.exists():
        return (
            f"arosics venv not found ({AROSICS_PYTHON.relative_to(REPO_ROOT)}); "
            "build it with: bash benchmarks/setup_coreg_peer.sh"
        )
    runner = workdir / "arosics_runner.py"
    runner.write_text(AROSICS_RUNNER)
    job_file = workdir / "jobs.json"
    job_file.write_text(json.dumps(jobs))
    proc = subprocess.run(
        [str(AROSICS_PYTHON), str(runner), str(job_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if proc.returncode != 0:
        return f"arosics failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    # arosics reports the correction: x_shift_px = -dx, y_shift_px = -dy (our convention).
    return [
        Result(-r["y_shift_px"], -r["x_shift_px"], r["seconds"], tuple(r["win_pos_xy"]))
        if r["success"]
        else None
        for r in rows
    ]


def window_correlation(ref: np.ndarray, tgt: np.ndarray, dy: float, dx: float) -> float:
    """Pearson r of `ref` and `tgt` moved back by (dy, dx) (cubic spline), 8 px border left out."""
    moved = ndimage.shift(np.nan_to_num(tgt), (-dy, -dx), order=3, mode="nearest")
    a, b = ref[8:-8, 8:-8].ravel(), moved[8:-8, 8:-8].ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def rmse(errors: list[tuple[float, float]]) -> float:
    e = np.asarray(errors, dtype=float)
    return float(np.sqrt(np.mean(np.sum(e**2, axis=1))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=PAIR_DIR, help="folder with the arosics pair")
    ap.add_argument("--n-shifts", type=int, default=8)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timings are the best of this many runs")
    args = ap.parse_args()

    if not (args.data / REF_NAME).exists():
        print(f"SKIPPED: the arosics test pair is not at {args.data} (../shared absent?)")
        return 0
    ref_full, tgt_full, transform = read_overlap(args.data)
    r0, c0 = CROP_ORIGIN
    n, m = args.crop, MARGIN
    base = ref_full[r0 - m : r0 + n + m, c0 - m : c0 + n + m]
    if base.shape != (n + 2 * m, n + 2 * m) or not np.isfinite(base).all():
        print(f"--crop {n} does not fit a cloud-free area at {CROP_ORIGIN}; choose a smaller crop")
        return 2
    ref_crop = base[m:-m, m:-m]
    crop_transform = transform * rasterio.Affine.translation(c0, r0)
    rng = np.random.default_rng(args.seed)
    truths = [tuple(float(v) for v in rng.uniform(-2, 2, 2)) for _ in range(args.n_shifts)]
    moved = [fourier_shift(base, (dy, dx))[m:-m, m:-m] for dy, dx in truths]

    estimate_shift(ref_crop, moved[0])  # warm-up (imports, FFT plans)
    ours = [run_ours(ref_crop, t, repeat=args.repeat) for t in moved]
    centre = slice((n - 256) // 2, (n - 256) // 2 + 256)
    ours_1win = [
        run_ours(
            ref_crop[centre, centre],
            t[centre, centre],
            window=256,
            min_windows=1,
            repeat=args.repeat,
        )
        for t in moved
    ]
    ours_real = run_ours(ref_full, tgt_full, repeat=args.repeat)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        jobs: list[dict[str, object]] = []
        write_tif(work / "ref.tif", ref_crop, crop_transform, -9999.0)
        for i, img in enumerate(moved):
            write_tif(work / f"tgt{i}.tif", img, crop_transform, -9999.0)
            jobs.append(
                {
                    "ref": str(work / "ref.tif"),
                    "tgt": str(work / f"tgt{i}.tif"),
                    "nodata": [-9999.0, -9999.0],
                    "repeat": args.repeat,
                }
            )
        jobs.append(
            {
                "ref": str(args.data / REF_NAME),
                "tgt": str(args.data / TGT_NAME),
                "nodata": [0, 0],
                "repeat": args.repeat,
            }
        )
        t0 = time.perf_counter()
        peer = run_arosics(jobs, work)
        peer_wall = time.perf_counter() - t0

    print(f"known shifts: {args.n_shifts} Fourier shifts in [-2, 2] px of a {n}x{n} px crop")
    header = f"{'truth dy,dx':>16} | {'ours dy,dx':>16} {'err':>6} {'s':>5} | "
    header += f"{'1win err':>8} {'s':>5} | {'arosics dy,dx':>16} {'err':>6} {'s':>5}"
    print(header)
    err_ours, err_1win, err_peer = [], [], []
    for i, (truth, est, one) in enumerate(zip(truths, ours, ours_1win, strict=True)):
        e = (est.dy - truth[0], est.dx - truth[1])
        e1 = (one.dy - truth[0], one.dx - truth[1])
        err_ours.append(e)
        err_1win.append(e1)
        line = (
            f"{truth[0]:+7.3f},{truth[1]:+7.3f} | {est.dy:+7.3f},{est.dx:+7.3f} "
            f"{math.hypot(*e):6.3f} {est.seconds:5.2f} | "
            f"{math.hypot(*e1):8.3f} {one.seconds:5.2f} | "
        )
        if isinstance(peer, list) and peer[i] is not None:
            p = peer[i]
            assert p is not None
            ep = (p.dy - truth[0], p.dx - truth[1])
            err_peer.append(ep)
            line += f"{p.dy:+7.3f},{p.dx:+7.3f} {math.hypot(*ep):6.3f} {p.seconds:5.2f}"
        else:
            line += "n/a"
        print(line)

    t_ours = float(np.mean([r.seconds for r in ours]))
    t_1win = float(np.mean([r.seconds for r in ours_1win]))
    print()
    print(f"ours      RMSE {rmse(err_ours):.4f} px   mean time {t_ours:.3f} s")
    print(f"ours-1win RMSE {rmse(err_1win):.4f} px   mean time {t_1win:.3f} s")
    if isinstance(peer, str):
        print(f"arosics   NOT RUN: {peer}")
    else:
        t_peer = float(np.mean([r.seconds for r in peer[:-1] if r is not None]))
        failed = sum(r is None for r in peer[:-1])
        print(
            f"arosics   RMSE {rmse(err_peer):.4f} px   mean time {t_peer:.3f} s"
            + (f"   ({failed} failed)" if failed else "")
            + f"   (subprocess wall {peer_wall:.1f} s incl. imports)"
        )
        print(
            f"ratio ours/arosics: RMSE {rmse(err_ours) / rmse(err_peer):.2f}x, "
            f"time {t_ours / t_peer:.1f}x;  ours-1win/arosics: RMSE "
            f"{rmse(err_1win) / rmse(err_peer):.2f}x, time {t_1win / t_peer:.1f}x"
        )

    print()
    print(f"real pair (overlap {ref_full.shape[0]}x{ref_full.shape[1]} px, target partly cloudy):")
    print(f"ours     dy {ours_real.dy:+.3f} dx {ours_real.dx:+.3f} px  {ours_real.seconds:.2f} s")
    if isinstance(peer, list) and peer[-1] is not None:
        p = peer[-1]
        print(f"arosics  dy {p.dy:+.3f} dx {p.dx:+.3f} px  {p.seconds:.2f} s (one 256 px window)")
        if p.window_xy is not None:
            # Ours on arosics' own 256 px window: the same pixels, so a like-for-like figure.
            col, row = ~transform * p.window_xy
            r0, c0 = round(row) - 128, round(col) - 128
            same = run_ours(
                ref_full[r0 : r0 + 256, c0 : c0 + 256],
                tgt_full[r0 : r0 + 256, c0 : c0 + 256],
                window=256,
                min_windows=1,
                repeat=args.repeat,
            )
            print(
                f"ours-1win dy {same.dy:+.3f} dx {same.dx:+.3f} px  {same.seconds:.2f} s "
                f"(arosics' window, centre row {row:.0f} col {col:.0f}); difference to arosics "
                f"{math.hypot(same.dy - p.dy, same.dx - p.dx):.3f} px"
            )
            # No truth for the real pair: which correction makes the two images agree better?
            ref_w = ref_full[r0 : r0 + 256, c0 : c0 + 256]
            tgt_w = tgt_full[r0 : r0 + 256, c0 : c0 + 256]
            print(
                "correlation of the window after correcting by: none "
                f"{window_correlation(ref_w, tgt_w, 0.0, 0.0):.4f}, ours "
                f"{window_correlation(ref_w, tgt_w, same.dy, same.dx):.4f}, arosics "
                f"{window_correlation(ref_w, tgt_w, p.dy, p.dx):.4f}"
            )
        print(
            "difference ours - arosics: "
            f"{math.hypot(ours_real.dy - p.dy, ours_real.dx - p.dx):.3f} px"
        )
    elif isinstance(peer, list):
        print("arosics  failed on the real pair")
    return 0


if __name__ == "__main__":
    sys.exit(main())

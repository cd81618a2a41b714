"""Benchmark of the cloud-mask stage: `mask_stack` vs a bare numpy bit test (the floor).

A synthetic Landsat stack (time x band x rows x cols float32 reflectance + a ``qa_pixel`` band
with real Collection 2 codes: clear land, cloud, shadow, dilated cloud, fill) is masked two ways:

- ours:  ``tasks.cloudmask.mask_stack(stack)`` then ``.compute()`` of the masked reflectance and
         its clear fractions (the clear-fraction pass, scene screening, the mask applied, the
         mask bands dropped), dask threaded scheduler; also with ``buffer_m=60`` (a 2-pixel
         disk dilation through ``map_overlap``);
- floor: in memory, ``(qa & flags) == 0`` on the uint16 array and ``np.where`` over the
         reflectance — no footprint, no fractions, no buffer, no laziness.

Throughput is input megapixels (scenes x rows x cols) per second, best of ``--repeat``.

    .venv/bin/python benchmarks/cloudmask.py [--size 1024] [--time 24] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from tasks.cloudmask import mask_stack

BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")
# Landsat 8 C2 QA_PIXEL codes: clear land, cloud, cloud shadow, dilated cloud, fill.
QA_CODES = np.array([21824, 22280, 23888, 21826, 1], np.uint16)
QA_WEIGHTS = np.array([0.6, 0.2, 0.08, 0.07, 0.05])
FLAGS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4)  # fill, dilated, cirrus, cloud, shadow


def best_of(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--time", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    t, n = args.time, args.size
    refl = rng.uniform(0.01, 0.5, (t, len(BANDS), n, n)).astype(np.float32)
    qa = rng.choice(QA_CODES, size=(t, n, n), p=QA_WEIGHTS)
    data = np.concatenate([refl, qa[:, None].astype(np.float32)], axis=1)
    stack = xr.DataArray(
        da.from_array(data, chunks=(1, 1, 512, 512)),
        dims=("time", "band", "y", "x"),
        coords={
            "time": pd.date_range("2021-01-01", periods=t, freq="8D").values,
            "band": [*BANDS, "qa_pixel"],
            "y": 5e6 - 30.0 * (np.arange(n) + 0.5),
            "x": 4e5 + 30.0 * (np.arange(n) + 0.5),
            "id": ("time", [f"LC08_{i}" for i in range(t)]),
            "platform": ("time", ["landsat-8"] * t),
        },
    )
    threads = os.cpu_count() or 1
    mpx = t * n * n / 1e6
    print(f"stack: {t} scenes x {len(BANDS)}+1 bands x {n}^2 px ({data.nbytes / 2**20:.0f} MiB)")

    def floor() -> np.ndarray:
        ok = (qa & FLAGS) == 0
        return np.where(ok[:, None], refl, np.float32(np.nan))

    def ours(buffer_m: float) -> Callable[[], object]:
        def run() -> object:
            with dask.config.set(scheduler="threads", num_workers=threads):
                masked, _ = mask_stack(stack, min_clear_fraction=0.0, buffer_m=buffer_m)
                return masked.compute()

        return run

    t_floor = best_of(floor, args.repeat)
    t_ours = best_of(ours(0.0), args.repeat)
    t_buf = best_of(ours(60.0), args.repeat)
    expected = floor()
    got = ours(0.0)()
    assert isinstance(got, xr.DataArray)
    same = np.array_equal(np.isnan(got.values), np.isnan(expected))

    print(f"floor  numpy bit test + where : {mpx / t_floor:8.1f} Mpx/s ({t_floor:.2f} s)")
    print(f"ours   mask_stack             : {mpx / t_ours:8.1f} Mpx/s ({t_ours:.2f} s)")
    print(f"ours   mask_stack buffer 60 m : {mpx / t_buf:8.1f} Mpx/s ({t_buf:.2f} s)")
    print(f"ratio ours/floor (throughput) : {t_floor / t_ours:8.2f}x   same mask: {same}")


if __name__ == "__main__":
    main()

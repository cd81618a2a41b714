"""Benchmark of the publish stage: atomic, verified COG + GeoParquet + STAC vs a plain-write floor.

One synthetic change product (``--size`` x ``--size`` pixels of 10 m, 4 float32 bands:
probability, binary, confidence, count; its polygons) is written three ways to a local folder:

- ours:   ``tasks.publish.publish_product``: COG (rio-cogeo, DEFLATE, overviews), GeoParquet 1.1
          with bbox covering, staged under ``.tmp/``, read back and sha256-checked, moved into
          place, STAC Item + collection + index;
- floor:  ``rasterio`` writing a plain tiled DEFLATE GeoTIFF (no overviews) and
          ``GeoDataFrame.to_parquet`` straight to their final paths: no staging, no
          verification, no metadata;
- rerun:  ``publish_product`` again with the same inputs (verifies the checksums, writes nothing).

Prints seconds (best of ``--repeat``) and the ratios floor/ours and floor/rerun (> 1 = faster
than the floor). ``--s3`` runs ours against a moto S3 server on 127.0.0.1 as well.

    .venv/bin/python benchmarks/publish.py [--size 1024] [--repeat 3] [--s3]
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from tasks.aoi import GridSpec
from tasks.publish import publish_product
from tasks.settings import get_settings
from tasks.vectorize import change_polygons


def make_product(size: int, seed: int = 0) -> tuple[GridSpec, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    grid = GridSpec(
        epsg=32633,
        resolution=10.0,
        bounds=(400_000, 5_800_000 - size * 10.0, 400_000 + size * 10.0, 5_800_000),
    )
    prob = rng.random((size, size)).astype(np.float32) * 0.4
    for _ in range(size // 16):  # changed squares
        r, c = rng.integers(0, size - 12, 2)
        prob[r : r + 12, c : c + 12] = 0.9
    return grid, {
        "probability": prob,
        "binary": (prob >= 0.5).astype(np.float32),
        "confidence": np.maximum(prob, 1 - prob),
        "count": rng.integers(0, 30, (size, size)).astype(np.float32),
    }


def best_of(fn: Callable[[int], object], repeat: int) -> float:
    best = float("inf")
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(i)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="rows = cols of the product")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--s3", action="store_true", help="also publish to a moto S3 server")
    args = ap.parse_args()

    grid, bands = make_product(args.size)
    vectors = change_polygons(
        bands["probability"],
        grid,
        start="2020-01-01",
        end="2021-01-01",
        confidence=bands["confidence"],
    )
    common: dict[str, Any] = {
        "grid": grid,
        "scene_ids": ["a", "b"],
        "model": "bench",
        "start": "2020-01-01",
        "end": "2021-01-01",
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def ours(i: int, url: str | None = None) -> object:
            return publish_product(
                "change",
                bands,
                vectors,
                params={"run": i},
                output_url=url or str(root / "ours"),
                **common,
            )

        def floor(i: int) -> None:
            out = root / "floor" / str(i)
            out.mkdir(parents=True)
            profile = {
                "driver": "GTiff",
                "width": args.size,
                "height": args.size,
                "count": 4,
                "dtype": "float32",
                "crs": grid.crs,
                "transform": grid.transform,
                "tiled": True,
                "blockxsize": 512,
                "blockysize": 512,
                "compress": "deflate",
            }
            with rasterio.open(out / "p.tif", "w", **profile) as dst:
                dst.write(np.stack(list(bands.values())))
            vectors.to_parquet(out / "p.parquet")

        t_ours = best_of(ours, args.repeat)
        t_floor = best_of(floor, args.repeat)
        t_rerun = best_of(lambda i: ours(0), args.repeat)
        print(f"product {args.size}x{args.size} px, 4 bands, {len(vectors)} polygons")
        print(f"ours  (COG+GeoParquet+STAC, staged, verified): {t_ours:7.3f} s")
        print(f"floor (plain GeoTIFF + parquet):                {t_floor:7.3f} s")
        print(f"rerun (verify checksums, write nothing):        {t_rerun:7.3f} s")
        print(f"ratio floor/ours  = {t_floor / t_ours:.2f}")
        print(f"ratio floor/rerun = {t_floor / t_rerun:.2f}")

        if args.s3:
            import s3fs
            from moto.server import ThreadedMotoServer

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            try:
                os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
                os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
                endpoint = f"http://127.0.0.1:{port}"
                os.environ["EO_S3_ENDPOINT_URL"] = endpoint
                get_settings.cache_clear()
                s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir("bench")
                t_s3 = best_of(lambda i: ours(i, "s3://bench/p"), args.repeat)
                print(f"ours to moto S3:                                {t_s3:7.3f} s")
                print(f"ratio local/S3    = {t_ours / t_s3:.2f}")
            finally:
                server.stop()


if __name__ == "__main__":
    main()

"""Benchmark: create the demo synthetic archive and compare with the I/O floor.

The floor writes the same number of same-sized arrays (random values of the same dtype) with
rasterio's COG driver and the archive's creation options, in this one process: the cost of
the files alone, without simulating anything. The ratio says what the simulation adds.

Run: ``.venv/bin/python benchmarks/archive.py [--workers N]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from tasks.aoi import GridSpec
from tasks.synthetic import DEMO_CONFIG, create_archive
from tasks.synthetic.writer import write_cog  # the archive's own COG options


def _rasters(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.tif") if "data" in p.parts or "clouds" in p.parts)


def _floor(rasters: list[Path], folder: Path) -> tuple[float, int]:
    """Seconds to write arrays shaped like `rasters` as COGs; total pixels written."""
    rng = np.random.default_rng(0)
    jobs = []
    for path in rasters:
        with rasterio.open(path) as src:
            jobs.append((src.shape, src.dtypes[0], src.crs, src.transform, src.res[0]))
    start = time.perf_counter()
    pixels = 0
    for i, (shape, dtype, crs, transform, res) in enumerate(jobs):
        array = rng.integers(1, np.iinfo(dtype).max, size=shape, dtype=dtype)
        bounds = rasterio.transform.array_bounds(shape[0], shape[1], transform)
        grid = GridSpec(crs.to_epsg(), res, (bounds[0], bounds[1], bounds[2], bounds[3]))
        write_cog(folder / f"{i}.tif", array, grid, 0, "average")
        pixels += shape[0] * shape[1]
    return time.perf_counter() - start, pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="default: min(2, CPUs)")
    args = parser.parse_args()
    workers = args.workers or min(2, os.cpu_count() or 1)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        info = create_archive(Path(tmp) / "demo", DEMO_CONFIG, workers=workers)
        seconds = time.perf_counter() - start
        rasters = _rasters(info.root)
        floor_dir = Path(tmp) / "floor"
        floor_dir.mkdir()
        floor_seconds, pixels = _floor(rasters, floor_dir)

    mpx = pixels / 1e6
    per_collection = ", ".join(f"{c} {n}" for c, n in info.n_items.items())
    print(f"synthetic archive: DEMO_CONFIG, workers={workers}, {os.cpu_count()} CPUs")
    print(f"  created in        {seconds:8.1f} s")
    print(f"  items             {sum(info.n_items.values()):8d}   ({per_collection})")
    print(
        f"  rasters written   {len(rasters):8d}   files, {mpx:.1f} Mpx -> {mpx / seconds:.2f} Mpx/s"
    )
    print(
        f"  I/O floor         {floor_seconds:8.1f} s   same {len(rasters)} arrays, random values, "
        f"rasterio COG driver, 1 process -> {mpx / floor_seconds:.2f} Mpx/s"
    )
    print(f"  ratio             {seconds / floor_seconds:8.2f} x  (archive time / I/O floor time)")


if __name__ == "__main__":
    main()

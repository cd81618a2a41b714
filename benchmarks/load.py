"""Benchmark of the load stage: our loader vs odc-stac vs a raw rasterio floor.

The same Sentinel-2 items (10 m bands, one UTM zone, on their native 10 m grid so that no method
reprojects) are read three ways and materialised:

- ours:  ``tasks.load.load(...).compute()`` (stackstac + per-scene scale/offset/nodata)
- odc:   ``odc.stac.load(...)`` on the same normalised items, then the same scale/offset/nodata
- floor: rasterio windowed reads of the grid's window of every asset, scale/offset applied, in a
         thread pool of the same size as dask's (the least work any loader must do)

Both dask-based loaders run under dask's threaded scheduler with the same number of threads and
the same 1024 px chunks. Throughput is output pixels (scenes x bands x rows x cols) per second,
best of ``--repeat`` runs after one warm-up (so the OS file cache is warm for all three). The three
results are also compared pixel by pixel.

Items come from the synthetic archive (``tasks.synthetic``) when it is importable and works,
otherwise from COGs this script writes itself (``--source cogs``). Run:

    .venv/bin/python benchmarks/load.py [--source auto|synthetic|cogs] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dask
import numpy as np
import odc.stac
import pyproj
import pystac
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio.windows import from_bounds

from tasks.aoi import GridSpec
from tasks.load import load
from tasks.refs import SceneRef
from tasks.sensors import normalize_item, resolve_item

BANDS = ("blue", "green", "red", "nir")  # Sentinel-2's 10 m bands: native on a 10 m grid


# ---- item sources ----------------------------------------------------------------------------


def synthetic_items(root: Path, years: int) -> list[dict[str, Any]]:
    """Sentinel-2 items of a demo-sized synthetic archive (the last `years` years only)."""
    from tasks.synthetic import archive_items, create_archive
    from tasks.synthetic.config import DEMO_CONFIG

    end = DEMO_CONFIG.end_year
    config = DEMO_CONFIG.model_copy(
        update={
            "landsat_years": None,
            "platforms": ("sentinel-2a", "sentinel-2b"),
            "sentinel2_years": (end - years + 1, end),
        }
    )
    create_archive(root, config)
    items = [dict(i) for i in archive_items(root)]
    return [i for i in items if resolve_item(i).family == "sentinel-2"]


def write_cog_items(root: Path, n_scenes: int, size: int) -> list[dict[str, Any]]:
    """`n_scenes` Earth Search v1 style Sentinel-2 items, `size`² px 10 m COGs (DEFLATE, 512 px
    tiles, overviews), smooth fields plus noise so that compression is realistic."""
    rng = np.random.default_rng(0)
    x0, y0, epsg = 600_000.0, 5_700_000.0, 32632
    transform = Affine(10, 0, x0, 0, -10, y0)
    yy, xx = np.mgrid[0:size, 0:size].astype("float32") / size
    items = []
    for s in range(n_scenes):
        assets = {}
        for b, band in enumerate(BANDS):
            field = 1500 + 1500 * np.sin(6 * xx + s + b) * np.cos(4 * yy - b)
            dn = (field + 1000 + rng.normal(0, 60, (size, size))).clip(1, 20_000).astype("uint16")
            dn[:, : size // 50] = 0  # a strip of nodata
            path = root / f"S2A_{s:02d}_{band}.tif"
            profile = {
                "driver": "COG",
                "width": size,
                "height": size,
                "count": 1,
                "dtype": "uint16",
                "crs": f"EPSG:{epsg}",
                "transform": transform,
                "nodata": 0,
                "compress": "DEFLATE",
                "blocksize": 512,
            }
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(dn, 1)
            assets[band] = {
                "href": str(path),
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "raster:bands": [
                    {"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}
                ],
                "proj:shape": [size, size],
                "proj:transform": list(transform)[:6],
            }
        when = datetime(2024, 4, 1, 10, 30, tzinfo=UTC) + timedelta(days=5 * s)
        bbox, geometry = _lonlat_footprint(epsg, (x0, y0 - 10 * size, x0 + 10 * size, y0))
        items.append(
            {
                "type": "Feature",
                "stac_version": "1.0.0",
                "id": f"S2A_{s:02d}",
                "collection": "sentinel-2-l2a",
                "bbox": bbox,
                "geometry": geometry,
                "properties": {
                    "datetime": when.isoformat().replace("+00:00", "Z"),
                    "platform": "sentinel-2a",
                    "proj:epsg": epsg,
                    "s2:processing_baseline": "05.10",
                    "eo:cloud_cover": 10.0,
                },
                "links": [],
                "assets": assets,
            }
        )
    return items


def _lonlat_footprint(
    epsg: int, bounds: tuple[float, float, float, float]
) -> tuple[list[float], dict[str, Any]]:
    t = pyproj.Transformer.from_crs(epsg, 4326, always_xy=True)
    xmin, ymin, xmax, ymax = bounds
    lons, lats = t.transform([xmin, xmax, xmax, xmin], [ymin, ymin, ymax, ymax])
    ring = [[float(x), float(y)] for x, y in zip(lons, lats, strict=True)]
    bbox = [min(lons), min(lats), max(lons), max(lats)]
    return bbox, {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


# ---- the three readers -----------------------------------------------------------------------


def common_grid(items: Sequence[dict[str, Any]]) -> tuple[GridSpec, list[dict[str, Any]]]:
    """The 10 m grid of the items' blue bands in the most common CRS (items of other zones are
    left out: the floor does not reproject), bounds = union of their extents."""
    infos = []
    for item in items:
        with rasterio.open(resolve_item(item).bands["blue"].href) as ds:
            infos.append((item, ds.crs.to_epsg(), ds.bounds, ds.res))
    epsgs = [e for _, e, _, _ in infos]
    epsg = max(set(epsgs), key=epsgs.count)
    kept = [(i, b) for i, e, b, r in infos if e == epsg and r == (10.0, 10.0)]
    bounds = (
        min(b.left for _, b in kept),
        min(b.bottom for _, b in kept),
        max(b.right for _, b in kept),
        max(b.top for _, b in kept),
    )
    return GridSpec(int(epsg), 10.0, bounds), [i for i, _ in kept]


scene_ref = SceneRef.from_item


def read_ours(items: Sequence[dict[str, Any]], grid: GridSpec) -> np.ndarray:
    da = load([scene_ref(i) for i in items], grid, bands=list(BANDS), with_mask=False)
    return np.asarray(da.compute().values)


def read_odc(items: Sequence[dict[str, Any]], grid: GridSpec) -> np.ndarray:
    norm = [normalize_item(i) for i in items]
    pystac_items = [pystac.Item.from_dict(n, preserve_dict=False) for n in norm]
    geobox = GeoBox.from_bbox(grid.bounds, f"EPSG:{grid.epsg}", resolution=grid.resolution)
    ds = odc.stac.load(
        pystac_items,
        bands=list(BANDS),
        geobox=geobox,
        chunks={"x": 1024, "y": 1024},
        groupby="id",
        resampling="nearest",
    )
    ds = ds.sortby("time")
    out = []
    for band in BANDS:
        scales = np.array([n["assets"][band]["raster:bands"][0]["scale"] for n in norm])
        offsets = np.array([n["assets"][band]["raster:bands"][0]["offset"] for n in norm])
        raw = ds[band]
        order = _odc_order(ds, norm)
        phys = raw.astype("float64") * scales[order][:, None, None] + offsets[order][:, None, None]
        out.append(phys.where(raw != 0).astype("float32"))
    stacked = dask.compute(*[o.data for o in out])
    return np.stack(stacked, axis=1)


def _odc_order(ds: Any, norm: Sequence[dict[str, Any]]) -> np.ndarray:
    """Index into `norm` of each odc time slice (odc sorts by time; ids are unique here)."""
    times = [np.datetime64(n["properties"]["datetime"].replace("Z", ""), "ns") for n in norm]
    return np.array([times.index(t) for t in ds["time"].values])


def read_floor(items: Sequence[dict[str, Any]], grid: GridSpec, threads: int) -> np.ndarray:
    rows, cols = grid.shape
    ordered = sorted(items, key=lambda i: i["properties"]["datetime"])
    jobs = []
    for t, item in enumerate(ordered):
        r = resolve_item(item)
        for b, band in enumerate(BANDS):
            spec = r.bands[band]
            jobs.append((t, b, spec.href, spec.scale, spec.offset, spec.nodata))
    out = np.empty((len(ordered), len(BANDS), rows, cols), dtype="float32")

    def one(job: tuple[int, int, str, float, float, float]) -> None:
        t, b, href, scale, offset, nodata = job
        with rasterio.open(href) as ds:
            window = from_bounds(*grid.bounds, transform=ds.transform)
            dn = ds.read(
                1, window=window, boundless=True, fill_value=nodata, out_shape=(rows, cols)
            )
        phys = (dn.astype("float64") * scale + offset).astype("float32")
        phys[dn == nodata] = np.nan
        out[t, b] = phys

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, jobs))
    return out


# ---- measurement -----------------------------------------------------------------------------


def best_time(fn: Callable[[], np.ndarray], repeat: int) -> tuple[float, np.ndarray]:
    result = fn()  # warm-up: GDAL/OS caches, imports
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("auto", "synthetic", "cogs"), default="auto")
    parser.add_argument("--scenes", type=int, default=6, help="scenes written with --source cogs")
    parser.add_argument("--size", type=int, default=2048, help="pixels per side with --source cogs")
    parser.add_argument("--years", type=int, default=2, help="Sentinel-2 years of the archive")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="eo-bench-load-") as tmp:
        root = Path(tmp)
        items: list[dict[str, Any]] = []
        source = args.source
        if source in ("auto", "synthetic"):
            try:
                items = synthetic_items(root / "archive", args.years)
                source = "synthetic archive (demo AOI, Sentinel-2 only)"
            except ImportError as err:
                if args.source == "synthetic":
                    raise
                print(f"tasks.synthetic unavailable ({err}); writing COGs instead")
        if not items:
            items = write_cog_items(root, args.scenes, args.size)
            source = f"{args.scenes} self-written COG scenes of {args.size}² px"
        grid, items = common_grid(items)
        rows, cols = grid.shape
        mpx = len(items) * len(BANDS) * rows * cols / 1e6
        print(f"source: {source}")
        print(
            f"{len(items)} scenes x {len(BANDS)} bands x {rows} x {cols} px = {mpx:.1f} Mpx "
            f"(EPSG:{grid.epsg}, 10 m); {args.threads} threads; best of {args.repeat}"
        )

        with dask.config.set(scheduler="threads", num_workers=args.threads):
            t_ours, ours = best_time(lambda: read_ours(items, grid), args.repeat)
            t_odc, odc_out = best_time(lambda: read_odc(items, grid), args.repeat)
        t_floor, floor = best_time(lambda: read_floor(items, grid, args.threads), args.repeat)

        for name, other in (("odc", odc_out), ("floor", floor)):
            same = np.array_equal(ours, other, equal_nan=True)
            diff = np.nanmax(np.abs(ours - other)) if not same else 0.0
            print(f"ours == {name}: {same} (max |diff| {diff:.3g})")

        print(f"{'reader':<8}{'seconds':>10}{'Mpx/s':>10}")
        for name, t in (("ours", t_ours), ("odc", t_odc), ("floor", t_floor)):
            print(f"{name:<8}{t:>10.3f}{mpx / t:>10.1f}")
        print(f"ours/floor {t_floor / t_ours:.2f}  (throughput ratio; 1.0 = as fast as the floor)")
        print(f"odc/floor  {t_floor / t_odc:.2f}")
        print(f"ours/odc   {t_odc / t_ours:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

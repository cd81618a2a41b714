"""Distributed execution: the change-detection flow split into tiles, in process and on a Dask
LocalCluster (2 worker processes), against one untiled run; and the GPU concurrency guard.

The tiny archive's AOI is 52 x 52 px at 30 m (in its own zone, on the Landsat scenes' pixel
edges). Tiles of 32 px with a 16 px halo (a narrower halo than the product's default, so that
the tiles' windows differ from the whole grid here) give 2 x 2 tiles whose composites are made
on windows of 48 and 36 px. The Dask run starts
its own LocalCluster (2 worker processes, one thread each) and closes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from distributed import LocalCluster
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from flows.params import ChangeDetectionParams
from flows.products import change_detection
from tasks.infer import GPU_CONCURRENCY_LIMIT, gpu_slot
from tasks.products import HALO_PX, ProductSummary
from tasks.settings import get_settings
from tasks.stac_server import StacServer
from tasks.synthetic import ArchiveInfo
from tasks.tiling import tile_task_runner

#: The AOI's own zone. Its 2012-2023 scenes are 5 in UTM 33 and 4 in UTM 32, so the flow's
#: default grid would be in zone 33 (a reprojected, larger 56 px grid); the tiling measured
#: here is that of the AOI's own zone.
AOI_EPSG = 32632
TILE_PX = 32
HALO = 16
#: Seams: core edges of the 2 x 2 tiles on the 52 px grid (rows and columns).
SEAM = 32


class Run:
    """One published change product: its summary, COG bands by name and STAC Item."""

    def __init__(self, summary: ProductSummary) -> None:
        self.summary = summary
        with rasterio.open(summary.product.asset_href("data")) as src:
            self.bands = {
                d: np.where(src.read(i + 1) == src.nodata, np.nan, src.read(i + 1))
                for i, d in enumerate(src.descriptions)
            }
        self.item = json.loads(Path(summary.product.item_href).read_text())


@pytest.fixture(scope="module")
def env(
    prefect_server: None,
    tiny_archive: ArchiveInfo,
    tiny_stac: StacServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    mp = pytest.MonkeyPatch()
    mp.setitem(HALO_PX, "change", HALO)  # read where the flow plans its tiles: this process
    yield {
        "mp": mp,
        "root": tmp_path_factory.mktemp("distributed"),
        "aoi": json.dumps(tiny_archive.aoi),
        "stac": tiny_stac.url,
    }
    mp.undo()
    get_settings.cache_clear()


def _run(env: dict[str, Any], name: str, *, tile_px: int, dask: bool = False) -> Run:
    """The change flow with its own cache and output folder; on a fresh LocalCluster if `dask`
    (its workers inherit ``EO_CACHE_DIR`` from this process when they start)."""
    folder: Path = env["root"] / name
    env["mp"].setenv("EO_CACHE_DIR", str(folder / "cache"))
    env["mp"].setenv("EO_TILE_SIZE_PX", str(tile_px))
    get_settings.cache_clear()
    params = ChangeDetectionParams(
        aoi=env["aoi"],
        before={"start": "2012-01-01", "end": "2013-12-31"},
        after={"start": "2023-01-01", "end": "2023-12-31"},
        stac_api_url=env["stac"],
        output_url=str(folder / "out"),
        epsg=AOI_EPSG,
    )
    if not dask:
        # Dask's nanny starts workers with OMP_NUM_THREADS=1; torch's float32 sums depend on
        # its thread count (last-bit differences), so the in-process run uses one thread too
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return Run(change_detection(params))
        finally:
            torch.set_num_threads(threads)
    with LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        flow = change_detection.with_options(
            task_runner=tile_task_runner(cluster.scheduler_address)
        )
        return Run(flow(params))


@pytest.fixture(scope="module")
def untiled(env: dict[str, Any]) -> Run:
    return _run(env, "untiled", tile_px=1024)


@pytest.fixture(scope="module")
def tiled(env: dict[str, Any]) -> Run:
    return _run(env, "tiled", tile_px=TILE_PX)


@pytest.fixture(scope="module")
def tiled_on_dask(env: dict[str, Any]) -> Run:
    return _run(env, "dask", tile_px=TILE_PX, dask=True)


def test_tiled_run_on_dask_equals_the_in_process_run(tiled: Run, tiled_on_dask: Run) -> None:
    assert tiled_on_dask.summary.product.id == tiled.summary.product.id
    assert list(tiled_on_dask.bands) == list(tiled.bands)
    for band, values in tiled.bands.items():
        np.testing.assert_array_equal(tiled_on_dask.bands[band], values, err_msg=band)
    assert tiled_on_dask.summary.areas == tiled.summary.areas


def test_tiled_product_records_its_tiling(untiled: Run, tiled: Run) -> None:
    params = tiled.item["properties"]["eo_pipeline:parameters"]
    assert params["tiling"] == {"tile_size_px": TILE_PX, "halo_px": HALO, "tiles": 4}
    assert "tiling" not in untiled.item["properties"]["eo_pipeline:parameters"]
    assert tiled.summary.product.id != untiled.summary.product.id
    assert tiled.item["properties"]["proj:shape"] == untiled.item["properties"]["proj:shape"]


def test_tiled_mosaic_matches_the_untiled_run_without_seams(untiled: Run, tiled: Run) -> None:
    """Tiles differ from one pass only through their composites (co-registration shifts and
    cloud masks estimated per tile, on 36-48 px windows here); the model's share is ~2e-3 with
    a 16 px halo (tests/unit/test_tiling.py: identical with 48 px on identical composites).

    Measured (16 px halo / no halo) on a grid of multiples of 30 m, which resampled the Landsat
    scenes by half a pixel: pixels valid in both runs 96.4 % / 78 % of those valid in either;
    P(change) decisions agree on 99.7 % / 96.3 %; mean |dP| within 2 px of the seams 0.013 /
    0.059. The bounds sit between the two. On the scenes' own pixel grid (since 2026-12-07),
    16 px halo: valid in both 100 %, decisions agree on 99.8 %.
    """
    p1, p2 = untiled.bands["probability"], tiled.bands["probability"]
    both = np.isfinite(p1) & np.isfinite(p2)
    assert both.sum() >= 0.93 * (np.isfinite(p1) | np.isfinite(p2)).sum()
    assert np.mean((p1[both] >= 0.5) == (p2[both] >= 0.5)) >= 0.99
    diff = np.abs(p1 - p2)
    assert np.median(diff[both]) <= 0.005
    near_seams = np.zeros(p1.shape, dtype=bool)
    near_seams[SEAM - 2 : SEAM + 2, :] = near_seams[:, SEAM - 2 : SEAM + 2] = True
    assert np.mean(diff[both & near_seams]) <= 0.03


# ---- the GPU guard --------------------------------------------------------------------------
def _active_slots() -> int | None:
    with get_client(sync_client=True) as client:
        limits = {gcl.name: gcl for gcl in client.read_global_concurrency_limits(limit=100)}
    gcl = limits.get(GPU_CONCURRENCY_LIMIT)
    return None if gcl is None else gcl.active_slots


def test_gpu_slot_holds_the_gpu_limit_on_cuda_only(prefect_server: None) -> None:
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=GPU_CONCURRENCY_LIMIT, limit=1)
        )
    try:
        # a CUDA device object needs no GPU: gpu_slot only looks at its type
        with gpu_slot(torch.device("cuda:0")):
            assert _active_slots() == 1
        assert _active_slots() == 0
        with gpu_slot(torch.device("cpu")):
            assert _active_slots() == 0
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(GPU_CONCURRENCY_LIMIT)


def test_gpu_slot_without_the_limit_runs_unguarded(prefect_server: None) -> None:
    assert _active_slots() is None
    entered = False
    with gpu_slot(torch.device("cuda:0")):  # Prefect logs that the limit does not exist
        entered = True
    assert entered

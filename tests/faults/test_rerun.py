"""Row 10 of the fault table: a rerun with the same inputs rewrites no object.

A product flow runs twice with the same parameters, to a local folder and to S3 (moto behind a
`FaultProxy`, which records every request). Between the runs every object's modification time
and size (local) or ETag and LastModified (S3) are recorded, and every file of the cache
(composites, pinned co-registration references); after the rerun they must be the same. On S3
the proxy also proves it directly: the rerun sends no request that writes (PUT, POST, DELETE,
copy), only reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flows.products import urban_footprint
from tasks.products import ProductSummary
from tasks.stac_server import StacServer
from tasks.synthetic import ArchiveInfo
from tests.conftest import S3_BUCKET as BUCKET
from tests.conftest import S3Server
from tests.faults.conftest import file_stamps, footprint_params, moto_fs
from tests.faults.proxy import FaultProxy

#: Requests that only read: anything else writes (PUT also copies, POST ?delete deletes).
READS = ("GET ", "HEAD ")


def s3_stamps(server: S3Server, prefix: str) -> dict[str, tuple[str, str]]:
    """``{key: (ETag, LastModified)}`` of every object under `prefix`, read from moto."""
    fs = moto_fs(server)
    fs.invalidate_cache()
    return {
        key: (str(info.get("ETag")), str(info.get("LastModified")))
        for key, info in fs.find(prefix, detail=True).items()
    }


def run(archive: ArchiveInfo, stac: StacServer, url: str) -> ProductSummary:
    params: dict[str, Any] = footprint_params(
        json.dumps(archive.aoi), stac_api_url=stac.url, output_url=url
    )
    return urban_footprint(params=params)  # type: ignore[call-overload]  # a dict, as Prefect sends it


def cache_state(cache: Path) -> dict[str, tuple[int, int]]:
    """The cache's composites and pinned references (what a rerun must reuse, not rewrite)."""
    stamps = file_stamps(cache)
    kept = {k: v for k, v in stamps.items() if k.startswith(("composites/", "state/"))}
    assert any(k.endswith("composite.tif") for k in kept), sorted(stamps)
    return kept


def test_rerun_local_rewrites_nothing(
    prefect_server: None,
    tiny_archive: ArchiveInfo,
    tiny_stac: StacServer,
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    first = run(tiny_archive, tiny_stac, str(out))
    assert not first.product.skipped
    objects, cache = file_stamps(out), cache_state(cache_dir)
    assert any(k.endswith("item.json") for k in objects)

    again = run(tiny_archive, tiny_stac, str(out))
    assert again.product.skipped and again.product.id == first.product.id
    assert file_stamps(out) == objects, "a rerun rewrote a published file"
    assert cache_state(cache_dir) == cache, "a rerun rewrote the composites cache"


def test_rerun_s3_rewrites_no_object(
    prefect_server: None,
    tiny_archive: ArchiveInfo,
    tiny_stac: StacServer,
    s3_server: S3Server,
    s3_proxy: FaultProxy,
    cache_dir: Path,
) -> None:
    prefix = f"{BUCKET}/rerun"
    url = f"s3://{prefix}"
    first = run(tiny_archive, tiny_stac, url)
    assert not first.product.skipped
    objects, cache = s3_stamps(s3_server, prefix), cache_state(cache_dir)
    assert any(k.endswith("item.json") for k in objects)
    time.sleep(1.1)  # S3's LastModified has whole seconds: a rewrite now would show

    seen = len(s3_proxy.requests)
    again = run(tiny_archive, tiny_stac, url)
    assert again.product.skipped and again.product.id == first.product.id
    writes = [r for r in s3_proxy.requests[seen:] if not r.startswith(READS)]
    assert writes == [], "a rerun sent requests that write"
    assert len(s3_proxy.requests) > seen, "the rerun must have gone through the proxy"
    assert s3_stamps(s3_server, prefix) == objects, "a rerun rewrote an object"
    assert cache_state(cache_dir) == cache, "a rerun rewrote the composites cache"


def test_rerun_reuses_the_tile_products(
    prefect_server: None,
    tiny_archive: ArchiveInfo,
    tiny_stac: StacServer,
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    out = str(tmp_path / "out")
    run(tiny_archive, tiny_stac, out)
    tiles = {k: v for k, v in file_stamps(cache_dir).items() if k.startswith("tiles/")}
    assert tiles
    run(tiny_archive, tiny_stac, out)
    assert {k: v for k, v in file_stamps(cache_dir).items() if k.startswith("tiles/")} == tiles

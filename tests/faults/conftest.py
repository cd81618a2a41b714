"""Fixtures of the fault suite: real servers (moto S3, ``rustac serve``) behind a `FaultProxy`.

Every fixture keeps retries and timeouts short (fractions of a second, two or three attempts),
so that a fault that must end in an error ends within seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import s3fs

from tasks.settings import Settings, get_settings
from tasks.stac_server import StacServer, serve_stac
from tests.conftest import S3Server
from tests.faults.proxy import FaultProxy

# The flow tier's session fixture, imported so that pytest registers it for this folder too
# (conftest fixtures are visible to their own folder only). Run with tests/flow in one session,
# each folder starts its own test server (~10 s).
from tests.unit.test_load import S2_BANDS, _footprint

#: S3 retry settings of the fault suite: 3 attempts (botocore standard mode), 1 s timeouts.
S3_ATTEMPTS = 3
S3_TIMEOUT_S = 1.0

#: One 320 m square in UTM 32N (the grid of tests/unit/test_load.py) that every STAC item covers.
UTM32_SQUARE = (730_000.0, 5_042_400.0, 730_320.0, 5_042_720.0)
STAC_T0 = datetime(2024, 5, 1, 10, 30, tzinfo=UTC)
STAC_ITEMS = 6


@pytest.fixture
def s3_proxy(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A `FaultProxy` in front of the moto S3 server; the pipeline's S3 endpoint is the proxy.

    Settings: ``EO_S3_MAX_ATTEMPTS=3``, connect/read timeouts of 1 s.
    """
    proxy = FaultProxy(s3_server.endpoint_url).start()
    for key, value in {
        "EO_S3_ENDPOINT_URL": proxy.url,
        "EO_S3_MAX_ATTEMPTS": str(S3_ATTEMPTS),
        "EO_S3_CONNECT_TIMEOUT_S": str(S3_TIMEOUT_S),
        "EO_S3_READ_TIMEOUT_S": str(S3_TIMEOUT_S),
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield proxy
    finally:
        proxy.stop()
        get_settings.cache_clear()
        s3fs.S3FileSystem.clear_instance_cache()


def moto_fs(server: S3Server) -> s3fs.S3FileSystem:
    """An s3fs client straight to moto (around the proxy): what is really stored."""
    return s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": server.endpoint_url}, skip_instance_cache=True
    )


def s2_item(item_id: str, when: datetime) -> dict[str, Any]:
    """An Earth Search v1 style Sentinel-2 L2A Item over `UTM32_SQUARE` (asset files need not
    exist: discovery never opens them)."""
    bbox, geometry = _footprint(32632, UTM32_SQUARE)
    base = f"https://sentinel-cogs.example.invalid/{item_id}"
    assets = {
        key: {
            "href": f"{base}/{esa}.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "raster:bands": [{"nodata": 0, "scale": 0.0001, "offset": -0.1}],
        }
        for key, (esa, _) in [*S2_BANDS.items(), ("scl", ("SCL", 20))]
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "bbox": bbox,
        "geometry": geometry,
        "properties": {
            "datetime": when.isoformat().replace("+00:00", "Z"),
            "platform": "sentinel-2a",
            "eo:cloud_cover": 10.0,
            "proj:code": "EPSG:32632",
            "s2:processing_baseline": "05.10",
        },
        "links": [],
        "assets": assets,
    }


@pytest.fixture(scope="module")
def stac_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StacServer]:
    """``rustac serve`` over `STAC_ITEMS` Sentinel-2 items five days apart (ids ``S2A_F0``...)."""
    items = [s2_item(f"S2A_F{i}", STAC_T0 + timedelta(days=5 * i)) for i in range(STAC_ITEMS)]
    path = tmp_path_factory.mktemp("stac-faults") / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    with serve_stac([path]) as server:
        yield server


@pytest.fixture
def stac_proxy(stac_upstream: StacServer) -> Iterator[FaultProxy]:
    """A `FaultProxy` in front of `stac_upstream`, rewriting its links to come back through it."""
    proxy = FaultProxy(stac_upstream.url, rewrite_links=True).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def fast_stac_settings(**overrides: Any) -> Settings:
    """STAC settings of the fault suite: 1 retry, 0.5 s timeout (urllib3's first retry does not
    back off, so a failing request ends after about 2 x 0.5 s)."""
    return Settings(**{"stac_max_retries": 1, "stac_timeout_s": 0.5, **overrides})


def all_keys(fs: s3fs.S3FileSystem, prefix: str) -> list[str]:
    """Every object key under `prefix` (relative to it), sorted."""
    fs.invalidate_cache()
    return sorted(k.removeprefix(prefix).lstrip("/") for k in fs.find(prefix))


def local_files(root: Path) -> list[str]:
    """Every file under `root` (relative paths), sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---- product flows under a Prefect test server (rows 5-7, 10, 11) --------------------------------
@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh ``EO_CACHE_DIR`` (composites, pinned references, tiles) for this test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("EO_CACHE_DIR", str(folder))
    get_settings.cache_clear()
    try:
        yield folder
    finally:
        get_settings.cache_clear()


@pytest.fixture
def tiny_stac_proxy(tiny_stac: StacServer) -> Iterator[FaultProxy]:
    """A `FaultProxy` in front of the tiny archive's STAC API: `requests` lists what reached it."""
    proxy = FaultProxy(tiny_stac.url, rewrite_links=True).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def footprint_params(aoi: Any, **overrides: Any) -> dict[str, Any]:
    """Parameters (a dict, as Prefect's form or a deployment sends them) of a baseline footprint
    of 2023 on the tiny archive: Sentinel-2 only, seconds per run."""
    return {
        "aoi": aoi,
        "year": 2023,
        "model": "baseline",
        "collections": ["sentinel-2-l2a"],
        **overrides,
    }


def file_stamps(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (mtime_ns, size)}`` of every file under `root`."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in root.rglob("*")
        if p.is_file()
    }

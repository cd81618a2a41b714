"""Fixtures shared by every test tier."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tasks.stac_server import StacServer, serve_stac
from tasks.synthetic import (
    ArchiveInfo,
    Truth,
    archive_items,
    create_archive,
    open_truth,
    stac_files,
    tiny_config,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Real data and schemas live beside the repository (../shared); tests skip cleanly without them.
SHARED_DIR = (REPO_ROOT / ".." / "shared").resolve()
REALDATA_DIR = SHARED_DIR / "realdata"
SCHEMAS_DIR = SHARED_DIR / "schemas"


def realdata_path(*parts: str) -> Path:
    """Path under ../shared/realdata, or skip the calling test when it is absent."""
    path = REALDATA_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {Path(*parts)} (../shared/realdata is absent)")
    return path


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test`: two workers on two cores), one torch thread per
    worker: two workers of two threads each would oversubscribe the cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The ../shared/realdata folder; skips the test when it is absent."""
    if not REALDATA_DIR.is_dir():
        pytest.skip("../shared/realdata is absent")
    return REALDATA_DIR


# ---- the tiny synthetic archive, shared by every tier ------------------------------------------
@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory: pytest.TempPathFactory) -> ArchiveInfo:
    """The archive of `tiny_config()` (1.5 km, Landsat 2012-2013, Sentinel-2 2023), made once."""
    return create_archive(tmp_path_factory.mktemp("synthetic") / "tiny", tiny_config(), workers=1)


@pytest.fixture(scope="session")
def tiny_items(tiny_archive: ArchiveInfo) -> list[dict[str, Any]]:
    """Every STAC Item of the tiny archive, as plain dicts."""
    return archive_items(tiny_archive.root)


@pytest.fixture(scope="session")
def tiny_truth(tiny_archive: ArchiveInfo) -> Truth:
    """Ground truth of the tiny archive."""
    return open_truth(tiny_archive.root)


@pytest.fixture(scope="session")
def tiny_stac(tiny_archive: ArchiveInfo) -> Iterator[StacServer]:
    """A real STAC API (`rustac serve` on 127.0.0.1) over the tiny archive."""
    with serve_stac(stac_files(tiny_archive.root)) as server:
        yield server


# ---- a moto S3 server on 127.0.0.1 (flow tests of publishing, the fault suite) -------------------
#: The bucket `s3_server` creates.
S3_BUCKET = "eo-products"


@dataclass(frozen=True)
class S3Server:
    """A running moto S3 server: its endpoint URL and port."""

    endpoint_url: str
    port: int


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A moto S3 server on a free port with bucket `S3_BUCKET`, empty at the start; AWS, GDAL
    /vsis3/ and ``EO_S3_ENDPOINT_URL`` environment set for this test."""
    import httpx
    import s3fs
    from moto.server import ThreadedMotoServer

    from tasks.settings import get_settings
    from tasks.stac_server import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # GDAL /vsis3/ against moto (NOTES.md: S3 with moto server)
        "AWS_S3_ENDPOINT": f"127.0.0.1:{port}",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "EO_S3_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        # moto keeps its buckets in process-wide state, shared by every server it starts
        httpx.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
        fs.mkdir(S3_BUCKET)
        yield S3Server(endpoint_url=endpoint, port=port)
    finally:
        server.stop()
        get_settings.cache_clear()
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect API (SQLite) for the flows run by the tests of this session: one
    for all tiers (it costs ~10-20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield

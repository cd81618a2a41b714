"""Publish to S3: a real moto server on 127.0.0.1, read back through GDAL /vsis3/ and s3fs."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import pytest
import rasterio
import s3fs
from moto.server import ThreadedMotoServer
from rio_cogeo.cogeo import cog_validate

from tasks.publish import list_products
from tests.unit.test_publish import SCENES, publish_change, stac_validator

BUCKET = "eo-products"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    port: int


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A moto S3 server on a free port with bucket `BUCKET`; AWS/GDAL env set for this test."""
    port = _free_port()
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
    from tasks.settings import get_settings

    get_settings.cache_clear()
    try:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield S3Server(endpoint_url=endpoint, port=port)
    finally:
        server.stop()
        get_settings.cache_clear()
        s3fs.S3FileSystem.clear_instance_cache()


def _objects(fs: s3fs.S3FileSystem, prefix: str) -> dict[str, tuple[Any, Any]]:
    fs.invalidate_cache()
    found = fs.find(prefix, detail=True)
    return {k: (v.get("ETag"), v.get("LastModified")) for k, v in found.items()}


def test_publish_product_to_s3_readable_and_rerun_noop(s3_server: S3Server) -> None:
    url = f"s3://{BUCKET}/runs/2026"
    ref = publish_change(url)
    assert ref.item_href.startswith(f"{url}/eo-change/{ref.id}/")

    fs = s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": s3_server.endpoint_url}, skip_instance_cache=True
    )
    item = json.loads(fs.cat_file(ref.item_href))
    stac_validator("item").validate(item)
    assert [lk["title"] for lk in item["links"] if lk["rel"] == "derived_from"] == list(SCENES)

    cog_key = ref.asset_href("data").removeprefix("s3://")
    with rasterio.open(f"/vsis3/{cog_key}") as src:
        assert src.count == 4
        assert src.descriptions == ("probability", "binary", "confidence", "count")
        assert src.read(4).max() == 7
    assert cog_validate(f"/vsis3/{cog_key}")[0]

    with fs.open(ref.asset_href("vectors"), "rb") as f:
        gdf = gpd.read_parquet(f)
    assert gdf.crs.to_epsg() == 32633
    assert gdf["area_m2"].max() == pytest.approx(100 * 10.0 * 10.0)  # the 10 x 10 px square

    assert [i["id"] for i in list_products(url)] == [ref.id]
    assert not fs.find(f"{BUCKET}/runs/2026/.tmp")

    before = _objects(fs, f"{BUCKET}/runs/2026")
    again = publish_change(url)
    assert again.skipped
    assert _objects(fs, f"{BUCKET}/runs/2026") == before  # same ETags and LastModified


def test_publish_product_unreachable_endpoint_says_what_to_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks.errors import ServiceUnavailableError
    from tasks.settings import get_settings

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("EO_S3_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nothing there
    get_settings.cache_clear()
    try:
        with pytest.raises(ServiceUnavailableError, match="EO_S3_ENDPOINT_URL"):
            publish_change(f"s3://{BUCKET}/x")
    finally:
        get_settings.cache_clear()
        s3fs.S3FileSystem.clear_instance_cache()

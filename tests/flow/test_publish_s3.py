"""Publish to S3: a real moto server on 127.0.0.1, read back through GDAL /vsis3/ and s3fs."""

from __future__ import annotations

import json
from typing import Any

import geopandas as gpd
import pytest
import rasterio
import s3fs
from rio_cogeo.cogeo import cog_validate

from tasks.publish import list_products
from tests.conftest import S3_BUCKET, S3Server
from tests.unit.test_publish import SCENES, publish_change, stac_validator

BUCKET = S3_BUCKET


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

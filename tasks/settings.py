"""Runtime settings, read from the environment with the prefix ``EO_`` (or a ``.env`` file).

| variable            | meaning                                                            |
|---------------------|--------------------------------------------------------------------|
| ``EO_STAC_API_URL`` | STAC API to search; unset = the embedded synthetic archive         |
| ``EO_OUTPUT_URL``   | where products are published: a local path or ``s3://bucket/prefix`` |
| ``EO_CACHE_DIR``    | work/cache directory (synthetic archive, intermediate files)       |
| ``EO_DEVICE``       | ``auto`` (CUDA when present), ``cpu`` or ``cuda``                  |
| ``EO_DASK_ADDRESS`` | address of an existing Dask scheduler; unset = in-process          |
| ``EO_S3_ENDPOINT_URL`` | S3-compatible endpoint (MinIO, moto); unset = AWS               |
| ``EO_WEIGHTS_DIR``  | trained weights searched before the shipped ``models/weights/``   |
| ``EO_AOI_REGISTRY_URL`` | watched AOIs (GeoJSON); unset = ``<output_url>/_state/aois.geojson`` |
| ``EO_STAC_MAX_ITEMS`` | most items one search may return before it is refused (endless paging) |
| ``EO_S3_MAX_ATTEMPTS`` | attempts of one S3 request (botocore standard retry mode, backoff) |
| ``EO_S3_CONNECT_TIMEOUT_S`` / ``EO_S3_READ_TIMEOUT_S`` | seconds per S3 connect / read |
| ``EO_TILE_SIZE_PX`` | tile side (px, multiple of 16) that product flows split AOIs into |
| ``EO_MAX_AOI_KM2``  | largest AOI accepted (km², geodesic area); larger ones are refused  |
| ``EO_S3_SECRET_BLOCK`` | name of a Prefect ``Secret`` block holding the S3 credentials (JSON) |

Secrets never go into ``EO_`` settings themselves: S3 credentials come from the AWS environment
(``AWS_ACCESS_KEY_ID`` ...) or from the Prefect Secret block named by ``EO_S3_SECRET_BLOCK``
(`tasks.storage.s3_credentials`); a URL carrying ``user:password@`` is refused for object
storage, and for a STAC API its credentials are taken out of the URL and sent as HTTP basic
auth to that host only (`tasks.discover.open_client`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Settings of one process. Construct directly in tests; use `get_settings()` elsewhere."""

    model_config = SettingsConfigDict(env_prefix="EO_", env_file=".env", extra="ignore")

    stac_api_url: str | None = Field(
        default=None,
        description="STAC API root, e.g. https://earth-search.aws.element84.com/v1. "
        "Unset: the embedded synthetic archive served on 127.0.0.1.",
    )
    output_url: str = Field(
        default="demo-output",
        description="Where products are published: a local path or s3://bucket/prefix.",
    )
    cache_dir: Path = Field(
        default=Path(".eo-cache"),
        description="Work/cache directory: the synthetic archive and intermediate files.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Torch device: auto picks CUDA when one is present."
    )
    dask_address: str | None = Field(
        default=None,
        description="Address of a Dask scheduler (tcp://host:8786); unset runs in-process.",
    )
    weights_dir: Path | None = Field(
        default=None,
        description="Folder of trained weights (spec JSON + file), searched before the shipped.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint URL (MinIO, moto); unset means AWS S3."
    )
    stac_timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one STAC request.")
    stac_max_retries: int = Field(
        default=4, ge=0, le=10, description="Retries of a transient STAC failure (5xx, timeout)."
    )
    aoi_registry_url: str | None = Field(
        default=None,
        description="The registry of watched AOIs (a GeoJSON file: local path or "
        "s3://bucket/key.geojson). Unset: <output_url>/_state/aois.geojson.",
    )
    stac_max_items: int = Field(
        default=50_000,
        ge=1,
        description="Most items one STAC search may return; more is refused (a server that "
        "pages forever, or a search to narrow). 50 000 covers 40 years of Landsat and "
        "Sentinel-2 over an AOI spanning a few tiles.",
    )
    s3_max_attempts: int = Field(
        default=5,
        ge=1,
        le=20,
        description="Attempts of one S3 request (the first included): botocore's standard retry "
        "mode, exponential backoff with jitter capped at 20 s, on 5xx, throttling, timeouts.",
    )
    s3_connect_timeout_s: float = Field(
        default=5.0, gt=0, description="Seconds to open a connection to the S3 endpoint."
    )
    s3_read_timeout_s: float = Field(
        default=30.0, gt=0, description="Seconds to wait for S3 to answer one request."
    )
    tile_size_px: int = Field(
        default=1024,
        ge=16,
        multiple_of=16,
        description="Side (pixels, a multiple of 16) of the tiles that the product flows split "
        "an AOI's grid into and fan out (composites, model, product per tile; one mosaic). "
        "1024 px keeps 40 annual 6-band composites of a tile near 1 GiB; AOIs up to ~1.5 tiles "
        "a side are one tile.",
    )
    max_aoi_km2: float = Field(
        default=50_000.0,
        gt=0,
        description="Largest AOI (geodesic area, km²) a flow or the AOI registry accepts; "
        "larger ones are refused before any work, naming this limit. 50 000 km² is about four "
        "Sentinel-2 tiles (110 x 110 km each): some hundreds of 1024 px tiles at 10 m.",
    )
    s3_secret_block: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block whose value is JSON {aws_access_key_id, "
        "aws_secret_access_key[, aws_session_token]}: the S3 credentials of the output store "
        "(s3fs) and of GDAL's /vsis3/. Unset: botocore's chain (AWS_* environment, config "
        "files, instance roles).",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()

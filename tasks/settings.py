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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()

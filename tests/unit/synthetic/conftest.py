"""Helpers of the synthetic-archive tests. The session-wide tiny archive fixtures
(`tiny_archive`, `tiny_items`, `tiny_truth`) live in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def asset_path(item: dict[str, Any], asset: str) -> Path:
    return Path(item["assets"][asset]["href"])

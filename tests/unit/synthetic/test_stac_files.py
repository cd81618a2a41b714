"""`stac_files` are what ``rustac serve`` loads: Collections and newline-delimited Items."""

from __future__ import annotations

import httpx

from tasks.stac_server import StacServer
from tasks.synthetic import ArchiveInfo, stac_files


def test_stac_files_lists_collections_then_items(tiny_archive: ArchiveInfo) -> None:
    files = stac_files(tiny_archive.root)
    assert [p.name for p in files] == [
        f"{c}{suffix}" for c in tiny_archive.collections for suffix in (".json", ".items.ndjson")
    ]


def test_stac_files_are_served_by_rustac(tiny_stac: StacServer, tiny_archive: ArchiveInfo) -> None:
    server = tiny_stac.url
    collections = httpx.get(f"{server}/collections", timeout=5).json()["collections"]
    assert {c["id"] for c in collections} == set(tiny_archive.collections)
    for collection, count in tiny_archive.n_items.items():
        body = {"collections": [collection], "bbox": list(tiny_archive.bbox), "limit": 100}
        found = httpx.post(f"{server}/search", json=body, timeout=5).json()["features"]
        assert len(found) == count
        assert all(f["collection"] == collection for f in found)

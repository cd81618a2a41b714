"""`stac_files` are what ``rustac serve`` loads: Collections and newline-delimited Items."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tasks.synthetic import ArchiveInfo, stac_files


def _rustac() -> str:
    beside = Path(sys.executable).with_name("rustac")
    found = str(beside) if beside.is_file() else shutil.which("rustac")
    if found is None:
        pytest.skip("rustac is not installed")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_archive: ArchiveInfo) -> Iterator[str]:
    url = f"http://127.0.0.1:{_free_port()}"
    files = [str(p) for p in stac_files(tiny_archive.root)]
    process = subprocess.Popen(
        [_rustac(), "serve", *files, "--addr", url.removeprefix("http://")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(100):  # up to ~10 s
            try:
                httpx.get(f"{url}/collections", timeout=1.0).raise_for_status()
                break
            except httpx.HTTPError:
                if process.poll() is not None:
                    _, err = process.communicate()
                    raise RuntimeError(f"rustac serve exited: {err!r}") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_stac_files_lists_collections_then_items(tiny_archive: ArchiveInfo) -> None:
    files = stac_files(tiny_archive.root)
    assert [p.name for p in files] == [
        f"{c}{suffix}" for c in tiny_archive.collections for suffix in (".json", ".items.ndjson")
    ]


def test_stac_files_are_served_by_rustac(server: str, tiny_archive: ArchiveInfo) -> None:
    collections = httpx.get(f"{server}/collections", timeout=5).json()["collections"]
    assert {c["id"] for c in collections} == set(tiny_archive.collections)
    for collection, count in tiny_archive.n_items.items():
        body = {"collections": [collection], "bbox": list(tiny_archive.bbox), "limit": 100}
        found = httpx.post(f"{server}/search", json=body, timeout=5).json()["features"]
        assert len(found) == count
        assert all(f["collection"] == collection for f in found)

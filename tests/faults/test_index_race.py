"""Concurrent publishes into one prefix: ``index.ndjson`` is rewritten by each of them from what
it read (no lock on an object store), so a publisher that read before another's write drops that
entry. Required: the index ends up listing every committed product."""

from __future__ import annotations

import json
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tasks.publish import list_products
from tests.unit.test_publish import publish_change


def index_ids(out: Path) -> list[str]:
    return sorted(json.loads(x)["id"] for x in (out / "index.ndjson").read_text().splitlines())


def test_a_stale_index_write_is_repaired_by_the_next_publish(tmp_path: Path) -> None:
    """The lost update made deterministic: a publisher that read the index before B's write
    writes it back without B; its own check after the write finds B's Item and restores it."""
    out = tmp_path / "out"
    a = publish_change(str(out), start="2020-06-01")
    stale = (out / "index.ndjson").read_text()  # what a concurrent publisher read
    b = publish_change(str(out), start="2020-07-01")
    (out / "index.ndjson").write_text(stale)  # ... and wrote back, dropping b
    assert index_ids(out) == [a.id]
    c = publish_change(str(out), start="2020-08-01")
    assert index_ids(out) == sorted([a.id, b.id, c.id])


def _publish(out: str, start: str) -> str:
    """One publisher process (concurrent flow runs are processes: workers, served runs)."""
    return publish_change(out, start=start).id


def test_concurrent_publishes_leave_every_product_in_the_index(tmp_path: Path) -> None:
    out = tmp_path / "out"
    starts = [f"2020-0{m}-01" for m in range(1, 9)]
    # spawn: a fork of the test process would copy its Prefect/rustac threads' locks
    with ProcessPoolExecutor(max_workers=4, mp_context=mp.get_context("spawn")) as pool:
        ids = list(pool.map(_publish, [str(out)] * len(starts), starts))
    assert len(set(ids)) == len(starts)
    assert index_ids(out) == sorted(ids) == sorted(i["id"] for i in list_products(str(out)))

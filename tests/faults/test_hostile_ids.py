"""Row 6 of the fault table: hostile item and AOI ids -- ``../x``, ``/etc/passwd``, ``..``, very
long (10 000 characters), unicode, NUL bytes, backslashes, bidi overrides.

Required: sanitized product keys; nothing written outside the output prefix. Item ids are data
(recorded in the product's STAC Item), never keys: product keys are hashes through `safe_name`.
AOI ids name state files, so hostile ones are refused, not mangled. End to end: a product flow
over a STAC API (``rustac serve``) whose items carry hostile ids, with every file under the
test's whole temporary root compared before and after.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.products import urban_footprint
from tasks.aoi_registry import AoiRegistry, WatchedAoi, validate_aoi_id
from tasks.errors import InputError
from tasks.events import acquisition_event
from tasks.publish import list_products
from tasks.settings import get_settings
from tasks.stac_server import StacServer, serve_stac
from tasks.storage import MAX_NAME_LENGTH, open_store, safe_name
from tasks.synthetic import ArchiveInfo, stac_files
from tasks.watermark import Acquisition, load_watermark, poll_aoi, watermark_path
from tests.conftest import S3_BUCKET as BUCKET
from tests.conftest import S3Server
from tests.faults.conftest import all_keys, file_stamps, footprint_params, moto_fs
from tests.unit.test_publish import publish_change

LONG = "a" * 10_000
HOSTILE = [
    "../x",
    "/etc/passwd",
    "..",
    ".",
    LONG,
    "東京-Ωmega-ünïcode",
    "x\x00y",
    "..\\..\\win",
    "a/../../b",
    "~root",
    "\u202eevil",
    " ",
    "-rf",
    "%2e%2e%2fx",
]
#: What a safe key component looks like (`tasks.storage.safe_name`).
SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
BBOX = "11.955,51.335,11.985,51.365"


def assert_safe_keys(keys: Sequence[str]) -> None:
    """Every component of every key is one safe name: nothing climbs out, nothing is hidden
    except the pipeline's own staging (``.tmp``), which must be gone."""
    assert keys, "expected files"
    for key in keys:
        for part in key.split("/"):
            assert SAFE.fullmatch(part) and ".." not in part, key
            assert len(part) <= MAX_NAME_LENGTH + 20, key


# ---- keys ---------------------------------------------------------------------------------------
def test_safe_name_keeps_hostile_names_inside_one_distinct_component(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "out"))
    names = [safe_name(h) for h in HOSTILE]
    for hostile, name in zip(HOSTILE, names, strict=True):
        assert SAFE.fullmatch(name) and ".." not in name and len(name) <= MAX_NAME_LENGTH, (
            hostile,
            name,
        )
        path = posixpath.normpath(store.path("eo-change", name, "item.json"))
        assert path.startswith(store.root + "/eo-change/"), (hostile, path)
    assert len(set(names)) == len(HOSTILE), "two hostile names must not share a key"


@pytest.mark.parametrize(
    "part", ["../x", "..", ".", "/etc/passwd", "a/../b", "x\x00y", "a" * 300, ""]
)
def test_object_store_refuses_unsanitized_key_parts(tmp_path: Path, part: str) -> None:
    store = open_store(str(tmp_path / "out"))
    with pytest.raises(InputError, match="safe_name") as err:
        store.path("eo-change", part)
    assert len(str(err.value)) < 300


def test_publish_hostile_scene_ids_and_collection_stay_under_the_prefix(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "out"
    ref = publish_change(str(out), scene_ids=HOSTILE, collection="../../etc")
    files = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()]
    assert all(f.startswith("deep/out/") for f in files), files
    assert_safe_keys([f.removeprefix("deep/out/") for f in files])
    item = list_products(str(out))[0]
    assert item["collection"] == ref.collection == safe_name("../../etc")
    # the ids are data: recorded exactly, and as percent-encoded URNs in the links
    assert item["properties"]["eo_pipeline:scene_ids"] == HOSTILE
    hrefs = [lk["href"] for lk in item["links"] if lk["rel"] == "derived_from"]
    assert all(h.startswith("urn:eo-pipeline:scene:") and "/" not in h[22:] for h in hrefs)


def test_publish_hostile_ids_to_s3_stay_under_the_prefix(s3_server: S3Server) -> None:
    prefix = f"{BUCKET}/deep/out"
    publish_change(f"s3://{prefix}", scene_ids=HOSTILE, collection="/etc/passwd")
    moto = moto_fs(s3_server)
    moto.invalidate_cache()
    everything = sorted(moto.find(BUCKET))
    assert everything and all(k.startswith(prefix + "/") for k in everything), everything
    assert_safe_keys(all_keys(moto, prefix))


# ---- AOI ids: refused, never mangled ------------------------------------------------------------
@pytest.mark.parametrize("aoi_id", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_aoi_ids_are_refused_everywhere_and_write_nothing(
    tmp_path: Path, aoi_id: str
) -> None:
    out = tmp_path / "out"
    registry = AoiRegistry(f"{out}/_state/aois.geojson")
    with pytest.raises(InputError, match="lower-case letters") as err:
        registry.add(aoi_id, BBOX)
    assert len(str(err.value)) < 400, "the message must not echo a 10 000-character id"
    with pytest.raises(InputError):
        validate_aoi_id(aoi_id)
    with pytest.raises(InputError):
        WatchedAoi(id=aoi_id, geometry={"type": "Polygon", "coordinates": []})
    assert not out.exists()
    store = open_store(str(out))
    with pytest.raises(InputError):
        watermark_path(store, aoi_id)
    with pytest.raises(InputError):
        load_watermark(store, aoi_id)
    assert file_stamps(out) == {}


def test_registry_edited_by_hand_with_a_hostile_id_is_refused_on_read(tmp_path: Path) -> None:
    path = tmp_path / "aois.geojson"
    feature = {
        "type": "Feature",
        "id": "../../x",
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [0.01, 0], [0.01, 0.01], [0, 0]]]},
        "properties": {"created": "2026-01-01T00:00:00Z"},
    }
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    before = file_stamps(tmp_path)
    with pytest.raises(InputError, match=r"'\.\./\.\./x'"):
        AoiRegistry(str(path)).aois()
    assert file_stamps(tmp_path) == before


def _item(item_id: str, when: datetime) -> dict[str, Any]:
    return {
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "properties": {"datetime": when.isoformat().replace("+00:00", "Z")},
    }


def test_watermark_and_events_keep_hostile_item_ids_as_data(tmp_path: Path) -> None:
    """A poll over items with hostile ids: the one state file of the AOI, ids kept verbatim."""
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    items = [_item(h, t0 + timedelta(days=i)) for i, h in enumerate(HOSTILE)]
    aoi = WatchedAoi(id="ok", geometry=json.loads(json.dumps(_square())), since=t0)
    store = open_store(str(tmp_path / "out"))
    announced: list[Acquisition] = []
    result = poll_aoi(
        aoi,
        store=store,
        search=lambda a, s, e: items,
        announce=lambda a, acqs: announced.extend(acqs),
        now=t0 + timedelta(days=30),
    )
    assert result.found == len(HOSTILE)
    assert list(file_stamps(tmp_path)) == ["out/_state/watch/ok.json"]
    state = load_watermark(store, "ok")
    assert state is not None and {s.id for s in state.seen.values()} == set(HOSTILE)
    for acq in announced:
        event = acquisition_event(aoi, acq)
        assert event.payload["item_id"] == acq.item.id
        assert event.resource.id == f"eo.item.sentinel-2-l2a.{acq.item.id}"


def _square() -> dict[str, Any]:
    return {
        "type": "Polygon",
        "coordinates": [[[11.95, 51.33], [11.99, 51.33], [11.99, 51.37], [11.95, 51.37]]],
    }


# ---- end to end: a product flow over items with hostile ids --------------------------------------
#: Hostile ids given to the tiny archive's eight Sentinel-2 items, in their (date) order: the
#: first four are the clear May scenes; the NUL id must be skipped by discovery.
FLOW_IDS = ["../x", "/etc/passwd", LONG, "東京-Ωmega-ünïcode", "x\x00y", "..", "..\\..\\win", "."]


@pytest.fixture(scope="module")
def hostile_stac(
    tiny_archive: ArchiveInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StacServer]:
    """``rustac serve`` over the tiny archive's Sentinel-2 items, renamed to `FLOW_IDS`."""
    files = stac_files(tiny_archive.root)
    collection = next(p for p in files if p.name == "sentinel-2-l2a.json")
    source = next(p for p in files if p.name == "sentinel-2-l2a.items.ndjson")
    items = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    assert len(items) == len(FLOW_IDS)
    for item, hostile in zip(items, FLOW_IDS, strict=True):
        item["id"] = hostile
    path = tmp_path_factory.mktemp("hostile-stac") / "sentinel-2-l2a.items.ndjson"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    with serve_stac([collection, path]) as server:
        yield server


def test_flow_over_hostile_item_ids_writes_only_under_output_and_cache(
    prefect_server: None,
    tiny_archive: ArchiveInfo,
    hostile_stac: StacServer,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out, cache, tmp, cwd = (tmp_path / d for d in ("out", "cache", "tmp", "cwd"))
    tmp.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("EO_CACHE_DIR", str(cache))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.chdir(cwd)  # relative paths, if any, land here: inside the walked root
    get_settings.cache_clear()
    root = tmp_path_factory.getbasetemp()  # every test's folder, the archive included
    before = file_stamps(root)

    with caplog.at_level(logging.WARNING, logger="tasks.discover"):
        summary = urban_footprint(  # type: ignore[call-overload]  # a dict, as Prefect sends it
            params=footprint_params(
                json.dumps(tiny_archive.aoi),
                stac_api_url=hostile_stac.url,
                output_url=str(out),
                max_cloud_cover=100,
            )
        )
    get_settings.cache_clear()

    after = file_stamps(root)
    changed = sorted(k for k, v in after.items() if before.get(k) != v)
    mine = str(tmp_path.relative_to(root))
    outside = [k for k in changed if not k.startswith((f"{mine}/out/", f"{mine}/cache/"))]
    assert outside == [], "written outside the output prefix and the cache"
    assert not [k for k in before if k not in after], "files were removed"
    assert os.listdir(tmp) == [] and os.listdir(cwd) == []
    assert_safe_keys(list(file_stamps(out)))

    item = json.loads(Path(summary.product.item_href).read_text())
    used = item["properties"]["eo_pipeline:scene_ids"]
    assert {"../x", "/etc/passwd", LONG, "東京-Ωmega-ünïcode"} <= set(used), used
    assert "x\x00y" not in used
    assert any(
        "'x\\x00y'" in r.getMessage() and "control characters" in r.getMessage()
        for r in caplog.records
    ), "the item with a NUL in its id is skipped with its id and the reason in the log"

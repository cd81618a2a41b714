"""The watched-AOI registry, the watermark logic (new, late, reprocessed, nothing new), the
``eo.acquisition.new`` event contract and the monitor trigger — without a server."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.events.schemas.automations import Posture
from prefect.server.events.actions import RunDeployment
from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate
from shapely.geometry import shape

from flows.params import MonitorParams
from flows.watch import WatchParams, monitor_trigger
from tasks.aoi_registry import AoiRegistry, WatchedAoi, registry_url, validate_aoi_id
from tasks.errors import InputError, TransientIOError
from tasks.events import ACQUISITION_EVENT, EVENT_NAMESPACE, acquisition_event, event_id
from tasks.settings import Settings
from tasks.storage import open_store
from tasks.watermark import (
    Acquisition,
    ItemStamp,
    Watermark,
    advance,
    load_watermark,
    poll_aoi,
    save_watermark,
    search_window,
)

BBOX = "11.96,51.344,11.98,51.356"
DAY = timedelta(days=1)
LOOKBACK = timedelta(days=30)
NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)


def _t(day: int, month: int = 8) -> datetime:
    return datetime(2026, month, day, 10, tzinfo=UTC)


def _item(
    item_id: str, when: datetime, updated: str | None = None, collection: str = "sentinel-2-l2a"
) -> dict[str, Any]:
    """A minimal STAC Item dict as a STAC API returns it."""
    return {
        "type": "Feature",
        "id": item_id,
        "collection": collection,
        "geometry": None,
        "properties": {
            "datetime": when.isoformat().replace("+00:00", "Z"),
            "updated": updated or (when + timedelta(hours=3)).isoformat().replace("+00:00", "Z"),
        },
    }


# ---- registry -----------------------------------------------------------------------------------
def test_registry_add_list_remove_round_trip(tmp_path: Path) -> None:
    reg = AoiRegistry(str(tmp_path / "state" / "aois.geojson"))
    assert reg.aois() == []
    a = reg.add("leipzig-north", BBOX, products=["change"], since="2026-01-01")
    reg.add("b_2", {"type": "Polygon", "coordinates": [[[0, 0], [0.1, 0], [0.1, 0.1], [0, 0]]]})
    doc = json.loads((tmp_path / "state" / "aois.geojson").read_text())
    assert doc["type"] == "FeatureCollection"
    assert [f["id"] for f in doc["features"]] == ["b_2", "leipzig-north"]
    again = AoiRegistry(str(tmp_path / "state" / "aois.geojson")).get("leipzig-north")
    assert again == a and again.geometry == a.geometry
    assert again.products == ("change",)
    assert again.watched_since == datetime(2026, 1, 1, tzinfo=UTC)
    assert reg.remove("b_2").id == "b_2"
    assert [x.id for x in reg.aois()] == ["leipzig-north"]
    assert not list((tmp_path / "state").glob(".tmp-*")), "atomic writes leave no temp files"


@pytest.mark.parametrize("bad", ["", "Leipzig", "a.b", "../x", "-x", "a" * 65, "a b", "ü"])
def test_validate_aoi_id_rejects_unsafe_ids(bad: str) -> None:
    with pytest.raises(InputError, match="lower-case letters"):
        validate_aoi_id(bad)


def test_registry_rejects_duplicates_bad_aois_and_unknown_ids(tmp_path: Path) -> None:
    reg = AoiRegistry(str(tmp_path / "aois.geojson"))
    reg.add("a", BBOX)
    with pytest.raises(InputError, match="already registered"):
        reg.add("a", BBOX)
    assert reg.add("a", BBOX, products=["footprint"], replace=True).products == ("footprint",)
    with pytest.raises(InputError, match="bbox has 4 numbers"):
        reg.add("b", "1,2,3")
    with pytest.raises(InputError, match="products"):
        reg.add("b", BBOX, products=["landcover"])
    with pytest.raises(InputError, match="collections"):
        reg.add("b", BBOX, collections=["sentinel-1-grd"])
    with pytest.raises(InputError, match=r"\['nope'\] are not registered.*\['a'\]"):
        reg.select(["nope"])
    with pytest.raises(InputError, match="not registered"):
        reg.remove("nope")


def test_registry_reports_a_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "aois.geojson").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        AoiRegistry(str(tmp_path / "aois.geojson")).aois()
    (tmp_path / "aois.geojson").write_text('{"type": "Feature"}')
    with pytest.raises(InputError, match="not a GeoJSON FeatureCollection"):
        AoiRegistry(str(tmp_path / "aois.geojson")).aois()
    with pytest.raises(InputError, match="GeoJSON file"):
        AoiRegistry(str(tmp_path / "aois.parquet"))


def test_registry_url_defaults_under_the_output() -> None:
    assert registry_url(Settings(output_url="s3://b/p/")) == "s3://b/p/_state/aois.geojson"
    assert registry_url(Settings(output_url="x"), output_url="y") == "y/_state/aois.geojson"
    explicit = Settings(output_url="x", aoi_registry_url="s3://b/aois.geojson")
    assert registry_url(explicit, output_url="y") == "s3://b/aois.geojson"


# ---- watermark logic ----------------------------------------------------------------------------
def _stamps(*items: dict[str, Any]) -> list[ItemStamp]:
    return [ItemStamp.from_item(i) for i in items]


def test_advance_first_poll_announces_everything_as_new() -> None:
    acqs, state = advance(
        None, _stamps(_item("b", _t(5)), _item("a", _t(3))), aoi_id="x", lookback=LOOKBACK, now=NOW
    )
    assert [(a.kind, a.item.id) for a in acqs] == [("new", "a"), ("new", "b")]  # oldest first
    assert state.newest == _t(5) and set(state.seen) == {"sentinel-2-l2a/a", "sentinel-2-l2a/b"}


def test_advance_nothing_new_announces_nothing_and_keeps_the_watermark() -> None:
    found = _stamps(_item("a", _t(3)), _item("b", _t(5)))
    _, state = advance(None, found, aoi_id="x", lookback=LOOKBACK, now=NOW)
    acqs, again = advance(state, found, aoi_id="x", lookback=LOOKBACK, now=NOW + DAY)
    assert acqs == []
    assert again.newest == state.newest and again.seen == state.seen


def test_advance_late_item_older_than_the_watermark_is_announced_as_late() -> None:
    _, state = advance(None, _stamps(_item("a", _t(10))), aoi_id="x", lookback=LOOKBACK, now=NOW)
    # a Landsat scene acquired before the newest Sentinel-2 one, published weeks later
    late = _item("LC09_late", _t(2), collection="landsat-c2-l2")
    acqs, state2 = advance(
        state, _stamps(_item("a", _t(10)), late), aoi_id="x", lookback=LOOKBACK, now=NOW
    )
    assert [(a.kind, a.item.id) for a in acqs] == [("late", "LC09_late")]
    assert state2.newest == _t(10), "a late item does not move the watermark back"
    assert "landsat-c2-l2/LC09_late" in state2.seen


def test_advance_reprocessed_item_with_newer_updated_is_announced_once() -> None:
    v1 = _item("a", _t(3), updated="2026-08-03T13:00:00Z")
    v2 = _item("a", _t(3), updated="2026-09-20T08:00:00Z")
    _, state = advance(None, _stamps(v1), aoi_id="x", lookback=LOOKBACK, now=NOW)
    acqs, state2 = advance(state, _stamps(v2), aoi_id="x", lookback=LOOKBACK, now=NOW)
    assert [(a.kind, a.item.updated, a.previous_updated) for a in acqs] == [
        ("reprocessed", "2026-09-20T08:00:00Z", "2026-08-03T13:00:00Z")
    ]
    assert advance(state2, _stamps(v2), aoi_id="x", lookback=LOOKBACK, now=NOW)[0] == []
    # an older `updated` (a stale replica answering) is not a new version
    assert advance(state2, _stamps(v1), aoi_id="x", lookback=LOOKBACK, now=NOW)[0] == []


def test_advance_forgets_items_older_than_the_lookback() -> None:
    found = _stamps(_item("old", _t(1, month=6)), _item("new", _t(20)))
    _, state = advance(None, found, aoi_id="x", lookback=LOOKBACK, now=NOW)
    assert set(state.seen) == {"sentinel-2-l2a/new"}
    start, end = search_window(state, since=_t(1, month=1), now=NOW, lookback=LOOKBACK)
    assert (start, end) == (_t(20) - LOOKBACK, NOW), "the next search starts where memory does"


def test_search_window_starts_at_since_without_state_and_never_before_it() -> None:
    assert search_window(None, since=_t(1), now=NOW, lookback=LOOKBACK) == (_t(1), NOW)
    state = Watermark(aoi_id="x", newest=_t(10))
    assert search_window(state, since=_t(1, 1), now=NOW, lookback=LOOKBACK)[0] == _t(10) - LOOKBACK
    assert search_window(state, since=_t(5), now=NOW, lookback=LOOKBACK)[0] == _t(5)
    start, end = search_window(None, since=NOW + DAY, now=NOW, lookback=LOOKBACK)
    assert start > end, "an AOI watched from a future date has nothing to search yet"


def test_watermark_round_trips_through_the_store(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    assert load_watermark(store, "x") is None
    _, state = advance(None, _stamps(_item("a", _t(3))), aoi_id="x", lookback=LOOKBACK, now=NOW)
    path = save_watermark(store, state)
    assert path.endswith("_state/watch/x.json")
    assert load_watermark(store, "x") == state
    assert not list((tmp_path / "_state" / "watch").glob(".tmp-*"))
    (tmp_path / "_state" / "watch" / "x.json").write_text('{"version": 99}')
    with pytest.raises(InputError, match="delete the file"):
        load_watermark(store, "x")


# ---- one poll: announce first, then advance ---------------------------------------------------
class _Archive:
    """A fake STAC search over a mutable list of items, recording the windows it was asked."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.windows: list[tuple[datetime, datetime]] = []

    def search(self, aoi: WatchedAoi, start: datetime, end: datetime) -> list[dict[str, Any]]:
        self.windows.append((start, end))
        return [i for i in self.items if start <= ItemStamp.from_item(i).datetime <= end]


def test_poll_aoi_with_since_ahead_searches_nothing(tmp_path: Path) -> None:
    aoi = WatchedAoi(id="later", geometry=_geometry(), since=NOW + DAY)
    archive = _Archive([_item("a", _t(3))])
    result = poll_aoi(
        aoi, store=open_store(str(tmp_path)), search=archive.search, announce=_never, now=NOW
    )
    assert (result.found, result.newest, archive.windows) == (0, None, [])


def _never(aoi: WatchedAoi, acqs: Sequence[Acquisition]) -> None:
    raise AssertionError(f"nothing should be announced, got {acqs}")


def test_poll_aoi_announces_once_and_only_after_delivery_advances(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    aoi = WatchedAoi(id="x", geometry=_geometry(), since=_t(1, month=1))
    archive = _Archive([_item("a", _t(3)), _item("b", _t(5))])
    announced: list[list[str]] = []

    def announce(a: WatchedAoi, acqs: Sequence[Acquisition]) -> None:
        announced.append([f"{x.kind}:{x.item.id}" for x in acqs])

    def failing(a: WatchedAoi, acqs: Sequence[Acquisition]) -> None:
        raise TransientIOError("Prefect API unreachable")

    first = poll_aoi(aoi, store=store, search=archive.search, announce=announce, now=NOW)
    assert (first.found, first.count("new"), first.newest) == (2, 2, _t(5))
    assert poll_aoi(aoi, store=store, search=archive.search, announce=announce, now=NOW).found == 2
    assert announced == [["new:a", "new:b"]], "a second poll with nothing new announces nothing"

    archive.items += [_item("c", _t(9)), _item("late", _t(4), collection="landsat-c2-l2")]
    with pytest.raises(TransientIOError):
        poll_aoi(aoi, store=store, search=archive.search, announce=failing, now=NOW)
    assert load_watermark(store, "x").newest == _t(5), "undelivered: the watermark stays"  # type: ignore[union-attr]
    third = poll_aoi(aoi, store=store, search=archive.search, announce=announce, now=NOW)
    assert announced[-1] == ["late:late", "new:c"]
    assert third.newest == _t(9) and third.start == _t(5) - timedelta(days=30)


# ---- the event contract and the trigger ---------------------------------------------------------
def test_acquisition_event_follows_the_contract() -> None:
    aoi = WatchedAoi(id="leipzig", geometry=_geometry())
    stamp = ItemStamp("sentinel-2-l2a", "S2A_X", _t(7), "2026-08-07T13:00:00Z")
    event = acquisition_event(aoi, Acquisition("new", stamp), stac_api_url="http://stac")
    assert event.event == ACQUISITION_EVENT
    assert event.resource.id == "eo.item.sentinel-2-l2a.S2A_X"
    assert event.resource["prefect.resource.name"] == "S2A_X"
    assert event.resource["eo.collection"] == "sentinel-2-l2a"
    (related,) = event.related
    assert (related.id, related.role, related.name) == ("eo.aoi.leipzig", "aoi", "leipzig")
    assert event.id == uuid.uuid5(
        EVENT_NAMESPACE, "leipzig/sentinel-2-l2a/S2A_X/2026-08-07T13:00:00Z"
    )
    p = event.payload
    assert json.loads(p["aoi"]) == aoi.geometry and isinstance(p["aoi"], str)
    assert (p["aoi_id"], p["item_id"], p["collection"], p["year"]) == (
        "leipzig",
        "S2A_X",
        "sentinel-2-l2a",
        2026,
    )
    assert p["datetime"] == "2026-08-07T10:00:00Z" and p["updated"] == "2026-08-07T13:00:00Z"
    assert p["stac_api_url"] == "http://stac" and p["output_url"] is None
    # a repeated announcement has the same id; a new version of the item a new one
    again = acquisition_event(aoi, Acquisition("new", stamp), stac_api_url="http://stac")
    assert again.id == event.id
    assert event_id("leipzig", "sentinel-2-l2a", "S2A_X", "2026-09-01T00:00:00Z") != event.id


def test_monitor_trigger_debounces_per_aoi_and_templates_monitor_params() -> None:
    trigger = monitor_trigger(within=timedelta(minutes=3), params={"use_baselines": True})
    assert trigger.expect == {ACQUISITION_EVENT}
    assert trigger.model_dump(mode="json")["match"] == {"prefect.resource.id": "eo.item.*"}
    assert trigger.for_each == {"related:aoi:prefect.resource.id"}
    assert trigger.posture == Posture.Reactive and trigger.threshold == 1
    assert trigger.within == trigger.schedule_after == timedelta(minutes=3)
    params = trigger.parameters["params"]  # type: ignore[index]
    assert params["aoi"] == "{{ event.payload.aoi }}" and params["use_baselines"] is True
    # render them the way Prefect's server does for the RunDeployment action
    # (prefect.server.events.actions.RunDeployment.render_parameters): types survive
    aoi = WatchedAoi(id="leipzig", geometry=_geometry(), products=("footprint",))
    event = acquisition_event(aoi, Acquisition("new", ItemStamp("sentinel-2-l2a", "S", _t(7))))
    parameters = copy.deepcopy(trigger.parameters) or {}
    RunDeployment._upgrade_v1_templates(parameters)
    rendered = hydrate(
        parameters,
        HydrationContext(raise_on_error=True, render_jinja=True, jinja_context={"event": event}),
    )
    assert rendered["params"]["products"] == ["footprint"] and rendered["params"]["year"] == 2026
    assert rendered["params"]["output_url"] is None
    monitor = MonitorParams.model_validate(rendered["params"])
    assert monitor.year == 2026 and monitor.products == ["footprint"] and monitor.use_baselines
    assert shape(monitor.aoi).equals(shape(_geometry()))


def _geometry() -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[11.96, 51.344], [11.98, 51.344], [11.98, 51.356],
                                                [11.96, 51.356], [11.96, 51.344]]]}  # fmt: skip


def test_monitor_params_year_and_interval_are_checked() -> None:
    ok = MonitorParams(aoi=BBOX, year=2023, change_interval_years=10)
    assert (ok.year, ok.change_interval_years) == (2023, 10)
    with pytest.raises(ValueError, match="change_interval_years"):
        MonitorParams(aoi=BBOX, year=1990, change_interval_years=10)
    with pytest.raises(ValueError, match="in the future"):
        MonitorParams(aoi=BBOX, year=datetime.now(UTC).year + 1)
    with pytest.raises(ValueError, match="before Sentinel-2"):
        MonitorParams(aoi=BBOX, year=2010, change_interval_years=10)
    assert MonitorParams(aoi=BBOX, year=2010, change_interval_years=10, use_baselines=True)
    with pytest.raises(ValueError, match="products"):
        MonitorParams(aoi=BBOX, products=[])


def test_watch_params_validate_ids() -> None:
    assert WatchParams(aoi_ids=["a", "a", "b"]).aoi_ids == ["a", "b"]
    with pytest.raises(ValueError, match="lower-case"):
        WatchParams(aoi_ids=["A"])
    with pytest.raises(ValueError, match="at least one"):
        WatchParams(aoi_ids=[])

"""The watch stage: what is new over a watched AOI since the last poll, remembered durably.

Per AOI, a small JSON document in object storage at ``<output_url>/_state/watch/<aoi id>.json``
(never in process memory, so any worker, after any restart, continues where the last poll
stopped)::

    {"version": 1, "aoi_id": "leipzig", "lookback_days": 30.0, "written": "...Z",
     "newest": "2023-08-07T10:12:50.502Z",            # newest acquisition datetime seen
     "seen": [{"collection": "sentinel-2-l2a", "id": "S2A_...", "datetime": "...Z",
               "updated": "...Z"}, ...]}             # every item acquired since newest - lookback

A poll searches acquisitions from ``newest - lookback`` to now (the first poll: from the AOI's
``since``) and sorts what it finds against the state:

- **new**: not seen, acquired after ``newest``;
- **late**: not seen, acquired at or before ``newest`` (published late, e.g. a Landsat scene whose
  Level-2 product appears weeks after a newer Sentinel-2 one);
- **reprocessed**: seen, but its ``updated`` is newer than the one recorded.

Everything else was announced before. The poll announces what it found first and writes the new
state after (`poll_aoi`): a crash in between announces the same items again on the next poll
(at-least-once), with the same event ids (`tasks.events.event_id`), so Prefect drops the repeats.
Items published more than `lookback` after a newer acquisition are not seen: raise the lookback
to the archive's publication latency.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.aoi_registry import WatchedAoi, parse_datetime, validate_aoi_id
from tasks.errors import InputError
from tasks.retry import retry_transient_only
from tasks.storage import ObjectStore

__all__ = [
    "DEFAULT_LOOKBACK_DAYS",
    "Acquisition",
    "ItemStamp",
    "PollResult",
    "Watermark",
    "advance",
    "delete_watermark",
    "load_watermark",
    "poll_aoi",
    "save_watermark",
    "search_window",
    "watch_aoi",
    "watermark_path",
]

#: Default lookback (days). Landsat 7 Collection 2 Level-2 products appear ~25-27 days after
#: acquisition (24-26 days to Tier 1, then ~24 h to Level-2), Landsat 8 ~4-11 days, Landsat 9
#: and Sentinel-2 L2A within ~3 days: USGS FAQ "How long does it take to create Landsat
#: Collection 2 Level-2 products after a Landsat scene is acquired?"; 30 days covers them all.
DEFAULT_LOOKBACK_DAYS = 30.0
_VERSION = 1
_STATE_DIR = ("_state", "watch")

Kind = Literal["new", "late", "reprocessed"]


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class ItemStamp:
    """What identifies one version of a STAC Item: collection, id, acquisition time, `updated`.

    `updated` is the Item's ``updated`` property as published (``created`` when it has none,
    ``""`` when it has neither), kept verbatim: it is part of the event id.
    """

    collection: str
    id: str
    datetime: datetime
    updated: str = ""

    @property
    def key(self) -> str:
        return f"{self.collection}/{self.id}"

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> ItemStamp:
        """The stamp of a STAC Item dict (``datetime`` or ``start_datetime``; naive means UTC).

        Raises KeyError / TypeError / ValueError for an Item without id, collection or time.
        """
        props = item["properties"]
        when = props.get("datetime") or props.get("start_datetime")
        return cls(
            collection=str(item["collection"]),
            id=str(item["id"]),
            datetime=parse_datetime(str(when), field=f"{item['id']}.datetime"),
            updated=str(props.get("updated") or props.get("created") or ""),
        )

    def to_json(self) -> dict[str, str]:
        return {
            "collection": self.collection,
            "id": self.id,
            "datetime": _iso(self.datetime),
            "updated": self.updated,
        }


def _newer(updated: str, than: str) -> bool:
    """Is `updated` a later version than `than`? ISO times compare as times; anything else
    (a server with free-form ``updated``) counts as newer when it differs."""
    if updated == than:
        return False
    try:
        return parse_datetime(updated, field="updated") > parse_datetime(than, field="updated")
    except InputError:
        return True


@dataclass(frozen=True)
class Acquisition:
    """An item worth announcing: `kind` says why (new, late or reprocessed)."""

    kind: Kind
    item: ItemStamp
    previous_updated: str | None = None


@dataclass(frozen=True)
class Watermark:
    """The durable state of one AOI's watch (see the module docstring for the JSON form)."""

    aoi_id: str
    newest: datetime | None = None
    seen: Mapping[str, ItemStamp] = field(default_factory=dict)
    lookback_days: float = DEFAULT_LOOKBACK_DAYS
    written: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "aoi_id": self.aoi_id,
            "lookback_days": self.lookback_days,
            "written": None if self.written is None else _iso(self.written),
            "newest": None if self.newest is None else _iso(self.newest),
            "seen": [s.to_json() for s in sorted(self.seen.values(), key=_order)],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Watermark:
        """Raises `InputError` when `doc` is not a watermark this version can read."""
        if doc.get("version") != _VERSION:
            raise InputError(
                f"watermark of {doc.get('aoi_id')!r}: version {doc.get('version')!r} is not "
                f"{_VERSION}; delete the file to start the watch again from the AOI's `since`."
            )
        try:
            stamps = [
                ItemStamp(
                    collection=s["collection"],
                    id=s["id"],
                    datetime=parse_datetime(s["datetime"], field="seen.datetime"),
                    updated=s.get("updated", ""),
                )
                for s in doc["seen"]
            ]
            newest = doc.get("newest")
            written = doc.get("written")
            return cls(
                aoi_id=validate_aoi_id(doc["aoi_id"]),
                newest=None if newest is None else parse_datetime(newest, field="newest"),
                seen={s.key: s for s in stamps},
                lookback_days=float(doc.get("lookback_days", DEFAULT_LOOKBACK_DAYS)),
                written=None if written is None else parse_datetime(written, field="written"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(
                f"watermark of {doc.get('aoi_id')!r} is malformed ({err!r}); delete the file to "
                "start the watch again from the AOI's `since`."
            ) from err


def _order(s: ItemStamp) -> tuple[datetime, str, str]:
    return (s.datetime, s.collection, s.id)


def search_window(
    state: Watermark | None, *, since: datetime, now: datetime, lookback: timedelta
) -> tuple[datetime, datetime]:
    """The acquisition times to search: ``[newest - lookback, now]``, never before `since`.

    Without a state (first poll) or before anything was found: ``[since, now]``. An AOI whose
    `since` is still ahead gets an empty window (start after end): nothing to search yet.
    """
    start = since
    if state is not None and state.newest is not None:
        start = max(since, state.newest - lookback)
    return start, now


def advance(
    state: Watermark | None,
    found: Iterable[ItemStamp],
    *,
    aoi_id: str,
    lookback: timedelta,
    now: datetime,
) -> tuple[list[Acquisition], Watermark]:
    """Sort `found` into what to announce and the next state.

    `found` are the items a search over `search_window(state, ...)` returned. Returns the
    acquisitions to announce (new, late, reprocessed), oldest first, and the state to write once
    they are announced: `newest` moved to the newest acquisition seen, `seen` holding every item
    acquired since ``newest - lookback`` (older ones can no longer come back in a search).
    """
    seen: dict[str, ItemStamp] = dict(state.seen) if state is not None else {}
    newest = state.newest if state is not None else None
    out: list[Acquisition] = []
    for item in sorted({s.key: s for s in found}.values(), key=_order):
        before = seen.get(item.key)
        if before is None:
            late = newest is not None and item.datetime <= newest
            out.append(Acquisition("late" if late else "new", item))
        elif _newer(item.updated, before.updated):
            out.append(Acquisition("reprocessed", item, previous_updated=before.updated))
        else:
            continue
        seen[item.key] = item
    candidates = [s.datetime for s in seen.values()] + ([newest] if newest is not None else [])
    newest = max(candidates, default=None)
    if newest is not None:
        horizon = newest - lookback
        seen = {k: s for k, s in seen.items() if s.datetime >= horizon}
    next_state = Watermark(
        aoi_id=aoi_id,
        newest=newest,
        seen=seen,
        lookback_days=lookback.total_seconds() / 86400.0,
        written=now,
    )
    return out, next_state


# ---- storage ------------------------------------------------------------------------------------
def watermark_path(store: ObjectStore, aoi_id: str) -> str:
    """Path of the state of `aoi_id` in `store` (the output prefix)."""
    return store.path(*_STATE_DIR, f"{validate_aoi_id(aoi_id)}.json")


def load_watermark(store: ObjectStore, aoi_id: str) -> Watermark | None:
    """The stored state of `aoi_id`, or None before its first poll."""
    path = watermark_path(store, aoi_id)
    if not store.exists(path):
        return None
    try:
        doc = json.loads(store.read_bytes(path))
    except json.JSONDecodeError as err:
        raise InputError(
            f"watermark {store.url(*_STATE_DIR, aoi_id + '.json')} is not JSON ({err.msg}); "
            "delete it to start the watch again from the AOI's `since`."
        ) from err
    state = Watermark.from_json(doc)
    if state.aoi_id != aoi_id:
        raise InputError(f"watermark {path} belongs to {state.aoi_id!r}, not {aoi_id!r}.")
    return state


def save_watermark(store: ObjectStore, state: Watermark) -> str:
    """Write `state` atomically (readers see the old state or the new one); returns its path."""
    path = watermark_path(store, state.aoi_id)
    body = json.dumps(state.to_json(), indent=1).encode() + b"\n"
    tmp_dir = store.path(*_STATE_DIR, f".tmp-{uuid.uuid4().hex}")
    try:
        store.write_atomic(path, body, tmp_dir=tmp_dir)
    finally:
        store.remove(tmp_dir, recursive=True)
    return path


def delete_watermark(store: ObjectStore, aoi_id: str) -> bool:
    """Forget the state of `aoi_id` (its next poll starts again at `since`); False if none."""
    path = watermark_path(store, aoi_id)
    if not store.exists(path):
        return False
    store.remove(path)
    return True


# ---- one poll -----------------------------------------------------------------------------------
#: search(aoi, start, end) -> STAC Item dicts acquired in [start, end] over the AOI
SearchFn = Callable[[WatchedAoi, datetime, datetime], Sequence[Mapping[str, Any]]]
#: announce(aoi, acquisitions): deliver them, raise if that failed
AnnounceFn = Callable[[WatchedAoi, Sequence[Acquisition]], None]


@dataclass(frozen=True)
class PollResult:
    """What one poll of one AOI saw and announced."""

    aoi_id: str
    start: datetime
    end: datetime
    found: int
    acquisitions: tuple[Acquisition, ...]
    newest: datetime | None

    def count(self, kind: Kind) -> int:
        return sum(a.kind == kind for a in self.acquisitions)

    def row(self) -> dict[str, Any]:
        """One row of the watch summary table."""
        return {
            "aoi": self.aoi_id,
            "window": f"{_iso(self.start)} .. {_iso(self.end)}",
            "found": self.found,
            "new": self.count("new"),
            "late": self.count("late"),
            "reprocessed": self.count("reprocessed"),
            "announced": len(self.acquisitions),
            "watermark": None if self.newest is None else _iso(self.newest),
        }


def poll_aoi(
    aoi: WatchedAoi,
    *,
    store: ObjectStore,
    search: SearchFn,
    announce: AnnounceFn,
    lookback: timedelta = timedelta(days=DEFAULT_LOOKBACK_DAYS),
    now: datetime | None = None,
) -> PollResult:
    """Poll one AOI: search since its watermark, announce what is new, then advance the watermark.

    The order is what makes the watch at-least-once: `announce` must raise when it could not
    deliver, and then the watermark stays where it was.
    """
    if lookback <= timedelta(0):
        raise InputError(f"lookback: {lookback} must be positive (days).")
    now = now or datetime.now(UTC)
    state = load_watermark(store, aoi.id)
    start, end = search_window(state, since=aoi.watched_since, now=now, lookback=lookback)
    found = search(aoi, start, end) if start <= end else []
    stamps = [ItemStamp.from_item(item) for item in found]
    acquisitions, next_state = advance(state, stamps, aoi_id=aoi.id, lookback=lookback, now=now)
    if acquisitions:
        announce(aoi, acquisitions)
    save_watermark(store, next_state)
    return PollResult(
        aoi_id=aoi.id,
        start=start,
        end=end,
        found=len(stamps),
        acquisitions=tuple(acquisitions),
        newest=next_state.newest,
    )


# ---- Prefect tasks ------------------------------------------------------------------------------
@task(
    name="watch-aoi",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_transient_only,
    cache_policy=NO_CACHE,  # a poll must look again every time
    tags=["io", "stac"],
)
def watch_aoi(
    aoi: WatchedAoi,
    *,
    lookback_days: float = DEFAULT_LOOKBACK_DAYS,
    stac_api_url: str | None = None,
    output_url: str | None = None,
) -> PollResult:
    """Poll `aoi` on the STAC API and announce its new acquisitions as Prefect events.

    The state lives under `output_url` (default ``EO_OUTPUT_URL``); `stac_api_url` and
    `output_url`, when given, travel in the events so the triggered run uses them too.
    """
    from tasks.discover import discover
    from tasks.events import acquisition_event, emit_confirmed
    from tasks.storage import open_store

    def search(a: WatchedAoi, start: datetime, end: datetime) -> list[dict[str, Any]]:
        scenes = discover(a.geometry, start, end, list(a.collections), stac_url=stac_api_url)
        return [s.item for s in scenes]

    def announce(a: WatchedAoi, acquisitions: Sequence[Acquisition]) -> None:
        emit_confirmed(
            [
                acquisition_event(a, acq, stac_api_url=stac_api_url, output_url=output_url)
                for acq in acquisitions
            ]
        )

    return poll_aoi(
        aoi,
        store=open_store(output_url),
        search=search,
        announce=announce,
        lookback=timedelta(days=lookback_days),
    )

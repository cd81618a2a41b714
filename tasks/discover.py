"""Discovery: which acquisitions of which collections cover an AOI in a time range.

Talks to any STAC API with pystac-client (Earth Search, Planetary Computer, the embedded
``rustac serve``). Uses the server's ``query`` extension for cloud cover when it conforms and
always re-checks client-side (servers without the extension, items without ``eo:cloud_cover``).
Paging follows ``next`` links; transient failures (HTTP 429/5xx, timeouts, dropped connections)
are retried with exponential backoff by urllib3 under pystac-client's StacApiIO.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from typing import Any

import pystac_client
import requests
from prefect import task
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from pystac_client.warnings import DoesNotConformTo
from shapely.geometry import mapping, shape
from urllib3.util.retry import Retry

from tasks.aoi import AoiLike, parse_aoi
from tasks.errors import InputError, ServiceUnavailableError, TransientIOError
from tasks.refs import SceneRef
from tasks.retry import retry_transient_only
from tasks.sensors import KNOWN_COLLECTIONS, collection_family
from tasks.settings import Settings, get_settings

__all__ = ["DateLike", "discover", "open_client", "parse_time_range"]

log = logging.getLogger(__name__)

DateLike = str | date | datetime

#: HTTP statuses worth retrying: throttling and server-side failures.
RETRY_STATUSES = (429, 500, 502, 503, 504)


def parse_time_range(start: DateLike, end: DateLike) -> tuple[datetime, datetime]:
    """Parse ISO dates into an inclusive UTC range; a date `end` means the end of that day.

    Raises `InputError` naming `start`/`end` for unparsable or reversed dates.
    """
    t0 = _to_datetime(start, "start", end_of_day=False)
    t1 = _to_datetime(end, "end", end_of_day=True)
    if t1 < t0:
        raise InputError(f"end ({t1.isoformat()}) is before start ({t0.isoformat()}); swap them.")
    return t0, t1


def _to_datetime(value: DateLike, name: str, *, end_of_day: bool) -> datetime:
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime.combine(value, time.max if end_of_day else time.min)
    elif isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                d = date.fromisoformat(text)
                dt = datetime.combine(d, time.max if end_of_day else time.min)
            else:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InputError(
                f"{name}: {value!r} is not an ISO date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ."
            ) from None
    else:
        raise InputError(f"{name}: expected an ISO date string, got {type(value).__name__}.")
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def open_client(url: str, *, settings: Settings | None = None) -> pystac_client.Client:
    """Open a STAC API with bounded retries and a request timeout.

    Raises `ServiceUnavailableError` naming the URL when it cannot be reached.
    """
    settings = settings or get_settings()
    retry = Retry(
        total=settings.stac_max_retries,
        connect=settings.stac_max_retries,
        read=settings.stac_max_retries,
        status=settings.stac_max_retries,
        backoff_factor=0.5,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # retry POST /search as well: searches are idempotent
        raise_on_status=False,
    )
    stac_io = StacApiIO(timeout=settings.stac_timeout_s, max_retries=retry)
    try:
        return pystac_client.Client.open(url, stac_io=stac_io)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise ServiceUnavailableError(
            f"the STAC API at {url} cannot be reached ({type(err).__name__}); check "
            "EO_STAC_API_URL (or the stac_url argument) and the network."
        ) from err
    except APIError as err:
        raise _api_error(url, err) from err


def _api_error(url: str, err: APIError) -> Exception:
    status = getattr(err, "status_code", None)
    if status is not None and (status >= 500 or status == 429):
        return TransientIOError(f"the STAC API at {url} kept failing (HTTP {status}): {err}")
    return ServiceUnavailableError(
        f"the STAC API at {url} answered HTTP {status}: {str(err)[:300]}; check EO_STAC_API_URL."
    )


def discover(
    aoi: AoiLike,
    start: DateLike,
    end: DateLike,
    collections: Sequence[str],
    *,
    stac_url: str | None = None,
    max_cloud_cover: float | None = None,
    page_size: int = 200,
    settings: Settings | None = None,
) -> list[SceneRef]:
    """Scenes of `collections` that intersect `aoi` between `start` and `end`, sorted by time.

    Parameters
    ----------
    aoi: bbox (west, south, east, north), GeoJSON geometry/Feature, or GeoJSON string, in EPSG:4326.
    start, end: ISO dates or datetimes (UTC if naive); a date `end` includes that whole day.
    collections: STAC collection ids, e.g. ``["sentinel-2-l2a", "landsat-c2-l2"]``.
    stac_url: STAC API root; default ``EO_STAC_API_URL``.
    max_cloud_cover: keep scenes with ``eo:cloud_cover`` <= this (percent, 0-100); scenes without
        the property are kept and logged.
    """
    settings = settings or get_settings()
    geom = parse_aoi(aoi)
    t0, t1 = parse_time_range(start, end)
    if isinstance(collections, str):
        collections = [collections]
    if not collections:
        raise InputError(f"collections: give at least one of {sorted(KNOWN_COLLECTIONS)}.")
    for c in collections:
        try:
            collection_family(c)
        except InputError as err:
            raise InputError(f"collections: {err}") from None
    if max_cloud_cover is not None and not 0 <= max_cloud_cover <= 100:
        raise InputError(f"max_cloud_cover: {max_cloud_cover} is outside 0-100 (percent).")
    url = stac_url or settings.stac_api_url
    if not url:
        raise InputError(
            "stac_url: no STAC API given; set EO_STAC_API_URL or pass stac_url "
            "(`eo stac serve DIR` serves the embedded archive)."
        )

    client = open_client(url, settings=settings)
    _check_collections_exist(client, url, collections)
    query = None
    if max_cloud_cover is not None and client.conforms_to(ConformanceClasses.QUERY):
        query = {"eo:cloud_cover": {"lte": max_cloud_cover}}

    with warnings.catch_warnings():
        # Servers without the query/filter extensions make pystac-client warn; we filter
        # client-side below, so the warning carries no information here.
        warnings.simplefilter("ignore", DoesNotConformTo)
        search = client.search(
            collections=list(collections),
            intersects=mapping(geom),
            datetime=(t0, t1),
            query=query,
            limit=page_size,
        )
        try:
            raw_items = list(search.items_as_dicts())
        except (requests.ConnectionError, requests.Timeout) as err:
            raise ServiceUnavailableError(
                f"the STAC API at {url} stopped answering during the search ({type(err).__name__})."
            ) from err
        except APIError as err:
            raise _api_error(url, err) from err

    scenes: dict[tuple[str, str], SceneRef] = {}
    for raw in raw_items:
        ref = _scene_ref(raw)
        if ref is None:
            continue
        if not _intersects(raw, geom):
            continue
        if max_cloud_cover is not None and ref.cloud_cover is not None:
            if ref.cloud_cover > max_cloud_cover:
                continue
        elif max_cloud_cover is not None:
            log.info("scene %s has no eo:cloud_cover; kept", ref.id)
        if not (t0 <= ref.datetime <= t1):
            continue
        scenes[(ref.collection, ref.id)] = ref
    found = sorted(scenes.values(), key=lambda s: (s.datetime, s.collection, s.id))
    log.info(
        "discovered %d scene(s) in %s between %s and %s",
        len(found),
        ",".join(collections),
        t0.date(),
        t1.date(),
    )
    return found


def _check_collections_exist(
    client: pystac_client.Client, url: str, collections: Sequence[str]
) -> None:
    try:
        available = {c.id for c in client.get_collections()}
    except (requests.ConnectionError, requests.Timeout) as err:
        raise ServiceUnavailableError(f"the STAC API at {url} stopped answering.") from err
    except APIError as err:
        raise _api_error(url, err) from err
    missing = [c for c in collections if c not in available]
    if missing:
        raise InputError(
            f"collections: {missing} not served by {url}; it serves {sorted(available)}."
        )


def _scene_ref(item: dict[str, Any]) -> SceneRef | None:
    """A SceneRef from an Item dict, or None (logged with the item's id) when it is malformed."""
    try:
        return SceneRef.from_item(item)
    except (KeyError, TypeError, ValueError) as err:
        log.warning("skipping malformed STAC item %s: %s", item.get("id", "<no id>"), err)
        return None


def _intersects(item: dict[str, Any], geom: Any) -> bool:
    """Client-side check of the footprint (servers may match on bbox only)."""
    g = item.get("geometry")
    if not g:
        return True
    try:
        return bool(shape(g).intersects(geom))
    except (ValueError, TypeError, AttributeError):
        return True


# ---- Prefect tasks -------------------------------------------------------
discover_scenes = task(
    name="discover",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_transient_only,
    tags=["io", "stac"],
)(discover)

"""Discovery: which acquisitions of which collections cover an AOI in a time range.

Talks to any STAC API with pystac-client (Earth Search, Planetary Computer, the embedded
``rustac serve``). Uses the server's ``query`` extension for cloud cover when it conforms and
always re-checks client-side (servers without the extension, items without ``eo:cloud_cover``).
Paging follows ``next`` links; transient failures (HTTP 429/5xx, timeouts, dropped connections)
are retried with exponential backoff by urllib3 under pystac-client's StacApiIO.

Faults of the server end in a bounded time with an error naming the URL and the setting to
change: `TransientIOError` when it keeps failing (5xx, timeouts: ``EO_STAC_MAX_RETRIES`` + 1
attempts of ``EO_STAC_TIMEOUT_S`` each), `ServiceUnavailableError` when it cannot be reached,
answers something that is not JSON or not STAC, or pages in a loop (a ``next`` link already
followed), `InputError` when a search returns more than ``EO_STAC_MAX_ITEMS`` items (a search to
narrow, or a server that pages forever). A malformed Item (no assets, geometry or datetime, a
broken projection, `tasks.sensors.check_item`, control characters in its id) is skipped and
logged with its id and reason.

Credentials: an API URL with ``user:password@`` is opened without them, and they are sent as HTTP
basic auth to that scheme, host and port only (`_HostBasicAuthAdapter`: not to another host a
``next`` link or a redirect points at, and after pystac-client's debug log of the request
headers). Messages show URLs through `tasks.storage.redact`.
"""

from __future__ import annotations

import json
import logging
import unicodedata
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pystac_client
import requests
from prefect import task
from pystac.errors import STACTypeError
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from pystac_client.warnings import DoesNotConformTo
from requests.adapters import HTTPAdapter
from requests.auth import HTTPBasicAuth
from shapely.geometry import mapping, shape
from urllib3.util.retry import Retry

from tasks.aoi import AoiLike, parse_aoi
from tasks.errors import InputError, SceneRejectedError, ServiceUnavailableError, TransientIOError
from tasks.refs import SceneRef
from tasks.retry import retry_transient_only
from tasks.sensors import KNOWN_COLLECTIONS, check_item, collection_family
from tasks.settings import Settings, get_settings
from tasks.storage import redact

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


_DEFAULT_PORTS = {"http": 80, "https": 443}


class _HostBasicAuthAdapter(HTTPAdapter):
    """An `HTTPAdapter` that adds HTTP basic auth to requests for one scheme, host and port.

    Hand-written because requests' own ways leak or misdirect the credentials: a URL with
    userinfo keeps them in every URL that is logged or raised, and ``Session.auth`` sends them to
    any host the session talks to (a ``next`` link may point elsewhere). `add_headers` is the
    adapter's hook for this; it runs in `send`, after pystac-client logged the prepared request.
    """

    def __init__(self, scheme: str, host: str, port: int, auth: HTTPBasicAuth, **kwargs: Any):
        super().__init__(**kwargs)
        self._origin = (scheme, host, port)
        self._auth = auth

    def add_headers(self, request: requests.PreparedRequest, **kwargs: Any) -> None:
        parts = urlsplit(request.url or "")
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
        if (parts.scheme, (parts.hostname or "").lower(), port) == self._origin:
            self._auth(request)


def _split_credentials(url: str) -> tuple[str, HTTPBasicAuth | None]:
    """`url` without its ``user:password@``, and those as basic auth (None when it has none)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    netloc = parts.netloc.rpartition("@")[2]
    auth = HTTPBasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))
    return urlunsplit(parts._replace(netloc=netloc)), auth


def open_client(url: str, *, settings: Settings | None = None) -> pystac_client.Client:
    """Open a STAC API with bounded retries and a request timeout.

    ``https://user:password@host/...`` is opened as ``https://host/...`` with HTTP basic auth
    sent to that host only (module docstring). Raises `ServiceUnavailableError` naming the URL
    (credentials masked) when it cannot be reached.
    """
    settings = settings or get_settings()
    shown = redact(url)
    url, auth = _split_credentials(url)
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
    if auth is not None:
        parts = urlsplit(url)
        origin = (parts.scheme, (parts.hostname or "").lower())
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
        adapter = _HostBasicAuthAdapter(*origin, port, auth, max_retries=retry)
        stac_io.session.mount(f"{parts.scheme}://", adapter)
    with _stac_errors(shown, settings, "opening the API root"):
        # `timeout` again: Client.open passes its own (default None) to stac_io.update(), which
        # would otherwise remove the timeout and let a stalled server hang the search forever
        return pystac_client.Client.open(url, stac_io=stac_io, timeout=settings.stac_timeout_s)


@contextmanager
def _stac_errors(url: str, settings: Settings, doing: str) -> Iterator[None]:
    """Turn what pystac-client raises (after urllib3's bounded retries) into pipeline errors."""
    try:
        yield
    except APIError as err:
        raise _api_error(url, err, settings, doing) from err
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _network_error(url, err, settings, doing) from err
    except json.JSONDecodeError as err:  # orjson's decode error subclasses it too
        raise ServiceUnavailableError(
            f"the STAC API at {url} answered with invalid JSON while {doing} ({redact(err)}); "
            "check "
            "that EO_STAC_API_URL is the root of a STAC API (a proxy or login page answers "
            "HTML), or that the server is healthy."
        ) from err
    except STACTypeError as err:
        raise ServiceUnavailableError(
            f"{url} did not answer like a STAC API while {doing} ({redact(err)[:200]}); check "
            "EO_STAC_API_URL (the API root, e.g. https://earth-search.aws.element84.com/v1)."
        ) from err


def _api_error(url: str, err: APIError, settings: Settings, doing: str) -> Exception:
    """pystac-client's `APIError`: an HTTP status, or a network failure in its context."""
    status = getattr(err, "status_code", None)
    if status is None:
        # StacApiIO re-raises requests' exceptions as a bare APIError (no `from`): the network
        # failure is in __context__
        cause = err.__context__
        if isinstance(cause, requests.ConnectionError | requests.Timeout):
            return _network_error(url, cause, settings, doing)
        return ServiceUnavailableError(
            f"the STAC API at {url} failed while {doing}: {redact(err)[:300]}; check "
            "EO_STAC_API_URL."
        )
    attempts = settings.stac_max_retries + 1
    if status >= 500 or status == 429:
        return TransientIOError(
            f"the STAC API at {url} kept failing while {doing} (HTTP {status}, {attempts} "
            f"attempt(s)): {redact(err)[:200]}; run again later or raise EO_STAC_MAX_RETRIES."
        )
    return ServiceUnavailableError(
        f"the STAC API at {url} answered HTTP {status} while {doing}: {redact(err)[:300]}; check "
        "EO_STAC_API_URL."
    )


def _network_error(url: str, err: Exception, settings: Settings, doing: str) -> Exception:
    """A timeout (worth a later retry) or an endpoint that cannot be reached."""
    attempts = settings.stac_max_retries + 1
    text = redact(err)
    if isinstance(err, requests.Timeout) or "timed out" in text.lower():
        return TransientIOError(
            f"the STAC API at {url} did not answer while {doing} within "
            f"{settings.stac_timeout_s:g} s ({attempts} attempt(s)); check that it is up, or "
            "raise EO_STAC_TIMEOUT_S / EO_STAC_MAX_RETRIES."
        )
    return ServiceUnavailableError(
        f"the STAC API at {url} cannot be reached while {doing} ({type(err).__name__}, "
        f"{attempts} attempt(s)): {text[:200]}; check EO_STAC_API_URL (or the stac_url "
        "argument) and the network."
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
    shown = redact(url)  # what messages show: credentials masked
    _check_collections_exist(client, shown, collections, settings)
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
        raw_items = _search_items(search, shown, settings)

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


def _search_items(search: Any, url: str, settings: Settings) -> list[dict[str, Any]]:
    """Every item of `search`, page by page, within ``EO_STAC_MAX_ITEMS`` and without loops.

    pystac-client follows ``next`` links for as long as the server gives them; a server that
    links a page to itself, or pages forever, would never end. A ``next`` link already followed
    is refused at once; an endless sequence of distinct pages stops at the item limit.
    """
    limit = settings.stac_max_items
    items: list[dict[str, Any]] = []
    followed: set[str] = set()
    with _stac_errors(url, settings, "searching"):
        for n, page in enumerate(search.pages_as_dicts(), start=1):
            features = page.get("features")
            if not isinstance(features, list):
                raise ServiceUnavailableError(
                    f"the STAC API at {url} answered search page {n} without a list of "
                    "features; check EO_STAC_API_URL."
                )
            items.extend(features)
            if len(items) > limit:
                raise InputError(
                    f"the search at {url} returned more than EO_STAC_MAX_ITEMS={limit} items "
                    f"({n} pages); narrow the AOI, the dates or the collections, or raise "
                    "EO_STAC_MAX_ITEMS (a server that pages forever also ends here)."
                )
            nxt = next(
                (
                    lk
                    for lk in page.get("links") or []
                    if isinstance(lk, dict) and lk.get("rel") == "next"
                ),
                None,
            )
            if nxt is None:
                break
            key = json.dumps(nxt, sort_keys=True, default=str)
            if key in followed:
                raise ServiceUnavailableError(
                    f"the STAC API at {url} pages in a loop: page {n} links back to a page "
                    f"already read ({redact(nxt.get('href'))}); the server is faulty, report it "
                    "or use "
                    "another EO_STAC_API_URL."
                )
            followed.add(key)
    return items


def _check_collections_exist(
    client: pystac_client.Client, url: str, collections: Sequence[str], settings: Settings
) -> None:
    with _stac_errors(url, settings, "listing collections"):
        available = {c.id for c in client.get_collections()}
    missing = [c for c in collections if c not in available]
    if missing:
        raise InputError(
            f"collections: {missing} not served by {url}; it serves {sorted(available)}."
        )


def _scene_ref(item: Any) -> SceneRef | None:
    """A SceneRef from an Item dict, or None (logged with the item's id and the reason) when it
    is malformed (`tasks.sensors.check_item`)."""
    item_id = item.get("id", "<no id>") if isinstance(item, dict) else "<not an object>"
    shown = _shown_id(item_id)
    if isinstance(item_id, str) and any(
        unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS for c in item_id
    ):
        # NUL and other control characters: PostgreSQL (Prefect's database at scale) refuses NUL
        # in text, CR/LF/ESC forge log lines or terminal output, bidi overrides disguise the id
        log.warning("skipping malformed STAC item %s: its id holds control characters", shown)
        return None
    try:
        check_item(item)
        return SceneRef.from_item(item)
    except SceneRejectedError as err:
        log.warning("skipping malformed STAC item %s: %s", shown, str(err)[:500])
    except (KeyError, TypeError, ValueError) as err:
        log.warning("skipping malformed STAC item %s: %s", shown, str(err)[:500])
    return None


#: Unicode bidirectional embedding, override and isolate controls (Unicode Standard Annex #9,
#: table 1): they reorder how the text around them is displayed ("Trojan Source", CVE-2021-42574).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _shown_id(item_id: object, limit: int = 120) -> str:
    """An item id for a log line: repr (control characters escaped), cut to `limit` chars."""
    text = repr(item_id)
    return text if len(text) <= limit else f"{text[: limit - 12]}...({len(text)} chars)"


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

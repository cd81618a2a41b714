"""The registry of watched AOIs: which areas the ``watch`` flow polls for new acquisitions.

One GeoJSON FeatureCollection (RFC 7946, EPSG:4326) at ``EO_AOI_REGISTRY_URL`` (default
``<output_url>/_state/aois.geojson``), a local path or ``s3://bucket/key``. One Feature per AOI::

    {"type": "Feature", "id": "leipzig-north",
     "geometry": {"type": "Polygon", ...},
     "properties": {"products": ["change", "footprint"],
                    "collections": ["landsat-c2-l2", "sentinel-2-l2a"],
                    "created": "2026-11-21T15:00:00Z", "since": "2026-11-21T15:00:00Z"}}

GeoJSON rather than GeoParquet: a registry holds tens to hundreds of small polygons, is edited
by people (``eo aoi add``, or by hand, or with QGIS) and read by every watch poll; a text file is
diffable, opens everywhere, and needs no pyarrow on the reading side. GeoParquet pays off at
many thousands of features, which one deployment does not watch.

Writes replace the whole file atomically (a rename locally, a single PUT on S3): a reader sees
the old registry or the new one. Two writers at the same moment: the last one wins (the registry
is edited by hand, rarely; no locking).
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shapely.geometry import mapping

from tasks.aoi import AoiLike, parse_aoi
from tasks.errors import InputError
from tasks.sensors import KNOWN_COLLECTIONS
from tasks.settings import Settings, get_settings
from tasks.storage import ObjectStore, open_store, redact

__all__ = [
    "DEFAULT_COLLECTIONS",
    "DEFAULT_PRODUCTS",
    "PRODUCTS",
    "AoiRegistry",
    "WatchedAoi",
    "parse_datetime",
    "registry_url",
    "validate_aoi_id",
]

#: Products a watched AOI can ask for (the names of `flows.params.MonitorParams.products`).
PRODUCTS = ("change", "footprint", "dynamics")
#: A new acquisition updates the change and the current year's footprint; the 40-year
#: dynamics product is a yearly job (deployments/prefect.yaml), not a per-scene one.
DEFAULT_PRODUCTS = ("change", "footprint")
DEFAULT_COLLECTIONS = ("landsat-c2-l2", "sentinel-2-l2a")

#: An AOI id names a file (``_state/watch/<id>.json``), a Prefect resource (``eo.aoi.<id>``) and
#: a trigger bucket: lower case (case-insensitive file systems), no dots (resource-id wildcards),
#: at most 64 characters.
_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_REGISTRY_NAME = "aois.geojson"


def validate_aoi_id(aoi_id: str) -> str:
    """`aoi_id` if it is a valid AOI id, else `InputError` saying what a valid one looks like.

    The id names a file, so this is what keeps hostile ids (``../x``, ``/etc/passwd``, NUL
    bytes, unicode look-alikes, 10 000 characters) out of paths: they are refused, not mangled
    (two different ids must never name the same state file).
    """
    if not isinstance(aoi_id, str) or not _ID.fullmatch(aoi_id):
        raise InputError(
            f"aoi id {_shown(aoi_id)}: use 1-64 lower-case letters, digits, '-' or '_', starting "
            "with a letter or digit (it names a state file and a Prefect resource), e.g. "
            "'leipzig-north'."
        )
    return aoi_id


def _shown(value: object, limit: int = 80) -> str:
    """`value` for a message: its repr (control characters escaped), cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"


def parse_datetime(value: str | datetime, *, field: str) -> datetime:
    """An ISO date or datetime as an aware UTC datetime (naive means UTC; a date means 00:00)."""
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise InputError(
                f"{field}: {value!r} is not an ISO date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ."
            ) from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class WatchedAoi:
    """One watched AOI.

    `geometry` is a valid GeoJSON (Multi)Polygon in EPSG:4326 (checked by `tasks.aoi.parse_aoi`
    on construction, `InputError` otherwise); acquisitions from `since` on are announced
    (default: when the AOI was registered).
    """

    id: str
    geometry: dict[str, Any] = field(hash=False)
    products: tuple[str, ...] = DEFAULT_PRODUCTS
    collections: tuple[str, ...] = DEFAULT_COLLECTIONS
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    since: datetime | None = None

    def __post_init__(self) -> None:
        validate_aoi_id(self.id)
        # checked and normalised to plain JSON types (lists, not tuples): it is compared,
        # written to the registry and sent in events as it is here
        geometry = mapping(parse_aoi(self.geometry, field=f"aoi {self.id!r}"))
        object.__setattr__(self, "geometry", json.loads(json.dumps(geometry)))
        bad = [p for p in self.products if p not in PRODUCTS]
        if not self.products or bad:
            raise InputError(f"products: {list(self.products)}: give some of {list(PRODUCTS)}.")
        unknown = [c for c in self.collections if c not in KNOWN_COLLECTIONS]
        if not self.collections or unknown:
            raise InputError(
                f"collections: {list(self.collections)}: give some of {sorted(KNOWN_COLLECTIONS)}."
            )

    @property
    def watched_since(self) -> datetime:
        """Acquisitions from this time on are announced."""
        return self.since or self.created

    @property
    def geojson(self) -> str:
        """The geometry as a GeoJSON string (what `flows.params.MonitorParams.aoi` accepts)."""
        return json.dumps(self.geometry, separators=(",", ":"))

    def to_feature(self) -> dict[str, Any]:
        return {
            "type": "Feature",
            "id": self.id,
            "geometry": self.geometry,
            "properties": {
                "products": list(self.products),
                "collections": list(self.collections),
                "created": _iso(self.created),
                "since": None if self.since is None else _iso(self.since),
            },
        }

    @classmethod
    def from_feature(cls, feature: Mapping[str, Any]) -> WatchedAoi:
        """Raises `InputError` naming the AOI when the Feature is not a valid registry entry."""
        aoi_id = str(feature.get("id") or "")
        props = feature.get("properties") or {}
        try:
            since = props.get("since")
            return cls(
                id=validate_aoi_id(aoi_id),
                geometry=feature.get("geometry") or {},
                products=tuple(props.get("products") or DEFAULT_PRODUCTS),
                collections=tuple(props.get("collections") or DEFAULT_COLLECTIONS),
                created=parse_datetime(props["created"], field=f"{aoi_id}.created"),
                since=None if since is None else parse_datetime(since, field=f"{aoi_id}.since"),
            )
        except (KeyError, TypeError) as err:
            raise InputError(
                f"AOI {_shown(aoi_id)} in the registry lacks {err}; re-add it."
            ) from err


def registry_url(settings: Settings | None = None, *, output_url: str | None = None) -> str:
    """Where the registry lives: ``EO_AOI_REGISTRY_URL``, else ``<output_url>/_state/aois.geojson``.

    `output_url` overrides ``EO_OUTPUT_URL`` for the default (not an explicit registry URL).
    """
    settings = settings or get_settings()
    if settings.aoi_registry_url:
        return settings.aoi_registry_url
    root = (output_url or settings.output_url).rstrip("/")
    return f"{root}/_state/{_REGISTRY_NAME}"


class AoiRegistry:
    """The watched AOIs stored at `url` (default `registry_url()`).

    ``AoiRegistry().add("leipzig", "12.30,51.30,12.45,51.38")`` registers an AOI;
    ``.aois()`` returns them sorted by id; ``.remove("leipzig")`` forgets one.
    """

    def __init__(self, url: str | None = None, *, endpoint_url: str | None = None) -> None:
        self.url = url or registry_url()
        parent, _, name = self.url.rstrip("/").rpartition("/")
        if not name.endswith((".geojson", ".json")):
            raise InputError(
                f"aoi registry {redact(self.url)!r}: name a GeoJSON file (…/aois.geojson); set "
                "EO_AOI_REGISTRY_URL."
            )
        self._parent = parent or "."
        self._endpoint_url = endpoint_url
        self._name = name

    @functools.cached_property
    def _store(self) -> ObjectStore:
        # opened on first use: `add` checks its input before the store is touched (a local
        # store creates its folder when opened), so a refused AOI leaves nothing behind
        return open_store(self._parent, endpoint_url=self._endpoint_url)

    def __repr__(self) -> str:
        return f"AoiRegistry({self.url!r})"

    # ---- reading --------------------------------------------------------------------------------
    def aois(self) -> list[WatchedAoi]:
        """Every registered AOI, sorted by id (empty when the registry does not exist yet)."""
        path = self._store.path(self._name)
        if not self._store.exists(path):
            return []
        raw = self._store.read_bytes(path)
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InputError(
                f"the AOI registry {self.url} is not valid JSON ({err.msg} at line {err.lineno}); "
                "fix it by hand or remove it and re-add the AOIs."
            ) from err
        if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
            raise InputError(
                f"the AOI registry {self.url} is not a GeoJSON FeatureCollection; fix or remove it."
            )
        aois = [WatchedAoi.from_feature(f) for f in doc.get("features") or []]
        return sorted(aois, key=lambda a: a.id)

    def get(self, aoi_id: str) -> WatchedAoi:
        """The AOI `aoi_id`; `InputError` listing the registered ids when it is unknown."""
        return self.select([aoi_id])[0]

    def select(self, aoi_ids: Sequence[str] | None = None) -> list[WatchedAoi]:
        """The AOIs named by `aoi_ids` (all when None), in registry order."""
        aois = self.aois()
        if aoi_ids is None:
            return aois
        known = {a.id for a in aois}
        unknown = [i for i in aoi_ids if i not in known]
        if unknown:
            raise InputError(
                f"aoi ids [{', '.join(_shown(i) for i in unknown)}] are not registered in "
                f"{self.url}; registered: "
                f"{sorted(known) or 'none'} (add one with `eo aoi add ID --aoi ...`)."
            )
        wanted = set(aoi_ids)
        return [a for a in aois if a.id in wanted]

    # ---- writing --------------------------------------------------------------------------------
    def add(
        self,
        aoi_id: str,
        aoi: AoiLike,
        *,
        products: Iterable[str] = DEFAULT_PRODUCTS,
        collections: Iterable[str] = DEFAULT_COLLECTIONS,
        since: str | datetime | None = None,
        replace: bool = False,
    ) -> WatchedAoi:
        """Register `aoi` (bbox, GeoJSON geometry/Feature or string, EPSG:4326) as `aoi_id`.

        Raises `InputError` for an invalid id or AOI, or when `aoi_id` exists and not `replace`.
        """
        validate_aoi_id(aoi_id)
        entry = WatchedAoi(
            id=aoi_id,
            geometry=dict(mapping(parse_aoi(aoi, field="aoi"))),  # bbox/string -> GeoJSON
            products=tuple(dict.fromkeys(products)),
            collections=tuple(dict.fromkeys(collections)),
            since=None if since is None else parse_datetime(since, field="since"),
        )
        aois = {a.id: a for a in self.aois()}
        if aoi_id in aois and not replace:
            raise InputError(
                f"aoi id {aoi_id!r} is already registered in {self.url}; remove it first or "
                "pass replace=True (--replace)."
            )
        aois[aoi_id] = entry
        self._write(aois.values())
        return entry

    def remove(self, aoi_id: str) -> WatchedAoi:
        """Forget `aoi_id` and return its entry; `InputError` when it is not registered."""
        removed = self.get(aoi_id)
        self._write(a for a in self.aois() if a.id != aoi_id)
        return removed

    def _write(self, aois: Iterable[WatchedAoi]) -> None:
        # one Feature a line: a diff of the registry shows which AOIs changed
        features = [json.dumps(a.to_feature()) for a in sorted(aois, key=lambda a: a.id)]
        body = '{"type": "FeatureCollection", "features": [\n' + ",\n".join(features) + "\n]}\n"
        tmp_dir = self._store.path(f".tmp-aois-{uuid.uuid4().hex}")
        try:
            self._store.write_atomic(self._store.path(self._name), body.encode(), tmp_dir=tmp_dir)
        finally:
            self._store.remove(tmp_dir, recursive=True)

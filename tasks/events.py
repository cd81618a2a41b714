"""``eo.acquisition.new``: the Prefect event that announces a new acquisition over a watched AOI.

The contract (other deployments and automations rely on it)::

    event     "eo.acquisition.new"
    resource  {"prefect.resource.id": "eo.item.<collection>.<item id>",
               "prefect.resource.name": "<item id>", "eo.collection": "<collection>"}
    related   [{"prefect.resource.id": "eo.aoi.<aoi id>", "prefect.resource.role": "aoi",
                "prefect.resource.name": "<aoi id>"}]
    payload   aoi_id, aoi (GeoJSON string), item_id, collection, datetime, updated, kind
              (new | late | reprocessed), year, products, collections, stac_api_url, output_url
    id        uuid5(EVENT_NAMESPACE, "<aoi id>/<collection>/<item id>/<updated>")

The id is a function of the item version, so announcing the same item twice (a watch that
crashed between announcing and saving its watermark) gives the same event, which Prefect's
event pipeline drops (it remembers the ids it processed for 30 minutes in Prefect 3.8:
``prefect.server.events.ordering.PROCESSED_EVENT_LOOKBACK``); a reprocessed item (newer
``updated``) gets a new id.

Delivery is confirmed (`emit_confirmed`), not fire-and-forget: ``prefect.events.emit_event``
queues events for a background worker that only logs a failed send, after which the watch would
advance its watermark past events nobody received. Here each event is sent on Prefect's events
websocket and confirmed by a ping/pong round trip before the next one, and a failure raises.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from prefect.events import Event
from prefect.events.clients import get_events_client
from prefect.settings import PREFECT_API_URL
from prefect.utilities.asyncutils import run_coro_as_sync
from websockets.exceptions import WebSocketException

from tasks.aoi_registry import WatchedAoi
from tasks.errors import TransientIOError
from tasks.storage import redact
from tasks.watermark import Acquisition

__all__ = [
    "ACQUISITION_EVENT",
    "EVENT_NAMESPACE",
    "acquisition_event",
    "emit_confirmed",
    "event_id",
]

log = logging.getLogger(__name__)

ACQUISITION_EVENT = "eo.acquisition.new"
#: Namespace of the event ids: uuid5(NAMESPACE_URL, "urn:eo-pipeline:events"), fixed forever
#: (changing it would make every already-announced item look new to Prefect's dedupe).
EVENT_NAMESPACE = uuid.UUID("e45c2a6c-5f52-574c-8839-e252f96f581c")


def event_id(aoi_id: str, collection: str, item_id: str, updated: str) -> uuid.UUID:
    """The id of the event announcing version `updated` of an item over an AOI."""
    return uuid.uuid5(EVENT_NAMESPACE, f"{aoi_id}/{collection}/{item_id}/{updated}")


def acquisition_event(
    aoi: WatchedAoi,
    acquisition: Acquisition,
    *,
    stac_api_url: str | None = None,
    output_url: str | None = None,
    occurred: datetime | None = None,
) -> Event:
    """The ``eo.acquisition.new`` event of one acquisition over `aoi` (see the module docstring).

    `stac_api_url` / `output_url` go into the payload so the triggered run reads the same
    archive and publishes to the same place; None lets it use its own settings.
    """
    item = acquisition.item
    payload: dict[str, Any] = {
        "aoi_id": aoi.id,
        "aoi": aoi.geojson,
        "item_id": item.id,
        "collection": item.collection,
        "datetime": item.datetime.isoformat().replace("+00:00", "Z"),
        "updated": item.updated,
        "kind": acquisition.kind,
        "year": item.datetime.year,
        "products": list(aoi.products),
        "collections": list(aoi.collections),
        "stac_api_url": stac_api_url,
        "output_url": output_url,
    }
    if acquisition.previous_updated is not None:
        payload["previous_updated"] = acquisition.previous_updated
    fields: dict[str, Any] = {
        "event": ACQUISITION_EVENT,
        "resource": {
            "prefect.resource.id": f"eo.item.{item.collection}.{item.id}",
            "prefect.resource.name": item.id,
            "eo.collection": item.collection,
        },
        "related": [
            {
                "prefect.resource.id": f"eo.aoi.{aoi.id}",
                "prefect.resource.role": "aoi",
                "prefect.resource.name": aoi.id,
            }
        ],
        "payload": payload,
        "id": event_id(aoi.id, item.collection, item.id, item.updated),
    }
    if occurred is not None:
        fields["occurred"] = occurred
    return Event.model_validate(fields)


async def _send(events: Sequence[Event], attempts: int) -> None:
    # checkpoint_every=1: after each send the client pings and awaits the pong, which the server
    # answers only after it has read everything sent before; on a dropped connection it
    # reconnects and re-sends what was not confirmed.
    async with get_events_client(reconnection_attempts=attempts, checkpoint_every=1) as client:
        for event in events:
            await client.emit(event)


def emit_confirmed(events: Sequence[Event], *, attempts: int = 5) -> None:
    """Send `events` to the Prefect API (``PREFECT_API_URL``) and return once it has them.

    Raises `TransientIOError` (retried by the watch task) when they could not be delivered
    after `attempts` reconnections.
    """
    if not events:
        return
    if PREFECT_API_URL.value() is None:
        log.warning(
            "PREFECT_API_URL is not set: %d event(s) go to this process's ephemeral Prefect "
            "server and trigger nothing; point PREFECT_API_URL at the server that runs the "
            "monitor deployment.",
            len(events),
        )
    try:
        run_coro_as_sync(_send(events, attempts))
    except (OSError, TimeoutError, WebSocketException) as err:
        raise TransientIOError(
            f"could not deliver {len(events)} event(s) to the Prefect API at "
            f"{redact(PREFECT_API_URL.value())} ({type(err).__name__}: {redact(err)}); the "
            "watermark was not advanced, the next poll announces them again."
        ) from err

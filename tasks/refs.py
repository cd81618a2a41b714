"""Small references that travel between tasks instead of arrays.

Cheap to hash (Prefect cache keys) and readable in the UI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["SceneRef"]


@dataclass(frozen=True)
class SceneRef:
    """One acquisition found by `discover`: its identity plus the STAC Item it came from.

    `item` is the Item as a plain JSON dict (never a pystac object: those may resolve links over
    the network when serialised). It is excluded from equality and hashing: `id` + `collection`
    identify a scene.
    """

    id: str
    collection: str
    datetime: datetime
    platform: str
    cloud_cover: float | None
    item: dict[str, Any] = field(compare=False, hash=False, repr=False)

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> SceneRef:
        """The reference of a STAC Item dict (``datetime`` or ``start_datetime``; naive = UTC).

        Raises KeyError / TypeError / ValueError for an Item without id, collection or time.
        """
        props = item["properties"]
        when = props.get("datetime") or props.get("start_datetime")
        dt = datetime.fromisoformat(str(when).replace("Z", "+00:00"))
        cc = props.get("eo:cloud_cover")
        return cls(
            id=str(item["id"]),
            collection=str(item["collection"]),
            datetime=dt if dt.tzinfo else dt.replace(tzinfo=UTC),
            platform=str(props.get("platform", "")).lower(),
            cloud_cover=None if cc is None else float(cc),
            item=dict(item),
        )

    @property
    def sensor(self) -> str:
        """``sentinel-2`` or ``landsat``: the family whose mask and band table apply."""
        p = self.platform.lower()
        return "sentinel-2" if p.startswith("sentinel-2") else "landsat"

"""Small references that travel between tasks instead of arrays.

Cheap to hash (Prefect cache keys) and readable in the UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
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

    @property
    def sensor(self) -> str:
        """``sentinel-2`` or ``landsat``: the family whose mask and band table apply."""
        p = self.platform.lower()
        return "sentinel-2" if p.startswith("sentinel-2") else "landsat"

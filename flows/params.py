"""Parameter models of the flows: Prefect validates them and renders them as the UI form.

An AOI is accepted as a bbox (``[west, south, east, north]`` or ``"w,s,e,n"``), a GeoJSON
geometry/Feature, or a GeoJSON string; dates are ISO strings. Every validation error names the
field and what to change, before any work starts.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from shapely.geometry import mapping

from tasks.aoi import parse_aoi
from tasks.errors import InputError
from tasks.sensors import KNOWN_COLLECTIONS

__all__ = [
    "AoiField",
    "ChangeDetectionParams",
    "DateRange",
    "MonitorParams",
    "UrbanDynamicsParams",
    "UrbanFootprintParams",
]

FIRST_LANDSAT_YEAR = 1984  # Landsat 5 TM, the first sensor with the bands the models use

AoiField = Annotated[
    str | list[float] | dict[str, Any],
    Field(
        description="Area of interest in WGS84: a bbox 'west,south,east,north' (or a list of 4 "
        "numbers), a GeoJSON geometry or Feature, or a GeoJSON string.",
        examples=["11.955,51.335,11.985,51.365"],
    ),
]


def _validated_aoi(value: Any) -> dict[str, Any]:
    try:
        return dict(mapping(parse_aoi(value, field="aoi")))
    except InputError as err:
        raise ValueError(str(err)) from None


def _iso_date(value: Any, name: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not an ISO date (YYYY-MM-DD).") from None


class DateRange(BaseModel):
    """An inclusive range of days."""

    model_config = ConfigDict(frozen=True)

    start: date = Field(description="First day (ISO date).")
    end: date = Field(description="Last day, inclusive (ISO date).")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _parse(cls, v: Any, info: Any) -> date:
        return _iso_date(v, info.field_name)

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.end < self.start:
            raise ValueError(f"end: {self.end} is before start {self.start}; swap them.")
        if self.start.year < FIRST_LANDSAT_YEAR:
            raise ValueError(
                f"start: {self.start} is before {FIRST_LANDSAT_YEAR}: no Landsat TM data; "
                f"start in {FIRST_LANDSAT_YEAR} or later."
            )
        today = datetime.now(UTC).date()
        if self.start > today:
            raise ValueError(f"start: {self.start} is in the future (today is {today}).")
        return self

    def as_tuple(self) -> tuple[str, str]:
        return (self.start.isoformat(), self.end.isoformat())


class _FlowParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    aoi: AoiField
    collections: list[str] = Field(
        default=["landsat-c2-l2", "sentinel-2-l2a"],
        description="STAC collections to search.",
    )
    output_url: str | None = Field(
        default=None,
        description="Where products are published (local path or s3://bucket/prefix); "
        "default EO_OUTPUT_URL.",
    )
    stac_api_url: str | None = Field(
        default=None, description="STAC API to search; default EO_STAC_API_URL."
    )
    max_cloud_cover: float = Field(
        default=80.0, ge=0, le=100, description="Skip scenes with more cloud cover (%)."
    )

    @field_validator("aoi", mode="before")
    @classmethod
    def _aoi(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().startswith("{"):
            try:
                v = json.loads(v)
            except json.JSONDecodeError as err:
                raise ValueError(f"aoi: not valid GeoJSON ({err.msg}).") from None
        return _validated_aoi(v)

    @field_validator("collections")
    @classmethod
    def _collections(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"collections: give at least one of {sorted(KNOWN_COLLECTIONS)}.")
        unknown = [c for c in v if c not in KNOWN_COLLECTIONS]
        if unknown:
            raise ValueError(
                f"collections: {unknown} unknown; use some of {sorted(KNOWN_COLLECTIONS)}."
            )
        return v


class ChangeDetectionParams(_FlowParams):
    """Change between two periods (bi-temporal composites)."""

    before: DateRange = Field(description="The reference period.")
    after: DateRange = Field(description="The period compared with it.")
    model: str = Field(
        default="change-fcsiamdiff-30m",
        description="Weights name from the registry, or 'baseline' (change vector analysis).",
    )
    threshold: float = Field(
        default=0.5, gt=0, lt=1, description="Probability above which a pixel is 'changed'."
    )

    @model_validator(mode="after")
    def _periods_apart(self) -> ChangeDetectionParams:
        if self.after.start <= self.before.end:
            raise ValueError(
                f"after: starts {self.after.start}, but must start after `before` ends "
                f"({self.before.end})."
            )
        return self


class UrbanFootprintParams(_FlowParams):
    """Built-up footprint of one year (or an explicit period)."""

    year: int | None = Field(default=None, ge=FIRST_LANDSAT_YEAR, description="Calendar year.")
    period: DateRange | None = Field(
        default=None, description="An explicit period instead of a year."
    )
    model: str = Field(
        default="footprint-unet-s2-10m",
        description="Weights name from the registry, or 'baseline' (built-up index rule).",
    )
    threshold: float = Field(default=0.5, gt=0, lt=1, description="Built-up probability threshold.")

    @model_validator(mode="after")
    def _year_or_period(self) -> UrbanFootprintParams:
        if (self.year is None) == (self.period is None):
            raise ValueError("year, period: give exactly one of them.")
        if self.year is not None and self.year > datetime.now(UTC).year:
            raise ValueError(f"year: {self.year} is in the future.")
        return self


class UrbanDynamicsParams(_FlowParams):
    """Year of urbanization from annual composites."""

    first_year: int = Field(default=1985, ge=FIRST_LANDSAT_YEAR, description="First year.")
    last_year: int = Field(
        default_factory=lambda: datetime.now(UTC).year, description="Last year (default: now)."
    )
    model: str = Field(
        default="dynamics-pixelgru-30m",
        description="Weights name from the registry, or 'baseline' (index breakpoint).",
    )
    # the shipped model was trained on annual composites of Landsat and Sentinel-2 together
    collections: list[str] = Field(
        default=["landsat-c2-l2", "sentinel-2-l2a"], description="STAC collections."
    )

    @model_validator(mode="after")
    def _years(self) -> UrbanDynamicsParams:
        if self.last_year < self.first_year + 2:
            raise ValueError(
                f"last_year ({self.last_year}) must be >= first_year + 2 ({self.first_year + 2})."
            )
        if self.last_year > datetime.now(UTC).year:
            raise ValueError(f"last_year: {self.last_year} is in the future.")
        return self


class MonitorParams(_FlowParams):
    """End to end for one AOI: the three products as needed."""

    products: list[Literal["change", "footprint", "dynamics"]] = Field(
        default=["change", "footprint", "dynamics"], description="Products to make."
    )
    first_year: int = Field(default=1985, ge=FIRST_LANDSAT_YEAR, description="First year.")
    use_baselines: bool = Field(
        default=False,
        description="Classical baselines (CVA, NDBI rule, index breakpoint) instead of the models.",
    )

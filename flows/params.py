"""Parameter models of the flows: Prefect validates them and renders them as the UI form.

An AOI is accepted as a bbox (``[west, south, east, north]`` or ``"w,s,e,n"``), a GeoJSON
geometry/Feature, or a GeoJSON string; dates are ISO strings. Every validation error names the
field, the allowed range and what to change, before any work starts (Prefect validates the
parameters before the flow's first task; ``eo run`` before it calls the flow):

- ``aoi``: a valid (not self-intersecting) polygon with area, in WGS84, at most
  ``EO_MAX_AOI_KM2`` km² (`tasks.aoi.parse_aoi`);
- dates: ISO days from 1984 (Landsat 5 TM) on, start not in the future, end not after this year,
  end not before start;
- ``collections``: known ones (`tasks.sensors.KNOWN_COLLECTIONS`);
- numbers (thresholds, cloud cover, years, intervals): within their ``Field`` bounds, which the
  error spells out (`RangeExplained`);
- ``stac_api_url`` / ``output_url``: no ``user:password@`` in them -- flow parameters are stored
  and shown by Prefect; credentials belong in the worker's environment or a Secret block
  (`tasks.settings`);
- ``model``: ``baseline`` or registered weights for that product whose file matches the sha256
  of its spec (`models.registry`): a tampered or truncated file is refused here, before any
  scene is searched, and again by `models.registry.load_model` before it is read.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import annotated_types
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from shapely.geometry import mapping

from tasks.aoi import parse_aoi
from tasks.errors import InputError
from tasks.sensors import KNOWN_COLLECTIONS
from tasks.storage import has_userinfo, redact

__all__ = [
    "AoiField",
    "ChangeDetectionParams",
    "DateRange",
    "MonitorParams",
    "RangeExplained",
    "UrbanDynamicsParams",
    "UrbanFootprintParams",
    "allowed_range",
    "url_without_credentials",
]

FIRST_LANDSAT_YEAR = 1984  # Landsat 5 TM, the first sensor with the bands the models use
FIRST_SENTINEL2_YEAR = 2015  # Sentinel-2A, launched 2015-06-23: the footprint model's input
#: The name that selects a product's classical baseline (`tasks.products.BASELINE`).
BASELINE = "baseline"
#: pydantic's error types of numeric bounds (``gt``, ``ge``, ``lt``, ``le``).
_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def allowed_range(name: str, info: FieldInfo, *, upper: int | None = None) -> str | None:
    """The bounds of a field as ``"0 < threshold < 1"`` (None when it has none); `upper` is an
    upper bound that is not in the field (a year bounded by the current year)."""
    low, high = "", ("" if upper is None else f" <= {upper}")
    for m in info.metadata:
        if isinstance(m, annotated_types.Gt):
            low = f"{m.gt} < "
        elif isinstance(m, annotated_types.Ge):
            low = f"{m.ge} <= "
        elif isinstance(m, annotated_types.Lt):
            high = f" < {m.lt}"
        elif isinstance(m, annotated_types.Le):
            high = f" <= {m.le}"
    return f"{low}{name}{high}" if low or high else None


class RangeExplained(BaseModel):
    """A parameter model whose out-of-range errors spell out the whole allowed range.

    pydantic's own message names one bound only ("Input should be less than 1"); this adds the
    field and both bounds ("threshold: 1.5 is out of range (...); allowed: 0 < threshold < 1").
    The bounds stay in the ``Field`` (so the JSON schema and Prefect's form keep them).
    `_YEARS_BEFORE_NOW` names year fields bounded by the current year (minus that many years):
    a bound that moves cannot be a ``Field`` constraint fixed at import.

    Errors do not repeat the input (``hide_input_in_errors``): a parameter may be a URL with
    credentials, and Prefect stores the error in the run's state and logs; the messages name the
    offending value themselves where it helps.
    """

    model_config = ConfigDict(hide_input_in_errors=True)

    _YEARS_BEFORE_NOW: ClassVar[dict[str, int]] = {"year": 0, "first_year": 2, "last_year": 0}

    @field_validator("*", mode="wrap")
    @classmethod
    def _explain_range(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        try:
            return handler(value)
        except ValidationError as err:
            name = info.field_name or ""
            field = cls.model_fields.get(name)
            years_back = cls._YEARS_BEFORE_NOW.get(name)
            upper = None if years_back is None else datetime.now(UTC).year - years_back
            allowed = allowed_range(name, field, upper=upper) if field is not None else None
            errors = err.errors()
            if allowed is None or not any(e["type"] in _RANGE_ERRORS for e in errors):
                raise
            raise ValueError(
                f"{name}: {value!r} is out of range ({errors[0]['msg']}); allowed: {allowed}."
            ) from None


def url_without_credentials(value: str | None, name: str) -> str | None:
    """`value` unless it is a URL with ``user:password@`` (ValueError naming `name`): Prefect
    stores flow parameters in its database and shows them in the UI, events and logs."""
    if value is not None and has_userinfo(value):
        raise ValueError(
            f"{name}: {redact(value)!r} carries credentials (user:password@), and flow parameters "
            "are stored and shown by Prefect; give the URL without them and set the credentials "
            "in the worker's environment (EO_STAC_API_URL may carry them; S3: AWS_* or "
            "EO_S3_SECRET_BLOCK)."
        )
    return value


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    """`models.registry.file_sha256`, remembered while the file's modification time and size stay
    the same (parameters are validated more than once per run)."""
    from models.registry import file_sha256

    return file_sha256(Path(path))


def _checked_model(name: str, task: str) -> str:
    """`name` when it is the baseline or usable weights of `task` (registered, of that task, the
    file's sha256 equal to its spec's); ValueError saying what to change otherwise."""
    if name == BASELINE:
        return name
    from models.errors import WeightsIntegrityError, WeightsNotFoundError
    from models.registry import available, resolve

    try:
        spec, path = resolve(name)
    except (WeightsNotFoundError, WeightsIntegrityError) as err:
        raise ValueError(f"model: {err}") from None
    if spec.task != task:
        fitting = [n for n in available() if n != name and resolve(n)[0].task == task]
        raise ValueError(
            f"model: {name!r} is a {spec.task} model; give a {task} model "
            f"({fitting or 'none registered'}) or {BASELINE!r}."
        )
    stat = Path(path).stat()
    actual = _file_sha256(str(path), stat.st_mtime_ns, stat.st_size)
    if actual != spec.sha256:
        raise ValueError(
            f"model: the weights file {path} has sha256 {actual} but its spec says "
            f"{spec.sha256}: the file was modified or truncated. Restore the file saved with "
            "this spec, re-train, or use model 'baseline'."
        )
    return name


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


class DateRange(RangeExplained):
    """An inclusive range of days, from 1984 on, starting no later than today and ending no later
    than the end of this year."""

    model_config = ConfigDict(frozen=True)

    start: date = Field(description="First day (ISO date).")
    end: date = Field(description="Last day, inclusive (ISO date).")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _parse(cls, v: Any, info: Any) -> date:
        return _iso_date(v, info.field_name)

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        today = datetime.now(UTC).date()
        first = date(FIRST_LANDSAT_YEAR, 1, 1)
        if self.end < self.start:
            raise ValueError(
                f"end: {self.end} is before start {self.start}; swap them (allowed: start <= end)."
            )
        if self.start < first:
            raise ValueError(
                f"start: {self.start} is before {FIRST_LANDSAT_YEAR}: no Landsat TM data; "
                f"allowed: {first} <= start <= {today} (today)."
            )
        if self.start > today:
            raise ValueError(
                f"start: {self.start} is in the future; allowed: {first} <= start <= {today} "
                "(today)."
            )
        last = date(today.year, 12, 31)
        if self.end > last:
            raise ValueError(
                f"end: {self.end} is after the end of this year; allowed: start <= end <= {last}."
            )
        return self

    def as_tuple(self) -> tuple[str, str]:
        return (self.start.isoformat(), self.end.isoformat())


#: Run-time adaptation of the change and footprint models (`tasks.adapt`).
AdaptField = Annotated[
    Literal["auto", "always", "never"],
    Field(
        description="Fine-tune the model on the AOI before mapping it: 'auto' where its "
        "inputs are far from the training data (domain score), 'always', or 'never'."
    ),
]


class _FlowParams(RangeExplained):
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
    epsg: int | None = Field(
        default=None,
        ge=1024,
        le=32767,
        description="CRS of the product grid (EPSG code); default: the zone most input scenes "
        "are in, on their own pixel grid.",
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

    @field_validator("stac_api_url", "output_url")
    @classmethod
    def _no_credentials(cls, v: str | None, info: ValidationInfo) -> str | None:
        return url_without_credentials(v, info.field_name or "url")

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
    adapt: AdaptField = "auto"

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return _checked_model(v, "change")

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
    adapt: AdaptField = "auto"

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return _checked_model(v, "footprint")

    @model_validator(mode="after")
    def _year_or_period(self) -> UrbanFootprintParams:
        if (self.year is None) == (self.period is None):
            raise ValueError("year, period: give exactly one of them.")
        now = datetime.now(UTC).year
        if self.year is not None and self.year > now:
            raise ValueError(
                f"year: {self.year} is in the future; allowed: {FIRST_LANDSAT_YEAR} <= year "
                f"<= {now}."
            )
        last = (
            self.year if self.year is not None else (self.period.end.year if self.period else now)
        )
        if self.model != BASELINE and last < FIRST_SENTINEL2_YEAR:
            raise ValueError(
                f"{'year' if self.year is not None else 'period'}: {last} is before Sentinel-2 "
                f"({FIRST_SENTINEL2_YEAR}), and the footprint model maps Sentinel-2 composites; "
                "for a Landsat year use model='baseline' (the NDBI rule)."
            )
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

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return _checked_model(v, "dynamics")

    @model_validator(mode="after")
    def _years(self) -> UrbanDynamicsParams:
        now = datetime.now(UTC).year
        if self.first_year > now - 2:
            raise ValueError(
                f"first_year: {self.first_year} leaves fewer than 3 years; allowed: "
                f"{FIRST_LANDSAT_YEAR} <= first_year <= {now - 2}."
            )
        if self.last_year > now:
            raise ValueError(
                f"last_year: {self.last_year} is in the future; allowed: first_year + 2 "
                f"({self.first_year + 2}) <= last_year <= {now}."
            )
        if self.last_year < self.first_year + 2:
            raise ValueError(
                f"last_year ({self.last_year}) must be >= first_year + 2 ({self.first_year + 2}); "
                f"allowed: {self.first_year + 2} <= last_year <= {now}."
            )
        return self


class MonitorParams(_FlowParams):
    """End to end for one AOI: the three products as needed.

    A run started by an ``eo.acquisition.new`` event (see `flows.watch.monitor_trigger`) gets
    the AOI, its products and collections, and the year of the new acquisition from the event.
    """

    products: list[Literal["change", "footprint", "dynamics"]] = Field(
        default=["change", "footprint", "dynamics"], description="Products to make."
    )
    first_year: int = Field(default=1985, ge=FIRST_LANDSAT_YEAR, description="First year.")
    use_baselines: bool = Field(
        default=False,
        description="Classical baselines (CVA, NDBI rule, index breakpoint) instead of the models.",
    )
    year: int | None = Field(
        default=None,
        ge=FIRST_LANDSAT_YEAR,
        description="Year of the footprint, of the change's 'after' season and the last year of "
        "the dynamics; default: the last complete growing season. A run triggered by a new "
        "acquisition gets that acquisition's year.",
    )
    change_interval_years: int = Field(
        default=5,
        ge=1,
        le=40,
        description="Years between the change product's 'before' and 'after' seasons.",
    )

    @field_validator("products")
    @classmethod
    def _some_products(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("products: give at least one of change, footprint, dynamics.")
        return list(dict.fromkeys(v))  # drop repeats, keep the order

    @model_validator(mode="after")
    def _year(self) -> MonitorParams:
        now = datetime.now(UTC).year
        if "dynamics" in self.products and self.first_year > now - 2:
            raise ValueError(
                f"first_year: {self.first_year} leaves the dynamics fewer than 3 years; allowed: "
                f"{FIRST_LANDSAT_YEAR} <= first_year <= {now - 2}."
            )
        if self.year is None:
            return self
        if self.year > now:
            raise ValueError(
                f"year: {self.year} is in the future; allowed: {FIRST_LANDSAT_YEAR} <= year "
                f"<= {now}."
            )
        if "change" in self.products and self.year - self.change_interval_years < (
            FIRST_LANDSAT_YEAR
        ):
            raise ValueError(
                f"change_interval_years: {self.year} - {self.change_interval_years} is before "
                f"{FIRST_LANDSAT_YEAR} (no Landsat TM data); shorten the interval."
            )
        if "dynamics" in self.products and self.year < self.first_year + 2:
            raise ValueError(
                f"year: the dynamics need year >= first_year + 2 ({self.first_year + 2})."
            )
        if (
            "footprint" in self.products
            and not self.use_baselines
            and self.year < FIRST_SENTINEL2_YEAR
        ):
            raise ValueError(
                f"year: {self.year} is before Sentinel-2 ({FIRST_SENTINEL2_YEAR}), and the "
                "footprint model maps Sentinel-2 composites; drop 'footprint' from products or "
                "set use_baselines."
            )
        return self

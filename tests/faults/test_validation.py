"""Row 5 of the fault table: bad input -- an AOI that is self-intersecting, empty or over the size
limit (``EO_MAX_AOI_KM2``), reversed or future dates, an unknown collection, numbers out of
range, an unknown or mismatched model, credentials in a parameter URL.

Required: a validation error naming the field and the allowed range, before any work starts.
"Before any work" is checked where the work would start: the flows are called as Prefect calls
them (parameters as a dict) with their STAC API behind a `FaultProxy` that records every request,
and the output folder is watched: no request may reach the API and nothing may be written.
The same through ``eo run`` and ``eo aoi add``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect.exceptions import ParameterTypeError
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from flows import cli_aoi, cli_run
from flows.cli import app
from flows.params import (
    ChangeDetectionParams,
    DateRange,
    MonitorParams,
    UrbanDynamicsParams,
    UrbanFootprintParams,
)
from flows.products import change_detection, monitor, urban_dynamics, urban_footprint
from flows.watch import WatchParams, watch
from tasks.discover import discover
from tasks.settings import get_settings
from tests.faults.proxy import FaultProxy

NOW = datetime.now(UTC).year
BBOX = "11.955,51.335,11.985,51.365"  # about 7 km²
BOWTIE = json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]})
EMPTY = json.dumps({"type": "Polygon", "coordinates": []})
HUGE = "-10,-10,40,40"  # 30 million km²
PASSWORD = "eo-validation-pa55word"
BEFORE = {"start": "2012-01-01", "end": "2013-12-31"}
AFTER = {"start": "2023-01-01", "end": "2023-12-31"}

#: A valid parameter set per model; each case below changes one thing.
BASE: dict[type[BaseModel], dict[str, Any]] = {
    ChangeDetectionParams: {"aoi": BBOX, "before": BEFORE, "after": AFTER, "model": "baseline"},
    UrbanFootprintParams: {"aoi": BBOX, "year": 2023, "model": "baseline"},
    UrbanDynamicsParams: {"aoi": BBOX, "first_year": 2012, "last_year": 2023, "model": "baseline"},
    MonitorParams: {"aoi": BBOX, "use_baselines": True},
    WatchParams: {},
}
AOI_MODELS: list[type[BaseModel]] = [
    ChangeDetectionParams,
    UrbanFootprintParams,
    UrbanDynamicsParams,
    MonitorParams,
]
AOI_CASES: list[tuple[str, dict[str, Any], str, list[str]]] = [
    ("self-intersecting", {"aoi": BOWTIE}, "aoi", ["Self-intersection", "fix"]),
    ("empty", {"aoi": EMPTY}, "aoi", ["empty"]),
    ("too-large", {"aoi": HUGE}, "aoi", ["EO_MAX_AOI_KM2", "allowed: 0 < area <= 50,000 km²"]),
    ("not-wgs84", {"aoi": "500000,5700000,510000,5710000"}, "aoi", ["EPSG:4326"]),
    ("cloud-cover", {"max_cloud_cover": 120}, "max_cloud_cover", ["0 <= max_cloud_cover <= 100"]),
    ("collection", {"collections": ["sentinel-3-olci"]}, "collections", ["unknown", "landsat"]),
    ("no-collection", {"collections": []}, "collections", ["at least one", "sentinel-2-l2a"]),
    ("stac-url-secret", {"stac_api_url": f"https://u:{PASSWORD}@h/v1"}, "stac_api_url", ["cred"]),
]
CASES: list[tuple[str, type[BaseModel], dict[str, Any], str, list[str]]] = [
    *[(f"{m.__name__}-{c[0]}", m, c[1], c[2], c[3]) for m in AOI_MODELS for c in AOI_CASES],
    (
        "change-reversed",
        ChangeDetectionParams,
        {"before": {"start": "2013-12-31", "end": "2012-01-01"}},
        "before",
        ["swap", "allowed: start <= end"],
    ),
    (
        "change-before-landsat",
        ChangeDetectionParams,
        {"before": {"start": "1970-01-01", "end": "1971-01-01"}},
        "before",
        [f"allowed: 1984-01-01 <= start <= {datetime.now(UTC).date()}"],
    ),
    (
        "change-future-start",
        ChangeDetectionParams,
        {"after": {"start": f"{NOW + 1}-01-01", "end": f"{NOW + 1}-02-01"}},
        "after",
        ["future", "allowed: 1984-01-01 <= start"],
    ),
    (
        "change-future-end",
        ChangeDetectionParams,
        {"after": {"start": "2023-01-01", "end": "2999-01-01"}},
        "after",
        [f"allowed: start <= end <= {NOW}-12-31"],
    ),
    (
        "change-overlapping",
        ChangeDetectionParams,
        {"after": {"start": "2013-06-01", "end": "2013-12-31"}},
        "after",
        ["must start after"],
    ),
    ("change-threshold-1", ChangeDetectionParams, {"threshold": 1.5}, "threshold", ["0 < t"]),
    ("change-threshold-0", ChangeDetectionParams, {"threshold": 0}, "threshold", ["0 < t"]),
    ("change-model", ChangeDetectionParams, {"model": "nope"}, "model", ["no weights", "'nope'"]),
    (
        "change-model-of-another-product",
        ChangeDetectionParams,
        {"model": "footprint-unet-s2-10m"},
        "model",
        ["is a footprint model", "change-fcsiamdiff-30m", "'baseline'"],
    ),
    (
        "footprint-future-year",
        UrbanFootprintParams,
        {"year": NOW + 1},
        "year",
        [f"allowed: 1984 <= year <= {NOW}"],
    ),
    (
        "footprint-year-before-landsat",
        UrbanFootprintParams,
        {"year": 1900},
        "year",
        [f"allowed: 1984 <= year <= {NOW}"],
    ),
    ("footprint-threshold", UrbanFootprintParams, {"threshold": -0.1}, "threshold", ["< 1"]),
    (
        "dynamics-first-year",
        UrbanDynamicsParams,
        {"first_year": 1900},
        "first_year",
        [f"allowed: 1984 <= first_year <= {NOW - 2}"],
    ),
    (
        "dynamics-first-year-too-late",
        UrbanDynamicsParams,
        {"first_year": NOW, "last_year": NOW},
        "first_year",
        [f"allowed: 1984 <= first_year <= {NOW - 2}"],
    ),
    (
        "dynamics-future-last-year",
        UrbanDynamicsParams,
        {"last_year": NOW + 1},
        "last_year",
        ["future", f"<= last_year <= {NOW}"],
    ),
    (
        "monitor-interval",
        MonitorParams,
        {"change_interval_years": 0},
        "change_interval_years",
        ["allowed: 1 <= change_interval_years <= 40"],
    ),
    ("monitor-future-year", MonitorParams, {"year": NOW + 1}, "year", [f"<= year <= {NOW}"]),
    ("monitor-products", MonitorParams, {"products": []}, "products", ["at least one"]),
    ("monitor-product", MonitorParams, {"products": ["x"]}, "products", ["'footprint'"]),
    (
        "watch-lookback-0",
        WatchParams,
        {"lookback_days": 0},
        "lookback_days",
        ["allowed: 0 < lookback_days <= 366"],
    ),
    (
        "watch-lookback-400",
        WatchParams,
        {"lookback_days": 400},
        "lookback_days",
        ["allowed: 0 < lookback_days <= 366"],
    ),
    ("watch-aoi-id", WatchParams, {"aoi_ids": ["../x"]}, "aoi_ids", ["'../x'", "lower-case"]),
    (
        "watch-output-secret",
        WatchParams,
        {"output_url": f"s3://k:{PASSWORD}@bucket/x"},
        "output_url",
        ["credentials", "EO_S3_SECRET_BLOCK"],
    ),
]


@pytest.mark.parametrize(
    ("model", "changes", "field", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_params_refuse_bad_input_naming_field_and_allowed_range(
    model: type[BaseModel], changes: dict[str, Any], field: str, needles: list[str]
) -> None:
    model.model_validate(BASE[model])  # the base is valid: the change alone is refused
    with pytest.raises(ValidationError) as err:
        model.model_validate({**BASE[model], **changes})
    text = str(err.value)
    assert field in text, text
    for needle in needles:
        assert needle in text, (needle, text)
    assert PASSWORD not in text, "a credential came back in the error"


def test_date_range_refuses_reversed_and_future_dates() -> None:
    with pytest.raises(ValidationError, match=r"end: .* swap them \(allowed: start <= end\)"):
        DateRange(start="2020-02-01", end="2020-01-01")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"start: .* in the future; allowed: 1984-01-01"):
        DateRange(start=f"{NOW + 1}-01-01", end=f"{NOW + 1}-01-02")  # type: ignore[arg-type]


def test_aoi_size_limit_is_the_eo_max_aoi_km2_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit is configurable; the error names the setting, its value and the allowed range."""
    monkeypatch.setenv("EO_MAX_AOI_KM2", "1")
    get_settings.cache_clear()
    try:
        with pytest.raises(ValidationError) as err:
            UrbanFootprintParams.model_validate(BASE[UrbanFootprintParams])
        text = str(err.value)
        assert "EO_MAX_AOI_KM2 = 1 km²" in text and "allowed: 0 < area <= 1 km²" in text, text
        monkeypatch.setenv("EO_MAX_AOI_KM2", "10")
        get_settings.cache_clear()
        assert UrbanFootprintParams.model_validate(BASE[UrbanFootprintParams]).year == 2023
    finally:
        get_settings.cache_clear()


# ---- before any work: flows, ``eo run``, ``eo aoi add`` ------------------------------------------
def test_proxy_sees_the_requests_of_valid_input(tiny_stac_proxy: FaultProxy) -> None:
    """The control of the tests below: a valid search through the proxy is recorded."""
    discover(BBOX, "2023-01-01", "2023-12-31", ["sentinel-2-l2a"], stac_url=tiny_stac_proxy.url)
    assert tiny_stac_proxy.requests, "the proxy must record what reaches the STAC API"


FLOW_CASES = [
    ("footprint-bowtie", urban_footprint, {**BASE[UrbanFootprintParams], "aoi": BOWTIE}, "aoi"),
    ("footprint-huge", urban_footprint, {**BASE[UrbanFootprintParams], "aoi": HUGE}, "aoi"),
    (
        "change-threshold",
        change_detection,
        {**BASE[ChangeDetectionParams], "threshold": 2},
        "0 < threshold < 1",
    ),
    (
        "change-reversed",
        change_detection,
        {**BASE[ChangeDetectionParams], "after": {"start": "2023-12-31", "end": "2023-01-01"}},
        "swap",
    ),
    (
        "dynamics-collection",
        urban_dynamics,
        {**BASE[UrbanDynamicsParams], "collections": ["modis"]},
        "collections",
    ),
    ("monitor-year", monitor, {**BASE[MonitorParams], "year": NOW + 1}, f"<= year <= {NOW}"),
]


@pytest.mark.parametrize(
    ("flow", "params", "needle"), [c[1:] for c in FLOW_CASES], ids=[c[0] for c in FLOW_CASES]
)
def test_flow_refuses_bad_parameters_before_any_work(
    prefect_server: None,
    tiny_stac_proxy: FaultProxy,
    tmp_path: Path,
    flow: Any,
    params: dict[str, Any],
    needle: str,
) -> None:
    out = tmp_path / "out"
    with pytest.raises(ParameterTypeError) as err:
        flow(params={**params, "stac_api_url": tiny_stac_proxy.url, "output_url": str(out)})
    assert needle in str(err.value), str(err.value)
    assert tiny_stac_proxy.requests == [], "no STAC request before the parameters are valid"
    assert not out.exists(), "nothing written before the parameters are valid"


def test_watch_flow_refuses_bad_parameters_before_any_work(
    prefect_server: None, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(ParameterTypeError, match="0 < lookback_days <= 366"):
        watch(params={"lookback_days": -1, "output_url": str(out)})  # type: ignore[call-overload]  # a dict, as Prefect sends it
    assert not out.exists()


runner = CliRunner()


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """No line wrapping in the CLI's messages (rich wraps at the terminal width)."""
    for module in (cli_run, cli_aoi):
        monkeypatch.setattr(module.console, "width", 2000)


CHANGE = ["change-detection", "--aoi", BBOX, "--before", "2012-01-01/2013-12-31"]
RUN_CASES: list[tuple[str, list[str], list[str]]] = [
    (
        "threshold",
        [*CHANGE, "--after", "2023-01-01/2023-12-31", "--threshold", "1.5", "--model", "baseline"],
        ["invalid threshold", "allowed: 0 < threshold < 1"],
    ),
    (
        "future-after",
        [*CHANGE, "--after", f"{NOW + 1}-01-01/{NOW + 1}-12-31", "--model", "baseline"],
        ["invalid after", "future", "allowed"],
    ),
    (
        "aoi-huge",
        ["urban-footprint", "--aoi", HUGE, "--year", "2023", "--model", "baseline"],
        ["invalid aoi", "EO_MAX_AOI_KM2", "allowed: 0 < area"],
    ),
    (
        "aoi-bowtie",
        ["urban-footprint", "--aoi", BOWTIE, "--year", "2023", "--model", "baseline"],
        ["invalid aoi", "Self-intersection"],
    ),
    (
        "future-year",
        ["urban-footprint", "--aoi", BBOX, "--year", str(NOW + 1), "--model", "baseline"],
        ["year", f"allowed: 1984 <= year <= {NOW}"],
    ),
    (
        "first-year",
        ["urban-dynamics", "--aoi", BBOX, "--first-year", "1900", "--model", "baseline"],
        ["invalid first_year", f"allowed: 1984 <= first_year <= {NOW - 2}"],
    ),
    (
        "model",
        ["urban-footprint", "--aoi", BBOX, "--year", "2023", "--model", "change-fcsiamdiff-30m"],
        ["invalid model", "is a change model", "footprint-unet-s2-10m"],
    ),
    (
        "stac-url-with-password",
        ["monitor", "--aoi", BBOX, "--baseline", "--stac-url", f"https://u:{PASSWORD}@h/v1"],
        ["invalid stac_api_url", "credentials"],
    ),
]


@pytest.mark.parametrize(
    ("args", "needles"), [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES]
)
def test_eo_run_refuses_bad_input_before_any_work(
    tiny_stac_proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    wide_console: None,
    args: list[str],
    needles: list[str],
) -> None:
    monkeypatch.setenv("EO_STAC_API_URL", tiny_stac_proxy.url)
    get_settings.cache_clear()
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", *args, "--output", str(out)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    for needle in needles:
        assert needle in text, (needle, text)
    assert PASSWORD not in text
    assert tiny_stac_proxy.requests == [] and not out.exists()


AOI_ADD_CASES: list[tuple[str, list[str], list[str]]] = [
    ("id-parent", ["../x", "--aoi", BBOX], ["'../x'", "lower-case letters"]),
    ("id-absolute", ["/etc/passwd", "--aoi", BBOX], ["'/etc/passwd'", "lower-case letters"]),
    ("id-long", ["a" * 10_000, "--aoi", BBOX], ["(10002 characters)", "1-64"]),
    ("id-unicode", ["東京", "--aoi", BBOX], ["lower-case letters"]),
    ("aoi-bowtie", ["ok", "--aoi", BOWTIE], ["aoi", "Self-intersection"]),
    ("aoi-empty", ["ok", "--aoi", EMPTY], ["aoi", "empty"]),
    ("aoi-huge", ["ok", "--aoi", HUGE], ["aoi", "EO_MAX_AOI_KM2", "allowed: 0 < area"]),
    ("collection", ["ok", "--aoi", BBOX, "--collections", "modis"], ["collections", "landsat"]),
    ("product", ["ok", "--aoi", BBOX, "--products", "ndvi"], ["products", "footprint"]),
    ("since", ["ok", "--aoi", BBOX, "--since", "yesterday"], ["since", "ISO date"]),
]


@pytest.mark.parametrize(
    ("args", "needles"), [c[1:] for c in AOI_ADD_CASES], ids=[c[0] for c in AOI_ADD_CASES]
)
def test_eo_aoi_add_refuses_bad_input_and_writes_nothing(
    tmp_path: Path, wide_console: None, args: list[str], needles: list[str]
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["aoi", "add", *args, "--output", str(out)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    for needle in needles:
        assert needle in text, (needle, text)
    assert not out.exists(), "a refused AOI must leave nothing behind"
    assert len(text) < 2_000, "the message must not echo a 10 000-character id"

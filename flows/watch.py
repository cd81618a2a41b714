"""The ``watch`` flow and the trigger that re-runs ``monitor`` when new acquisitions land.

    registry of watched AOIs  ->  per AOI: STAC search since its watermark  ->  new / late /
    reprocessed items  ->  ``eo.acquisition.new`` events (confirmed)  ->  watermark advanced

``watch`` runs on a schedule (deployments/prefect.yaml); the ``monitor`` deployment carries
`monitor_trigger()`, so each burst of events over one AOI starts one ``monitor`` run for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.events import DeploymentEventTrigger
from prefect.events.schemas.automations import Posture
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from flows.params import RangeExplained, url_without_credentials
from tasks.aoi_registry import AoiRegistry, registry_url, validate_aoi_id
from tasks.errors import InputError, PipelineError
from tasks.events import ACQUISITION_EVENT
from tasks.watermark import DEFAULT_LOOKBACK_DAYS, PollResult, watch_aoi

__all__ = ["DEBOUNCE", "WatchParams", "WatchSummary", "monitor_trigger", "watch"]

#: How long one AOI's burst of events may last and still give one ``monitor`` run; the run
#: starts this long after the first event of the burst. Keep it shorter than the watch's
#: schedule interval: a new burst within it of the previous one's first event starts no run.
DEBOUNCE = timedelta(minutes=10)


class WatchParams(RangeExplained):
    """One poll of the watched AOIs (out-of-range numbers are refused naming the allowed range,
    `flows.params.RangeExplained`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aoi_ids: list[str] | None = Field(
        default=None,
        description="Ids of the registered AOIs to poll; default: every registered AOI.",
    )
    lookback_days: float = Field(
        default=DEFAULT_LOOKBACK_DAYS,
        gt=0,
        le=366,
        description="Re-search this many days before the newest acquisition seen, to catch "
        "late-published and reprocessed items.",
    )
    stac_api_url: str | None = Field(
        default=None, description="STAC API to poll; default EO_STAC_API_URL."
    )
    output_url: str | None = Field(
        default=None,
        description="Output root that holds the watch state (_state/...) and, unless "
        "EO_AOI_REGISTRY_URL is set, the AOI registry; default EO_OUTPUT_URL.",
    )

    @field_validator("stac_api_url", "output_url")
    @classmethod
    def _no_credentials(cls, v: str | None, info: ValidationInfo) -> str | None:
        return url_without_credentials(v, info.field_name or "url")

    @field_validator("aoi_ids")
    @classmethod
    def _ids(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("aoi_ids: give at least one id, or leave it empty to poll all.")
        try:
            return [validate_aoi_id(i) for i in dict.fromkeys(v)]
        except InputError as err:
            raise ValueError(f"aoi_ids: {err}") from None


class WatchSummary(BaseModel):
    """What one watch run saw: one row per AOI (see `tasks.watermark.PollResult.row`)."""

    rows: list[dict[str, Any]]
    announced: int
    failed: list[str] = Field(default_factory=list)


@flow(name="watch")
def watch(params: WatchParams | None = None) -> WatchSummary:
    """Poll every watched AOI (or `params.aoi_ids`) and announce its new acquisitions.

    AOIs are polled concurrently and independently: one AOI's failure (say its STAC search
    fails) does not hold the others' events back; the run fails at the end, naming it.
    """
    params = params or WatchParams()
    logger = get_run_logger()
    registry = AoiRegistry(registry_url(output_url=params.output_url))
    aois = registry.select(params.aoi_ids)
    if not aois:
        logger.warning("no AOIs registered in %s; add one with `eo aoi add`", registry.url)
    futures = {
        aoi.id: watch_aoi.submit(
            aoi,
            lookback_days=params.lookback_days,
            stac_api_url=params.stac_api_url,
            output_url=params.output_url,
        )
        for aoi in aois
    }
    rows: list[dict[str, Any]] = []
    failed: dict[str, BaseException] = {}
    for aoi_id, future in futures.items():
        result = future.result(raise_on_failure=False)
        if isinstance(result, PollResult):
            rows.append(result.row())
            for acq in result.acquisitions:
                logger.info(
                    "%s: %s %s/%s (%s)",
                    aoi_id,
                    acq.kind,
                    acq.item.collection,
                    acq.item.id,
                    acq.item.datetime.isoformat(),
                )
        else:
            failed[aoi_id] = result
            rows.append({"aoi": aoi_id, "error": str(result)[:300]})
    summary = WatchSummary(
        rows=rows,
        announced=sum(int(r.get("announced", 0)) for r in rows),
        failed=sorted(failed),
    )
    if rows:
        create_table_artifact(
            key="watch-summary",
            table=rows,
            description=f"watch: {summary.announced} acquisition(s) announced",
        )
    logger.info("announced %d acquisition(s) over %d AOI(s)", summary.announced, len(aois))
    if failed:
        detail = "; ".join(f"{k}: {v}" for k, v in failed.items())
        raise PipelineError(f"watch failed for {len(failed)} AOI(s): {detail}")
    return summary


# ---- the trigger of the monitor deployment ------------------------------------------------------
#: The ``monitor`` parameters taken from the triggering event. Each string is a whole-value
#: template: Prefect 3.8 turns ``"{{ expr }}"`` into ``expr | tojson`` parsed back as JSON
#: (``RunDeployment._upgrade_v1_templates``), so lists stay lists and numbers numbers, and it
#: does so inside nested dicts too, so the templates sit inside ``params``.
_FROM_EVENT: dict[str, str] = {
    "aoi": "{{ event.payload.aoi }}",
    "products": "{{ event.payload.products }}",
    "collections": "{{ event.payload.collections }}",
    "year": "{{ event.payload.year }}",
    "stac_api_url": "{{ event.payload.stac_api_url }}",
    "output_url": "{{ event.payload.output_url }}",
}


def monitor_trigger(
    *,
    within: timedelta = DEBOUNCE,
    params: Mapping[str, Any] | None = None,
    enabled: bool = True,
) -> DeploymentEventTrigger:
    """The trigger of the monitor-on-acquisition deployment: one run per AOI per burst of
    ``eo.acquisition.new`` events.

    Semantics in Prefect 3.8 (``prefect.server.events.triggers.evaluate``): events are bucketed
    per AOI (``for_each`` on the related resource in role ``aoi``); a Reactive trigger with
    threshold 1 fires on the first event of a bucket, then ignores that AOI's events for
    `within` (leading-edge throttle). The run is scheduled `within` after the first event
    (``schedule_after``), so it starts once the burst is over and its STAC search sees every
    item announced meanwhile: a burst of N events gives one run that covers all N.

    `params` adds fixed ``MonitorParams`` fields to those taken from the event, e.g.
    ``{"use_baselines": True}``.
    """
    parameters: dict[str, Any] = {"params": {**_FROM_EVENT, **dict(params or {})}}
    return DeploymentEventTrigger(
        name="monitor-on-new-acquisition",
        description="Re-run monitor for an AOI when watch announces new acquisitions over it "
        f"(one run per AOI per {within.total_seconds():.0f} s burst).",
        enabled=enabled,
        expect={ACQUISITION_EVENT},
        match={"prefect.resource.id": "eo.item.*"},
        for_each={"related:aoi:prefect.resource.id"},
        posture=Posture.Reactive,
        threshold=1,
        within=within,
        schedule_after=within,
        parameters=parameters,
    )

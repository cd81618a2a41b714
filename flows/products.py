"""The product flows: change-detection, urban-footprint, urban-dynamics and monitor.

Each reads like the pipeline diagram: discover -> composites (analysis-ready) -> product ->
publish -> report. No pixel math here: the work happens in `tasks`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows.params import (
    ChangeDetectionParams,
    DateRange,
    MonitorParams,
    UrbanDynamicsParams,
    UrbanFootprintParams,
)
from tasks.aoi import grid_for_aoi
from tasks.ard import make_composites
from tasks.discover import discover_scenes
from tasks.errors import InputError
from tasks.products import BASELINE, ProductSummary, product_task
from tasks.report import table_rows

__all__ = ["change_detection", "monitor", "urban_dynamics", "urban_footprint"]

#: Grid resolution per product: the models were trained on 30 m Landsat (change, dynamics)
#: and 10 m Sentinel-2 (footprint) composites.
RESOLUTION = {"change": 30.0, "footprint": 10.0, "dynamics": 30.0}


def _report(summary: ProductSummary) -> None:
    """Artifacts of one product: quicklook, table of areas, links to the published files."""
    ref = summary.product
    key = f"{summary.kind}-{ref.id}"[:60].lower().replace("_", "-")
    state = "already published (skipped)" if ref.skipped else "published"
    create_markdown_artifact(
        key=f"{key}-quicklook",
        markdown=f"### {summary.kind} {summary.start} .. {summary.end} — {state}\n\n"
        f"![quicklook]({summary.quicklook})\n\n"
        + "\n".join(f"- `{k}`: {href}" for k, href in ref.assets)
        + f"\n- STAC Item: {ref.item_href}\n",
        description=f"{summary.kind} quicklook (true colour, product in red)",
    )
    create_table_artifact(
        key=f"{key}-areas",
        table=table_rows(summary.areas),
        description=f"{summary.kind}: areas by period / epoch",
    )
    create_link_artifact(key=f"{key}-item", link=ref.item_href, link_text="STAC Item")


def _scenes(params: Any, start: str, end: str, collections: list[str]) -> list[Any]:
    scenes = discover_scenes(
        params.aoi,
        start,
        end,
        collections,
        stac_url=params.stac_api_url,
        max_cloud_cover=params.max_cloud_cover,
    )
    if not scenes:
        raise InputError(
            f"no scenes of {collections} over the AOI between {start} and {end}; "
            "widen the dates or the AOI, or raise max_cloud_cover."
        )
    return scenes


@flow(name="change-detection")
def change_detection(params: ChangeDetectionParams) -> ProductSummary:
    """Change between two periods: bi-temporal composites -> FC-Siam-diff (or CVA) -> publish."""
    before, after = params.before.as_tuple(), params.after.as_tuple()
    scenes = _scenes(params, before[0], after[1], params.collections)
    grid = grid_for_aoi(params.aoi, RESOLUTION["change"])
    composites = make_composites(scenes, grid, {"before": before, "after": after})
    summary = product_task(
        "change",
        composites,
        model=params.model,
        threshold=params.threshold,
        start=before[0],
        end=after[1],
        output_url=params.output_url,
    )
    _report(summary)
    return summary


@flow(name="urban-footprint")
def urban_footprint(params: UrbanFootprintParams) -> ProductSummary:
    """Built-up footprint of one year: composite -> U-Net (or NDBI rule) -> publish."""
    if params.period is not None:
        start, end = params.period.as_tuple()
    else:
        start, end = f"{params.year}-01-01", f"{params.year}-12-31"
    # the shipped U-Net is a 10 m Sentinel-2 model; the baseline works on any sensor
    collections = ["sentinel-2-l2a"] if params.model != BASELINE else params.collections
    resolution = RESOLUTION["footprint"] if "sentinel-2-l2a" in collections else 30.0
    scenes = _scenes(params, start, end, collections)
    grid = grid_for_aoi(params.aoi, resolution)
    label = start[:4] if params.year is not None else "period"
    composites = make_composites(scenes, grid, {label: (start, end)})
    summary = product_task(
        "footprint",
        composites,
        model=params.model,
        period=label,
        threshold=params.threshold,
        start=start,
        end=end,
        output_url=params.output_url,
    )
    _report(summary)
    return summary


@flow(name="urban-dynamics")
def urban_dynamics(params: UrbanDynamicsParams) -> ProductSummary:
    """Year of urbanization: annual composites first..last year -> PixelGRU (or breakpoint)."""
    start, end = f"{params.first_year}-01-01", f"{params.last_year}-12-31"
    scenes = _scenes(params, start, end, params.collections)
    grid = grid_for_aoi(params.aoi, RESOLUTION["dynamics"])
    years = {
        str(y): (f"{y}-01-01", f"{y}-12-31") for y in range(params.first_year, params.last_year + 1)
    }
    composites = make_composites(scenes, grid, years)
    summary = product_task(
        "dynamics",
        composites,
        model=params.model,
        start=start,
        end=end,
        output_url=params.output_url,
    )
    _report(summary)
    return summary


@flow(name="monitor")
def monitor(params: MonitorParams) -> list[ProductSummary]:
    """End to end for one AOI: the products asked for, newest state first.

    change: the same season five years ago vs the last full growing season; footprint: the
    last year; dynamics: `first_year` .. last year.
    """
    logger = get_run_logger()
    now = datetime.now(UTC)
    last = now.year if now.month >= 10 else now.year - 1  # the last complete growing season
    common = params.model_dump(include={"aoi", "output_url", "stac_api_url", "max_cloud_cover"})
    if params.use_baselines:
        common["model"] = BASELINE
    out: list[ProductSummary] = []
    if "footprint" in params.products:
        out.append(urban_footprint(UrbanFootprintParams(**common, year=last)))
    if "change" in params.products:
        out.append(
            change_detection(
                ChangeDetectionParams(
                    **common,
                    collections=params.collections,
                    before=DateRange(start=date(last - 5, 4, 1), end=date(last - 5, 10, 31)),
                    after=DateRange(start=date(last, 4, 1), end=date(last, 10, 31)),
                )
            )
        )
    if "dynamics" in params.products:
        out.append(
            urban_dynamics(
                UrbanDynamicsParams(**common, first_year=params.first_year, last_year=last)
            )
        )
    for s in out:
        logger.info(
            "%s: %s (%s)",
            s.kind,
            s.product.item_href,
            "skipped, already published" if s.product.skipped else "published",
        )
    return out

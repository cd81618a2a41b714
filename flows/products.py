"""The product flows: change-detection, urban-footprint, urban-dynamics and monitor.

Each reads like the pipeline diagram: discover -> composites (analysis-ready) -> product ->
publish -> report. No pixel math here: the work happens in `tasks`.

**Tiles.** The AOI's grid is split into tiles of ``EO_TILE_SIZE_PX`` pixels a side
(`tasks.tiling.split_grid`, with the product's halo `tasks.products.HALO_PX`); one task per
tile (`tasks.products.tile_product_task`, fanned out with ``.map()``) makes its composites and
product arrays, and the tiles' cores are mosaicked into one product, published once. An AOI of
up to about one tile is one tile: the whole grid.

**Where tasks run.** ``EO_DASK_ADDRESS`` set when this module is imported (by a worker, ``eo
serve`` or a script) runs the tile tasks on that Dask cluster through prefect-dask's
``DaskTaskRunner``; unset, in threads of the flow's process (Prefect's default). For one call,
``change_detection.with_options(task_runner=tile_task_runner("tcp://host:8786"))(params)``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture

from flows.params import (
    ChangeDetectionParams,
    DateRange,
    MonitorParams,
    UrbanDynamicsParams,
    UrbanFootprintParams,
)
from tasks.adapt import AdaptMode
from tasks.aoi import AoiLike, GridSpec, parse_aoi, reproject_geometry
from tasks.ard import PeriodArg
from tasks.composite import growing_season
from tasks.discover import discover_scenes
from tasks.errors import InputError
from tasks.load import scene_grid
from tasks.products import (
    BASELINE,
    HALO_PX,
    ProductSummary,
    pin_reference_task,
    publish_tiles_task,
    tile_product_task,
)
from tasks.publish import ProductKind
from tasks.refs import SceneRef
from tasks.report import table_rows
from tasks.settings import get_settings
from tasks.tiling import split_grid, tile_task_runner

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
        + f"\n- STAC Item: {ref.item_href}\n"
        + _domain_line(summary.domain),
        description=f"{summary.kind} quicklook (true colour, product in red)",
    )
    create_table_artifact(
        key=f"{key}-areas",
        table=table_rows(summary.areas),
        description=f"{summary.kind}: areas by period / epoch",
    )
    create_link_artifact(key=f"{key}-item", link=ref.item_href, link_text="STAC Item")


def _domain_line(domain: dict[str, Any]) -> str:
    """The artifact's line on how far the inputs were from the training data."""
    if not domain:
        return ""
    verdict = "**out of domain**" if domain["out_of_domain"] else "within the training range"
    adapted = f"; model adapted on {domain['adapted_tiles']} of {domain['tiles']} tile(s)"
    return (
        f"- domain score {domain['score']:.2f} (threshold {domain['threshold']:.2f}, worst "
        f"channel {domain['channel']}): {verdict}{adapted if domain['adapted_tiles'] else ''}\n"
    )


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


def _tiled_product(
    kind: ProductKind,
    scenes: list[SceneRef],
    grid: GridSpec,
    periods: PeriodArg,
    *,
    aoi: AoiLike,
    model: str,
    start: str,
    end: str,
    output_url: str | None,
    threshold: float = 0.5,
    period: str | None = None,
    adapt: AdaptMode = "auto",
) -> ProductSummary:
    """Per tile (fanned out): composites -> product; then one mosaic on `grid`, published once."""
    area = reproject_geometry(parse_aoi(aoi), 4326, grid.epsg)
    tile_px = get_settings().tile_size_px
    tiles = split_grid(grid, tile_size_px=tile_px, halo_px=HALO_PX[kind], aoi=area)
    get_run_logger().info(
        "%s: %d x %d px in %d tile(s) of ~%d px (+%d px halo)",
        kind,
        *grid.shape,
        len(tiles),
        tile_px,
        HALO_PX[kind],
    )
    # tiles crop the AOI's co-registration reference (one untiled run pins its own)
    pinned: list[PrefectFuture[Any]] = (
        [pin_reference_task.submit(scenes, grid)] if len(tiles) > 1 else []
    )
    parts = tile_product_task.map(
        unmapped(kind),
        unmapped(scenes),
        tiles,
        unmapped(periods),
        model=unmapped(model),
        threshold=unmapped(threshold),
        period=unmapped(period),
        adapt=unmapped(adapt),
        wait_for=pinned,
    )
    return publish_tiles_task(
        kind,
        parts.result(),  # waits for every tile; a failed tile fails the product
        model=model,
        threshold=threshold,
        period=period,
        start=start,
        end=end,
        output_url=output_url,
        adapt=adapt,
    )


@flow(name="change-detection", task_runner=tile_task_runner())
def change_detection(params: ChangeDetectionParams) -> ProductSummary:
    """Change between two periods: bi-temporal composites -> FC-Siam-diff (or CVA) -> publish."""
    before, after = params.before.as_tuple(), params.after.as_tuple()
    scenes = _scenes(params, before[0], after[1], params.collections)
    grid = scene_grid(params.aoi, RESOLUTION["change"], scenes, epsg=params.epsg)
    summary = _tiled_product(
        "change",
        scenes,
        grid,
        {"before": before, "after": after},
        aoi=params.aoi,
        model=params.model,
        threshold=params.threshold,
        start=before[0],
        end=after[1],
        output_url=params.output_url,
        adapt=params.adapt,
    )
    _report(summary)
    return summary


@flow(name="urban-footprint", task_runner=tile_task_runner())
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
    grid = scene_grid(params.aoi, resolution, scenes, epsg=params.epsg)
    label = start[:4] if params.year is not None else "period"
    summary = _tiled_product(
        "footprint",
        scenes,
        grid,
        {label: (start, end)},
        aoi=params.aoi,
        model=params.model,
        period=label,
        threshold=params.threshold,
        start=start,
        end=end,
        output_url=params.output_url,
        adapt=params.adapt,
    )
    _report(summary)
    return summary


@flow(name="urban-dynamics", task_runner=tile_task_runner())
def urban_dynamics(params: UrbanDynamicsParams) -> ProductSummary:
    """Year of urbanization: annual composites first..last year -> PixelGRU (or breakpoint)."""
    start, end = f"{params.first_year}-01-01", f"{params.last_year}-12-31"
    scenes = _scenes(params, start, end, params.collections)
    grid = scene_grid(params.aoi, RESOLUTION["dynamics"], scenes, epsg=params.epsg)
    years = {
        str(y): (f"{y}-01-01", f"{y}-12-31") for y in range(params.first_year, params.last_year + 1)
    }
    summary = _tiled_product(
        "dynamics",
        scenes,
        grid,
        years,
        aoi=params.aoi,
        model=params.model,
        start=start,
        end=end,
        output_url=params.output_url,
    )
    _report(summary)
    return summary


def _season_range(year: int) -> DateRange:
    """The growing season of `year` (`tasks.composite.GROWING_SEASON`): the change model's
    composites."""
    start, end = growing_season(year)
    return DateRange(start=date.fromisoformat(start), end=date.fromisoformat(end))


@flow(name="monitor")
def monitor(params: MonitorParams) -> list[ProductSummary]:
    """End to end for one AOI: the products asked for, newest state first.

    change: the same season `change_interval_years` (5) years earlier vs the last full growing
    season; footprint: the last year; dynamics: `first_year` .. last year. `params.year`, when
    given (a run triggered by a new acquisition), stands for "the last year".
    """
    logger = get_run_logger()
    now = datetime.now(UTC)
    last = now.year if now.month >= 10 else now.year - 1  # the last complete growing season
    if params.year is not None:
        last = params.year
    before_year = last - params.change_interval_years
    common = params.model_dump(
        include={"aoi", "output_url", "stac_api_url", "max_cloud_cover", "epsg"}
    )
    if params.use_baselines:
        common["model"] = BASELINE
    out: list[ProductSummary] = []
    if "footprint" in params.products:
        out.append(urban_footprint(UrbanFootprintParams(**common, year=last)))
    if "change" in params.products and _season_range(last).start > now.date():
        # a run triggered by a January-March acquisition: that season has no data yet
        logger.warning("change: the %d growing season has not begun; not made this time", last)
    elif "change" in params.products:
        out.append(
            change_detection(
                ChangeDetectionParams(
                    **common,
                    collections=params.collections,
                    before=_season_range(before_year),
                    after=_season_range(last),
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

"""``eo aoi``: the watched AOIs, and one poll of them.

    eo aoi add leipzig --aoi 12.30,51.30,12.45,51.38 [--products change,footprint]
               [--collections landsat-c2-l2,sentinel-2-l2a] [--since 2026-01-01] [--replace]
    eo aoi list [--json]
    eo aoi remove leipzig
    eo aoi watch [--id leipzig ...] [--lookback-days 30] [--stac-url URL] [--output URL] [--json]

The registry is ``EO_AOI_REGISTRY_URL`` (default ``<EO_OUTPUT_URL>/_state/aois.geojson``).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from tasks.aoi_registry import DEFAULT_COLLECTIONS, DEFAULT_PRODUCTS, AoiRegistry, registry_url
from tasks.errors import PipelineError

aoi_app = typer.Typer(
    help="Watched AOIs: `watch` announces their new acquisitions and `monitor` re-runs.",
    no_args_is_help=True,
)
console = Console()

Output = Annotated[
    str | None,
    typer.Option(
        "--output", help="Output root holding the registry and the watch state (EO_OUTPUT_URL)."
    ),
]


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code=2)


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _registry(output: str | None) -> AoiRegistry:
    return AoiRegistry(registry_url(output_url=output))


@aoi_app.command("add")
def aoi_add(
    aoi_id: Annotated[str, typer.Argument(metavar="ID", help="Id: lower-case letters, digits, -_")],
    aoi: Annotated[str, typer.Option(help="bbox 'w,s,e,n' or a GeoJSON geometry string.")],
    products: Annotated[
        str, typer.Option(help="Products a new acquisition re-makes, comma-separated.")
    ] = ",".join(DEFAULT_PRODUCTS),
    collections: Annotated[
        str, typer.Option(help="STAC collections watched, comma-separated.")
    ] = ",".join(DEFAULT_COLLECTIONS),
    since: Annotated[
        str | None,
        typer.Option(help="Announce acquisitions from this ISO date on (default: now)."),
    ] = None,
    replace: Annotated[bool, typer.Option(help="Replace an AOI with the same id.")] = False,
    output: Output = None,
) -> None:
    """Register an AOI to watch."""
    try:
        registry = _registry(output)
        entry = registry.add(
            aoi_id,
            aoi,
            products=_csv(products),
            collections=_csv(collections),
            since=since,
            replace=replace,
        )
    except PipelineError as err:
        _fail(err)
        return
    console.print(
        f"watching [bold]{entry.id}[/] ({', '.join(entry.products)}) from "
        f"{entry.watched_since.isoformat()} in {registry.url}"
    )


@aoi_app.command("list")
def aoi_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the GeoJSON Features.")] = False,
    output: Output = None,
) -> None:
    """List the watched AOIs."""
    try:
        registry = _registry(output)
        aois = registry.aois()
    except PipelineError as err:
        _fail(err)
        return
    if as_json:
        for a in aois:
            print(json.dumps(a.to_feature()))
        return
    table = Table(title=f"{len(aois)} watched AOI(s) in {registry.url}")
    for col in ("id", "bounds (EPSG:4326)", "products", "collections", "since"):
        table.add_column(col)
    from shapely.geometry import shape

    for a in aois:
        bounds = ", ".join(f"{v:.4f}" for v in shape(a.geometry).bounds)
        table.add_row(
            a.id,
            bounds,
            ",".join(a.products),
            ",".join(a.collections),
            a.watched_since.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@aoi_app.command("remove")
def aoi_remove(
    aoi_id: Annotated[str, typer.Argument(metavar="ID", help="Id of a watched AOI.")],
    output: Output = None,
) -> None:
    """Stop watching an AOI and forget its watermark."""
    from tasks.storage import open_store
    from tasks.watermark import delete_watermark

    try:
        removed = _registry(output).remove(aoi_id)
        had_state = delete_watermark(open_store(output), removed.id)
    except PipelineError as err:
        _fail(err)
        return
    console.print(f"removed [bold]{removed.id}[/]" + (" and its watermark" if had_state else ""))


@aoi_app.command("watch")
def aoi_watch(
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="Poll only this AOI (repeatable).")
    ] = None,
    lookback_days: Annotated[
        float | None, typer.Option(help="Days re-searched before the watermark (default 30).")
    ] = None,
    stac_url: Annotated[
        str | None, typer.Option(help="STAC API root (default EO_STAC_API_URL).")
    ] = None,
    output: Output = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Poll the watched AOIs once and announce new acquisitions as Prefect events.

    Set PREFECT_API_URL to the server that runs the monitor deployment: without it the events
    go to a throwaway ephemeral server and trigger nothing.
    """
    from flows.watch import WatchParams, watch

    fields: dict[str, object] = {
        "aoi_ids": ids or None,
        "stac_api_url": stac_url,
        "output_url": output,
    }
    if lookback_days is not None:
        fields["lookback_days"] = lookback_days
    try:
        params = WatchParams.model_validate(fields)
    except ValidationError as err:
        _fail(ValueError(str(err)))
        return
    try:
        summary = watch(params)
    except PipelineError as err:
        _fail(err)
        return
    if as_json:
        print(summary.model_dump_json())
        return
    table = Table(title=f"watch: {summary.announced} acquisition(s) announced")
    columns = ("aoi", "found", "new", "late", "reprocessed", "announced", "watermark")
    for col in columns:
        table.add_column(col)
    for row in summary.rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    console.print(table)

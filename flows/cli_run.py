"""``eo run <flow>``: run a product flow from the command line, with a final summary table.

    eo run change-detection --aoi 11.955,51.335,11.985,51.365 \\
        --before 2018-05-01/2018-09-30 --after 2023-05-01/2023-09-30
    eo run urban-footprint --aoi ... --year 2023
    eo run urban-dynamics --aoi ... --first-year 1985
    eo run monitor --aoi ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from tasks.errors import PipelineError

run_app = typer.Typer(
    help="Run a product flow (change-detection, urban-footprint, ...).", no_args_is_help=True
)
console = Console()

Aoi = Annotated[str, typer.Option(help="bbox 'w,s,e,n', or a GeoJSON geometry string.")]
Model = Annotated[str | None, typer.Option(help="Weights name, or 'baseline'.")]
Output = Annotated[str | None, typer.Option(help="Local path or s3://bucket/prefix.")]
Stac = Annotated[str | None, typer.Option(help="STAC API root (default EO_STAC_API_URL).")]
Epsg = Annotated[
    int | None,
    typer.Option(help="CRS of the product grid (EPSG code); default the scenes' own zone."),
]


def _range(text: str, option: str) -> dict[str, str]:
    start, sep, end = text.partition("/")
    if not sep:
        raise typer.BadParameter(
            f"{text!r}: give START/END, e.g. 2018-05-01/2018-09-30", param_hint=option
        )
    return {"start": start, "end": end}


def _execute(title: str, build: Callable[[], Any], run: Callable[[Any], Any]) -> None:
    try:
        params = build()
    except ValidationError as err:
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "parameters"
            console.print(f"[bold red]invalid {where}:[/] {e['msg']}")
        raise typer.Exit(code=2) from None
    try:
        with console.status(f"running {title} ... (Prefect logs follow)"):
            result = run(params)
    except PipelineError as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(code=2) from None
    summaries = result if isinstance(result, list) else [result]
    table = Table(title=f"{title}: {len(summaries)} product(s)")
    for col in ("product", "period", "state", "areas", "STAC Item"):
        table.add_column(col)
    for s in summaries:
        areas = ", ".join(f"{r['group']}: {r['area_ha']} ha" for r in s.areas)
        state = "already there" if s.product.skipped else "published"
        table.add_row(s.kind, f"{s.start} .. {s.end}", state, areas, s.product.item_href)
    console.print(table)


def _common(
    aoi: str, model: str | None, output: str | None, stac: str | None, epsg: int | None = None
) -> dict[str, Any]:
    values: dict[str, Any] = {"aoi": aoi, "output_url": output, "stac_api_url": stac, "epsg": epsg}
    if model is not None:
        values["model"] = model
    return values


Adapt = Annotated[
    str,
    typer.Option(
        help="Fine-tune the model on the AOI: auto (where its inputs are far from the "
        "training data), always or never."
    ),
]


@run_app.command("change-detection")
def run_change(
    aoi: Aoi,
    before: Annotated[str, typer.Option(help="START/END of the reference period.")],
    after: Annotated[str, typer.Option(help="START/END of the compared period.")],
    threshold: Annotated[float, typer.Option(help="Change probability.")] = 0.5,
    adapt: Adapt = "auto",
    collections: Annotated[
        str | None,
        typer.Option(help="STAC collections, comma-separated (default both Landsat and S2)."),
    ] = None,
    model: Model = None,
    output: Output = None,
    stac_url: Stac = None,
    epsg: Epsg = None,
) -> None:
    """Change between two periods."""
    from flows.params import ChangeDetectionParams
    from flows.products import change_detection

    _execute(
        "change-detection",
        lambda: ChangeDetectionParams.model_validate(
            {
                **_common(aoi, model, output, stac_url, epsg),
                "before": _range(before, "--before"),
                "after": _range(after, "--after"),
                "threshold": threshold,
                "adapt": adapt,
                **(
                    {"collections": [c.strip() for c in collections.split(",") if c.strip()]}
                    if collections
                    else {}
                ),
            }
        ),
        change_detection,
    )


@run_app.command("urban-footprint")
def run_footprint(
    aoi: Aoi,
    year: Annotated[int, typer.Option(help="Calendar year.")],
    adapt: Adapt = "auto",
    model: Model = None,
    output: Output = None,
    stac_url: Stac = None,
    epsg: Epsg = None,
) -> None:
    """Built-up footprint of one year."""
    from flows.params import UrbanFootprintParams
    from flows.products import urban_footprint

    _execute(
        "urban-footprint",
        lambda: UrbanFootprintParams.model_validate(
            {**_common(aoi, model, output, stac_url, epsg), "year": year, "adapt": adapt}
        ),
        urban_footprint,
    )


@run_app.command("urban-dynamics")
def run_dynamics(
    aoi: Aoi,
    first_year: Annotated[int, typer.Option(help="First year.")] = 1985,
    last_year: Annotated[int | None, typer.Option(help="Last year.")] = None,
    model: Model = None,
    output: Output = None,
    stac_url: Stac = None,
    epsg: Epsg = None,
) -> None:
    """Year of urbanization, first..last year."""
    from flows.params import UrbanDynamicsParams
    from flows.products import urban_dynamics

    extra: dict[str, Any] = {"first_year": first_year}
    if last_year is not None:
        extra["last_year"] = last_year
    _execute(
        "urban-dynamics",
        lambda: UrbanDynamicsParams(**_common(aoi, model, output, stac_url, epsg), **extra),
        urban_dynamics,
    )


@run_app.command("monitor")
def run_monitor(
    aoi: Aoi,
    baseline: Annotated[bool, typer.Option(help="Use baselines.")] = False,
    output: Output = None,
    stac_url: Stac = None,
    epsg: Epsg = None,
) -> None:
    """All three products for one AOI."""
    from flows.params import MonitorParams
    from flows.products import monitor

    _execute(
        "monitor",
        lambda: MonitorParams(**_common(aoi, None, output, stac_url, epsg), use_baselines=baseline),
        monitor,
    )

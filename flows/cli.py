"""The ``eo`` command line: archive, STAC API, discovery, demo.

eo archive create [DIR] [--tiny] [--seed N]   make a synthetic archive
eo stac serve DIR [--port P]                  serve it as a STAC API on 127.0.0.1
eo discover --aoi ... --start ... --end ...   list scenes from any STAC API
eo demo                                       the main job on the embedded default
eo train KIND [--seeds 1,2,3] [--output DIR]  train a model on synthetic worlds
eo train KIND --labels FILE --label-years Y   ... or on your own labels (raster / GeoParquet)
eo evaluate --seed N[,M]                      models vs baselines on unseen worlds
eo evaluate-real --labels L --stac-url U ...  ... and on real labelled change pairs
eo evaluate-real --north-carolina DIR         ... and the footprint on a real Landsat 7 scene
eo aoi add|list|remove|watch                  watched AOIs and one poll of them (flows/cli_aoi.py)
eo serve [--name PATTERN] [--dry-run]         serve deployments/prefect.yaml (flows/serve.py)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_aoi import aoi_app
from flows.cli_run import run_app
from tasks.errors import PipelineError
from tasks.settings import get_settings

if TYPE_CHECKING:
    from pydantic import ValidationError

app = typer.Typer(
    help="eo-pipeline: Sentinel-2 / Landsat change, urban footprint and urban dynamics.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
archive_app = typer.Typer(
    help="Synthetic archives (the embedded default data source).", no_args_is_help=True
)
stac_app = typer.Typer(help="The local STAC API.", no_args_is_help=True)
app.add_typer(archive_app, name="archive")
app.add_typer(stac_app, name="stac")
app.add_typer(run_app, name="run")
app.add_typer(aoi_app, name="aoi")

console = Console()


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code=2)


def _fail_invalid(err: ValidationError) -> None:
    """A pydantic ValidationError as one line per field (its name, then what is wrong)."""
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "parameters"
        console.print(f"[bold red]invalid {where}:[/] {e['msg'].removeprefix('Value error, ')}")
    raise typer.Exit(code=2)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A command without PREFECT_API_URL runs its flow on a temporary Prefect server; that
    # server reports usage to Prefect unless told not to (and logs an ERROR where it cannot
    # reach the internet). Off unless the user set it. Prefect is not imported yet here.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _year_range(text: str | None, option: str) -> tuple[int, int] | None:
    if text is None:
        return None
    first, _, last = text.partition("-")
    try:
        return (int(first), int(last or first))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: give FIRST-LAST, e.g. 1985-2025", param_hint=option
        ) from None


@archive_app.command("create")
def archive_create(
    root: Annotated[
        Path | None, typer.Argument(help="Folder to write; default EO_CACHE_DIR/archive-<hash>.")
    ] = None,
    tiny: Annotated[
        bool, typer.Option(help="Start from the tiny test configuration (seconds).")
    ] = False,
    seed: Annotated[int | None, typer.Option(help="World seed.")] = None,
    size_m: Annotated[float | None, typer.Option(help="Side of the simulated square (m).")] = None,
    center: Annotated[str | None, typer.Option(help="AOI centre 'lon,lat' (degrees).")] = None,
    end_year: Annotated[int | None, typer.Option(help="Last simulated year.")] = None,
    landsat_years: Annotated[str | None, typer.Option(help="Landsat years FIRST-LAST.")] = None,
    sentinel2_years: Annotated[
        str | None, typer.Option(help="Sentinel-2 years FIRST-LAST.")
    ] = None,
    months: Annotated[str | None, typer.Option(help="Months kept FIRST-LAST, e.g. 4-10.")] = None,
    max_scenes_per_year: Annotated[
        int | None, typer.Option(help="Most scenes per platform and year.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Processes writing scenes.")] = None,
) -> None:
    """Create (or reuse, if complete and identical) a synthetic archive.

    Without options this is the demo archive (4 x 4 km, Landsat 1985-2026, Sentinel-2 2019-2026).
    """
    from pydantic import ValidationError

    from tasks.synthetic import DEMO_CONFIG, ArchiveConfig, config_hash, create_archive, tiny_config

    overrides: dict[str, object] = {
        "seed": seed,
        "size_m": size_m,
        "end_year": end_year,
        "landsat_years": _year_range(landsat_years, "--landsat-years"),
        "sentinel2_years": _year_range(sentinel2_years, "--sentinel2-years"),
        "months": _year_range(months, "--months"),
        "max_scenes_per_year": max_scenes_per_year,
    }
    if center is not None:
        lon, _, lat = center.partition(",")
        try:
            overrides.update(center_lon=float(lon), center_lat=float(lat))
        except ValueError:
            raise typer.BadParameter(f"{center!r}: give 'lon,lat'", param_hint="--center") from None
    overrides = {k: v for k, v in overrides.items() if v is not None}
    base = tiny_config() if tiny else DEMO_CONFIG
    try:
        config = ArchiveConfig.model_validate({**base.model_dump(), **overrides})
    except ValidationError as err:
        _fail_invalid(err)
        return
    root = root or get_settings().cache_dir / f"archive-{config_hash(config)}"
    t0 = time.perf_counter()
    try:
        info = create_archive(root, config, workers=workers)
    except PipelineError as err:
        _fail(err)
        return
    table = Table(title=f"archive {info.root}")
    table.add_column("collection")
    table.add_column("items", justify="right")
    for coll, n in info.n_items.items():
        table.add_row(coll, str(n))
    console.print(table)
    console.print(
        f"AOI bbox (EPSG:4326): {list(info.bbox)}   ready in {time.perf_counter() - t0:.1f} s"
    )
    console.print(f"serve it: [bold]eo stac serve {info.root}[/]")


@stac_app.command("serve")
def stac_serve(
    root: Annotated[Path, typer.Argument(help="An archive folder made by `eo archive create`.")],
    port: Annotated[
        int | None, typer.Option(help="Port on 127.0.0.1 (default: a free one).")
    ] = None,
) -> None:
    """Serve an archive as a STAC API on 127.0.0.1 until Ctrl-C."""
    from tasks.stac_server import serve_stac
    from tasks.synthetic import stac_files

    try:
        server = serve_stac(stac_files(root), port=port)
    except PipelineError as err:
        _fail(err)
        return
    console.print(f"STAC API at [bold]{server.url}[/]  (Ctrl-C to stop)")
    console.print(f"  export EO_STAC_API_URL={server.url}")
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop and server.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    if not stop and not server.running and server.process.returncode not in (0, -15):
        sys.exit(1)


@app.command("discover")
def discover_cmd(
    aoi: Annotated[
        str, typer.Option(help="bbox 'west,south,east,north' or a GeoJSON geometry string.")
    ],
    start: Annotated[str, typer.Option(help="ISO start date.")],
    end: Annotated[str, typer.Option(help="ISO end date (inclusive).")],
    collections: Annotated[
        str, typer.Option(help="Comma-separated STAC collection ids.")
    ] = "sentinel-2-l2a,landsat-c2-l2",
    stac_url: Annotated[
        str | None, typer.Option(help="STAC API root (default EO_STAC_API_URL).")
    ] = None,
    max_cloud_cover: Annotated[float | None, typer.Option(help="Max eo:cloud_cover (%).")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON lines instead of a table.")
    ] = False,
) -> None:
    """List the scenes that cover an AOI."""
    from tasks.discover import discover

    try:
        scenes = discover(
            aoi,
            start,
            end,
            [c.strip() for c in collections.split(",") if c.strip()],
            stac_url=stac_url,
            max_cloud_cover=max_cloud_cover,
        )
    except PipelineError as err:
        _fail(err)
        return
    if as_json:
        for s in scenes:
            print(
                json.dumps(
                    {
                        "id": s.id,
                        "collection": s.collection,
                        "datetime": s.datetime.isoformat(),
                        "platform": s.platform,
                        "cloud_cover": s.cloud_cover,
                    }
                )
            )
        return
    table = Table(title=f"{len(scenes)} scene(s)")
    for col in ("datetime", "collection", "platform", "id", "cloud %"):
        table.add_column(col)
    for s in scenes:
        cc = "" if s.cloud_cover is None else f"{s.cloud_cover:.1f}"
        table.add_row(s.datetime.strftime("%Y-%m-%d %H:%M"), s.collection, s.platform, s.id, cc)
    console.print(table)


@app.command("demo")
def demo_cmd(
    output: Annotated[
        str | None, typer.Option(help="Where to publish (default EO_OUTPUT_URL, ./demo-output).")
    ] = None,
    baseline: Annotated[
        bool, typer.Option(help="Classical baselines instead of the shipped models.")
    ] = False,
) -> None:
    """The main job on the embedded default: archive, STAC API, monitor, products, viewer."""
    from flows.demo import DemoParams, demo

    try:
        demo(DemoParams(output_url=output, baseline=baseline))
    except PipelineError as err:
        _fail(err)


@app.command("version")
def version() -> None:
    """Print the software version."""
    from importlib.metadata import version as v

    print(v("eo-pipeline"))


def _seed_list(text: str, option: str = "--seeds") -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise typer.BadParameter(
            f"{text!r}: give comma-separated integers, e.g. 1,2,3", param_hint=option
        )
    return seeds


def _pairs(text: str | None) -> list[tuple[int, int]] | None:
    if text is None:
        return None
    out = []
    for part in text.split(","):
        pair = _year_range(part.strip(), "--change-pairs")
        if pair is None or pair[0] >= pair[1]:
            raise typer.BadParameter(
                f"{part!r}: give BEFORE-AFTER years, e.g. 1990-2024", param_hint="--change-pairs"
            )
        out.append(pair)
    return out


@app.command("train")
def train_cmd(
    kind: Annotated[str, typer.Argument(help="change, footprint or dynamics.")],
    seeds: Annotated[str, typer.Option(help="Training world seeds, comma-separated.")] = "1,2,3",
    output: Annotated[
        Path | None, typer.Option(help="Weights folder (default EO_CACHE_DIR/weights).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Max epochs (default: recipe).")] = None,
    steps: Annotated[int | None, typer.Option(help="Batches per epoch (default: recipe).")] = None,
    tiny: Annotated[bool, typer.Option(help="Tiny worlds (seconds; for trying it out).")] = False,
    sampled: Annotated[
        bool, typer.Option(help="Sampled worlds: each seed (< 1000) its own configuration.")
    ] = False,
    change_pairs: Annotated[
        str | None, typer.Option(help="Change year pairs, e.g. 1990-2024,2005-2024.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Initialisation / sampling seed.")] = 0,
    labels: Annotated[
        str | None,
        typer.Option(help="Train on your labels: a raster (.tif) or GeoParquet (.parquet)."),
    ] = None,
    label_years: Annotated[
        str | None,
        typer.Option(help="Years of the labels: footprint Y, change BEFORE-AFTER, dynamics A-B."),
    ] = None,
    aoi: Annotated[
        str | None, typer.Option(help="AOI of the labels (w,s,e,n or GeoJSON); default extent.")
    ] = None,
    stac_url: Annotated[
        str | None, typer.Option(help="STAC API of the imagery (default EO_STAC_API_URL).")
    ] = None,
    collections: Annotated[
        str | None, typer.Option(help="STAC collections, comma-separated (default per kind).")
    ] = None,
    val_edge: Annotated[
        str | None, typer.Option(help="AOI edge held out for validation: top/bottom/left/right.")
    ] = None,
    add_synthetic: Annotated[
        bool, typer.Option(help="With --labels: train on the synthetic worlds as well.")
    ] = False,
) -> None:
    """Train one model on synthetic worlds (or your labels) and write <name>.pt + <name>.json."""
    from pydantic import ValidationError

    from flows.train import TrainParams, train

    label_source: dict[str, object] | None = None
    if labels is not None:
        years = _year_range(label_years, "--label-years") if label_years else None
        if kind == "footprint" and years is not None and years[0] != years[1]:
            raise typer.BadParameter(
                f"{label_years!r}: footprint labels show one year, e.g. 2023",
                param_hint="--label-years",
            )
        keys = {"footprint": ("year", None), "change": ("before", "after")}
        first, last = keys.get(kind, ("first_year", "last_year"))
        label_source = {
            "path": labels,
            "aoi": aoi,
            "stac_api_url": stac_url,
            "collections": collections.split(",") if collections else None,
            "val_edge": val_edge,
            first: None if years is None else years[0],
        }
        if last is not None:
            label_source[last] = None if years is None else years[1]
    try:
        params = TrainParams.model_validate(
            {
                "kind": kind,
                "world_seeds": _seed_list(seeds),
                "world": "tiny" if tiny else "sampled" if sampled else "demo",
                "labels": label_source,
                "add_synthetic": add_synthetic,
                "epochs": epochs,
                "steps": steps,
                "change_pairs": _pairs(change_pairs),
                "device": device,
                "seed": seed,
                "output_dir": None if output is None else str(output),
            }
        )
    except ValidationError as err:
        _fail_invalid(err)
        return
    try:
        summary = train(params)
    except PipelineError as err:
        _fail(err)
        return
    table = Table(title=f"{summary.name} ({summary.seconds:.0f} s, {summary.epochs_run} epochs)")
    table.add_column("validation metric")
    table.add_column("value", justify="right")
    for k, v in summary.metrics.items():
        table.add_row(k, f"{v:.4g}")
    console.print(table)
    console.print(f"weights: {summary.weights}\nsha256:  {summary.sha256}")
    console.print(f"trained on {summary.training_data}")


@app.command("evaluate-real")
def evaluate_real_cmd(
    labels: Annotated[
        Path | None,
        typer.Option(help="Label raster: 1 changed, 0 unchanged, other values unlabelled."),
    ] = None,
    stac_url: Annotated[
        str | None, typer.Option(help="STAC API serving the pair's scenes.")
    ] = None,
    before: Annotated[str | None, typer.Option(help="START/END of the first period.")] = None,
    after: Annotated[str | None, typer.Option(help="START/END of the second period.")] = None,
    collections: Annotated[
        str, typer.Option(help="Collections to search, comma-separated.")
    ] = "landsat-c2-l2",
    nanjing: Annotated[
        Path | None,
        typer.Option(
            help="The real-data folder holding the Nanjing pair: serve it and score it "
            "(instead of --labels/--stac-url/--before/--after)."
        ),
    ] = None,
    north_carolina: Annotated[
        Path | None,
        typer.Option(
            help="The real-data folder holding the North Carolina Landsat 7 scene: score the "
            "footprint model (adapted as the flow would) and the NDBI rule on its labels."
        ),
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Where the products go.")] = None,
) -> None:
    """Change detection on a real labelled pair through the change-detection flow: the
    model (default parameters) next to the CVA baseline, scored on the labels; or, with
    --north-carolina, the footprint model on a real labelled scene."""
    import tempfile

    if north_carolina is not None:
        _footprint_case(north_carolina)
        return

    from flows.cli_run import _range
    from flows.evaluate import evaluate_real_change

    work = Path(tempfile.mkdtemp(prefix="eo-evaluate-real-"))
    out = str(output or work / "products")
    server = None
    try:
        if nanjing is not None:
            from models.training.realdata import nanjing_pair, write_labels, write_landsat_items
            from tasks.stac_server import serve_stac

            pair = nanjing_pair(nanjing)
            server = serve_stac(write_landsat_items(pair, work / "archive"))
            labels, stac_url = write_labels(pair, work / "labels.tif"), server.url
            before, after = before or "2000-04-01/2000-10-31", after or "2002-04-01/2002-10-31"
        missing = [
            o
            for o, v in (
                ("--labels", labels),
                ("--stac-url", stac_url),
                ("--before", before),
                ("--after", after),
            )
            if v is None
        ]
        if missing:
            _fail(PipelineError(f"{', '.join(missing)}: needed (or --nanjing DIR)."))
        assert labels and stac_url and before and after
        b, a = _range(before, "--before"), _range(after, "--after")
        result = evaluate_real_change(
            labels,
            stac_api_url=stac_url,
            before=(b["start"], b["end"]),
            after=(a["start"], a["end"]),
            collections=[c.strip() for c in collections.split(",") if c.strip()],
            output_url=out,
            name="nanjing" if nanjing is not None else None,
        )
    except PipelineError as err:
        _fail(err)
        return
    finally:
        if server is not None:
            server.stop()
    table = Table(title=f"{result.name}: DL vs baseline on {result.labelled} labelled pixels")
    for col in ("metric", "DL", "baseline"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for metric in ("f1", "precision", "recall"):
        table.add_row(metric, f"{result.dl[metric]:.3f}", f"{result.baseline[metric]:.3f}")
    console.print(table)
    d = result.domain
    if d:
        console.print(
            f"domain score {d['score']:.2f} (threshold {d['threshold']:.2f}, channel "
            f"{d['channel']}); adapted on {d['adapted_tiles']} of {d['tiles']} tile(s)"
        )
    console.print(f"products: {out}")


def _footprint_case(realdata: Path) -> None:
    """`eo evaluate-real --north-carolina`: the sparse labels, then the dense map."""
    from models.training.evaluate import evaluate_real_footprint
    from models.training.realdata import north_carolina_scene

    for dense in (False, True):
        try:
            scene = north_carolina_scene(realdata, dense=dense)
            ev = evaluate_real_footprint(scene)
        except PipelineError as err:
            _fail(err)
            return
        table = Table(title=f"{scene.name}: footprint, DL vs NDBI rule ({scene.note})")
        for col in ("metric", "DL", "baseline"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for _, metric, dl, base in ev.rows:
            table.add_row(metric, f"{dl:.3f}", "" if base != base else f"{base:.3f}")
        console.print(table)


@app.command("evaluate")
def evaluate_cmd(
    seed: Annotated[
        str,
        typer.Option(help="Seed of a world never used in training; several: 101,102,103."),
    ],
    weights: Annotated[
        Path | None, typer.Option(help="Weights folder that wins over the shipped one.")
    ] = None,
    tiny: Annotated[bool, typer.Option(help="A tiny world (seconds; for trying it out).")] = False,
    sampled: Annotated[
        bool,
        typer.Option(
            help="Worlds whose configuration is drawn per seed (latitude, season, clouds, "
            "misregistration, growth; seeds >= 1000)."
        ),
    ] = False,
    change_pairs: Annotated[
        str | None, typer.Option(help="Change year pairs, e.g. 1991-2025,2009-2025.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
) -> None:
    """Score the models and their classical baselines side by side on unseen worlds; with
    several seeds, then the bars on every world (a bar is met where it is met on all)."""
    from flows.evaluate import EvaluateParams, bar_summary, check_unseen, evaluate

    seeds = _seed_list(seed, "--seed")
    if tiny and sampled:
        _fail(PipelineError("--tiny and --sampled: choose one."))
    world: Literal["demo", "tiny", "sampled"] = "tiny" if tiny else "sampled" if sampled else "demo"
    try:  # all of them before the first world is built
        check_unseen(seeds, world=world, weights_dir=None if weights is None else str(weights))
    except PipelineError as err:
        _fail(err)
    results = []
    for one in seeds:
        params = EvaluateParams(
            seed=one,
            world=world,
            weights_dir=None if weights is None else str(weights),
            change_pairs=_pairs(change_pairs),
            device=device,
        )
        try:
            result = evaluate(params)
        except PipelineError as err:
            _fail(err)
            return
        results.append(result)
        table = Table(title=f"world {result.seed}: DL vs baseline")
        for col in ("product", "metric", "DL", "baseline"):
            table.add_column(col, justify="left" if col in ("product", "metric") else "right")
        for product, metric, dl, base in result.rows:
            table.add_row(product, metric, f"{dl:.3f}", f"{base:.3f}")
        console.print(table)
    for k, v in results[-1].models.items():
        console.print(f"{k}: {v}")
    if len(results) > 1:
        # narrow enough for 80 columns with four worlds: the world columns are headed by seed
        table = Table(title="bars on every world: DL on the world of each seed")
        for col in ("product", "metric"):
            table.add_column(col, no_wrap=True)
        for col in ("bar", *(str(r.seed) for r in results), "mean", "met on all"):
            table.add_column(col, justify="right")
        for row in bar_summary(results):
            table.add_row(
                row.product,
                row.metric,
                f"{row.bar:.2f}",
                *(f"{v:.3f}" for v in row.values),
                f"{row.mean:.3f}",
                "yes" if row.met_everywhere else "no",
            )
        console.print(table)


@app.command("serve")
def serve_cmd(
    name: Annotated[
        list[str] | None,
        typer.Option("--name", "-n", help="Only flow/deployment names like 'monitor/*'."),
    ] = None,
    prefect_file: Annotated[
        Path | None, typer.Option(help="Prefect project file (default deployments/prefect.yaml).")
    ] = None,
    port: Annotated[
        int, typer.Option(help="Port of the Prefect server started if PREFECT_API_URL is unset.")
    ] = 4200,
    limit: Annotated[int | None, typer.Option(help="Most flow runs at a time.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the deployments (defaults validated); exit.")
    ] = False,
) -> None:
    """Serve the deployments of deployments/prefect.yaml from this process until Ctrl-C.

    Starts what the embedded default lacks: a Prefect server on 127.0.0.1 (UI, scheduler, event
    triggers) when PREFECT_API_URL is unset, and the demo archive's STAC API when EO_STAC_API_URL
    is unset.
    """
    from flows.serve import DEFAULT_PREFECT_FILE, build_deployments, load_specs, serve_project

    path = prefect_file or DEFAULT_PREFECT_FILE
    try:
        if not dry_run:
            serve_project(path, names=name or (), server_port=port, limit=limit, announce=print)
            return
        deployments = build_deployments(load_specs(path), names=name or ())
    except PipelineError as err:
        _fail(err)
        return
    print(f"{len(deployments)} deployment(s) in {path}:")
    for d in deployments:
        when = [
            str(getattr(s.schedule, "cron", None) or getattr(s.schedule, "interval", ""))
            for s in d.schedules or []
        ]
        when += [f"on {', '.join(sorted(getattr(t, 'expect', ())))}" for t in d.triggers]
        print(f"{d.flow_name}/{d.name}  [{'; '.join(when) or 'on demand'}]  {d.entrypoint}")
        print(f"    parameters: {json.dumps(d.parameters)}")


if __name__ == "__main__":  # pragma: no cover
    app()

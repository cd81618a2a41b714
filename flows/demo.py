"""The main job on the embedded default (`make demo`, `eo demo`).

Creates (or reuses) the demo archive in ``EO_CACHE_DIR``, serves it with ``rustac serve`` on
127.0.0.1, runs `monitor` over the demo AOI (Landsat 1985-now + recent Sentinel-2), publishes to
``EO_OUTPUT_URL`` (default ``./demo-output``), writes the static viewer next to the products,
prints a summary, and stops the STAC API it started.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from pydantic import BaseModel, Field

from flows.params import MonitorParams
from flows.products import monitor
from tasks.products import ProductSummary
from tasks.settings import get_settings

__all__ = ["DemoParams", "demo"]


class DemoParams(BaseModel):
    """Parameters of the demo run (all optional)."""

    archive_dir: str | None = Field(
        default=None, description="Archive folder; default EO_CACHE_DIR/archive-demo."
    )
    output_url: str | None = Field(default=None, description="Default EO_OUTPUT_URL.")
    baseline: bool = Field(
        default=False, description="Use the classical baselines instead of the shipped models."
    )


@task(name="ensure-archive", tags=["cpu"])
def ensure_archive(root: str) -> dict[str, Any]:
    """Create the demo archive unless an identical complete one exists (idempotent)."""
    from tasks.synthetic import DEMO_CONFIG, create_archive

    info = create_archive(Path(root), DEMO_CONFIG)
    return {"root": str(info.root), "aoi": info.aoi}


@task(name="write-viewer", tags=["io"])
def write_viewer_task(summaries: list[ProductSummary], folder: str) -> str:
    """The static Leaflet viewer of the products, next to them (a local folder)."""
    import base64

    from tasks.viewer import ViewerLayer, write_viewer

    colors = {"change": "#e6261f", "footprint": "#ff9900", "dynamics": "#7b2cbf"}
    layers = []
    for s in summaries:
        png = base64.b64decode(s.quicklook.split(",", 1)[1])
        layers.append(
            ViewerLayer(
                f"{s.kind} {s.start[:4]}-{s.end[:4]}",
                s.bounds,
                image_png=png,
                geojson=s.geojson,
                color=colors[s.kind],
            )
        )
    return str(write_viewer(layers, Path(folder), title="eo-pipeline demo"))


@flow(name="demo", log_prints=True)
def demo(params: DemoParams | None = None) -> list[ProductSummary]:
    """Archive -> local STAC API -> monitor -> products + viewer (no network)."""
    from tasks.stac_server import serve_stac
    from tasks.synthetic import stac_files

    params = params or DemoParams()
    logger = get_run_logger()
    settings = get_settings()
    output = params.output_url or settings.output_url
    root = params.archive_dir or str(settings.cache_dir / "archive-demo")
    archive = ensure_archive(root)
    with serve_stac(stac_files(Path(archive["root"]))) as server:
        logger.info("STAC API at %s", server.url)
        summaries = monitor(
            MonitorParams(
                aoi=json.dumps(archive["aoi"]),
                output_url=output,
                stac_api_url=server.url,
                use_baselines=params.baseline,
            )
        )
    print(f"{'product':10s} {'period':23s} {'state':9s} item")
    for s in summaries:
        state = "skipped" if s.product.skipped else "new"
        print(f"{s.kind:10s} {s.start} .. {s.end} {state:9s} {s.product.item_href}")
        for row in s.areas:
            group, n, ha = row["group"], row["polygons"], row["area_ha"]
            print(f"{'':10s}   {group:>10s}: {n:4d} polygons {ha:9.2f} ha")
    if "://" not in output:
        index = write_viewer_task(summaries, output)
        print(f"viewer: {index}")
    return summaries

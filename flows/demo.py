"""The main job on the embedded default: synthetic archive -> local STAC API -> discover -> load.

`make demo` runs this flow. It creates (or reuses) the demo archive in ``EO_CACHE_DIR``, serves it
with ``rustac serve`` on 127.0.0.1, discovers every Landsat and Sentinel-2 scene over the demo AOI,
loads them lazily on one UTM grid and reports what was found: scenes per platform and year, and the
share of valid (non-nodata) pixels per scene, computed chunk by chunk.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from tasks.discover import discover_scenes
from tasks.refs import SceneRef
from tasks.settings import get_settings

__all__ = ["DemoParams", "DemoSummary", "demo"]

COLLECTIONS = ("landsat-c2-l2", "sentinel-2-l2a")


class DemoParams(BaseModel):
    """Parameters of the demo run (all optional)."""

    start: str | None = Field(
        default=None, description="ISO start date; default: the archive's first year."
    )
    end: str | None = Field(default=None, description="ISO end date; default: today.")
    archive_dir: str | None = Field(
        default=None, description="Archive folder; default EO_CACHE_DIR/archive-demo."
    )


class DemoSummary(BaseModel):
    """What the demo found."""

    archive: str
    stac_url: str
    n_scenes: int
    per_platform: dict[str, int]
    per_year: dict[int, int]
    grid: dict[str, Any]
    valid_fraction_median: float


@task(name="ensure-archive", tags=["cpu"])
def ensure_archive(root: str) -> dict[str, Any]:
    """Create the demo archive unless an identical complete one exists (idempotent)."""
    from tasks.synthetic import DEMO_CONFIG, create_archive

    info = create_archive(Path(root), DEMO_CONFIG)
    years = DEMO_CONFIG.landsat_years or DEMO_CONFIG.sentinel2_years or (DEMO_CONFIG.end_year,) * 2
    return {"root": str(info.root), "aoi": info.aoi, "first_year": years[0]}


@task(name="summarise-stack", tags=["cpu"])
def summarise_stack(scenes: list[SceneRef], aoi: dict[str, Any]) -> dict[str, Any]:
    """Load the scenes lazily on the AOI's grid and compute per-scene valid-pixel fractions."""
    import dask

    from tasks.load import default_grid, load

    grid = default_grid(aoi, COLLECTIONS)
    stack = load(scenes, grid, bands=["red"], with_mask=False)
    with dask.config.set(scheduler="threads"):
        valid = stack.sel(band="red").notnull().mean(dim=("y", "x")).compute()
    return {
        "grid": {"epsg": grid.epsg, "resolution": grid.resolution, "shape": list(grid.shape)},
        "valid_fraction": [float(v) for v in valid.values],
    }


@flow(name="demo", log_prints=True)
def demo(params: DemoParams | None = None) -> DemoSummary:
    """Archive -> STAC API -> discover -> load -> summary (the embedded default, no network)."""
    from tasks.stac_server import serve_stac
    from tasks.synthetic import stac_files

    params = params or DemoParams()
    logger = get_run_logger()
    root = params.archive_dir or str(get_settings().cache_dir / "archive-demo")
    archive = ensure_archive(root)
    start = params.start or f"{archive['first_year']}-01-01"
    end = params.end or datetime.now(UTC).date().isoformat()
    with serve_stac(stac_files(Path(archive["root"]))) as server:
        logger.info("STAC API at %s", server.url)
        scenes = discover_scenes(archive["aoi"], start, end, list(COLLECTIONS), stac_url=server.url)
        stats = summarise_stack(scenes, archive["aoi"])

    per_platform: dict[str, int] = {}
    per_year: dict[int, int] = {}
    for s in scenes:
        per_platform[s.platform] = per_platform.get(s.platform, 0) + 1
        per_year[s.datetime.year] = per_year.get(s.datetime.year, 0) + 1
    fractions = sorted(stats["valid_fraction"])
    summary = DemoSummary(
        archive=archive["root"],
        stac_url=server.url,
        n_scenes=len(scenes),
        per_platform=dict(sorted(per_platform.items())),
        per_year=dict(sorted(per_year.items())),
        grid=stats["grid"],
        valid_fraction_median=fractions[len(fractions) // 2] if fractions else 0.0,
    )
    rows = "\n".join(f"| {p} | {n} |" for p, n in summary.per_platform.items())
    create_markdown_artifact(
        key="demo-summary",
        markdown=f"## Demo archive\n\n{summary.n_scenes} scenes on grid {summary.grid}\n\n"
        f"| platform | scenes |\n|---|---|\n{rows}\n",
        description="Scenes discovered over the demo AOI",
    )
    print(f"{summary.n_scenes} scenes over the demo AOI on grid {summary.grid}")
    for p, n in summary.per_platform.items():
        print(f"  {p:14s} {n:5d}")
    print(f"median valid-pixel fraction per scene: {summary.valid_fraction_median:.2f}")
    return summary

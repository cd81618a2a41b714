"""Wall time of the product flows per stage, the share of Prefect overhead, and how the cost grows
with the AOI area (1x, 2x, 4x).

Each size gets its own synthetic archive (the demo's world and schedule, a shorter span of years
so the benchmark takes minutes: Landsat and Sentinel-2 2019-2024), served by rustac; then
`urban-footprint` (10 m U-Net) and `change-detection` (30 m FC-Siam-diff) run under Prefect's
ephemeral API. Stages are timed inside the process; "Prefect overhead" is the flow wall time
minus the time spent in the stage functions themselves.

    .venv/bin/python benchmarks/demo.py [--sizes 1,2,4] [--base-m 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

STAGES: dict[str, float] = defaultdict(float)


def _timed(module: Any, name: str, stage: str) -> None:
    """Wrap `module.name` so its wall time accumulates into STAGES[stage]."""
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            STAGES[stage] += time.perf_counter() - t0

    setattr(module, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,2,4", help="AOI area multiples")
    parser.add_argument("--base-m", type=float, default=2000.0, help="side of the 1x AOI (m)")
    args = parser.parse_args()

    import flows.products as fp
    import tasks.ard as ard
    import tasks.discover as disc
    import tasks.products as prod
    from flows.params import ChangeDetectionParams, UrbanFootprintParams
    from tasks.settings import get_settings
    from tasks.stac_server import serve_stac
    from tasks.synthetic import DEMO_CONFIG, ArchiveConfig, create_archive, stac_files

    # the functions the task wrappers call: discovery, ARD + composites, map + publish
    _timed(disc.discover_scenes, "fn", "discover")  # a Prefect Task: it calls its .fn
    _timed(ard, "composites_for", "composites (load, mask, coregister, harmonize, median)")
    _timed(prod, "change_map", "inference (change)")
    _timed(prod, "footprint_map", "inference (footprint)")
    _timed(prod, "publish_product", "vectorize + publish")
    _timed(prod, "change_polygons", "vectorize + publish")
    _timed(prod, "footprint_polygons", "vectorize + publish")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ["EO_CACHE_DIR"] = str(Path(tmp) / "cache")
        get_settings.cache_clear()
        sizes = [float(s) for s in args.sizes.split(",")]
        # a warm-up run first (discarded): Prefect's ephemeral API starts, torch imports and
        # sets up its deterministic mode once per process; the 1x figures would carry that
        for run, mult in enumerate([sizes[0] / 2, *sizes]):
            STAGES.clear()
            side = args.base_m * math.sqrt(mult)
            config = ArchiveConfig.model_validate(
                {
                    **DEMO_CONFIG.model_dump(),
                    "size_m": side,
                    "end_year": 2024,
                    "landsat_years": (2019, 2024),
                    "sentinel2_years": (2019, 2024),
                }
            )
            t0 = time.perf_counter()
            info = create_archive(Path(tmp) / f"archive-{run}", config)
            t_archive = time.perf_counter() - t0
            aoi = json.dumps(info.aoi)
            with serve_stac(stac_files(info.root)) as api:
                t1 = time.perf_counter()
                fp.urban_footprint(
                    UrbanFootprintParams(
                        aoi=aoi, year=2024, stac_api_url=api.url, output_url=str(Path(tmp) / "out")
                    )
                )
                fp.change_detection(
                    ChangeDetectionParams.model_validate(
                        {
                            "aoi": aoi,
                            "before": {"start": "2019-01-01", "end": "2020-12-31"},
                            "after": {"start": "2023-01-01", "end": "2024-12-31"},
                            "stac_api_url": api.url,
                            "output_url": str(Path(tmp) / "out"),
                        }
                    )
                )
                t_flows = time.perf_counter() - t1
            inside = sum(STAGES.values())
            if run > 0:
                rows.append((mult, side, t_archive, t_flows, dict(STAGES), t_flows - inside))

    print(
        f"{'AOI':>5s} {'side m':>7s} {'archive s':>10s} {'flows s':>8s} {'Prefect s':>10s} "
        f"{'Prefect %':>9s}"
    )
    for mult, side, t_archive, t_flows, _stages, overhead in rows:
        print(
            f"{mult:>4g}x {side:7.0f} {t_archive:10.1f} {t_flows:8.1f} {overhead:10.1f} "
            f"{100 * overhead / t_flows:8.0f}%"
        )
    print("\nper stage (s):")
    names = sorted({k for r in rows for k in r[4]})
    for name in names:
        cells = "  ".join(f"{r[4].get(name, 0.0):7.1f}" for r in rows)
        print(f"  {name:55s} {cells}")
    base = rows[0][3]
    print(
        "\ncost growth (flows wall time vs 1x): "
        + ", ".join(f"{r[0]:g}x area -> {r[3] / base:.2f}x time" for r in rows)
    )


if __name__ == "__main__":
    main()

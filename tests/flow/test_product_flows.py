"""The product flows on the tiny archive through a real STAC API and a Prefect test server:
published products agree with the simulator's ground truth, and a rerun is a no-op."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, reproject

from flows.params import ChangeDetectionParams, UrbanDynamicsParams, UrbanFootprintParams
from flows.products import change_detection, urban_dynamics, urban_footprint
from tasks.products import ProductSummary
from tasks.publish import list_products
from tasks.stac_server import StacServer
from tasks.synthetic import ArchiveInfo, Truth

# Floors on the tiny world (1.5 km; its 2012-2013 Landsat composites rest on 1-2 clear views a
# pixel), measured with the shipped weights: change F1 0.60, footprint IoU 0.93. The bars of the
# evaluation on demo-sized unseen worlds are in models/weights/README.md.
CHANGE_F1_FLOOR = 0.5
FOOTPRINT_IOU_FLOOR = 0.85


@pytest.fixture(scope="module")
def setup(
    prefect_server: None,
    tiny_archive: ArchiveInfo,
    tiny_stac: StacServer,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch_module: pytest.MonkeyPatch,
) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch_module.setenv("EO_CACHE_DIR", str(cache))
    from tasks.settings import get_settings

    get_settings.cache_clear()
    out = tmp_path_factory.mktemp("products")
    return {"aoi": json.dumps(tiny_archive.aoi), "stac": tiny_stac.url, "out": str(out)}


@pytest.fixture(scope="module")
def monkeypatch_module() -> pytest.MonkeyPatch:
    mp = pytest.MonkeyPatch()
    yield mp  # type: ignore[misc]
    mp.undo()


def _on_product_grid(truth: Truth, field: np.ndarray, tif: Path) -> tuple[np.ndarray, dict]:
    """Truth (10 m) averaged onto the product grid, and the product's bands by name."""
    with rasterio.open(tif) as src:
        bands = {d: src.read(i + 1) for i, d in enumerate(src.descriptions)}
        out = np.full(src.shape, np.nan, np.float32)
        reproject(
            field.astype(np.float32),
            out,
            src_transform=truth.grid.transform,
            src_crs=truth.grid.crs,
            dst_transform=src.transform,
            dst_crs=src.crs,
            resampling=Resampling.average,
            dst_nodata=np.nan,
        )
    return out, bands


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float((pred & truth).sum())
    return 2 * tp / max(2 * tp + float((pred & ~truth).sum() + (~pred & truth).sum()), 1.0)


def test_change_detection_agrees_with_the_truth(setup: dict[str, str], tiny_truth: Truth) -> None:
    s: ProductSummary = change_detection(
        ChangeDetectionParams(
            aoi=setup["aoi"],
            before={"start": "2012-01-01", "end": "2013-12-31"},
            after={"start": "2023-01-01", "end": "2023-12-31"},
            stac_api_url=setup["stac"],
            output_url=setup["out"],
        )
    )
    frac, bands = _on_product_grid(
        tiny_truth, tiny_truth.change(2013, 2023), Path(s.product.asset_href("data"))
    )
    inside = np.isfinite(frac) & (bands["count"] > 0)
    f1 = _f1(bands["binary"][inside] > 0.5, frac[inside] > 0.5)
    assert f1 >= CHANGE_F1_FLOOR, f1
    assert set(bands) == {"probability", "binary", "confidence", "count"}
    assert np.nanmin(np.where(inside, bands["confidence"], np.nan)) >= 0.5
    # a synthetic world like the training ones: scored, within the adaptation threshold
    domain = json.loads(Path(s.product.item_href).read_text())["properties"]["eo_pipeline:domain"]
    assert 0 < domain["score"] < domain["adapt_threshold"] and domain["adapted_tiles"] == 0
    assert s.domain == domain


def test_urban_footprint_agrees_with_the_truth(setup: dict[str, str], tiny_truth: Truth) -> None:
    s = urban_footprint(
        UrbanFootprintParams(
            aoi=setup["aoi"], year=2023, stac_api_url=setup["stac"], output_url=setup["out"]
        )
    )
    frac, bands = _on_product_grid(
        tiny_truth, tiny_truth.builtup(2023), Path(s.product.asset_href("data"))
    )
    inside = np.isfinite(frac) & (bands["count"] > 0)
    pred, truth = bands["binary"][inside] > 0.5, frac[inside] > 0.5
    iou = (pred & truth).sum() / max((pred | truth).sum(), 1)
    assert iou >= FOOTPRINT_IOU_FLOOR, iou
    # the Item names the model weights and the input scenes
    item = json.loads(Path(s.product.item_href).read_text())
    assert item["properties"]["eo_pipeline:weights_sha256"]
    assert any(link["rel"] == "derived_from" for link in item["links"])


def test_urban_dynamics_publishes_years(setup: dict[str, str], tiny_truth: Truth) -> None:
    s = urban_dynamics(
        UrbanDynamicsParams(
            aoi=setup["aoi"],
            first_year=2012,
            last_year=2023,
            stac_api_url=setup["stac"],
            output_url=setup["out"],
        )
    )
    with rasterio.open(s.product.asset_href("data")) as src:
        names = list(src.descriptions)
        year = src.read(names.index("urbanization_year") + 1)
        year = np.where(year == src.nodata, np.nan, year)
    found = year[np.isfinite(year)]
    assert found.size and found.min() >= 2012 and found.max() <= 2023


def test_rerun_is_a_no_op(setup: dict[str, str]) -> None:
    params = UrbanFootprintParams(
        aoi=setup["aoi"], year=2023, stac_api_url=setup["stac"], output_url=setup["out"]
    )
    first = urban_footprint(params)
    mtimes = {p: p.stat().st_mtime_ns for p in Path(setup["out"]).rglob("*") if p.is_file()}
    again = urban_footprint(params)
    assert again.product.skipped and again.product.id == first.product.id
    assert {p: p.stat().st_mtime_ns for p in Path(setup["out"]).rglob("*") if p.is_file()} == mtimes
    assert first.product.id in {item["id"] for item in list_products(setup["out"])}

"""A real labelled Landsat pair through the whole change-detection flow with default
parameters: Items served by the project's own STAC API (`rustac serve`), discovery, masking,
co-registration, harmonization, composites, the model (out of domain: adapted at run time),
publishing; scored on the real labels next to the CVA baseline of the same flow.

Data: the Nanjing Landsat 5 TM pair (ChenHongruixuan/ChangeDetectionRepository, MIT licence;
USGS imagery, public domain; labels of Wu et al. 2014 / Du et al. 2019), written as
``landsat-c2-l2`` Items by `models.training.realdata` (approximate surface reflectance).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import rasterio
from shapely.geometry import box, mapping

from flows.params import ChangeDetectionParams
from flows.products import change_detection
from models.training.metrics import binary_scores
from models.training.realdata import NANJING_DIR, RealPair, nanjing_pair, write_landsat_items
from tasks.aoi import reproject_geometry
from tasks.stac_server import StacServer, serve_stac
from tests.conftest import REALDATA_DIR, realdata_path

#: Measured through this flow (README): adapted DL 0.806, CVA baseline 0.752. The seed rule of
#: the adaptation was chosen on this pair (tasks.adapt): a regression floor, not an estimate.
REAL_F1_FLOOR = 0.77


@pytest.fixture(scope="module")
def nanjing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RealPair, StacServer]]:
    realdata_path(*NANJING_DIR.parts)
    pair = nanjing_pair(REALDATA_DIR)
    files = write_landsat_items(pair, tmp_path_factory.mktemp("nanjing"))
    with serve_stac(files) as api:
        yield pair, api


def _scores(summary_href: str, pair: RealPair) -> tuple[dict[str, float], dict]:
    with rasterio.open(summary_href) as src:
        bands = {d: src.read(i + 1) for i, d in enumerate(src.descriptions)}
        transform = src.transform
    # the product grid is the scenes' own: no resampling, the labels line up pixel for pixel
    assert (transform.c, transform.f) == (pair.grid.bounds[0], pair.grid.bounds[3])
    assert bands["binary"].shape == pair.labels.shape
    m = pair.labels >= 0
    return binary_scores(bands["binary"][m] > 0.5, pair.labels[m] == 1), bands


def _run(pair: RealPair, api: StacServer, model: str, out: Path) -> tuple[dict, dict, dict]:
    # the AOI: the pair's extent shrunk by half a pixel, so the grid is exactly the scenes'
    inner = box(*pair.grid.bounds).buffer(-15.0, join_style="mitre")
    aoi = json.dumps(mapping(reproject_geometry(inner, pair.grid.epsg, 4326)))
    summary = change_detection(
        ChangeDetectionParams(
            aoi=aoi,
            before={"start": "2000-04-01", "end": "2000-10-31"},
            after={"start": "2002-04-01", "end": "2002-10-31"},
            collections=["landsat-c2-l2"],
            model=model,
            stac_api_url=api.url,
            output_url=str(out),
        )
    )
    scores, bands = _scores(summary.product.asset_href("data"), pair)
    item = json.loads(Path(summary.product.item_href).read_text())
    return scores, bands, item


def test_real_pair_through_the_flow_dl_beats_its_baseline(
    prefect_server: None,
    nanjing: tuple[RealPair, StacServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pair, api = nanjing
    monkeypatch.setenv("EO_CACHE_DIR", str(tmp_path / "cache"))
    from tasks.settings import get_settings

    get_settings.cache_clear()
    try:
        dl, bands, item = _run(pair, api, "change-fcsiamdiff-30m", tmp_path / "out")
        cva, _, base_item = _run(pair, api, "baseline", tmp_path / "out")
    finally:
        get_settings.cache_clear()
    assert dl["f1"] >= REAL_F1_FLOOR and dl["f1"] > cva["f1"], (dl, cva)
    domain = item["properties"]["eo_pipeline:domain"]
    assert domain["out_of_domain"] and domain["adapted_tiles"] == domain["tiles"] >= 1
    assert "eo_pipeline:domain" not in base_item["properties"]  # a baseline has no training data
    assert int(bands["count"].max()) == 1  # one scene per period
    assert sorted(item["properties"]["eo_pipeline:scene_ids"]) == sorted(pair.scene_ids)
